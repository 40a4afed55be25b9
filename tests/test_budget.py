"""The daily budget policy: costs, commits and settles, tier order, the day."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tierbatch.policies.budget import BudgetSnapshotError, DailyBudget
from tierbatch.policies.budget_config import BudgetConfig, OnExhausted
from tierbatch.policies.config import ConfigError, ModelSpec, parse_config
from tierbatch.policies.costs import cost_usd, estimate_cost, usage_cost
from tierbatch.policies.outcomes import (
    Abandoned,
    Cancelled,
    RateLimited,
    RateLimitScope,
    Succeeded,
    TimedOut,
    Usage,
)

LA = ZoneInfo("America/Los_Angeles")
EVENING = datetime(2026, 11, 27, 22, tzinfo=LA).timestamp()
MIDNIGHT = datetime(2026, 11, 28, 0, tzinfo=LA).timestamp()
# $1 per million input tokens, $2 per million output tokens.
PRO = ModelSpec("pro", 0, 0, 0, price_in_per_m=1.0, price_out_per_m=2.0)
LITE = ModelSpec("lite", 0, 0, 0, price_in_per_m=0.1, price_out_per_m=0.4)
MODELS = {"pro": PRO, "lite": LITE}
TIERS = [("hot", PRO), ("cold", LITE)]


def budget(usd: float = 1.0, **kwargs: object) -> DailyBudget:
    config = BudgetConfig(usd_per_day=usd, output_ratio=0.0, **kwargs)  # type: ignore[arg-type]
    return DailyBudget(config, TIERS, MODELS, "America/Los_Angeles")


def ok(tokens_in: int, tokens_out: int = 0) -> Succeeded:
    return Succeeded(Usage(tokens_in, tokens_out))


# ---- costs --------------------------------------------------------------------


def test_cost_prices_cached_and_thinking_tokens_apart() -> None:
    spec = ModelSpec(
        "m",
        0,
        0,
        0,
        price_in_per_m=1.0,
        price_out_per_m=4.0,
        price_cached_per_m=0.25,
        price_thinking_per_m=8.0,
    )
    # 1M input of which 400k cached; 1M output of which 500k thinking.
    usd = usage_cost(spec, Usage(1_000_000, 1_000_000, 500_000, 400_000))
    assert usd == pytest.approx(0.6 * 1.0 + 0.4 * 0.25 + 0.5 * 4.0 + 0.5 * 8.0)


def test_cached_price_defaults_to_a_tenth_and_thinking_to_the_output_price() -> None:
    usd = usage_cost(PRO, Usage(1_000_000, 1_000_000, 1_000_000, 1_000_000))
    assert usd == pytest.approx(0.1 + 2.0)
    assert cost_usd(PRO, 1_000_000, 0, batch=True) == pytest.approx(0.5)


def test_estimate_assumes_no_cache_and_the_output_ratio() -> None:
    assert estimate_cost(PRO, 1_000_000, 0.5) == pytest.approx(1.0 + 0.5 * 2.0)


# ---- spending -------------------------------------------------------------------


def test_a_tier_stops_once_the_day_is_committed_and_resumes_at_midnight() -> None:
    b = budget(0.003)  # 3000 input tokens of pro
    assert b.may_spend("hot", EVENING)
    b.commit(1, "hot", "pro", 2000, EVENING)
    assert b.may_spend("hot", EVENING)  # $0.002 < $0.003
    b.commit(2, "hot", "pro", 2000, EVENING)
    assert not b.may_spend("hot", EVENING)  # committed $0.004
    b.settle(1, ok(500), EVENING)  # the first call was cheaper than estimated
    assert b.may_spend("hot", EVENING)  # $0.0025
    b.settle(2, ok(2500), EVENING)
    state = b.state(EVENING)
    assert state.spent_usd == pytest.approx(0.003)
    assert state.exhausted and state.stopped_tiers == ("hot", "cold")
    assert state.resets_at == MIDNIGHT
    assert b.may_spend("hot", MIDNIGHT) and b.state(MIDNIGHT).spent_usd == 0.0


def test_refused_and_unsent_calls_cost_nothing_unknown_fates_keep_their_estimate() -> None:
    b = budget(10.0)
    for gid in range(1, 5):
        b.commit(gid, "hot", "pro", 1000, EVENING)
    assert b.settle(1, RateLimited(RateLimitScope.REQUESTS_PER_MINUTE, 1.0), EVENING) == 0.0
    assert b.settle(2, Cancelled(), EVENING) == 0.0
    assert b.settle(3, TimedOut(60.0), EVENING) == pytest.approx(0.001)
    assert b.settle(4, Abandoned(), EVENING) == pytest.approx(0.001)
    assert b.settle(4, Abandoned(), EVENING) is None  # once only
    assert b.state(EVENING).spent_usd == pytest.approx(0.002)


def test_a_call_granted_before_midnight_settles_into_its_own_day() -> None:
    b = budget(0.001)
    b.commit(1, "hot", "pro", 1000, MIDNIGHT - 1)
    assert not b.may_spend("hot", MIDNIGHT - 1)
    assert b.may_spend("hot", MIDNIGHT)  # the new day owes nothing
    b.settle(1, ok(1000), MIDNIGHT + 1)
    assert b.state(MIDNIGHT + 1).spent_usd == 0.0


def test_a_lower_tier_waits_while_a_busy_higher_tiers_backlog_needs_the_rest() -> None:
    b = budget(0.010)
    b.set_backlog({"hot": (10, 1000.0)})  # 10 articles of 1000 tokens of pro: $0.010
    b.commit(1, "cold", "lite", 10_000, EVENING)  # $0.001
    assert b.may_spend("cold", EVENING)  # hot is not at the registry: no reserve
    assert not b.may_spend("cold", EVENING, waiting={"hot"})  # 0.001 + 0.010 >= 0.010
    assert b.may_spend("hot", EVENING, waiting={"hot"})
    b.set_backlog({"hot": (2, 1000.0)})  # hot's backlog shrank
    assert b.may_spend("cold", EVENING, waiting={"hot"})


def test_a_tier_cap_stops_that_tier_only_and_caps_its_reserve() -> None:
    b = budget(1.0, tiers={"hot": 0.002})
    b.commit(1, "hot", "pro", 2000, EVENING)
    assert not b.may_spend("hot", EVENING)
    b.set_backlog({"hot": (1000, 1000.0)})  # $1 of backlog, but the cap leaves it $0
    assert b.may_spend("cold", EVENING, waiting={"hot"})
    assert b.state(EVENING).stopped_tiers == ("hot",)


def test_the_output_estimate_learns_the_models_ratio() -> None:
    config = BudgetConfig(usd_per_day=1.0, output_ratio=0.0)
    b = DailyBudget(config, TIERS, MODELS, "America/Los_Angeles")
    before = b.estimate("pro", 1000)
    b.commit(1, "hot", "pro", 100_000, EVENING)
    b.settle(1, ok(100_000, 100_000), EVENING)
    assert b.estimate("pro", 1000) > before


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["hot", "cold"]),
            st.integers(1, 50_000),  # estimated input tokens
            st.floats(0.0, 1.0),  # actual share of the estimate
            st.booleans(),  # settle before the next request?
        ),
        max_size=60,
    ),
    st.floats(0.0001, 0.05),
)
def test_spend_never_exceeds_the_budget_by_more_than_one_requests_estimate(
    calls: list[tuple[str, int, float, bool]], usd: float
) -> None:
    """Whatever the order of grants and settlements, as long as no call costs
    more than it was estimated at."""
    b = budget(usd)
    largest = 0.0
    open_calls: list[tuple[int, int, float]] = []
    for gid, (tier, tokens, share, settle_now) in enumerate(calls, start=1):
        if not b.may_spend(tier, EVENING):
            continue
        model = "pro" if tier == "hot" else "lite"
        estimate = b.commit(gid, tier, model, tokens, EVENING)
        largest = max(largest, estimate)
        open_calls.append((gid, int(tokens * share), estimate))
        if settle_now:
            g, used, _ = open_calls.pop(0)
            b.settle(g, ok(used), EVENING)
        state = b.state(EVENING)
        assert state.committed_usd <= usd + largest + 1e-12
    for g, used, _ in open_calls:
        b.settle(g, ok(used), EVENING)
    assert b.state(EVENING).spent_usd <= usd + largest + 1e-12


# ---- persistence ------------------------------------------------------------------


def test_the_days_spend_survives_a_restart_and_calls_in_flight_count_as_spent() -> None:
    b = budget(0.010)
    b.commit(1, "hot", "pro", 3000, EVENING)
    b.settle(1, ok(3000), EVENING)
    b.commit(2, "cold", "lite", 10_000, EVENING)  # in flight at the snapshot
    saved = b.snapshot()
    again = budget(0.010)
    again.restore(saved)
    again.forget_in_flight()
    state = again.state(EVENING)
    assert state.spent_usd == pytest.approx(0.003 + 0.001)
    assert again.state(MIDNIGHT).spent_usd == 0.0  # and the next day starts from 0


def test_a_corrupt_budget_snapshot_is_refused() -> None:
    with pytest.raises(BudgetSnapshotError):
        budget().restore({"version": 99})
    with pytest.raises(BudgetSnapshotError):
        budget().restore({"version": 1, "day": 3, "spent": {"hot": "x"}, "in_flight": []})


# ---- config -------------------------------------------------------------------------


def raw_config(**budget_table: object) -> dict[str, object]:
    return {
        "global_fallback": "lite",
        "models": {
            "pro": {"rpm": 1, "tpm": 1, "rpd": 0, "price_cached_per_m": 0.2},
            "lite": {"rpm": 1, "tpm": 1, "rpd": 0},
        },
        "tiers": [
            {"name": "hot", "min_priority": 0.5, "model": "pro"},
            {"name": "cold", "min_priority": 0.0, "model": "lite"},
        ],
        "composer": {"mix": {"hot": 1, "cold": 1}},
        "budget": budget_table,
    }


def test_budget_keys_are_read() -> None:
    config = parse_config(
        raw_config(usd_per_day=5, on_exhausted="batch", output_ratio=0.3, tiers={"hot": 2.5})
    )
    assert config.budget == BudgetConfig(5.0, {"hot": 2.5}, OnExhausted.BATCH, 0.3)
    assert config.models["pro"].cached_price_per_m == 0.2
    assert not parse_config(raw_config()).budget.enabled


def test_budget_mistakes_name_their_keys() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(raw_config(usd_per_day=-1, on_exhausted="wait", tiers={"hott": 1.0}))
    keys = {key for key, _ in caught.value.problems}
    assert keys == {"budget.usd_per_day", "budget.on_exhausted", "budget.tiers.hott"}


# ---- usage metadata, end to end over HTTP ---------------------------------------------


def test_cached_and_thinking_tokens_are_read_and_priced_over_http() -> None:
    """google-genai against the local server, which reports the repeated
    system instruction as cached and some thinking: the registry counts both,
    and the articles' costs price them at their own rates."""
    from dataclasses import replace

    from runtime_helpers import make_articles, small_config

    from tierbatch.actors.clock import ScaledClock
    from tierbatch.actors.runtime import Runtime
    from tierbatch.actors.sinks import CollectingSink
    from tierbatch.adapters.gemini.genai_provider import GenaiProvider
    from tierbatch.adapters.simulation.fake_gemini import FakeGeminiServer
    from tierbatch.adapters.simulation.gemini_emulator import FakeGeminiConfig
    from tierbatch.policies.config import ProviderConfig, ProviderKind
    from tierbatch.policies.results import Done

    base = small_config(extractors=1, max_packs=4)
    models = {name: replace(spec, price_thinking_per_m=8.0) for name, spec in base.models.items()}
    config = replace(base, models=models)
    clock = ScaledClock(1.0)
    server = FakeGeminiServer(
        FakeGeminiConfig(models=models, seed=4, implicit_cache=True, thinking_tokens=50),
        clock=clock,
    )
    url = server.start()
    try:
        provider = GenaiProvider(
            ProviderConfig(kind=ProviderKind.GENAI, base_url=url), api_key="test-key-123"
        )
        sink = CollectingSink()
        with Runtime(config, provider, sink, clock=clock) as runtime:
            runtime.submit(make_articles(60, seed=3))
            assert runtime.drain(timeout=60)
            stats = runtime.stats()
    finally:
        server.stop()
    done = [r for r in sink.results if isinstance(r, Done)]
    assert len(done) == 60
    expected = 0.0
    for status in stats.models:
        c = status.counters
        if not c["succeeded"]:
            continue
        assert c["thinking_tokens"] == 50 * c["succeeded"]
        assert 0 < c["cached_tokens"] < c["input_tokens"]
        spec = models[status.model]
        usage = Usage(
            int(c["input_tokens"]),
            int(c["output_tokens"]),
            int(c["thinking_tokens"]),
            int(c["cached_tokens"]),
        )
        expected += usage_cost(spec, usage)
        uncached = replace(usage, cached_tokens=0)
        unthinking = replace(usage, thinking_tokens=0)
        assert usage_cost(spec, uncached) > usage_cost(spec, usage) > usage_cost(spec, unthinking)
    assert sum(r.cost_usd for r in done) == pytest.approx(expected, rel=0.02)

"""The Batch API's pure decisions: routing (``auto`` by the dispatch plan),
job steps, when a job is due, packing, the batch price and settlement; and
the check at start naming a batch tier whose model cannot batch."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st
from runtime_helpers import small_config

from tierbatch.actors.ports import BATCH_METHOD, ModelInfo
from tierbatch.adapters.app.model_check import ModelLookup, batch_warnings
from tierbatch.policies.articles import Article
from tierbatch.policies.batch_costs import TokenCounts, split_cost, tokens_cost_usd
from tierbatch.policies.batch_jobs import (
    JobRequest,
    RequestAnswer,
    Step,
    job_is_due,
    pack_requests,
    settle_job,
    step_for,
)
from tierbatch.policies.batch_routing import Route, route_for, routes
from tierbatch.policies.config import BatchConfig, ModelSpec, TierMode, TierSpec
from tierbatch.policies.grounding import GroundingPolicy
from tierbatch.policies.outcomes import BadRequest, ServerError, Succeeded, Usage
from tierbatch.policies.planner import ModelCapacity, TierDemand, plan_dispatch
from tierbatch.policies.results import (
    AnswerProblem,
    Done,
    Entity,
    EntityType,
    Extraction,
    Failed,
    FailureReason,
    ProblemKind,
)

SPEC = ModelSpec("m", rpm=60, tpm=0, rpd=0, price_in_per_m=1.0, price_out_per_m=4.0)


def tier(mode: TierMode, max_latency_s: float | None = None) -> TierSpec:
    return TierSpec("cold", 0.0, "m", mode=mode, max_latency_s=max_latency_s)


def plan_for(requests: float, rpm: float):
    """The plan of one tier's backlog on a model of ``rpm`` in a 60 s window."""
    capacity = ModelCapacity("m", ready_requests=rpm, requests_per_s=rpm / 60, step_s=60.0)
    return plan_dispatch([TierDemand("cold", 0, ("m",), requests)], {"m": capacity})


# ---- routing ------------------------------------------------------------------------


def test_interactive_and_batch_tiers_ignore_the_plan() -> None:
    late = plan_for(10_000, 10)
    assert route_for(tier(TierMode.INTERACTIVE), late) is Route.INTERACTIVE
    assert route_for(tier(TierMode.BATCH), None) is Route.BATCH
    assert route_for(tier(TierMode.BATCH), plan_for(1, 100)) is Route.BATCH


def test_auto_goes_to_batch_only_when_the_plan_misses_the_deadline() -> None:
    auto = tier(TierMode.AUTO, max_latency_s=600.0)
    on_time = plan_for(50, 100)  # one window
    late = plan_for(5_000, 100)  # 50 windows: ~49 minutes
    assert on_time.tier("cold").finish_s is not None
    assert on_time.tier("cold").finish_s <= 600
    assert late.tier("cold").finish_s is None or late.tier("cold").finish_s > 600
    assert route_for(auto, on_time) is Route.INTERACTIVE
    assert route_for(auto, late) is Route.BATCH


def test_auto_without_a_plan_stays_interactive() -> None:
    assert route_for(tier(TierMode.AUTO, 60.0), None) is Route.INTERACTIVE
    assert routes([tier(TierMode.AUTO, 60.0)], None) == {"cold": Route.INTERACTIVE}


def test_auto_goes_to_batch_when_arrivals_outrun_the_quota() -> None:
    capacity = ModelCapacity("m", ready_requests=1, requests_per_s=1 / 60, step_s=60.0)
    demand = TierDemand("cold", 0, ("m",), 10, arrivals_per_s=5.0)
    plan = plan_dispatch([demand], {"m": capacity})
    assert route_for(tier(TierMode.AUTO, 3600.0), plan) is Route.BATCH


# ---- job steps ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "step"),
    [
        ("pending", Step.WAIT),
        ("running", Step.WAIT),
        ("succeeded", Step.SETTLE),
        ("failed", Step.RETURN),
        ("cancelled", Step.RETURN),
        ("expired", Step.RETURN),
    ],
)
def test_step_for_each_state(state: str, step: Step) -> None:
    assert step_for(state, 1000.0, 1010.0, give_up_s=3600.0) is step


def test_a_job_not_over_after_give_up_s_is_given_up() -> None:
    assert step_for("running", 0.0, 3600.0, give_up_s=3600.0) is Step.GIVE_UP
    assert step_for("succeeded", 0.0, 9e9, give_up_s=3600.0) is Step.SETTLE


def test_job_is_due_when_full_or_after_collect_s() -> None:
    assert not job_is_due(0, None, 10.0, full=5, collect_s=0.0)
    assert not job_is_due(3, 9.0, 10.0, full=5, collect_s=60.0)
    assert job_is_due(5, 9.0, 10.0, full=5, collect_s=60.0)
    assert job_is_due(1, 0.0, 60.0, full=5, collect_s=60.0)


@given(
    st.lists(st.integers(1, 500), max_size=40),
    st.integers(1, 6),
    st.integers(1, 2000),
)
def test_pack_requests_keeps_every_article_once_within_limits(
    sizes: list[int], per_request: int, max_tokens: int
) -> None:
    articles = [(f"a{i}", size) for i, size in enumerate(sizes)]
    packs = pack_requests(articles, per_request, max_tokens)
    assert [i for pack in packs for i in pack] == [a for a, _ in articles]
    size_of = dict(articles)
    for pack in packs:
        assert 1 <= len(pack) <= per_request
        assert len(pack) == 1 or sum(size_of[i] for i in pack) <= max_tokens


# ---- prices -------------------------------------------------------------------------


def test_batch_price_counts_prompt_output_thinking_and_cached_tokens() -> None:
    tokens = TokenCounts(prompt=1_000_000, output=100_000, thoughts=50_000, cached=400_000)
    spec = replace(SPEC, price_cached_per_m=0.25, price_thinking_per_m=8.0)
    full = tokens_cost_usd(spec, tokens)
    # 600k fresh + 400k cached at a quarter, 150k output (answer + thinking)
    # 600k fresh at 1.0 + 400k cached at 0.25, 100k answer at 4.0 + 50k thinking at 8.0
    assert full == pytest.approx(
        (600_000 * 1.0 + 400_000 * 0.25 + 100_000 * 4.0 + 50_000 * 8.0) / 1e6
    )
    assert tokens_cost_usd(spec, tokens, discount=0.5) == pytest.approx(full / 2)
    assert tokens_cost_usd(SPEC, TokenCounts(prompt=-5, output=-1)) == 0.0
    assert split_cost(1.0, [1, 3]) == [0.25, 0.75]
    assert split_cost(1.0, [0, 0]) == [0.5, 0.5]


# ---- settlement ----------------------------------------------------------------------


def article(i: int, text: str) -> Article:
    return Article(id=f"a{i}", title="", text=text)


def entity(name: str) -> Entity:
    return Entity(name, EntityType.PERSON, 0.5)


def test_settle_job_fails_only_the_failed_requests_articles_and_prices_the_rest() -> None:
    arts = {
        "a0": article(0, "Merkel met Macron"),
        "a1": article(1, "Obama spoke"),
        "a2": article(2, "Lula travelled"),
        "a3": article(3, "Modi arrived"),
    }
    requests = [
        JobRequest("r0", ("a0", "a1")),
        JobRequest("r1", ("a2",)),
        JobRequest("r2", ("a3",)),
    ]
    tokens = TokenCounts(prompt=1000, output=200, thoughts=100)
    answers = {
        "r0": RequestAnswer(
            Succeeded(Usage(1000, 300)),
            {
                "a0": Extraction((entity("Merkel"), entity("Obama"))),  # Obama: cross-article
                "a1": AnswerProblem(ProblemKind.MALFORMED),
            },
            tokens,
        ),
        "r1": RequestAnswer(BadRequest("no"), {}),
        # r2 absent: no result for it in the job
    }
    batch = BatchConfig()
    settled = settle_job(
        "batches/x",
        requests,
        answers,
        arts,
        tier=TierSpec("cold", 0.0, "m"),
        model="m",
        spec=SPEC,
        batch=batch,
        grounding=GroundingPolicy(),
        submitted_at=100.0,
        now=160.0,
    )
    by_id = {r.article_id: r for r in settled.results}
    assert set(by_id) == set(arts)
    done = by_id["a0"]
    assert isinstance(done, Done)
    assert [e.name for e in done.entities] == ["Merkel"]  # the cross-article one dropped
    assert done.grounding is not None and done.grounding.cross_article == 1
    assert done.latency_s == 60.0 and done.pack_size == 2
    assert isinstance(by_id["a1"], Failed) and by_id["a1"].reason is FailureReason.INVALID_ANSWER
    assert isinstance(by_id["a2"], Failed) and by_id["a2"].reason is FailureReason.BAD_REQUEST
    assert "request r1" in by_id["a2"].detail
    assert isinstance(by_id["a3"], Failed) and "no result" in by_id["a3"].detail
    assert settled.failed_requests == 2
    full = tokens_cost_usd(SPEC, tokens)
    assert settled.interactive_cost_usd == pytest.approx(full)
    assert settled.cost_usd == pytest.approx(full * batch.discount)
    assert math.isclose(done.cost_usd, settled.cost_usd * 17 / (17 + 11))


def test_settle_job_skips_articles_the_job_no_longer_holds() -> None:
    settled = settle_job(
        "batches/x",
        [JobRequest("r0", ("a0", "gone"))],
        {"r0": RequestAnswer(ServerError(500, "x"), {})},
        {"a0": article(0, "Merkel")},
        tier=TierSpec("cold", 0.0, "m"),
        model="m",
        spec=SPEC,
        batch=BatchConfig(),
        grounding=GroundingPolicy(),
        submitted_at=0.0,
        now=1.0,
    )
    assert [r.article_id for r in settled.results] == ["a0"]


# ---- the models check at start --------------------------------------------------------


def test_the_check_at_start_warns_of_a_batch_tier_whose_model_cannot_batch() -> None:
    config = small_config()
    cold = replace(config.tiers[2], mode=TierMode.BATCH)
    config = replace(config, tiers=(*config.tiers[:2], cold))
    lookups = [
        ModelLookup(cold.model, ModelInfo(cold.model, methods=("generateContent",))),
        ModelLookup(config.tiers[0].model, ModelInfo(config.tiers[0].model, methods=())),
    ]
    (line,) = batch_warnings(lookups, config)  # the interactive hot tier is not named
    assert f"tier cold (mode = 'batch') runs on {cold.model}" in line
    able = [ModelLookup(cold.model, ModelInfo(cold.model, methods=(BATCH_METHOD,)))]
    assert batch_warnings(able, config) == []

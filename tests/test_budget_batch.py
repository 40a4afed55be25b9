"""The daily budget and the Batch API, as pure policy: a batch job commits
its estimate at the discount when it is submitted (only whole requests
that fit), settles at its real cost (0 when its articles go back, once per
job, in the day it was submitted), and ``on_exhausted = "batch"`` moves a
tier to the Batch API until midnight once its headroom no longer pays for
its backlog at interactive prices -- which the routing then follows."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tierbatch.policies.batch_routing import Route, RouteReason, route_for, routing
from tierbatch.policies.batch_spend import fitting
from tierbatch.policies.budget import DailyBudget
from tierbatch.policies.budget_config import BudgetConfig, OnExhausted
from tierbatch.policies.config import ModelSpec, TierMode, TierSpec
from tierbatch.policies.outcomes import Succeeded, Usage

LA = ZoneInfo("America/Los_Angeles")
EVENING = datetime(2026, 11, 27, 22, tzinfo=LA).timestamp()
MIDNIGHT = datetime(2026, 11, 28, 0, tzinfo=LA).timestamp()
# $1 per million input tokens; no output assumed (output_ratio 0): a request
# of 1000 tokens is $0.001 interactively, $0.0005 in batch.
PRO = ModelSpec("pro", 0, 0, 0, price_in_per_m=1.0, price_out_per_m=2.0)
LITE = ModelSpec("lite", 0, 0, 0, price_in_per_m=0.1, price_out_per_m=0.4)
MODELS = {"pro": PRO, "lite": LITE}
TIERS = [("hot", PRO), ("cold", LITE)]


def budget(usd: float = 1.0, **kwargs: object) -> DailyBudget:
    batch_only = kwargs.pop("batch_only", ())
    config = BudgetConfig(usd_per_day=usd, output_ratio=0.0, **kwargs)  # type: ignore[arg-type]
    return DailyBudget(config, TIERS, MODELS, "America/Los_Angeles", batch_only=batch_only)  # type: ignore[arg-type]


# ---- committing and settling ------------------------------------------------------------


def test_a_batch_job_commits_only_the_requests_that_fit_entirely() -> None:
    b = budget(0.0021)
    # Five requests of $0.0005 each in batch: four fit in $0.0021, the fifth does not.
    assert b.commit_batch("j1", "hot", "pro", [1000] * 5, 0.5, EVENING) == 4
    state = b.state(EVENING)
    assert state.committed_usd == pytest.approx(0.002)
    assert state.batch_usd == pytest.approx(0.002) and state.spent_usd == 0.0
    assert b.may_spend("hot", EVENING)  # $0.002 < $0.0021: an interactive call still may
    assert b.commit_batch("j2", "hot", "pro", [1000], 0.5, EVENING) == 0  # but no whole job
    assert b.commit_batch("j1", "hot", "pro", [1000] * 5, 0.5, EVENING) == 4  # asked again


def test_batch_commitments_stop_interactive_calls_and_settle_at_their_real_cost() -> None:
    b = budget(0.002)
    assert b.commit_batch("j1", "hot", "pro", [2000, 2000], 0.5, EVENING) == 2  # $0.002
    assert not b.may_spend("hot", EVENING)  # the job holds the whole day
    assert b.settle_batch("j1", "hot", 0.0012, EVENING, EVENING) == pytest.approx(0.0012)
    assert b.may_spend("hot", EVENING)  # it cost less than its estimate
    state = b.state(EVENING)
    assert state.spent_usd == pytest.approx(0.0012) and state.batch_usd == pytest.approx(0.0012)
    assert b.settle_batch("j1", "hot", 0.0012, EVENING, EVENING) == 0.0  # once per job
    assert b.state(EVENING).spent_usd == pytest.approx(0.0012)


def test_a_returned_job_costs_nothing_and_frees_its_commitment() -> None:
    b = budget(0.001)
    assert b.commit_batch("j1", "hot", "pro", [2000], 0.5, EVENING) == 1
    assert not b.may_spend("hot", EVENING)
    b.settle_batch("j1", "hot", 0.0, EVENING, EVENING)
    assert b.may_spend("hot", EVENING) and b.state(EVENING).committed_usd == 0.0


def test_a_job_belongs_to_the_day_it_was_submitted_on() -> None:
    b = budget(0.001)
    assert b.commit_batch("j1", "hot", "pro", [2000], 0.5, MIDNIGHT - 60) == 1
    assert b.may_spend("hot", MIDNIGHT)  # the new day owes nothing for it
    assert b.settle_batch("j1", "hot", 0.0009, MIDNIGHT - 60, MIDNIGHT + 60) == 0.0
    assert b.state(MIDNIGHT + 60).spent_usd == 0.0


def test_a_job_another_process_committed_counts_when_it_settles_once() -> None:
    b = budget(1.0)
    assert b.settle_batch("theirs", "cold", 0.25, EVENING - 60, EVENING) == pytest.approx(0.25)
    assert b.settle_batch("theirs", "cold", 0.25, EVENING - 60, EVENING) == 0.0
    assert b.settle_batch("yesterday", "cold", 0.5, MIDNIGHT - 86_400 - 1, EVENING) == 0.0
    assert b.state(EVENING).spent_usd == pytest.approx(0.25)


def test_batch_jobs_count_against_a_tiers_cap() -> None:
    b = budget(1.0, tiers={"cold": 0.0001})
    # 1000 tokens of lite in batch: $0.00005; two fit in the $0.0001 cap, a third does not.
    assert b.commit_batch("j1", "cold", "lite", [1000, 1000, 1000], 0.5, EVENING) == 2
    assert not b.may_spend("cold", EVENING) and b.may_spend("hot", EVENING)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["hot", "cold"]),
            st.lists(st.integers(1, 20_000), min_size=1, max_size=8),  # the job's requests
            st.floats(0.0, 1.0),  # its real cost as a share of the estimate
            st.booleans(),  # interactive call instead of a job?
        ),
        max_size=40,
    ),
    st.floats(0.0001, 0.05),
)
def test_batch_jobs_never_take_the_day_over_its_budget(
    work: list[tuple[str, list[int], float, bool]], usd: float
) -> None:
    """Interactive calls may overshoot by one request's estimate (their rule);
    batch jobs add nothing to that, whatever the order."""
    b = budget(usd)
    largest_call = 0.0
    for n, (tier, tokens, share, interactive) in enumerate(work):
        model = "pro" if tier == "hot" else "lite"
        if interactive:
            if b.may_spend(tier, EVENING):
                estimate = b.commit(n, tier, model, tokens[0], EVENING)
                largest_call = max(largest_call, estimate)
                b.settle(n, Succeeded(Usage(int(tokens[0] * share), 0)), EVENING)
            continue
        approved = b.commit_batch(f"j{n}", tier, model, tokens, 0.5, EVENING)
        assert b.state(EVENING).committed_usd <= usd + largest_call + 1e-12
        if approved:
            estimate = sum(b.estimate(model, t) * 0.5 for t in tokens[:approved])
            b.settle_batch(f"j{n}", tier, estimate * share, EVENING, EVENING)
    assert b.state(EVENING).spent_usd <= usd + largest_call + 1e-12


def test_fitting_takes_the_first_costs_that_fit_together() -> None:
    assert fitting([1.0, 1.0, 1.0], 2.5) == (2, 2.0)
    assert fitting([3.0, 1.0], 2.5) == (0, 0.0)
    assert fitting([], 1.0) == (0, 0.0)


# ---- moving a tier to the Batch API ----------------------------------------------------


def test_a_tier_moves_to_batch_once_its_headroom_cannot_pay_its_backlog() -> None:
    b = budget(0.010, on_exhausted=OnExhausted.BATCH)
    b.set_backlog({"hot": (5, 1000.0)})  # $0.005 at interactive prices
    assert b.moved(EVENING) == ()
    b.commit(1, "hot", "pro", 6000, EVENING)  # $0.006 in flight: $0.004 left
    assert b.may_spend("hot", EVENING)  # it could still call...
    # ...but not for its whole backlog; and cold may not spend what hot's needs
    assert not b.may_spend("cold", EVENING)
    assert b.moved(EVENING) == ("hot", "cold")
    b.settle(1, Succeeded(Usage(1000, 0)), EVENING)  # cheaper than estimated: $0.009 left
    state = b.state(EVENING)
    assert state.moved_tiers == ("hot", "cold") == state.batch_tiers  # until midnight
    assert [t.moved for t in state.tiers] == [True, True]
    assert state.tiers[0].backlog_usd == pytest.approx(0.005)
    assert b.moved(MIDNIGHT) == ()  # a new day, a new budget


def test_a_lower_tier_moves_alone_when_only_its_own_headroom_is_short() -> None:
    b = budget(0.010, on_exhausted=OnExhausted.BATCH)
    b.set_backlog({"hot": (2, 1000.0), "cold": (1000, 1000.0)})  # $0.002 and $0.1
    assert b.moved(EVENING) == ("cold",)
    assert b.state(EVENING).tiers[0].may_spend


def test_a_stopped_tier_is_moved_and_a_batch_mode_tier_is_never_reported_moved() -> None:
    b = budget(0.001, on_exhausted=OnExhausted.BATCH, batch_only=("cold",))
    b.commit(1, "hot", "pro", 1000, EVENING)
    assert not b.may_spend("hot", EVENING) and not b.may_spend("cold", EVENING)
    assert b.moved(EVENING) == ("hot",)


def test_with_on_exhausted_stop_no_tier_ever_moves() -> None:
    b = budget(0.001)
    b.set_backlog({"hot": (100, 1000.0)})
    b.commit(1, "hot", "pro", 1000, EVENING)
    assert b.state(EVENING).moved_tiers == () and b.state(EVENING).stopped_tiers


def test_batch_jobs_and_moved_tiers_survive_a_restart() -> None:
    b = budget(0.010, on_exhausted=OnExhausted.BATCH)
    b.commit_batch("j1", "hot", "pro", [2000], 0.5, EVENING)  # in flight: $0.001
    b.commit_batch("j2", "cold", "lite", [10_000], 0.5, EVENING)
    b.settle_batch("j2", "cold", 0.0004, EVENING, EVENING)
    b.set_backlog({"cold": (1000, 1000.0)})  # $0.1: more than the day
    assert b.moved(EVENING) == ("cold",)
    saved = b.snapshot()
    assert saved["version"] == 2
    again = budget(0.010, on_exhausted=OnExhausted.BATCH)
    again.restore(saved)
    again.forget_in_flight()  # calls in flight count as spent; jobs stay in flight
    state = again.state(EVENING)
    assert state.committed_usd == pytest.approx(0.001 + 0.0004)
    assert state.spent_usd == pytest.approx(0.0004) and state.moved_tiers == ("cold",)
    again.settle_batch("j1", "hot", 0.0008, EVENING, EVENING)
    assert again.state(EVENING).spent_usd == pytest.approx(0.0012)


def test_a_budget_snapshot_of_the_build_before_batch_jobs_is_read() -> None:
    b = budget(1.0)
    day = b.state(EVENING).day
    b.restore({"version": 1, "day": day, "spent": {"hot": 0.25}, "in_flight": []})
    state = b.state(EVENING)
    assert state.spent_usd == pytest.approx(0.25) and state.batch_usd == 0.0


# ---- routing ----------------------------------------------------------------------------


def test_the_budget_routes_a_moved_tier_to_batch_whatever_its_mode() -> None:
    b = budget(0.001, on_exhausted=OnExhausted.BATCH)
    b.commit(1, "hot", "pro", 1000, EVENING)
    state = b.state(EVENING)
    interactive = TierSpec("hot", 0.5, "pro")
    auto = TierSpec("hot", 0.5, "pro", mode=TierMode.AUTO, max_latency_s=60.0)
    assert route_for(interactive, None) is Route.INTERACTIVE
    assert routing(interactive, None, state).reason is RouteReason.BUDGET
    assert route_for(interactive, None, state) is Route.BATCH
    assert route_for(auto, None, state) is Route.BATCH
    other = TierSpec("warm", 0.2, "pro")  # not moved
    assert route_for(other, None, state) is Route.INTERACTIVE
    batch = TierSpec("hot", 0.5, "pro", mode=TierMode.BATCH)
    assert routing(batch, None, state).reason is RouteReason.MODE

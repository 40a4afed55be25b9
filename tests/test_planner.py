"""The dispatch planner and its LP solver: properties against brute force."""

from __future__ import annotations

import itertools
import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tierbatch.policies.lp import LinearProgram, LpStatus, solve
from tierbatch.policies.planner import (
    Allowances,
    ModelCapacity,
    TierDemand,
    plan_dispatch,
)

W = 60.0


def window(model: str, rpm: float, ready: float | None = None, **kw: float) -> ModelCapacity:
    return ModelCapacity(model, rpm if ready is None else ready, rpm / W, step_s=W, **kw)


# ---- the LP solver -------------------------------------------------------------


def test_lp_solves_a_textbook_problem():
    # max 3x + 5y st x <= 4, 2y <= 12, 3x + 2y <= 18  ->  x=2, y=6, 36
    result = solve(LinearProgram([-3, -5], [[1, 0], [0, 2], [3, 2]], [4, 12, 18]))
    assert result.status is LpStatus.OPTIMAL
    assert result.x == pytest.approx((2, 6))
    assert result.objective == pytest.approx(-36)
    assert result.slack == pytest.approx((2, 0, 0))


def test_lp_reports_infeasible_and_unbounded():
    assert solve(LinearProgram([1], [[1]], [-1])).status is LpStatus.INFEASIBLE
    assert solve(LinearProgram([1, 1], a_eq=[[1, 1]], b_eq=[-2])).status is LpStatus.INFEASIBLE
    assert solve(LinearProgram([-1], [[-1]], [0])).status is LpStatus.UNBOUNDED


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 10_000))
def test_lp_optimum_beats_every_grid_point(seed):
    """On random bounded 2-variable LPs, the solution is feasible and no
    feasible point of a fine grid is better (an independent brute force)."""
    rng = random.Random(seed)
    c = [rng.uniform(-5, 5), rng.uniform(-5, 5)]
    a_ub = [[rng.uniform(-2, 4), rng.uniform(-2, 4)] for _ in range(rng.randint(0, 4))]
    b_ub = [rng.uniform(-2, 10) for _ in a_ub]
    a_ub.append([1.0, 1.0])
    b_ub.append(10.0)
    result = solve(LinearProgram(c, a_ub, b_ub))
    grid = [
        (x / 4, y / 4)
        for x in range(41)
        for y in range(41)
        if all(r[0] * x / 4 + r[1] * y / 4 <= b + 1e-9 for r, b in zip(a_ub, b_ub, strict=True))
    ]
    if result.status is LpStatus.INFEASIBLE:
        assert not grid
        return
    assert result.status is LpStatus.OPTIMAL
    x = result.x
    for row, bound in zip(a_ub, b_ub, strict=True):
        assert row[0] * x[0] + row[1] * x[1] <= bound + 1e-6
    for point in grid:
        assert result.objective <= c[0] * point[0] + c[1] * point[1] + 1e-6


# ---- the planner: small random instances against brute force -------------------

MODELS = ("a", "b", "c")
CHAINS = (("a",), ("b",), ("a", "b"), ("b", "c"), ("a", "b", "c"), ("c",), ("b", "a"))


@st.composite
def instances(draw):
    n_tiers = draw(st.integers(1, 3))
    tiers = [
        TierDemand(
            f"t{i}",
            i,
            draw(st.sampled_from(CHAINS)),
            float(draw(st.integers(0, 7))),
            tokens_per_request=float(draw(st.sampled_from([0, 1, 2, 3]))),
        )
        for i in range(n_tiers)
    ]
    models = {}
    for name in MODELS:
        rpm = draw(st.integers(1, 4))
        ready = draw(st.integers(0, rpm))
        tpm = draw(st.sampled_from([math.inf, 4.0, 6.0, 10.0]))
        models[name] = ModelCapacity(
            name,
            float(ready),
            rpm / W,
            ready_tokens=math.inf if math.isinf(tpm) else tpm,
            tokens_per_s=tpm / W,
            step_s=W,
        )
    return tiers, models


def brute_force_windows(tiers, models, max_windows=12):
    """The fewest windows k (capacity ``ready + k * rpm``) by which an integer
    allocation of every tier's requests to its chain fits; None if none."""
    options = []
    for tier in tiers:
        chain = [m for m in tier.chain if m in models]
        n = int(tier.requests)
        splits = [
            split for split in itertools.product(range(n + 1), repeat=len(chain)) if sum(split) == n
        ]
        options.append([(dict(zip(chain, split, strict=True)), tier) for split in splits])
    for k in range(max_windows + 1):
        horizon = k * W
        for combo in itertools.product(*options):
            load = dict.fromkeys(models, 0.0)
            tokens = dict.fromkeys(models, 0.0)
            for split, tier in combo:
                for model, count in split.items():
                    load[model] += count
                    tokens[model] += count * tier.tokens_per_request
            if all(
                load[m] <= models[m].requests_by(horizon) + 1e-9
                and tokens[m] <= models[m].tokens_by(horizon) + 1e-9
                for m in models
            ):
                return horizon
    return None


@settings(max_examples=150, deadline=None)
@given(instances())
def test_plan_is_feasible_within_chains_and_matches_brute_force(instance):
    tiers, models = instance
    plan = plan_dispatch(tiers, models)
    best = brute_force_windows(tiers, models)
    if best is None:
        return  # beyond the brute force's reach
    assert plan.makespan_s is not None
    # The LP allocates fractions: never later than the best integer plan,
    # and never earlier than a window boundary allows.
    assert plan.makespan_s <= best * 1.01 + 1e-6
    horizon = plan.makespan_s
    load = dict.fromkeys(models, 0.0)
    tokens = dict.fromkeys(models, 0.0)
    for tier, tier_plan in zip(sorted(tiers, key=lambda t: t.rank), plan.tiers, strict=True):
        assert set(tier_plan.requests) <= set(tier.chain)  # never outside its chain
        assert tier_plan.planned == pytest.approx(tier.requests, abs=1e-6)
        for model, count in tier_plan.requests.items():
            load[model] += count
            tokens[model] += count * tier.tokens_per_request
    for model, cap in models.items():  # never more than a model's capacity
        assert load[model] <= cap.requests_by(horizon) + 1e-6
        assert tokens[model] <= cap.tokens_by(horizon) + 1e-6


def brute_force_first_finish(tiers, models, makespan, max_windows=12):
    """Over integer allocations that finish everything by ``makespan``, the
    earliest the highest tier can be done (per model, its own requests fit
    by then, and everyone's by the makespan)."""
    ordered = sorted(tiers, key=lambda t: t.rank)
    options = []
    for tier in ordered:
        chain = [m for m in tier.chain if m in models]
        n = int(tier.requests)
        options.append(
            [
                dict(zip(chain, split, strict=True))
                for split in itertools.product(range(n + 1), repeat=len(chain))
                if sum(split) == n
            ]
        )

    def fits(loads, horizon):
        """``loads``: (model, requests, tokens per request) triples."""
        for m, cap in models.items():
            requests = sum(n for m2, n, _ in loads if m2 == m)
            tokens = sum(n * tok for m2, n, tok in loads if m2 == m)
            if requests > cap.requests_by(horizon) + 1e-9:
                return False
            if tokens > cap.tokens_by(horizon) + 1e-9:
                return False
        return True

    best = None
    for combo in itertools.product(*options):
        everyone = [
            (m, n, tier.tokens_per_request)
            for split, tier in zip(combo, ordered, strict=True)
            for m, n in split.items()
        ]
        if not fits(everyone, makespan):
            continue
        first = [(m, n, ordered[0].tokens_per_request) for m, n in combo[0].items()]
        for k in range(max_windows + 1):
            if k * W > makespan + 1e-9:
                break
            if fits(first, k * W):
                best = k * W if best is None else min(best, k * W)
                break
    return best


@settings(max_examples=100, deadline=None)
@given(instances())
def test_tiers_finish_in_priority_order_when_the_makespan_allows(instance):
    tiers, models = instance
    plan = plan_dispatch(tiers, models)
    if plan.makespan_s is None:
        return
    for tier in plan.tiers:
        assert tier.finish_s is not None
        assert tier.finish_s <= plan.makespan_s + 1e-6
    ordered = sorted(tiers, key=lambda t: t.rank)
    if ordered[0].requests == 0:
        return
    # The highest tier is done no later than under any integer plan that
    # also finishes the whole backlog by the promised makespan.
    best = brute_force_first_finish(tiers, models, plan.makespan_s)
    if best is not None:
        assert plan.tiers[0].finish_s <= best + 1e-6


def test_overflow_never_takes_what_the_lower_tier_needs():
    """The case a greedy router loses: warm may overflow onto lite only as
    far as cold, which has no other model, still finishes in time."""
    models = {"pro": window("pro", 20), "flash": window("flash", 60), "lite": window("lite", 120)}
    tiers = [
        TierDemand("hot", 0, ("pro", "flash", "lite"), 0),
        TierDemand("warm", 1, ("flash", "lite"), 349),
        TierDemand("cold", 2, ("lite",), 451),
    ]
    plan = plan_dispatch(tiers, models)
    assert plan.makespan_s == 240.0  # five windows: 4 x 60 s after the first burst
    warm = plan.tier("warm")
    assert warm is not None
    assert warm.requests["lite"] + plan.requests("cold", "lite") <= 600 + 1e-6
    assert warm.requests["flash"] == pytest.approx(240)  # flash kept full to the end
    allowances = Allowances(plan, made_at=0.0)
    taken = 0
    while allowances.may_use("warm", "lite", 0.0):
        allowances.record("warm", "lite", 0.0)
        taken += 1
    # Its share at once; the spare only as the plan's makespan goes by.
    assert warm.requests["lite"] <= taken < warm.requests["lite"] + plan.spare["lite"]
    assert allowances.may_use("warm", "flash", 0.0)  # its own primary: never held back
    later = plan.makespan_s  # by then all of the spare may go
    while allowances.may_use("warm", "lite", later):
        allowances.record("warm", "lite", later)
        taken += 1
    # (fractional shares round down on each side: within two requests)
    assert abs(taken - (warm.requests["lite"] + plan.spare["lite"])) <= 2 + 1e-6
    assert allowances.may_use("cold", "lite", later)  # the rest is cold's


def test_one_tier_degenerates_to_taking_any_model_of_its_chain():
    models = {"a": window("a", 2), "b": window("b", 2)}
    plan = plan_dispatch([TierDemand("only", 0, ("a", "b"), 30)], models)
    allowances = Allowances(plan)
    for _ in range(100):
        for model in ("a", "b"):
            assert allowances.may_use("only", model, 0.0)
            allowances.record("only", model, 0.0)


def test_the_best_model_goes_to_the_highest_tier():
    models = {"pro": window("pro", 10), "lite": window("lite", 100)}
    tiers = [
        TierDemand("hot", 0, ("pro", "lite"), 10),
        TierDemand("cold", 1, ("pro", "lite"), 50),
    ]
    plan = plan_dispatch(tiers, models)
    assert plan.requests("hot", "pro") == pytest.approx(10)
    assert plan.requests("cold", "pro") == pytest.approx(0, abs=1e-6)


def test_a_stream_that_outruns_the_quota_serves_the_highest_tiers_first():
    models = {"flash": window("flash", 60), "lite": window("lite", 60)}
    tiers = [
        TierDemand("hot", 0, ("flash", "lite"), 0, arrivals_per_s=1.0),
        TierDemand("cold", 1, ("lite",), 100, arrivals_per_s=1.0),
    ]
    plan = plan_dispatch(tiers, models, horizon_s=600)
    assert plan.overloaded
    hot, cold = plan.tier("hot"), plan.tier("cold")
    assert hot is not None and cold is not None
    assert hot.finish_s == 600  # keeps up
    assert hot.planned == pytest.approx(600)
    assert cold.finish_s is None  # queues
    assert cold.planned == pytest.approx(
        60 + 60 * 10, rel=1e-5
    )  # all of lite; flash is no use to it


def test_a_cooling_model_is_planned_later_and_tokens_can_bind():
    models = {
        "a": ModelCapacity("a", 10, 1.0, ready_tokens=100, tokens_per_s=1.0, delay_s=30),
    }
    plan = plan_dispatch([TierDemand("t", 0, ("a",), 20, tokens_per_request=10)], models)
    assert plan.makespan_s is not None
    # tokens: 100 now (less 30 s of cooldown) + 1/s -> 200 tokens for 20 requests
    assert plan.makespan_s == pytest.approx(130, rel=1e-3)
    assert plan.tiers[0].binding[0].kind == "tokens"


def test_bad_demand_is_refused_naming_the_field():
    with pytest.raises(ValueError, match="requests"):
        TierDemand("hot", 0, ("a",), -1)
    with pytest.raises(ValueError, match="chain"):
        TierDemand("hot", 0, (), 1)
    with pytest.raises(ValueError, match="ready_requests"):
        ModelCapacity("a", -1, 1)


# ---- regressions ---------------------------------------------------------------


def stepping(model: str, rpm: float, first_step_s: float) -> ModelCapacity:
    """A rolling window that is full now and frees its places ``first_step_s``
    from now (then a window's worth every window)."""
    return ModelCapacity(model, 0.0, rpm / W, step_s=W, first_step_s=first_step_s)


ISSUE_CHAINS = (("pro", "flash", "lite"), ("flash", "lite"), ("lite",))


def issue_demands(hot: float, warm: float, cold: float) -> list[TierDemand]:
    return [
        TierDemand(name, rank, chain, n)
        for rank, (name, chain, n) in enumerate(
            zip(("hot", "warm", "cold"), ISSUE_CHAINS, (hot, warm, cold), strict=True)
        )
    ]


def test_windows_stepping_a_moment_apart_do_not_cost_a_whole_window():
    """After one burst every model's window frees about a window later, a
    fraction of a second apart. The backlog fits the next step exactly;
    rounding the LP's horizon up to every model's next step planned it a
    whole window late (61.6 s), and the registry then sent hot onto flash
    and warm onto flash-lite for nothing."""
    models = {
        "pro": stepping("pro", 20, 1.59),
        "flash": stepping("flash", 60, 1.61),
        "lite": stepping("lite", 120, 1.615),
    }
    plan = plan_dispatch(issue_demands(20, 60, 120), models)
    assert plan.makespan_s == pytest.approx(1.615, abs=1e-3)
    assert plan.requests("hot", "pro") == pytest.approx(20)
    assert plan.requests("warm", "flash") == pytest.approx(60)
    assert all(t.finish_s is not None and t.finish_s < 2.0 for t in plan.tiers)


def test_windows_stepping_apart_over_several_windows():
    models = {
        "pro": stepping("pro", 20, 51.47),
        "flash": stepping("flash", 60, 51.51),
        "lite": stepping("lite", 120, 51.49),
    }
    plan = plan_dispatch(issue_demands(40, 120, 240), models)
    assert plan.makespan_s == pytest.approx(111.51, abs=1e-3)
    # One request more than the two steps hold: the next window it is.
    later = plan_dispatch(issue_demands(40, 120, 241), models)
    assert later.makespan_s == pytest.approx(171.49, abs=1e-3)


def test_a_replan_keeps_the_earlier_promise_instead_of_spending_the_tolerance_again():
    """Each plan lets the whole backlog finish up to 1% later so that hot
    finishes earlier (on flash, which warm needs). Replanned every few
    seconds, each fresh plan spent that 1% again and the makespan slipped
    by far more; ``finish_by_s`` (the last plan's promise) caps it."""
    paced = {
        "pro": ModelCapacity("pro", 3, 20 / W),
        "flash": ModelCapacity("flash", 10, 60 / W),
        "lite": ModelCapacity("lite", 20, 120 / W),
    }
    demands = issue_demands(80, 240, 480)
    free = plan_dispatch(demands, paced)
    assert free.makespan_s is not None
    slack_finish = max(t.finish_s or 0.0 for t in free.tiers)
    assert slack_finish > free.makespan_s + 0.5  # the tolerance is spent on hot
    kept = plan_dispatch(demands, paced, finish_by_s=free.makespan_s)
    assert max(t.finish_s or 0.0 for t in kept.tiers) <= free.makespan_s + 1e-3
    # An earlier promise that can no longer be kept is no constraint.
    late = plan_dispatch(demands, paced, finish_by_s=1.0)
    assert late.makespan_s == pytest.approx(free.makespan_s)


def test_a_paced_fallback_share_accrues_over_the_span_across_replans():
    """On a paced model, hot's share of flash (planned for its whole span)
    was taken at once, and every replan handed it out again: replanned
    every second, hot could take its share every second."""
    paced = {
        "pro": ModelCapacity("pro", 0, 20 / W),
        "flash": ModelCapacity("flash", 0, 60 / W),
    }
    demands = [
        TierDemand("hot", 0, ("pro", "flash"), 60),
        TierDemand("warm", 1, ("flash",), 150),
    ]
    plan = plan_dispatch(demands, paced)
    share = plan.requests("hot", "flash")
    hot = plan.tier("hot")
    assert hot is not None and hot.finish_s is not None
    assert share >= 2
    allowances = Allowances(plan, made_at=0.0, paced=("pro", "flash"))
    taken = 0
    for second in range(round(hot.finish_s)):
        now = float(second)
        if second:  # a replan every second, from the same plan
            carry = allowances.carry_over(now)
            allowances = Allowances(plan, made_at=now, paced=("pro", "flash"), carry=carry)
        while allowances.may_use("hot", "flash", now) and taken < 10 * share:
            allowances.record("hot", "flash", now)
            taken += 1
        # Never ahead of the share accrued so far (one request of carry).
        assert taken <= share * (second + 1) / hot.finish_s + 1 + 1e-6
    assert taken >= share - 2
    assert allowances.may_use("hot", "pro", 0.0)  # its own primary: never held back


def test_a_cooldown_ending_before_a_windows_next_step_takes_none_of_its_steps() -> None:
    """A model 429'd near its window's edge cools down until about when its
    oldest place frees. Every step was shifted by the whole cooldown, so a
    cooldown of most of a window cost a window of capacity by the end of a
    drain, and the plan moved a tier's last requests to the model a lower
    tier needed (bench steady: warm's last 23 requests onto flash-lite)."""
    window = 3.0
    cap = ModelCapacity("flash", 0, 15 / window, step_s=window, first_step_s=2.9, delay_s=2.8)
    # Steps at 2.9, 5.9 and 8.9 s, cooldown or not.
    assert cap.requests_by(2.85) == 0
    assert cap.requests_by(2.95) == 15
    assert cap.requests_by(9.0) == 45
    assert cap.round_up(6.0) == pytest.approx(8.9)
    # A cooldown past the oldest place's freeing moves the steps after it.
    late = ModelCapacity("flash", 0, 15 / window, step_s=window, first_step_s=0.5, delay_s=1.0)
    assert late.requests_by(0.9) == 0
    assert late.requests_by(1.0) == 15
    assert late.requests_by(4.0) == 30
    # A bucket refills from the cooldown's end.
    bucket = ModelCapacity("lite", 0, 1.0, delay_s=2.0)
    assert bucket.requests_by(5.0) == pytest.approx(3.0)

"""The dispatch plan: how much of each model each tier may use.

A greedy router lets a tier overflow onto a fallback the moment its own model
is busy, even when that fallback is the only model a lower tier can use and
the higher tier's own model would have served it in time: the lower tier
then needs one window more. The planner looks at the whole known backlog
instead and answers, per tier and model, how many requests the tier may put
there, so that

1. the known backlog finishes as early as the quotas allow (minimum
   makespan), arrivals included;
2. among plans within ``tolerance`` of that minimum, tiers finish in priority
   order: the highest tier as early as possible, then the next, ...;
3. with every finish time fixed, each tier uses its chain's best models as
   much as it can (the primary first), highest tier first;
4. when arrivals outrun the quota (no finite makespan), the highest tiers
   keep up first over the planning horizon and the lowest tier queues.

Capacity is what a model can still admit by a horizon ``T`` from now:
``ready + rate * T`` requests and tokens (a token bucket: continuous; a
rolling window: ``ready`` now and a whole window's worth at each window
boundary, of which the line through the boundaries is the relaxation the LP
uses and the finish times are rounded up to a boundary), capped by what is
left of the day. Whether a tier is done by its deadline on a model is the
classic earliest-deadline-first condition: for every deadline ``d``, the
requests of the tiers due by ``d`` fit in the capacity by ``d``. Every step is
one small LP (``policies.lp``), so a replan costs a few milliseconds; the
registry replans when the backlog, a limit or a cooldown changes, not per
request.

Longer than the house's ~450 lines on purpose: one algorithm: the plan's
model, its linear program, the stream mode and the allowances share private
helpers.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from tierbatch.policies.lp import LinearProgram, LpResult, LpStatus, solve

__all__ = [
    "Allowances",
    "Binding",
    "ModelCapacity",
    "Plan",
    "TierDemand",
    "TierPlan",
    "TierShape",
    "plan_dispatch",
]

DEFAULT_TOLERANCE: Final = 0.01
# How far ahead a stream that never drains is planned, in seconds.
DEFAULT_HORIZON_S: Final = 600.0
_TIGHT: Final = 1e-6


@dataclass(frozen=True, slots=True)
class TierDemand:
    """A tier's known work, in requests (packs), highest tier first by ``rank``.

    ``requests``: the backlog now; ``arrivals_per_s``: requests arriving per
    second on top of it; ``tokens_per_request``: estimated input tokens of
    one of its requests; ``chain``: its models in the order it prefers them.
    """

    tier: str
    rank: int
    chain: tuple[str, ...]
    requests: float
    tokens_per_request: float = 0.0
    arrivals_per_s: float = 0.0

    def __post_init__(self) -> None:
        if not self.chain:
            raise ValueError(f"tier {self.tier!r}: an empty chain")
        for name in ("requests", "tokens_per_request", "arrivals_per_s"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise ValueError(f"tier {self.tier!r}: {name} must be finite and >= 0, got {value}")


@dataclass(frozen=True, slots=True)
class ModelCapacity:
    """What a model can admit from now on.

    ``ready_requests``/``ready_tokens``: may be sent now; ``requests_per_s``/
    ``tokens_per_s``: sustained rate after that (``math.inf``: no such limit).
    ``step_s`` > 0: capacity arrives in steps of that many seconds (a rolling
    window of that length), the first one ``first_step_s`` from now (when
    the oldest place in the window frees; default a whole step), 0:
    continuously (a token bucket). ``left_today``:
    requests the daily limit still allows (``math.inf``: none). ``delay_s``:
    nothing before then (a cooldown).
    """

    model: str
    ready_requests: float
    requests_per_s: float
    ready_tokens: float = math.inf
    tokens_per_s: float = math.inf
    left_today: float = math.inf
    step_s: float = 0.0
    delay_s: float = 0.0
    first_step_s: float | None = None

    @property
    def first_step(self) -> float:
        if self.first_step_s is None:
            return self.step_s
        return min(self.step_s, max(0.0, self.first_step_s))

    def __post_init__(self) -> None:
        for name in ("ready_requests", "requests_per_s", "ready_tokens", "tokens_per_s",
                     "left_today", "step_s", "delay_s"):  # fmt: skip
            value = getattr(self, name)
            if math.isnan(value) or value < 0:
                raise ValueError(f"model {self.model!r}: {name} must be >= 0, got {value}")

    @property
    def unlimited(self) -> bool:
        return (
            math.isinf(self.requests_per_s)
            and math.isinf(self.tokens_per_s)
            and math.isinf(self.left_today)
        )

    def _ready(self, ready: float, rate: float) -> float:
        """The LP's intercept: what is ready now less what a cooldown costs
        (the line through the steps' corners, for a window)."""
        if math.isinf(rate):
            return ready
        early = self.step_s - self.first_step if self.step_s > 0 else 0.0
        return max(0.0, ready + rate * early - rate * self._shift)

    @property
    def first_corner(self) -> float:
        """When the first step of a window's capacity comes, from now."""
        return self.first_step + self._shift

    @property
    def _shift(self) -> float:
        """How much later than without the cooldown capacity comes. A window
        frees on its own schedule, cooled down or not: only the steps before
        the cooldown's end move to it (shifting every step by the whole
        cooldown took a window from a model 429'd near its window's edge,
        and the plan moved a tier's last requests onto the model a lower
        tier needed). A bucket refills from the cooldown's end."""
        if self.step_s > 0:
            return max(0.0, self.delay_s - self.first_step)
        return self.delay_s

    def requests_by(self, horizon_s: float) -> float:
        """Requests admitted within ``horizon_s`` from now (the step shape for a window)."""
        return self._by(horizon_s, self.ready_requests, self.requests_per_s, self.left_today)

    def tokens_by(self, horizon_s: float) -> float:
        return self._by(horizon_s, self.ready_tokens, self.tokens_per_s, math.inf)

    def _by(self, horizon_s: float, ready: float, rate: float, cap: float) -> float:
        if math.isinf(rate):
            return cap
        if horizon_s < self.delay_s:
            return 0.0
        elapsed = horizon_s - self._shift
        if self.step_s > 0:
            first = self.first_step
            steps = (
                0
                if elapsed < first - _TIGHT
                else math.floor((elapsed - first) / self.step_s + _TIGHT) + 1
            )
            elapsed = steps * self.step_s
        return min(cap, ready + rate * elapsed)

    def round_up(self, horizon: float) -> float:
        """The first moment at or after ``horizon`` at which capacity can have
        arrived: a step's corner for a window, ``horizon`` itself otherwise."""
        if self.step_s <= 0 or horizon <= 1e-6:
            return max(0.0, horizon)
        first = self.first_corner
        if horizon <= first + 1e-4 * self.step_s:
            return first
        return first + math.ceil((horizon - first) / self.step_s - 1e-4) * self.step_s

    def round_down(self, horizon: float) -> float:
        """The last step corner at or before ``horizon`` (itself when continuous)."""
        if self.step_s <= 0:
            return horizon
        first = self.first_corner
        if horizon < first:
            return horizon
        return first + math.floor((horizon - first) / self.step_s + 1e-9) * self.step_s


@dataclass(frozen=True, slots=True)
class Binding:
    """A limit that is fully used by a tier's deadline: ``kind`` is
    "requests", "tokens" or "daily"."""

    model: str
    kind: str


@dataclass(frozen=True, slots=True)
class TierPlan:
    """One tier's share: requests per model (its allowance), when it is
    expected to be done (seconds from now; None: not within the horizon), and
    the limits that decide that."""

    tier: str
    rank: int
    demand: float
    requests: Mapping[str, float]
    finish_s: float | None
    binding: tuple[Binding, ...] = ()
    chain: tuple[str, ...] = ()

    @property
    def planned(self) -> float:
        return sum(self.requests.values())


@dataclass(frozen=True, slots=True)
class Plan:
    """The planner's answer. ``makespan_s``: when the known backlog is done
    (None: arrivals outrun the quota within ``horizon_s``); ``spare``: per
    model, requests left over by the plan, which any tier may take."""

    tiers: tuple[TierPlan, ...]
    makespan_s: float | None
    horizon_s: float
    spare: Mapping[str, float] = field(default_factory=dict)

    @property
    def overloaded(self) -> bool:
        return self.makespan_s is None

    def tier(self, name: str) -> TierPlan | None:
        for tier in self.tiers:
            if tier.tier == name:
                return tier
        return None

    def requests(self, tier: str, model: str) -> float:
        found = self.tier(tier)
        return 0.0 if found is None else found.requests.get(model, 0.0)


@dataclass(frozen=True, slots=True)
class TierShape:
    """How a tier packs its articles into requests: at most ``per_request``
    articles, and at most ``max_request_tokens`` input tokens, of which
    ``overhead_tokens`` are the prompt around the articles."""

    tier: str
    rank: int
    chain: tuple[str, ...]
    per_request: int
    overhead_tokens: float = 0.0
    max_request_tokens: float = math.inf

    def demand(
        self,
        articles: float,
        tokens_per_article: float = 0.0,
        arrivals_per_s: float = 0.0,
        waiting_requests: float = 0.0,
    ) -> TierDemand:
        """The tier's work in requests: ``articles`` not yet packed (and
        arriving at ``arrivals_per_s``) in full packs, plus requests already
        packed and waiting for quota."""
        per = max(1, self.per_request)
        if tokens_per_article > 0 and math.isfinite(self.max_request_tokens):
            room = (self.max_request_tokens - self.overhead_tokens) / tokens_per_article
            per = max(1, min(per, math.floor(room)))
        return TierDemand(
            self.tier,
            self.rank,
            self.chain,
            math.ceil(max(0.0, articles) / per) + max(0.0, waiting_requests),
            tokens_per_request=self.overhead_tokens + per * max(0.0, tokens_per_article),
            arrivals_per_s=max(0.0, arrivals_per_s) / per,
        )


def plan_dispatch(
    tiers: Sequence[TierDemand],
    models: Mapping[str, ModelCapacity],
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    horizon_s: float = DEFAULT_HORIZON_S,
    finish_by_s: float | None = None,
) -> Plan:
    """The plan for ``tiers`` (any order; ranked by ``rank``) on ``models``.

    A model named in a chain but absent from ``models`` is unavailable.
    ``tolerance``: how much later than the minimum makespan the whole
    backlog may finish so that higher tiers finish earlier.
    ``finish_by_s``: an earlier plan's promise for the same backlog,
    seconds from now: the backlog still finishes by then when it can. A
    replanning caller passes it so the tolerance is spent once, not once
    per replan: each fresh plan would otherwise let the higher tiers take a
    further ``tolerance`` of the lower tiers' models, and over a run of
    frequent replans the makespan slips by far more than ``tolerance``.
    """
    if tolerance < 0 or not math.isfinite(tolerance):
        raise ValueError(f"tolerance must be finite and >= 0, got {tolerance}")
    if not horizon_s > 0:
        raise ValueError(f"horizon_s must be > 0, got {horizon_s}")
    if finish_by_s is not None and math.isnan(finish_by_s):
        raise ValueError("finish_by_s must be a number")
    ordered = sorted(tiers, key=lambda t: t.rank)
    problem = _Problem(ordered, models)
    active = [i for i, t in enumerate(ordered) if t.requests > 0 or t.arrivals_per_s > 0]
    if not active:
        return Plan(
            tuple(TierPlan(t.tier, t.rank, 0.0, {}, 0.0, chain=t.chain) for t in ordered),
            0.0,
            horizon_s,
            problem.spare_at(0.0, {}),
        )
    makespan = problem.min_makespan(active)
    if makespan is not None:
        return problem.finite_plan(active, makespan, tolerance, horizon_s, finish_by_s)
    return problem.stream_plan(active, horizon_s)


class _Problem:
    """The LPs of one replan. Variables: ``x[t, m]`` requests of tier ``t``
    on model ``m`` of its chain, then any deadline variables."""

    def __init__(self, tiers: Sequence[TierDemand], models: Mapping[str, ModelCapacity]) -> None:
        self.tiers = list(tiers)
        self.models = models
        self.names = sorted({m for t in tiers for m in t.chain if m in models})
        self.pairs: list[tuple[int, str]] = [
            (i, m) for i, t in enumerate(tiers) for m in t.chain if m in models
        ]

    # ---- building blocks ------------------------------------------------------

    def _width(self, extra: int) -> int:
        return len(self.pairs) + extra

    def _rows_for_model(
        self,
        model: str,
        members: set[int],
        deadline: float | None,
        deadline_var: int | None,
        width: int,
    ) -> list[tuple[list[float], float, Binding]]:
        """Capacity rows of ``model`` for the tiers in ``members`` due by one
        deadline: a fixed ``deadline`` or the variable ``deadline_var``."""
        cap = self.models[model]
        rows: list[tuple[list[float], float, Binding]] = []
        limits = (
            ("requests", cap.ready_requests, cap.requests_per_s, None),
            ("tokens", cap.ready_tokens, cap.tokens_per_s, "tokens"),
        )
        for kind, ready, rate, weight in limits:
            if math.isinf(rate) and math.isinf(ready):
                continue
            row = [0.0] * width
            for k, (i, m) in enumerate(self.pairs):
                if m == model and i in members:
                    row[k] = self.tiers[i].tokens_per_request if weight else 1.0
            if not any(row):
                continue
            intercept = cap._ready(ready, rate)
            if math.isinf(rate):
                rows.append((row, intercept, Binding(model, kind)))
            elif deadline_var is not None:
                row[deadline_var] = -rate
                rows.append((row, intercept, Binding(model, kind)))
            else:
                assert deadline is not None
                rows.append((row, intercept + rate * deadline, Binding(model, kind)))
        if not math.isinf(cap.left_today):
            row = [0.0] * width
            for k, (i, m) in enumerate(self.pairs):
                if m == model and i in members:
                    row[k] = 1.0
            if any(row):
                rows.append((row, cap.left_today, Binding(model, "daily")))
        return rows

    def _demand_rows(
        self, active: Sequence[int], deadline_of: Mapping[int, float | int], width: int
    ) -> tuple[list[list[float]], list[float]]:
        """``sum_m x[t, m] = requests + arrivals * T_t`` for each active tier;
        ``deadline_of`` maps a tier to a fixed deadline (float) or the index
        of its deadline variable (int)."""
        a_eq: list[list[float]] = []
        b_eq: list[float] = []
        for i in active:
            row = [0.0] * width
            for k, (j, _) in enumerate(self.pairs):
                if j == i:
                    row[k] = 1.0
            tier = self.tiers[i]
            when = deadline_of[i]
            if isinstance(when, int):
                row[when] = -tier.arrivals_per_s
                b_eq.append(tier.requests)
            else:
                b_eq.append(tier.requests + tier.arrivals_per_s * when)
            a_eq.append(row)
        return a_eq, b_eq

    def _inactive_zero(self, active: Sequence[int], width: int) -> list[list[float]]:
        rows = []
        for k, (i, _) in enumerate(self.pairs):
            if i not in active:
                row = [0.0] * width
                row[k] = 1.0
                rows.append(row)
        return rows

    # ---- the steps ---------------------------------------------------------------

    def min_makespan(self, active: Sequence[int]) -> float | None:
        """The smallest horizon by which every active tier's demand fits."""
        width = self._width(1)
        t_var = len(self.pairs)
        a_ub: list[list[float]] = []
        b_ub: list[float] = []
        members = set(active)
        for model in self.names:
            for row, bound, _ in self._rows_for_model(model, members, None, t_var, width):
                a_ub.append(row)
                b_ub.append(bound)
        for row in self._inactive_zero(active, width):
            a_ub.append(row)
            b_ub.append(0.0)
        a_eq, b_eq = self._demand_rows(active, dict.fromkeys(active, t_var), width)
        c = [0.0] * width
        c[t_var] = 1.0
        result = solve(LinearProgram(c, a_ub, b_ub, a_eq, b_eq))
        if result.status is not LpStatus.OPTIMAL:
            return None
        horizon = result.x[t_var]
        rounded = self._round_up(horizon, active)
        if any(self.tiers[i].arrivals_per_s > 0 for i in active):
            return rounded  # the demand grows with the horizon: keep the safe rounding
        return self._first_feasible_step(active, horizon, rounded)

    def _first_feasible_step(self, active: Sequence[int], horizon: float, upper: float) -> float:
        """The earliest moment, from the LP's ``horizon`` (found on lines
        through the windows' steps) to ``upper`` (the next step of every
        model, always feasible), by which the demand fits the real steps.
        The windows of different models step at different moments, so the
        line's horizon can fall just after one model's step and just before
        another's: rounding it up to the next step of every model waits a
        whole window for models whose share had already arrived (after one
        burst, the next replan planned the backlog a window late). Between
        two consecutive steps of any model the stepped capacities are
        constant: one small LP per interval finds the first that fits."""
        stepped = self._stepped(active)
        if not stepped or upper <= horizon + 1e-9:
            return upper
        corners = {horizon, upper}
        for cap in stepped:
            first = cap.first_corner
            k = max(0, math.floor((horizon - first) / cap.step_s))
            while (at := first + k * cap.step_s) < upper - 1e-9:
                if at > horizon:
                    corners.add(at)
                k += 1
        points = sorted(c for c in corners if horizon <= c <= upper)
        members = set(active)
        width = self._width(1)
        t_var = len(self.pairs)
        for lo, hi in zip(points, [*points[1:], upper], strict=True):
            found = self._earliest_in(members, active, max(lo, 0.0), hi, width, t_var)
            if found is not None:
                return found
        return upper

    def _earliest_in(
        self,
        members: set[int],
        active: Sequence[int],
        lo: float,
        hi: float,
        width: int,
        t_var: int,
    ) -> float | None:
        """The earliest horizon in [lo, hi] by which the demand fits, the
        stepped models held at what they have admitted by ``lo``."""
        a_ub: list[list[float]] = []
        b_ub: list[float] = []
        for model in self.names:
            cap = self.models[model]
            if cap.step_s > 0:
                for row, _, tag in self._rows_for_model(model, members, lo, None, width):
                    a_ub.append(row)
                    if tag.kind == "requests":
                        b_ub.append(cap.requests_by(lo))
                    elif tag.kind == "tokens":
                        b_ub.append(cap.tokens_by(lo))
                    else:
                        b_ub.append(cap.left_today)
            else:
                for row, bound, _ in self._rows_for_model(model, members, None, t_var, width):
                    a_ub.append(row)
                    b_ub.append(bound)
        for row in self._inactive_zero(active, width):
            a_ub.append(row)
            b_ub.append(0.0)
        for sign, bound in ((-1.0, -lo), (1.0, hi)):
            row = [0.0] * width
            row[t_var] = sign
            a_ub.append(row)
            b_ub.append(bound)
        a_eq, b_eq = self._demand_rows(active, dict.fromkeys(active, t_var), width)
        c = [0.0] * width
        c[t_var] = 1.0
        result = solve(LinearProgram(c, a_ub, b_ub, a_eq, b_eq))
        if result.status is not LpStatus.OPTIMAL:
            return None
        return max(lo, result.x[t_var])

    def _served_by(
        self,
        x: Sequence[float],
        members: set[int],
        horizon: float,
        only: Collection[str] | None = None,
    ) -> float:
        """When every model has admitted what ``x`` puts on it (tiers in
        ``members``), at least ``horizon``. The LP runs on lines through the
        windows' steps, and the windows of different models step at
        different moments: rounding the LP's horizon up to the next step of
        every model waits a whole window for models whose share had already
        arrived at their last step (a backlog sent in one burst would plan
        a window late after the first replan)."""
        requests: dict[str, float] = {}
        tokens: dict[str, float] = {}
        for k, (i, m) in enumerate(self.pairs):
            if i in members and x[k] > _TIGHT:
                requests[m] = requests.get(m, 0.0) + x[k]
                tokens[m] = tokens.get(m, 0.0) + x[k] * self.tiers[i].tokens_per_request
        latest = horizon
        for model, used in requests.items():
            cap = self.models[model]
            if cap.step_s <= 0 or (only is not None and model not in only):
                continue
            at = cap.round_up(max(0.0, horizon - cap.step_s))
            while at < horizon - 1e-9 and (
                cap.requests_by(at) < used - 1e-6 or cap.tokens_by(at) < tokens[model] * (1 - 1e-9)
            ):
                at = cap.round_up(at + cap.step_s * 1e-3)
            latest = max(latest, at if at < horizon - 1e-9 else cap.round_up(horizon))
        return latest

    def _stepped(self, tiers: Sequence[int]) -> list[ModelCapacity]:
        return [
            self.models[m]
            for m in {m for i in tiers for m in self.tiers[i].chain if m in self.models}
            if self.models[m].step_s > 0
        ]

    def _round_up(self, horizon: float, tiers: Sequence[int]) -> float:
        """A rolling window admits nothing between its steps: round a horizon
        found on the line through them up to the next step (of the slowest
        model, to be safe)."""
        if horizon <= 1e-6:
            return 0.0
        stepped = self._stepped(tiers)
        if not stepped:
            return horizon
        return max(cap.round_up(horizon) for cap in stepped)

    def _edf_lp(
        self,
        active: Sequence[int],
        fixed: Mapping[int, float],
        free: int | None,
        bounds: tuple[float, float],
        objective: Sequence[float] | None,
    ) -> tuple[LpResult, list[tuple[Binding, float]]]:
        """Feasibility of deadlines: ``fixed`` per tier, and tier ``free``'s
        deadline as a variable within ``bounds`` (minimised unless an
        ``objective`` over ``x`` is given)."""
        extra = 1 if free is not None else 0
        width = self._width(extra)
        t_var = len(self.pairs) if free is not None else None
        a_ub: list[list[float]] = []
        b_ub: list[float] = []
        tags: list[tuple[Binding, float]] = []
        deadlines = sorted(set(fixed.values()))
        lo, hi = bounds
        for model in self.names:
            for d in deadlines:
                members = {i for i in active if i in fixed and fixed[i] <= d + _TIGHT}
                if free is not None and hi <= d + _TIGHT:
                    members.add(free)
                for row, bound, tag in self._rows_for_model(model, members, d, None, width):
                    a_ub.append(row)
                    b_ub.append(bound)
                    tags.append((tag, d))
            if free is not None:
                members = {i for i in active if i in fixed and fixed[i] <= lo + _TIGHT}
                members.add(free)
                for row, bound, tag in self._rows_for_model(model, members, None, t_var, width):
                    a_ub.append(row)
                    b_ub.append(bound)
                    tags.append((tag, -1.0))
        for row in self._inactive_zero(active, width):
            a_ub.append(row)
            b_ub.append(0.0)
            tags.append((Binding("", "zero"), 0.0))
        deadline_of: dict[int, float | int] = dict(fixed)
        if free is not None and t_var is not None:
            deadline_of[free] = t_var
            for sign, bound in ((1.0, hi), (-1.0, -lo)):
                row = [0.0] * width
                row[t_var] = sign
                a_ub.append(row)
                b_ub.append(bound)
                tags.append((Binding("", "bound"), 0.0))
        a_eq, b_eq = self._demand_rows(active, deadline_of, width)
        if objective is not None:
            c = list(objective) + [0.0] * extra
        else:
            c = [0.0] * width
            if t_var is not None:
                c[t_var] = 1.0
        return solve(LinearProgram(c, a_ub, b_ub, a_eq, b_eq)), tags

    def _earliest(
        self, active: Sequence[int], fixed: Mapping[int, float], tier: int, latest: float
    ) -> float:
        """The earliest deadline of ``tier`` with the others' ``fixed``: one
        LP per place the deadline can take among the fixed ones."""
        points = sorted({0.0, *(d for d in fixed.values() if d < latest), latest})
        best = latest
        for lo, hi in itertools.pairwise(points):
            if lo >= best:
                break
            result, _ = self._edf_lp(active, fixed, tier, (lo, hi), None)
            if result.status is LpStatus.OPTIMAL:
                best = min(best, result.x[len(self.pairs)])
                break
        return best

    def finite_plan(
        self,
        active: Sequence[int],
        makespan: float,
        tolerance: float,
        horizon_s: float,
        finish_by_s: float | None = None,
    ) -> Plan:
        target = makespan * (1 + tolerance)
        if finish_by_s is not None:
            # An earlier promise caps the slack (never below the minimum).
            target = min(target, max(makespan, finish_by_s))
        latest = self._round_down(target, active, floor=makespan)
        fixed: dict[int, float] = dict.fromkeys(active, latest)
        for i in active:  # rank order: the highest tier first
            others = {j: d for j, d in fixed.items() if j != i}
            earliest = self._earliest(active, others, i, latest)
            fixed[i] = min(latest, self._round_up(earliest, active) * (1 + _TIGHT) + _TIGHT)
        result, tags = self._edf_lp(active, fixed, None, (0.0, 0.0), self._quality(active))
        if (
            result.status is not LpStatus.OPTIMAL
        ):  # pragma: no cover - fixed deadlines were feasible
            fixed = dict.fromkeys(active, latest)
            result, tags = self._edf_lp(active, fixed, None, (0.0, 0.0), None)
        finish: dict[int, float | None] = {}
        for i in active:
            rounded = self._round_up(fixed[i], [i])
            if result.status is LpStatus.OPTIMAL and self.tiers[i].arrivals_per_s <= 0:
                # Earliest deadline first: what the tiers due by this one's
                # deadline take of its models has arrived by then.
                due = {j for j in active if fixed[j] <= fixed[i] + 1e-9}
                rounded = min(
                    rounded, self._served_by(result.x, due, fixed[i], self.tiers[i].chain)
                )
            finish[i] = rounded
        return self._plan(result, tags, fixed, finish, makespan, horizon_s, max(fixed.values()))

    def _round_down(self, horizon: float, tiers: Sequence[int], *, floor: float) -> float:
        """The latest step at or before ``horizon`` (never before ``floor``):
        a tolerance that does not reach the next step buys nothing."""
        stepped = self._stepped(tiers)
        if not stepped:
            return horizon + _TIGHT
        return max(floor, min(cap.round_down(horizon) for cap in stepped)) + _TIGHT

    def stream_plan(self, active: Sequence[int], horizon_s: float) -> Plan:
        """Arrivals outrun the quota: serve the highest tiers first over the
        horizon; the lowest tier gets what is left and queues."""
        width = self._width(0)
        members = set(active)
        a_ub: list[list[float]] = []
        b_ub: list[float] = []
        tags: list[tuple[Binding, float]] = []
        for model in self.names:
            for row, bound, tag in self._rows_for_model(model, members, horizon_s, None, width):
                a_ub.append(row)
                b_ub.append(bound)
                tags.append((tag, horizon_s))
        for row in self._inactive_zero(active, width):
            a_ub.append(row)
            b_ub.append(0.0)
            tags.append((Binding("", "zero"), 0.0))
        # Each tier at most its demand by the horizon.
        for i in active:
            row = [0.0] * width
            for k, (j, _) in enumerate(self.pairs):
                if j == i:
                    row[k] = 1.0
            tier = self.tiers[i]
            a_ub.append(row)
            b_ub.append(tier.requests + tier.arrivals_per_s * horizon_s)
            tags.append((Binding("", "demand"), 0.0))
        served: dict[int, float] = {}
        result: LpResult | None = None
        for i in active:
            c = [0.0] * width
            for k, (j, _) in enumerate(self.pairs):
                if j == i:
                    c[k] = -1.0
            result = solve(LinearProgram(c, a_ub, b_ub))
            assert result.status is LpStatus.OPTIMAL
            served[i] = -result.objective
            a_ub.append(c)  # from now on: at least what this tier can be served
            b_ub.append(-served[i] * (1 - _TIGHT))
            tags.append((Binding("", "served"), 0.0))
        final = solve(LinearProgram(self._quality(active), a_ub, b_ub))
        if final.status is LpStatus.OPTIMAL:
            result = final
        assert result is not None
        finish: dict[int, float | None] = {}
        for i in active:
            tier = self.tiers[i]
            wanted = tier.requests + tier.arrivals_per_s * horizon_s
            finish[i] = horizon_s if served[i] >= wanted * (1 - 1e-6) - 1e-6 else None
        deadlines = dict.fromkeys(active, horizon_s)
        return self._plan(result, tags, deadlines, finish, None, horizon_s, horizon_s)

    def _quality(self, active: Sequence[int]) -> list[float]:
        """Cost of a request: its model's place in the tier's chain, weighted
        so that a higher tier's preference always counts more."""
        n = len(self.tiers)
        cost = [0.0] * len(self.pairs)
        for k, (i, m) in enumerate(self.pairs):
            if i in active:
                cost[k] = self.tiers[i].chain.index(m) * 4.0 ** (n - 1 - i)
        return cost

    def spare_at(self, horizon: float, used: Mapping[str, float]) -> dict[str, float]:
        spare = {}
        for model in self.names:
            cap = self.models[model]
            if cap.unlimited:
                spare[model] = math.inf
                continue
            room = cap.requests_by(horizon)
            per = [t.tokens_per_request for t in self.tiers if model in t.chain]
            if not math.isinf(cap.tokens_per_s) and per and max(per) > 0:
                room = min(room, cap.tokens_by(horizon) / max(per))
            spare[model] = max(0.0, room - used.get(model, 0.0))
        return spare

    def _plan(
        self,
        result: LpResult,
        tags: Sequence[tuple[Binding, float]],
        deadline: Mapping[int, float],
        finish: Mapping[int, float | None],
        makespan: float | None,
        horizon_s: float,
        capacity_horizon: float,
    ) -> Plan:
        """The plan from the last LP: each tier's requests per model, and the
        limits that are fully used at its deadline."""
        x = result.x
        per_tier: dict[int, dict[str, float]] = {i: {} for i in range(len(self.tiers))}
        used: dict[str, float] = {}
        for k, (i, m) in enumerate(self.pairs):
            if x[k] > _TIGHT:
                per_tier[i][m] = x[k]
                used[m] = used.get(m, 0.0) + x[k]
        tight = [
            (tag, d)
            for (tag, d), slack in zip(tags, result.slack, strict=True)
            if tag.model and abs(slack) <= 1e-4 * max(1.0, abs(d))
        ]
        out = []
        for i, tier in enumerate(self.tiers):
            binds: list[Binding] = []
            if i in deadline:
                for tag, d in tight:
                    if (
                        tag.model in tier.chain
                        and abs(d - deadline[i]) <= 1e-6 * max(1.0, d)
                        and tag not in binds
                    ):
                        binds.append(tag)
            done = finish.get(i, 0.0)
            demand = tier.requests + tier.arrivals_per_s * (horizon_s if done is None else done)
            out.append(
                TierPlan(tier.tier, tier.rank, demand, per_tier[i], done, tuple(binds), tier.chain)
            )
        return Plan(tuple(out), makespan, horizon_s, self.spare_at(capacity_horizon, used))


class Allowances:
    """The registry's ledger of a plan: how much of each model each tier has
    used since the plan was made (at ``made_at``), and whether it may use one
    more.

    A tier's own primary is never held back: it is the tier's model, and the
    waiting order decides between tiers. On any other model of its chain a
    tier may use what the plan gives it there, or take from the plan's spare
    on that model (shared by all tiers, and spread over the plan's makespan:
    every replan hands out a spare again, so taking all of it at once, each
    time, would add up to more than there is), or take anything no other
    tier has planned use of: the plan only holds a model back for a tier that
    will need it. Without a plan every tier may use every model.
    """

    def __init__(
        self,
        plan: Plan | None = None,
        made_at: float = 0.0,
        *,
        paced: Collection[str] = (),
        carry: Mapping[tuple[str, str], float] | None = None,
    ) -> None:
        self._plan = plan
        self._made_at = made_at
        # Models whose capacity comes continuously (paced, a token bucket):
        # a tier's share of one that is not its primary accrues over the
        # tier's span, from ``carry`` (what the last plan had accrued and
        # not spent, at most one request) -- a share taken at once would be
        # the next minutes' capacity taken now, from the tiers that need it
        # then, and every replan would hand it out again.
        self._paced = frozenset(paced)
        self._carry = dict(carry or {})
        self._used: dict[tuple[str, str], float] = {}
        self._over: dict[str, float] = {}
        self._primary: dict[str, str] = {}
        self._span: dict[str, float] = {}
        if plan is not None:
            for tier in plan.tiers:
                if tier.chain:
                    self._primary[tier.tier] = tier.chain[0]
                self._span[tier.tier] = (
                    tier.finish_s if tier.finish_s is not None else (plan.horizon_s)
                )

    @property
    def plan(self) -> Plan | None:
        return self._plan

    def _own_room(self, tier: str, model: str, now: float) -> float:
        """How many of the tier's planned requests on ``model`` it has left."""
        assert self._plan is not None
        planned = self._plan.requests(tier, model)
        return planned - self._used.get((tier, model), 0.0)

    def _phase(self, span: float, now: float) -> float:
        """The share of a span gone by at ``now`` (1 for a span of 0)."""
        if span <= _TIGHT:
            return 1.0
        return min(1.0, max(0.0, now - self._made_at) / span)

    def _spare_room(self, model: str, now: float) -> float:
        """What is left of the model's spare at ``now``: it too is spread over
        the plan, or every replan would hand the whole of it out again."""
        assert self._plan is not None
        spare = self._plan.spare.get(model, 0.0)
        span = self._plan.makespan_s if self._plan.makespan_s is not None else self._plan.horizon_s
        return min(spare, spare * self._phase(span, now) + 1.0) - self._over.get(model, 0.0)

    def _credit(self, tier: str, model: str, now: float) -> float:
        """A paced model's share accrued by ``now`` and not yet used."""
        assert self._plan is not None
        planned = self._plan.requests(tier, model)
        span = self._span.get(tier, self._plan.horizon_s)
        accrued = self._carry.get((tier, model), 0.0) + planned * self._phase(span, now)
        return min(accrued, planned) - self._used.get((tier, model), 0.0)

    def _has_own(self, tier: str, model: str, now: float) -> bool:
        if model in self._paced:
            return self._credit(tier, model, now) >= 1.0 - 1e-6
        return self._own_room(tier, model, now) >= 1.0 - 1e-6

    def carry_over(self, now: float) -> dict[tuple[str, str], float]:
        """What the next plan starts from on paced models: the credit
        accrued and not spent, at most one request."""
        if self._plan is None:
            return {}
        out = {}
        for tier in self._plan.tiers:
            for model in tier.requests:
                if model in self._paced and self._primary.get(tier.tier) != model:
                    credit = self._credit(tier.tier, model, now)
                    if credit > 0:
                        out[(tier.tier, model)] = min(1.0, credit)
        return out

    def may_use(self, tier: str, model: str, now: float) -> bool:
        plan = self._plan
        if plan is None or self._primary.get(tier) == model:
            return True
        if self._has_own(tier, model, now):
            return True
        if self._spare_room(model, now) >= 1.0 - 1e-6:
            return True
        # Nobody else has planned use of this model left: take it.
        return all(
            other.requests.get(model, 0.0) - self._used.get((other.tier, model), 0.0) <= 1e-6
            for other in plan.tiers
            if other.tier != tier
        )

    def record(self, tier: str, model: str, now: float) -> None:
        """One request of ``tier`` went to ``model`` at ``now``."""
        if self._plan is None:
            return
        key = (tier, model)
        own = self._primary.get(tier) == model or self._has_own(tier, model, now)
        if not own:
            self._over[model] = self._over.get(model, 0.0) + 1.0
        self._used[key] = self._used.get(key, 0.0) + 1.0

    def used(self, tier: str, model: str) -> float:
        return self._used.get((tier, model), 0.0)

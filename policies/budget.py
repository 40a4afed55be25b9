"""The daily budget: how many dollars a quota day may spend, highest tier first.

``DailyBudget`` is the registry's bookkeeping of the day's spend. A grant
is allowed by the budget, never by a guess about the future:

* every grant *commits* its estimated cost at once (``estimate_cost``: its
  input tokens at the input price, plus the output the model has been
  answering per input token at the output price); the call's reported
  ``usageMetadata`` then *settles* it at its real cost (``usage_cost``);
  a call that was refused (429, 4xx, 5xx) or never sent costs nothing, one
  of unknown fate (timed out, abandoned) keeps its estimate;
* a tier may take a grant while the day's committed dollars are *below*
  ``usd_per_day`` minus what the higher tiers' known backlog is estimated
  to cost (their reserve), and below its own ``[budget.tiers]`` cap, if it
  has one. So the day's spend exceeds the budget by at most one request's
  cost (the last one granted while below it), and no lower tier spends what
  the articles of a higher tier waiting behind it will need. A higher tier's
  reserve is its backlog (the articles the composer and the store hold for
  it) at its primary model's price, capped by what its own cap leaves --
  counted while that tier is *active* (requests of it wait in the registry
  or are in flight), so a higher tier whose articles cannot reach the
  registry (every extractor slot held by lower packs the budget holds)
  never stalls the lower ones until midnight.
* the day is the quota's local day (``quota.timezone``, Pacific for
  Gemini): at its midnight the spend starts again from 0. Commitments of
  the day before settle into the day before.

When a tier may not spend, its requests wait in the registry (its articles
stay queued, nothing fails) until the spend settles lower, the reserve of a
higher tier shrinks, or the next midnight. ``on_exhausted = "batch"``
instead *moves* a tier to the Batch API until midnight once its *headroom*
(what the day has left for it) no longer pays for its known backlog at
interactive prices, so before the money is gone and the discount can still
double what it buys (``BudgetState.moved_tiers``). Batch jobs spend the same
budget, committed when they are submitted, and only whole requests that
fit (``commit_batch``; ``policies.batch_spend``).

Pure: wall-clock ``now`` is always a parameter.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from tierbatch.policies.batch_spend import BatchSpend, fitting
from tierbatch.policies.budget_config import BudgetConfig, OnExhausted
from tierbatch.policies.budget_state import BudgetState, TierBudget
from tierbatch.policies.config import ModelSpec
from tierbatch.policies.costs import estimate_cost, usage_cost
from tierbatch.policies.errors import SnapshotError
from tierbatch.policies.local_calendar import LocalCalendar
from tierbatch.policies.outcomes import Abandoned, CallOutcome, Succeeded, TimedOut
from tierbatch.policies.quota import Grant
from tierbatch.policies.waiting import Waiter

__all__ = [
    "BUDGET_SNAPSHOT_VERSION",
    "BudgetConfig",
    "BudgetGate",
    "BudgetSnapshotError",
    "BudgetState",
    "DailyBudget",
    "OnExhausted",
    "TierBudget",
]

BUDGET_SNAPSHOT_VERSION: Final = 2
# Snapshots this build reads (1: before batch jobs were counted).
_READABLE_VERSIONS: Final = (1, 2)

# How many tokens of the configured output ratio a model's measured ratio
# starts from, so the first few answers do not swing the estimate.
_PRIOR_TOKENS: Final = 20_000.0


class BudgetSnapshotError(SnapshotError):
    """A saved budget is not one this build can read."""


@dataclass(slots=True)
class _Commitment:
    tier: str
    model: str
    day: int
    usd: float


class DailyBudget:
    """The day's spend. ``tiers`` are (tier name, primary model) highest tier
    first; ``models`` has the prices; ``timezone`` is the quota day's zone;
    ``batch_only`` are the tiers on the Batch API whatever the budget says
    (``mode = "batch"``): the budget never reports them moved."""

    def __init__(
        self,
        config: BudgetConfig,
        tiers: Sequence[tuple[str, ModelSpec]],
        models: Mapping[str, ModelSpec],
        timezone: str,
        *,
        batch_only: Collection[str] = (),
    ) -> None:
        self._config = config
        self._batch_only = frozenset(batch_only)
        self._batch = BatchSpend()
        self._moved: set[str] = set()  # moved to the Batch API for the rest of the day
        self._tiers = tuple(name for name, _ in tiers)
        self._primary = dict(tiers)
        self._models = dict(models)
        self._calendar = LocalCalendar(timezone)
        self._day = 0
        self._spent: dict[str, float] = dict.fromkeys(self._tiers, 0.0)
        self._outstanding: dict[int, _Commitment] = {}
        # The estimates of today's calls in flight, per tier (kept as
        # sums so a check costs O(tiers), not O(calls in flight)).
        self._pending: dict[str, float] = dict.fromkeys(self._tiers, 0.0)
        self._backlog: dict[str, float] = {}  # tier -> estimated USD of its backlog
        self._tokens: dict[str, tuple[float, float]] = {}  # model -> (input, output)

    @property
    def config(self) -> BudgetConfig:
        return self._config

    @property
    def tiers(self) -> tuple[str, ...]:
        """The tier names, highest first."""
        return self._tiers

    # ---- what may be spent ------------------------------------------------------

    def may_spend(self, tier: str, now: float, waiting: Collection[str] = ()) -> bool:
        """Whether ``tier`` may start a call at wall-clock ``now``;
        ``waiting``: the tiers with requests waiting in the registry."""
        today = self._roll(now)
        committed = self._committed_by_tier(today)
        return self._may_spend(tier, committed, waiting)

    def _may_spend(
        self, tier: str, committed: Mapping[str, float], waiting: Collection[str]
    ) -> bool:
        cap = self._config.tiers.get(tier)
        if cap is not None and committed.get(tier, 0.0) >= cap:
            return False
        total = self._config.usd_per_day
        if total <= 0:
            return True
        return sum(committed.values()) + self._reserve_above(tier, committed, waiting) < total

    def _reserve_above(
        self, tier: str, committed: Mapping[str, float], waiting: Collection[str]
    ) -> float:
        """What the active tiers above ``tier`` hold back of the day."""
        reserve = 0.0
        for higher in self._tiers:
            if higher == tier:
                break
            if higher in waiting or self._pending.get(higher, 0.0) > 0:
                reserve += self._reserve(higher, committed)
        return reserve

    def _headroom(
        self, tier: str, committed: Mapping[str, float], waiting: Collection[str]
    ) -> float:
        """The dollars ``tier`` may still commit today: below the day's total
        less the reserve above it, and below its own cap (``math.inf``: no
        limit)."""
        room = math.inf
        cap = self._config.tiers.get(tier)
        if cap is not None:
            room = cap - committed.get(tier, 0.0)
        total = self._config.usd_per_day
        if total > 0:
            above = self._reserve_above(tier, committed, waiting)
            room = min(room, total - sum(committed.values()) - above)
        return max(0.0, room)

    def _reserve(self, tier: str, committed: Mapping[str, float]) -> float:
        want = self._backlog.get(tier, 0.0)
        cap = self._config.tiers.get(tier)
        if cap is not None:
            want = min(want, max(0.0, cap - committed.get(tier, 0.0)))
        return want

    # ---- what is spent ------------------------------------------------------------

    def estimate(self, model: str, est_tokens: int) -> float:
        """The cost a grant of ``est_tokens`` on ``model`` commits."""
        spec = self._models.get(model)
        if spec is None:
            return 0.0
        return estimate_cost(spec, est_tokens, self._output_ratio(model))

    def commit(self, grant_id: int, tier: str, model: str, est_tokens: int, now: float) -> float:
        """A grant was made: its estimate counts from now. Returns it."""
        usd = self.estimate(model, est_tokens)
        self._outstanding[grant_id] = _Commitment(tier, model, self._roll(now), usd)
        self._pending[tier] = self._pending.get(tier, 0.0) + usd
        return usd

    def settle(self, grant_id: int, outcome: CallOutcome, now: float) -> float | None:
        """The call of ``grant_id`` ended with ``outcome``: what it cost
        (None for an unknown grant). Refused or unsent calls cost nothing;
        one of unknown fate keeps its estimate."""
        held = self._outstanding.pop(grant_id, None)
        if held is None:
            return None
        today = self._roll(now)
        if held.day == today:
            self._pending[held.tier] = max(0.0, self._pending.get(held.tier, 0.0) - held.usd)
        if isinstance(outcome, Succeeded):
            spec = self._models.get(held.model)
            usd = 0.0 if spec is None else usage_cost(spec, outcome.usage)
            self._learn(held.model, outcome)
        elif isinstance(outcome, TimedOut | Abandoned):
            usd = held.usd
        else:
            usd = 0.0
        if held.day == today:
            self._spent[held.tier] = self._spent.get(held.tier, 0.0) + usd
        return usd

    def set_backlog(self, backlog: Mapping[str, tuple[int, float]]) -> None:
        """Each tier's known work ahead: (articles, tokens per article)."""
        estimates: dict[str, float] = {}
        for tier, (articles, tokens) in backlog.items():
            spec = self._primary.get(tier)
            if spec is None or articles <= 0:
                continue
            ratio = self._output_ratio(spec.name)
            estimates[tier] = articles * estimate_cost(spec, tokens, ratio)
        self._backlog = estimates

    # ---- batch jobs ------------------------------------------------------------------

    def commit_batch(
        self,
        job_id: str,
        tier: str,
        model: str,
        request_tokens: Sequence[int],
        discount: float,
        now: float,
        waiting: Collection[str] = (),
    ) -> int:
        """A job of ``request_tokens`` (each request's estimated input tokens)
        on ``model`` is about to be created at wall-clock ``now``: commit, at
        ``discount``, the first requests that fit in ``tier``'s headroom
        entirely; returns how many (0: none fits -- the job waits)."""
        known = self._batch.approved(job_id)
        if known is not None:
            return known  # committed already: the same answer
        today = self._roll(now)
        room = self._headroom(tier, self._committed_by_tier(today), waiting)
        costs = [self.estimate(model, tokens) * discount for tokens in request_tokens]
        approved, usd = fitting(costs, room)
        if approved:
            self._batch.commit(job_id, tier, today, usd, approved)
        return approved

    def settle_batch(
        self, job_id: str, tier: str, usd: float, submitted_at: float, now: float
    ) -> float:
        """The job is over at wall-clock ``now`` and cost ``usd`` (0: its
        articles went back); ``submitted_at`` (wall clock) says which day it
        belongs to when this budget never committed it. Returns what it adds
        to today's spend."""
        today = self._roll(now)
        return self._batch.settle(job_id, tier, usd, self._calendar.day(submitted_at), today)

    def forget_in_flight(self) -> None:
        """A new process: calls in flight when the snapshot was taken are of
        unknown fate -- they count as spent at their estimate. (Batch jobs
        in flight stay committed: their results are still to come.)"""
        for commitment in self._outstanding.values():
            if commitment.day == self._day:
                self._spent[commitment.tier] = (
                    self._spent.get(commitment.tier, 0.0) + commitment.usd
                )
        self._outstanding.clear()
        self._pending = dict.fromkeys(self._tiers, 0.0)

    # ---- the day --------------------------------------------------------------

    def next_reset(self, now: float) -> float:
        """Wall-clock time of the next midnight of the quota day."""
        return self._calendar.next_midnight(now)

    def moved(self, now: float, waiting: Collection[str] = ()) -> tuple[str, ...]:
        """The tiers moved to the Batch API today (``on_exhausted =
        "batch"``), highest first; a tier whose headroom no longer pays for
        its backlog at interactive prices is moved now, until midnight."""
        today = self._roll(now)
        if self._config.on_exhausted is OnExhausted.BATCH:
            committed = self._committed_by_tier(today)
            for tier in self._tiers:
                if tier in self._moved or tier in self._batch_only:
                    continue
                if not self._may_spend(tier, committed, waiting) or self._headroom(
                    tier, committed, waiting
                ) < self._backlog.get(tier, 0.0):
                    self._moved.add(tier)
        return tuple(t for t in self._tiers if t in self._moved)

    def state(self, now: float, waiting: Mapping[str, int] | None = None) -> BudgetState:
        """The day as of wall-clock ``now``; ``waiting``: requests waiting
        in the registry per tier."""
        waits = {t: n for t, n in (waiting or {}).items() if n > 0}
        moved = set(self.moved(now, waits))
        today = self._roll(now)
        committed = self._committed_by_tier(today)
        batch_spent, batch_pending = self._batch.spent(), self._batch.pending()
        tiers = tuple(
            TierBudget(
                tier=tier,
                spent_usd=self._spent.get(tier, 0.0) + batch_spent.get(tier, 0.0),
                committed_usd=committed.get(tier, 0.0),
                cap_usd=self._config.tiers.get(tier),
                reserved_usd=self._reserve(tier, committed),
                may_spend=self._may_spend(tier, committed, waits),
                batch_usd=batch_spent.get(tier, 0.0) + batch_pending.get(tier, 0.0),
                backlog_usd=self._backlog.get(tier, 0.0),
                moved=tier in moved,
            )
            for tier in self._tiers
        )
        return BudgetState(
            usd_per_day=self._config.usd_per_day,
            day=today,
            spent_usd=sum(self._spent.values()) + sum(batch_spent.values()),
            committed_usd=sum(committed.values()),
            resets_at=self.next_reset(now),
            on_exhausted=self._config.on_exhausted,
            tiers=tiers,
            waiting=tuple(sorted(waits.items())),
        )

    def _roll(self, now: float) -> int:
        today = self._calendar.day(now)
        if today != self._day:
            self._batch.roll(today)
            self._moved.clear()
            self._spent = dict.fromkeys(self._tiers, 0.0)
            self._pending = dict.fromkeys(self._tiers, 0.0)
            for c in self._outstanding.values():
                if c.day == today:  # only after the wall clock stepped back
                    self._pending[c.tier] = self._pending.get(c.tier, 0.0) + c.usd
            self._day = today
        return today

    def _committed_by_tier(self, today: int) -> dict[str, float]:
        committed = dict(self._spent)
        for part in (self._pending, self._batch.pending(), self._batch.spent()):
            for tier, usd in part.items():
                committed[tier] = committed.get(tier, 0.0) + usd
        return committed

    def _output_ratio(self, model: str) -> float:
        seen_in, seen_out = self._tokens.get(model, (0.0, 0.0))
        prior = _PRIOR_TOKENS
        return (seen_out + prior * self._config.output_ratio) / (seen_in + prior)

    def _learn(self, model: str, outcome: Succeeded) -> None:
        seen_in, seen_out = self._tokens.get(model, (0.0, 0.0))
        usage = outcome.usage
        self._tokens[model] = (
            seen_in + max(0, usage.input_tokens),
            seen_out + max(0, usage.output_tokens),
        )

    # ---- persistence ------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Plain data for the quota snapshot: the day and its spend per tier
        (calls in flight included at their estimate), the batch jobs and the
        tiers moved to the Batch API."""
        return {
            "version": BUDGET_SNAPSHOT_VERSION,
            "day": self._day,
            "spent": dict(self._spent),
            "in_flight": [
                [gid, c.tier, c.model, c.day, c.usd] for gid, c in sorted(self._outstanding.items())
            ],
            "batch": self._batch.snapshot(),
            "moved": sorted(self._moved),
        }

    def restore(self, data: Mapping[str, Any]) -> None:
        """Loads a ``snapshot``; raises ``BudgetSnapshotError`` when it is not one."""
        try:
            if not isinstance(data, Mapping) or data.get("version") not in _READABLE_VERSIONS:
                raise BudgetSnapshotError(
                    f"unsupported budget snapshot version "
                    f"{data.get('version') if isinstance(data, Mapping) else data!r}"
                )
            day = data["day"]
            spent = data["spent"]
            if isinstance(day, bool) or not isinstance(day, int) or not isinstance(spent, Mapping):
                raise BudgetSnapshotError("budget snapshot: day or spent of the wrong type")
            loaded = {str(k): _usd(v, f"spent[{k!r}]") for k, v in spent.items()}
            outstanding = {}
            for item in data["in_flight"]:
                gid, tier, model, cday, usd = item
                outstanding[int(gid)] = _Commitment(
                    str(tier), str(model), int(cday), _usd(usd, "in_flight")
                )
            batch = BatchSpend()
            batch.restore(list(data.get("batch", [])), day)
            moved = {str(t) for t in data.get("moved", [])}
        except BudgetSnapshotError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise BudgetSnapshotError(f"corrupt budget snapshot: {exc!r}") from exc
        self._day = day
        self._spent = dict.fromkeys(self._tiers, 0.0)
        for tier, usd in loaded.items():
            self._spent[tier] = usd
        self._batch = batch
        self._moved = moved
        self._outstanding = outstanding
        self._pending = dict.fromkeys(self._tiers, 0.0)
        for c in outstanding.values():
            if c.day == day:
                self._pending[c.tier] = self._pending.get(c.tier, 0.0) + c.usd


class BudgetGate:
    """The budget as the waiting list's ``GrantGate``, for one decision at
    wall-clock ``now``."""

    __slots__ = ("_budget", "_now", "_waiting")

    def __init__(self, budget: DailyBudget, now: float, waiting: Collection[str] = ()) -> None:
        self._budget = budget
        self._now = now
        self._waiting = waiting

    def may_grant(self, waiter: Waiter, model: str) -> bool:
        return self._budget.may_spend(waiter.tier, self._now, self._waiting)

    def granted(self, waiter: Waiter, grant: Grant) -> None:
        self._budget.commit(grant.grant_id, waiter.tier, grant.model, grant.est_tokens, self._now)


def _usd(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise BudgetSnapshotError(f"budget snapshot: {what} is not a number: {value!r}")
    return float(value)

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
higher tier shrinks, or the next midnight. ``on_exhausted`` says what the
tier does instead: ``stop`` (wait for the reset) or ``batch`` (move to the
Batch API, for a build with batch mode; ``BudgetState.batch_tiers`` is what
it consults -- in a build without it ``batch`` behaves as ``stop``).

Pure: wall-clock ``now`` is always a parameter.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from tierbatch.policies.budget_config import BudgetConfig, OnExhausted
from tierbatch.policies.config import ModelSpec
from tierbatch.policies.costs import estimate_cost, usage_cost
from tierbatch.policies.outcomes import Abandoned, CallOutcome, Succeeded, TimedOut
from tierbatch.policies.pacific_day import LocalCalendar
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

BUDGET_SNAPSHOT_VERSION: Final = 1

# How many tokens of the configured output ratio a model's measured ratio
# starts from, so the first few answers do not swing the estimate.
_PRIOR_TOKENS: Final = 20_000.0


@dataclass(frozen=True, slots=True)
class TierBudget:
    """One tier's day: ``spent_usd`` settled, ``committed_usd`` settled plus
    the estimates of its calls in flight, ``cap_usd`` its own cap (None:
    none), ``reserved_usd`` what its backlog is held back for it, and
    whether it may start a call now."""

    tier: str
    spent_usd: float
    committed_usd: float
    cap_usd: float | None
    reserved_usd: float
    may_spend: bool


@dataclass(frozen=True, slots=True)
class BudgetState:
    """The budget as of one moment, for status, metrics and the run's end.

    ``resets_at`` is the wall-clock time of the next midnight; ``tiers`` is
    in tier order (highest first); ``batch_tiers`` are the tiers that may
    not spend and whose ``on_exhausted`` is ``batch``."""

    usd_per_day: float
    day: int
    spent_usd: float
    committed_usd: float
    resets_at: float
    on_exhausted: OnExhausted
    tiers: tuple[TierBudget, ...]
    # Requests waiting in the registry, per tier (filled in by the registry).
    waiting: tuple[tuple[str, int], ...] = ()

    @property
    def held_tiers(self) -> tuple[str, ...]:
        """Tiers that may not spend and have requests waiting for the budget."""
        waiting = dict(self.waiting)
        return tuple(t for t in self.stopped_tiers if waiting.get(t, 0) > 0)

    @property
    def remaining_usd(self) -> float:
        return max(0.0, self.usd_per_day - self.committed_usd) if self.usd_per_day else math.inf

    @property
    def stopped_tiers(self) -> tuple[str, ...]:
        return tuple(t.tier for t in self.tiers if not t.may_spend)

    @property
    def exhausted(self) -> bool:
        """No tier may spend any more today."""
        return all(not t.may_spend for t in self.tiers)

    @property
    def batch_tiers(self) -> tuple[str, ...]:
        if self.on_exhausted is not OnExhausted.BATCH:
            return ()
        return self.stopped_tiers


class BudgetSnapshotError(ValueError):
    """A saved budget is not one this build can read."""


@dataclass(slots=True)
class _Commitment:
    tier: str
    model: str
    day: int
    usd: float


class DailyBudget:
    """The day's spend. ``tiers`` are (tier name, primary model) highest tier
    first; ``models`` has the prices; ``timezone`` is the quota day's zone."""

    def __init__(
        self,
        config: BudgetConfig,
        tiers: Sequence[tuple[str, ModelSpec]],
        models: Mapping[str, ModelSpec],
        timezone: str,
    ) -> None:
        self._config = config
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
        reserve = 0.0
        for higher in self._tiers:
            if higher == tier:
                break
            if higher in waiting or self._pending.get(higher, 0.0) > 0:
                reserve += self._reserve(higher, committed)
        return sum(committed.values()) + reserve < total

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

    def forget_in_flight(self) -> None:
        """A new process: calls in flight when the snapshot was taken are of
        unknown fate -- they count as spent at their estimate."""
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

    def state(self, now: float, waiting: Mapping[str, int] | None = None) -> BudgetState:
        """The day as of wall-clock ``now``; ``waiting``: requests waiting
        in the registry per tier."""
        waits = {t: n for t, n in (waiting or {}).items() if n > 0}
        today = self._roll(now)
        committed = self._committed_by_tier(today)
        tiers = tuple(
            TierBudget(
                tier=tier,
                spent_usd=self._spent.get(tier, 0.0),
                committed_usd=committed.get(tier, 0.0),
                cap_usd=self._config.tiers.get(tier),
                reserved_usd=self._reserve(tier, committed),
                may_spend=self._may_spend(tier, committed, waits),
            )
            for tier in self._tiers
        )
        return BudgetState(
            usd_per_day=self._config.usd_per_day,
            day=today,
            spent_usd=sum(self._spent.values()),
            committed_usd=sum(committed.values()),
            resets_at=self.next_reset(now),
            on_exhausted=self._config.on_exhausted,
            tiers=tiers,
            waiting=tuple(sorted(waits.items())),
        )

    def _roll(self, now: float) -> int:
        today = self._calendar.day(now)
        if today != self._day:
            self._spent = dict.fromkeys(self._tiers, 0.0)
            self._pending = dict.fromkeys(self._tiers, 0.0)
            for c in self._outstanding.values():
                if c.day == today:  # only after the wall clock stepped back
                    self._pending[c.tier] = self._pending.get(c.tier, 0.0) + c.usd
            self._day = today
        return today

    def _committed_by_tier(self, today: int) -> dict[str, float]:
        committed = dict(self._spent)
        for tier, usd in self._pending.items():
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
        (calls in flight included at their estimate)."""
        return {
            "version": BUDGET_SNAPSHOT_VERSION,
            "day": self._day,
            "spent": dict(self._spent),
            "in_flight": [
                [gid, c.tier, c.model, c.day, c.usd] for gid, c in sorted(self._outstanding.items())
            ],
        }

    def restore(self, data: Mapping[str, Any]) -> None:
        """Loads a ``snapshot``; raises ``BudgetSnapshotError`` when it is not one."""
        try:
            if not isinstance(data, Mapping) or data.get("version") != BUDGET_SNAPSHOT_VERSION:
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
        except BudgetSnapshotError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise BudgetSnapshotError(f"corrupt budget snapshot: {exc!r}") from exc
        self._day = day
        self._spent = dict.fromkeys(self._tiers, 0.0)
        for tier, usd in loaded.items():
            self._spent[tier] = usd
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

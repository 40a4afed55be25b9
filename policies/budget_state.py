"""What the daily budget says as of one moment: for status, the metrics,
the live display, the run's end and the routing to the Batch API. Apart
from ``policies.budget`` (which makes it) so readers need not import the
bookkeeping."""

from __future__ import annotations

import math
from dataclasses import dataclass

from tierbatch.policies.budget_config import OnExhausted

__all__ = ["BudgetState", "TierBudget"]


@dataclass(frozen=True, slots=True)
class TierBudget:
    """One tier's day: ``spent_usd`` settled, ``committed_usd`` settled plus
    the estimates of its calls and batch jobs in flight, ``cap_usd`` its own
    cap (None: none), ``reserved_usd`` what its backlog is held back for it,
    and whether it may start a call now; ``batch_usd`` is the part of
    ``committed_usd`` that batch jobs spend (settled and in flight),
    ``backlog_usd`` its known backlog at interactive prices, ``moved``
    whether the budget sends its new work to the Batch API today."""

    tier: str
    spent_usd: float
    committed_usd: float
    cap_usd: float | None
    reserved_usd: float
    may_spend: bool
    batch_usd: float = 0.0
    backlog_usd: float = 0.0
    moved: bool = False


@dataclass(frozen=True, slots=True)
class BudgetState:
    """The budget as of one moment, for status, metrics and the run's end.

    ``resets_at`` is the wall-clock time of the next midnight; ``tiers`` is
    in tier order (highest first); ``moved_tiers`` are the tiers the budget
    moved to the Batch API for the rest of the day (``on_exhausted =
    "batch"``)."""

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
    def moved_tiers(self) -> tuple[str, ...]:
        """Tiers whose new work the budget sends to the Batch API today."""
        return tuple(t.tier for t in self.tiers if t.moved)

    @property
    def batch_tiers(self) -> tuple[str, ...]:
        """The same as ``moved_tiers`` (the name an earlier build read)."""
        return self.moved_tiers

    @property
    def batch_usd(self) -> float:
        """What today's batch jobs spend, settled and in flight."""
        return sum(t.batch_usd for t in self.tiers)

"""Hooks for metrics and tests to watch the registry decide, from inside.

An observer is called on the registry's own thread, in decision order, with
the registry's own steady-clock readings, so what it records is exactly what
the registry did. Keep the callbacks cheap: they sit on the hot path.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from tierbatch.policies.outcomes import CallOutcome
from tierbatch.policies.quota import Grant


class RegistryObserver(Protocol):
    def on_grant(self, grant: Grant, tier_rank: int) -> None: ...

    def on_sent(self, grant_id: int, model: str, at: float) -> None:
        """The granted request really left at ``at``; from then on the
        registry's window counts it from ``at``."""
        ...

    def on_outcome(self, model: str, outcome: CallOutcome, at: float) -> None: ...

    def on_cooldown(self, model: str, start: float, until: float, reason: str) -> None: ...


# An observer may also define ``on_budget(state: BudgetState, at: float)``:
# the registry calls it (when present) whenever the daily budget stops or
# frees a tier, and at the reset. It is optional so existing observers need
# no change.


class NullObserver:
    """Observes nothing."""

    def on_grant(self, grant: Grant, tier_rank: int) -> None:
        pass

    def on_sent(self, grant_id: int, model: str, at: float) -> None:
        pass

    def on_outcome(self, model: str, outcome: CallOutcome, at: float) -> None:
        pass

    def on_cooldown(self, model: str, start: float, until: float, reason: str) -> None:
        pass


class FanOutObserver:
    """Hands every registry decision to several observers, in order."""

    def __init__(self, observers: Sequence[RegistryObserver]) -> None:
        self._observers = tuple(observers)

    def on_grant(self, grant: Grant, tier_rank: int) -> None:
        for o in self._observers:
            o.on_grant(grant, tier_rank)

    def on_sent(self, grant_id: int, model: str, at: float) -> None:
        for o in self._observers:
            o.on_sent(grant_id, model, at)

    def on_outcome(self, model: str, outcome: CallOutcome, at: float) -> None:
        for o in self._observers:
            o.on_outcome(model, outcome, at)

    def on_cooldown(self, model: str, start: float, until: float, reason: str) -> None:
        for o in self._observers:
            o.on_cooldown(model, start, until, reason)

    def on_budget(self, state: object, at: float) -> None:
        for o in self._observers:
            notify = getattr(o, "on_budget", None)
            if notify is not None:
                notify(state, at)

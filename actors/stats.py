"""What the runtime reports: one type each for its stats and its submit
receipts, the composer's answers and the runtime's alike (the runtime adds
the registry's part and the result counts to the composer's)."""

from __future__ import annotations

from dataclasses import dataclass, field

from tierbatch.policies.budget import BudgetState
from tierbatch.policies.quota import ModelStatus
from tierbatch.policies.tally import TallySnapshot


@dataclass(frozen=True, slots=True)
class SubmitReceipt:
    """``accepted`` articles will each reach exactly one terminal result;
    ``duplicates`` were refused because that id is already queued, in
    flight, or finished recently in this runtime."""

    accepted: int
    duplicates: tuple[str, ...] = ()

    @property
    def consumed(self) -> int:
        """Input articles handled: accepted or refused as duplicates (the
        composer stops at the first that does not fit in its queue)."""
        return self.accepted + len(self.duplicates)


@dataclass(frozen=True, slots=True)
class RuntimeStats:
    """Where the articles are, what became of them, and the quota state.

    ``results`` are the runtime's counts of terminal results (done per tier
    and model, failed per tier and reason; ``done``, ``failed_by_reason``
    ... read them). ``models`` is the registry's view of every model;
    ``cooldowns`` (model -> until) and the models' deadlines are steady
    clock times: subtract ``runtime.clock.now()`` for the seconds left.
    ``runtime.stats(quota=False)`` leaves ``models`` and ``cooldowns``
    empty (it does not ask the registry)."""

    submitted: int
    queued: int
    queued_by_tier: dict[str, int]
    in_extractors: int
    requeued_after_crash: int
    paused: str | None
    results: TallySnapshot = field(default_factory=TallySnapshot)
    models: tuple[ModelStatus, ...] = ()
    cooldowns: dict[str, float] = field(default_factory=dict)
    # The adaptive tiers' pack sizes now (tier -> articles per request;
    # tiers[].adaptive_pack).
    pack_sizes: dict[str, int] = field(default_factory=dict)
    # The daily budget now (None without a [budget]).
    budget: BudgetState | None = None

    @property
    def in_flight_requests(self) -> int:
        return sum(m.in_flight for m in self.models)

    @property
    def done(self) -> int:
        return self.results.done_total

    @property
    def failed(self) -> int:
        return self.results.failed_total

    @property
    def terminal(self) -> int:
        return self.results.terminal

    @property
    def done_by_tier(self) -> dict[str, int]:
        return self.results.done_by_tier

    @property
    def failed_by_tier(self) -> dict[str, int]:
        return dict(self.results.failed_by_tier)

    @property
    def done_by_model(self) -> dict[str, int]:
        return self.results.done_by_model

    @property
    def failed_by_reason(self) -> dict[str, int]:
        return dict(self.results.failed_by_reason)

    @property
    def fallbacks(self) -> int:
        return self.results.fallbacks

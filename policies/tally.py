"""The one count of terminal results.

Every terminal result is counted once, here, and everything that reports
on results reads these counts: ``Runtime.stats()``, the progress display,
the end-of-run summary and the Prometheus article counters. (They used to
count each result again, each its own way.) A ``ResultTally`` has one
owner; the runtime's ``CountingSink`` (``tierbatch.actors.sinks``) owns the
runtime's and hands out ``TallySnapshot`` copies to any thread.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from tierbatch.policies.pack_quality import GroundingRow, GroundingTally
from tierbatch.policies.results import Done, TerminalResult


@dataclass(slots=True)
class TierModelCount:
    """Done articles of one (tier, model) and what they were attributed."""

    articles: int = 0
    fallbacks: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0


@dataclass(frozen=True, slots=True)
class TallySnapshot:
    """The counts at one moment: done articles per (tier, model), failed ones
    per tier and per reason, and the grounding check's outcomes per (tier,
    model, pack size)."""

    done: Mapping[tuple[str, str], TierModelCount] = field(default_factory=dict)
    failed_by_tier: Mapping[str, int] = field(default_factory=dict)
    failed_by_reason: Mapping[str, int] = field(default_factory=dict)
    grounding: tuple[GroundingRow, ...] = ()

    @property
    def done_total(self) -> int:
        return sum(row.articles for row in self.done.values())

    @property
    def failed_total(self) -> int:
        return sum(self.failed_by_tier.values())

    @property
    def terminal(self) -> int:
        return self.done_total + self.failed_total

    @property
    def done_by_tier(self) -> dict[str, int]:
        return self._done_by(0)

    @property
    def done_by_model(self) -> dict[str, int]:
        return self._done_by(1)

    def _done_by(self, part: int) -> dict[str, int]:
        """Done articles summed by one part of the (tier, model) key."""
        out: Counter[str] = Counter()
        for key, row in self.done.items():
            out[key[part]] += row.articles
        return dict(out)

    @property
    def fallbacks(self) -> int:
        return sum(row.fallbacks for row in self.done.values())


class ResultTally:
    """Counts terminal results, each once (see the module docstring)."""

    __slots__ = ("_done", "_failed_by_reason", "_failed_by_tier", "_grounding")

    def __init__(self) -> None:
        self._done: dict[tuple[str, str], TierModelCount] = {}
        self._failed_by_tier: Counter[str] = Counter()
        self._failed_by_reason: Counter[str] = Counter()
        self._grounding = GroundingTally()

    def record(self, results: Iterable[TerminalResult]) -> None:
        results = tuple(results)
        self._grounding.add(results)
        for result in results:
            if isinstance(result, Done):
                row = self._done.setdefault((result.tier, result.model), TierModelCount())
                row.articles += 1
                row.fallbacks += result.fallback
                row.input_tokens += result.input_tokens
                row.output_tokens += result.output_tokens
                row.cost_usd += result.cost_usd
            else:
                self._failed_by_tier[result.tier or "-"] += 1
                self._failed_by_reason[str(result.reason)] += 1

    def snapshot(self) -> TallySnapshot:
        """A copy that later results do not change."""
        return TallySnapshot(
            done={
                key: TierModelCount(
                    row.articles, row.fallbacks, row.input_tokens, row.output_tokens, row.cost_usd
                )
                for key, row in self._done.items()
            },
            failed_by_tier=dict(self._failed_by_tier),
            failed_by_reason=dict(self._failed_by_reason),
            grounding=self._grounding.rows(),
        )

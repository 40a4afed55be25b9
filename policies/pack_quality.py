"""What packing costs in quality: per model and tier, how often entities land
in the wrong article, and the pack size that follows from it.

``PackQuality`` is fed one ``observe`` per answered request -- its tier,
model, pack size and the grounding counts of its articles' entities
(``policies.grounding``) -- and keeps, per (tier, model), the last
``window_requests`` requests. Its decisions are made on full windows only,
so a handful of requests never moves anything:

* **A warning** when a model's share of cross-article entities over a full
  window passes ``cross_article_threshold`` -- once, when the state changes
  (and a note when it falls back to or below it), not once per request.
* **An adaptive pack size** for a tier with ``adaptive_pack``, decided on
  the requests made at the tier's current size: when ``window_requests`` of
  them to one model have a cross-article share above the threshold, the
  size halves (down to 1); when ``window_requests`` of them to one model
  have a share of at most half the threshold, it grows back by one article
  (up to the tier's ``max_articles_per_request``) -- slowly, and with a
  margin, so a model near the threshold does not make the size swing. Each
  step starts the count afresh. Requests packed before a step (still in
  flight when it was taken, larger than the new size) count for the
  warning only, and so do lone-article requests while the size is above 1
  (no entity of theirs can be cross-article: they say nothing about
  packing). At size 1 nothing can be cross-article: after a window of
  requests there, the size tries 2 again.

``GroundingTally`` sums the per-article counts of results by (tier, model,
pack size), for the reports (run summary, bench).

Pure: no clock, no logging; the notes say what is worth logging.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from tierbatch.policies.config import GroundingConfig, TierSpec
from tierbatch.policies.grounding import GroundingCounts
from tierbatch.policies.results import Done, TerminalResult
from tierbatch.policies.settlement import Note

__all__ = ["GroundingRow", "GroundingTally", "PackQuality"]


def _share(cross: int, total: int) -> float:
    return cross / total if total else 0.0


class _Window:
    """The last ``size`` requests' (cross-article, total) entity counts."""

    __slots__ = ("cross", "entries", "total")

    def __init__(self, size: int) -> None:
        self.entries: deque[tuple[int, int]] = deque(maxlen=size)
        self.cross = 0
        self.total = 0

    def add(self, cross: int, total: int) -> None:
        if len(self.entries) == self.entries.maxlen:
            old_cross, old_total = self.entries[0]
            self.cross -= old_cross
            self.total -= old_total
        self.entries.append((cross, total))
        self.cross += cross
        self.total += total

    @property
    def full(self) -> bool:
        return len(self.entries) == self.entries.maxlen

    @property
    def share(self) -> float:
        return _share(self.cross, self.total)


@dataclass(slots=True)
class _Evidence:
    """Requests of one model at an adaptive tier's current size."""

    requests: int = 0
    cross: int = 0
    total: int = 0


@dataclass(slots=True)
class _Tier:
    max_size: int
    adaptive: bool
    size: int
    evidence: dict[str, _Evidence]


class PackQuality:
    """The cross-article share per (tier, model) and each adaptive tier's
    pack size (see the module docstring)."""

    def __init__(self, tiers: Sequence[TierSpec], config: GroundingConfig) -> None:
        self._n = config.window_requests
        self._threshold = config.cross_article_threshold
        self._tiers = {
            t.name: _Tier(
                t.max_articles_per_request, t.adaptive_pack, t.max_articles_per_request, {}
            )
            for t in tiers
        }
        self._windows: dict[tuple[str, str], _Window] = {}
        self._drifting: set[tuple[str, str]] = set()

    @property
    def sizes(self) -> dict[str, int]:
        """The pack size of every adaptive tier (the others pack as configured)."""
        return {name: t.size for name, t in self._tiers.items() if t.adaptive}

    def pack_size(self, tier: str) -> int | None:
        """The adaptive tier's pack size now; None for a tier that is not adaptive."""
        state = self._tiers.get(tier)
        return state.size if state is not None and state.adaptive else None

    def share(self, tier: str, model: str) -> float | None:
        """The cross-article share over the (tier, model) window, once it is full."""
        window = self._windows.get((tier, model))
        return window.share if window is not None and window.full else None

    def observe(self, tier: str, model: str, pack_size: int, counts: GroundingCounts) -> list[Note]:
        """One answered request of ``pack_size`` articles whose entities had
        ``counts``; returns what is worth logging."""
        notes = self._warn(tier, model, pack_size, counts)
        state = self._tiers.get(tier)
        if state is None or not state.adaptive or pack_size > state.size:
            return notes
        if pack_size < 2 and state.size > 1:
            return notes
        evidence = state.evidence.setdefault(model, _Evidence())
        evidence.requests += 1
        evidence.cross += counts.cross_article
        evidence.total += counts.total
        if evidence.requests < self._n:
            return notes
        share = _share(evidence.cross, evidence.total)
        if share > self._threshold and state.size > 1:
            notes.append(self._resize(tier, state, max(1, state.size // 2), model, share))
        elif share <= self._threshold / 2 and state.size < state.max_size:
            notes.append(self._resize(tier, state, state.size + 1, model, share))
        else:
            state.evidence[model] = _Evidence()
        return notes

    def _warn(self, tier: str, model: str, pack_size: int, counts: GroundingCounts) -> list[Note]:
        key = (tier, model)
        window = self._windows.get(key)
        if window is None:
            window = self._windows[key] = _Window(self._n)
        window.add(counts.cross_article, counts.total)
        if not window.full:
            return []
        passed = window.share > self._threshold
        fields = {
            "model": model,
            "tier": tier,
            "pack_size": pack_size,
            "cross_article_share": round(window.share, 4),
            "requests": self._n,
            "threshold": self._threshold,
        }
        if passed and key not in self._drifting:
            self._drifting.add(key)
            return [Note("warning", "model mixes up the articles of its packs", fields)]
        if not passed and key in self._drifting:
            self._drifting.discard(key)
            return [Note("info", "model keeps the articles of its packs apart", fields)]
        return []

    def _resize(self, tier: str, state: _Tier, size: int, model: str, share: float) -> Note:
        before, state.size = state.size, size
        state.evidence.clear()  # evidence from the old size says nothing about the new
        fields = {
            "tier": tier,
            "model": model,
            "from": before,
            "to": size,
            "cross_article_share": round(share, 4),
        }
        if size < before:
            return Note("warning", "pack size lowered", fields)
        return Note("info", "pack size raised", fields)


@dataclass(frozen=True, slots=True)
class GroundingRow:
    """Done articles of one (tier, model, pack size) and their entities' outcomes."""

    tier: str
    model: str
    pack_size: int
    articles: int
    counts: GroundingCounts

    @property
    def cross_article_share(self) -> float:
        return _share(self.counts.cross_article, self.counts.total)

    @property
    def ungrounded_share(self) -> float:
        return _share(self.counts.ungrounded, self.counts.total)


class GroundingTally:
    """Sums the grounding counts of results by (tier, model, pack size);
    results without counts (of versions before the check) are skipped."""

    def __init__(self) -> None:
        self._rows: dict[tuple[str, str, int], tuple[int, GroundingCounts]] = {}

    def add(self, results: Iterable[TerminalResult]) -> None:
        for result in results:
            if not isinstance(result, Done) or result.grounding is None:
                continue
            key = (result.tier, result.model, result.pack_size)
            articles, counts = self._rows.get(key, (0, GroundingCounts()))
            self._rows[key] = (articles + 1, counts + result.grounding)

    def rows(self) -> tuple[GroundingRow, ...]:
        """Every group, by tier, model and pack size."""
        return tuple(
            GroundingRow(tier, model, size, articles, counts)
            for (tier, model, size), (articles, counts) in sorted(self._rows.items())
        )

    def copy(self) -> GroundingTally:
        other = GroundingTally()
        other._rows = dict(self._rows)
        return other

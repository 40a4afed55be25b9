"""How far ahead of its quota the composer feeds each tier.

The composer hands out tier-mixed batches while extractors have room for
packs, and a pack waiting for quota takes room like a pack in a call. When
one tier's models are saturated (the hot tier on a pro model that admits a
window's requests at once, then nothing for a minute), the fixed mix keeps
sending that tier's packs, which wait; they fill the extractors' room, and
the other tiers -- whose models have quota to spare -- are starved with
them. Measured at Gemini's real 60 s window, the whole run went at the
pace of the slowest tier's model: 47% of the bound.

So a tier is *held* (the composer gives it no more articles for now; its
slots in a batch go to the other tiers) once the articles extractors hold
for it cover what the tier can be served in a window, with some lead:
``ahead`` times the larger of what its primary model admits per window by
the config, and what the tier really finished in the last window (which
includes its fallbacks, and the limits the provider showed). More packs
than that would only wait for quota, in room another tier could use; the
tier is fed again as soon as its held articles drop below the mark, so
its models never lack a pack when their window opens.

Tiers are held only while the extractors' room is contended (at least
``CONTENDED`` of it taken, in packs): with room to spare every tier gets
all it asks for, and its packs beyond what its primary will admit in time
wait in the registry, where the plan and the fallback patience may send
them to a fallback -- holding them back would take that choice away. The
mark's lead (``ahead``) keeps a few such packs out even when room is short,
and what the tier finishes through its fallbacks raises its mark.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

__all__ = ["CONTENDED", "FEED_AHEAD", "TierFeed", "TierFeedShape"]

FEED_AHEAD: Final = 1.25
CONTENDED: Final = 0.5


@dataclass(frozen=True, slots=True)
class TierFeedShape:
    """``per_window``: articles the tier's primary model admits per window by
    its request limit (``math.inf``: no limit); ``tokens_per_window``: input
    tokens it admits per window (``math.inf``: no limit); with neither the
    tier is never held. ``per_request``: its articles per request (the lead
    is at least two requests' worth)."""

    per_window: float
    per_request: int
    tokens_per_window: float = math.inf


class TierFeed:
    """Which tiers to hold, from the articles each holds out and what each
    finished in the last ``window_s`` (tiers by index, highest first)."""

    def __init__(
        self, shapes: Sequence[TierFeedShape], window_s: float, *, ahead: float = FEED_AHEAD
    ) -> None:
        if window_s <= 0:
            raise ValueError(f"window_s must be > 0, got {window_s}")
        if ahead < 1:
            raise ValueError(f"ahead must be >= 1, got {ahead}")
        self._shapes = tuple(shapes)
        self._window_s = window_s
        self._ahead = ahead
        self._done: list[deque[tuple[float, int]]] = [deque() for _ in self._shapes]
        self._done_in_window = [0] * len(self._shapes)

    def finished(self, tiers: Sequence[int], now: float) -> None:
        """Articles of these served tiers became terminal at ``now``."""
        counts: dict[int, int] = {}
        for tier in tiers:
            counts[tier] = counts.get(tier, 0) + 1
        for tier, count in counts.items():
            self._done[tier].append((now, count))
            self._done_in_window[tier] += count

    def mark(self, tier: int, now: float, tokens_per_article: float = 0.0) -> float:
        """The held articles at which ``tier`` is held; ``tokens_per_article``:
        the tier's mean input tokens per article, prompt included (0:
        unknown), for a primary its tokens limit binds first."""
        self._forget(tier, now)
        shape = self._shapes[tier]
        by_tokens = (
            shape.tokens_per_window / tokens_per_article if tokens_per_article > 0 else math.inf
        )
        admitted = min(shape.per_window, by_tokens)
        if math.isinf(admitted):
            return math.inf
        served = max(admitted, float(self._done_in_window[tier]))
        return max(self._ahead * served, 2.0 * shape.per_request)

    def held(
        self,
        out: Sequence[int],
        room: int,
        now: float,
        tokens_per_article: Sequence[float] = (),
    ) -> frozenset[int]:
        """The tiers whose articles held out (``out``, per tier) reach their
        mark, while the packs they make take at least ``CONTENDED`` of the
        extractors' ``room`` (in packs)."""
        packs = sum(
            math.ceil(count / shape.per_request)
            for count, shape in zip(out, self._shapes, strict=True)
        )
        if packs < CONTENDED * room:
            return frozenset()
        tokens = list(tokens_per_article) + [0.0] * (len(out) - len(tokens_per_article))
        return frozenset(
            tier
            for tier, count in enumerate(out)
            if count and count >= self.mark(tier, now, tokens[tier])
        )

    def _forget(self, tier: int, now: float) -> None:
        done = self._done[tier]
        cutoff = now - self._window_s
        while done and done[0][0] <= cutoff:
            self._done_in_window[tier] -= done.popleft()[1]

"""Tiers by share: thresholds that put the top ``share`` of recent articles
in a tier, whatever the feed's priorities look like.

Absolute ``min_priority`` thresholds can leave a tier silently empty: on a
feed whose priorities all sit below 0.7, a hot tier at 0.7 receives nothing.
A tier with a ``share`` instead takes the top fraction of articles by rank
among the last ``window`` priorities seen, so it holds what it was meant to
hold on a stream as on a backlog. Ranks come from a fixed histogram over
[0, 1] (priorities are bounded there), so observing costs O(1) and a
threshold O(bins), and memory is bounded by the window.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from typing import Final

__all__ = ["BINS", "ShareThresholds"]

BINS: Final = 1000


class ShareThresholds:
    """The ``min_priority`` of each tier, highest tier first.

    ``shares[i]``: the fraction of articles tier ``i`` should hold, or None
    for a tier with a fixed threshold ``fixed[i]``. The lowest tier catches
    everything whatever it says. Thresholds never increase down the ladder.
    """

    def __init__(
        self, shares: Sequence[float | None], fixed: Sequence[float], window: int = 10_000
    ) -> None:
        if len(shares) != len(fixed):
            raise ValueError("ShareThresholds: one share (or None) and one threshold per tier")
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        total = 0.0
        for i, share in enumerate(shares):
            if share is not None:
                if not 0 < share <= 1:
                    raise ValueError(f"tiers[{i}].share must be in (0, 1], got {share}")
                total += share
        if total > 1 + 1e-9:
            raise ValueError(f"the tiers' shares add up to {total:g}, more than 1")
        self._shares = tuple(shares)
        self._fixed = tuple(fixed)
        self._window = window
        self._recent: deque[int] = deque()
        self._counts = [0] * BINS
        self._cached: tuple[float, ...] | None = None
        self._since = 0

    @property
    def observed(self) -> int:
        return len(self._recent)

    @property
    def window(self) -> int:
        return self._window

    def widen(self, window: int) -> None:
        """Hold at least ``window`` priorities from now on (a run seeding its
        whole input widens the window to fit it; it never narrows)."""
        self._window = max(self._window, window)

    def observe(self, priority: float) -> None:
        """Count one article's priority (NaN counts as the lowest)."""
        index = _bin(priority)
        self._recent.append(index)
        self._counts[index] += 1
        if len(self._recent) > self._window:
            self._counts[self._recent.popleft()] -= 1
        self._since += 1
        # Thresholds move by at most one rank per observation: recompute them
        # at once while the window fills, then every 1% of it.
        if self._since >= max(1, min(len(self._recent), self._window) // 100):
            self._cached = None

    def quantile_from_top(self, fraction: float) -> float:
        """The priority above which ``fraction`` of the recent articles lie
        (the lower edge of the bin where that rank falls)."""
        n = len(self._recent)
        if n == 0:
            return 0.0
        wanted = fraction * n
        seen = 0
        for index in range(BINS - 1, -1, -1):
            seen += self._counts[index]
            if seen >= wanted - 1e-9:
                return index / BINS
        return 0.0

    def thresholds(self) -> tuple[float, ...]:
        """Each tier's current ``min_priority`` (the last one is always 0)."""
        if self._cached is None:
            self._cached = self._compute()
            self._since = 0
        return self._cached

    def _compute(self) -> tuple[float, ...]:
        out: list[float] = []
        cumulative = 0.0
        upper = math.inf
        for i, (share, fixed) in enumerate(zip(self._shares, self._fixed, strict=True)):
            if i == len(self._shares) - 1:
                out.append(0.0)
                break
            if share is None:
                value = fixed
            else:
                cumulative += share
                value = self.quantile_from_top(cumulative) if self._recent else fixed
            value = min(value, upper)
            out.append(value)
            upper = value
        return tuple(out)

    def tier_for(self, priority: float) -> int:
        """The tier index a priority falls in now."""
        for i, threshold in enumerate(self.thresholds()[:-1]):
            if priority >= threshold:
                return i
        return len(self._shares) - 1


def _bin(priority: float) -> int:
    if not priority >= 0:  # NaN and negatives
        return 0
    return min(BINS - 1, int(priority * BINS))

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

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

__all__ = ["BINS", "ShareRule", "ShareThresholds"]

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
        self._cached: tuple[ShareRule, ...] | None = None
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
        return tuple(rule.threshold for rule in self.rules())

    def rules(self) -> tuple[ShareRule, ...]:
        """Each tier's current rule, highest first (the last one takes all)."""
        if self._cached is None:
            self._cached = self._compute()
            self._since = 0
        return self._cached

    def boundary(self, fraction: float) -> tuple[int, float]:
        """The bin where rank ``fraction`` (from the top) of the recent
        articles falls, and the part of that bin's articles it takes."""
        wanted = fraction * len(self._recent)
        seen = 0
        for index in range(BINS - 1, -1, -1):
            count = self._counts[index]
            if count and seen + count >= wanted - 1e-9:
                return index, min(1.0, max(0.0, (wanted - seen) / count))
            seen += count
        return 0, 1.0

    def _compute(self) -> tuple[ShareRule, ...]:
        out: list[ShareRule] = []
        cumulative = 0.0
        upper: ShareRule | None = None
        for i, (share, fixed) in enumerate(zip(self._shares, self._fixed, strict=True)):
            if i == len(self._shares) - 1:
                out.append(ShareRule(0.0))
                break
            if share is None or not self._recent:
                rule = ShareRule(fixed)
                if share is not None:
                    cumulative += share
            else:
                cumulative += share
                index, part = self.boundary(cumulative)
                rule = ShareRule(index / BINS, index, part)
            if upper is not None and _above(rule, upper):
                rule = upper  # thresholds never rise down the ladder
            out.append(rule)
            upper = rule
        return tuple(out)

    def tier_for(self, priority: float, draw: float = 0.0) -> int:
        """The tier index a priority falls in now. ``draw`` in [0, 1) breaks
        ties in a share tier's boundary bin: the article goes up when it is
        below the part of the bin that tier takes (0: the whole bin goes up)."""
        rules = self.rules()
        index = _bin(priority)
        for i, rule in enumerate(rules[:-1]):
            if rule.bin is None:
                if priority >= rule.threshold:
                    return i
            elif index > rule.bin or (index == rule.bin and draw < rule.part):
                return i
        return len(rules) - 1


@dataclass(frozen=True, slots=True)
class ShareRule:
    """A tier's rule: priorities at or above ``threshold``; for a share
    tier (``bin`` set), priorities in bins above ``bin``, and the ``part``
    of those in ``bin`` whose tie-break draw falls below it, so a tier
    holds its share even when many articles share one priority."""

    threshold: float
    bin: int | None = None
    part: float = 1.0


def _above(rule: ShareRule, upper: ShareRule) -> bool:
    """``rule`` would take a priority the tier above it does not: a higher
    threshold, or the same one where either is fixed (two share rules in
    one bin split it by their parts, the lower one taking more)."""
    if rule.threshold != upper.threshold:
        return rule.threshold > upper.threshold
    return upper.bin is None or rule.bin is None


def _bin(priority: float) -> int:
    if not priority >= 0:  # NaN and negatives
        return 0
    return min(BINS - 1, int(priority * BINS))

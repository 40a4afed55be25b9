"""Which tier an article goes to: by threshold, or by share of recent ranks.

A ladder of thresholds only needs ``TierLadder.index_for``. A ladder with
``share`` tiers ranks every priority among the last ``window`` seen
(``policies.shares``), so the assigner is stateful: every new article is
observed, then tiered by the thresholds the window implies.

Seeding: a one-shot run knows its whole input before it starts. Its
priorities are observed first (``seed``) and remembered, so every article of
the input is tiered against the same, complete window (the split is exact,
not a warm-up), and an article seeded is not counted a second time when it
arrives. ``split`` reports how the seeded articles fall into the tiers.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

from tierbatch.policies.shares import ShareThresholds
from tierbatch.policies.tiers import TierLadder

__all__ = ["TierAssigner", "TierCount", "TierSplit", "TierThreshold", "tie_draw"]


def tie_draw(article_id: str) -> float:
    """A number in [0, 1) fixed by the article id: it decides which of the
    articles tied in a share tier's boundary bin go up (the same on every
    run and in every process, unlike ``hash``)."""
    digest = hashlib.blake2b(article_id.encode("utf-8", "surrogatepass"), digest_size=8)
    return int.from_bytes(digest.digest(), "big") / 2**64


@dataclass(frozen=True, slots=True)
class TierThreshold:
    """A tier's ``min_priority`` now. ``share``: the fraction the config
    asks for (None: a fixed threshold, or the lowest tier taking the rest)."""

    tier: str
    share: float | None
    min_priority: float


@dataclass(frozen=True, slots=True)
class TierCount:
    tier: str
    articles: int
    fraction: float  # of all articles counted, in [0, 1]
    share: float | None  # what the config asks for, if a share
    min_priority: float


@dataclass(frozen=True, slots=True)
class TierSplit:
    """How ``total`` articles fall into the tiers, highest first, and over
    how many recent priorities (``window``) the share thresholds rank."""

    tiers: tuple[TierCount, ...]
    total: int
    window: int
    uses_shares: bool

    @property
    def empty(self) -> tuple[str, ...]:
        """Tiers that receive no article (none when there is no article)."""
        if self.total == 0:
            return ()
        return tuple(t.tier for t in self.tiers if t.articles == 0)


class TierAssigner:
    """Tiers for priorities, by threshold or by share (see the module doc)."""

    def __init__(self, ladder: TierLadder, window: int) -> None:
        self._ladder = ladder
        self._shares: ShareThresholds | None = None
        if ladder.uses_shares:
            self._shares = ShareThresholds(
                [t.share for t in ladder.tiers], [t.min_priority for t in ladder.tiers], window
            )
        self._window = window
        self._seeded: dict[str, float] = {}
        # (priority, tie draw) of every seeded article, for ``split``.
        self._seed_priorities: list[tuple[float, float]] = []

    @property
    def uses_shares(self) -> bool:
        return self._shares is not None

    def seed(self, article_id: str, priority: float) -> None:
        """Count a priority of the input ahead of the article's arrival."""
        if article_id in self._seeded or math.isnan(priority):
            return
        self._seeded[article_id] = priority
        self._seed_priorities.append((priority, tie_draw(article_id)))
        if self._shares is not None:
            # The whole input fits: none of it slides out before it arrives.
            self._shares.widen(len(self._seed_priorities))
            self._shares.observe(priority)

    def seeded_priority(self, article_id: str) -> float | None:
        """The priority the article was seeded with (then forgotten), or None."""
        return self._seeded.pop(article_id, None)

    def assign(self, article_id: str, priority: float, *, seeded: bool = False) -> int:
        """The tier index for a new article's ``priority``; a seeded article
        was counted already and is not observed again. Ties at a share
        tier's boundary are broken by the article's ``tie_draw``."""
        if self._shares is None:
            return self._ladder.index_for(priority)
        if not seeded:
            self._shares.observe(priority)
        return self._shares.tier_for(priority, tie_draw(article_id))

    def thresholds(self) -> tuple[TierThreshold, ...]:
        """Every tier's ``min_priority`` now, highest first; the lowest tier
        catches the rest, so its threshold is 0."""
        tiers = self._ladder.tiers
        if self._shares is None:
            values = [t.min_priority for t in tiers[:-1]] + [0.0]
        else:
            values = list(self._shares.thresholds())
        return tuple(TierThreshold(t.name, t.share, v) for t, v in zip(tiers, values, strict=True))

    @property
    def observed(self) -> int:
        """How many priorities the share window holds now (0 without shares)."""
        return 0 if self._shares is None else self._shares.observed

    def split(self) -> TierSplit:
        """How the seeded articles fall into the tiers at today's thresholds."""
        thresholds = self.thresholds()
        counts = [0] * len(thresholds)
        shares = self._shares
        for priority, draw in self._seed_priorities:
            if shares is None:
                counts[self._tier_at(priority, thresholds)] += 1
            else:
                counts[shares.tier_for(priority, draw)] += 1
        total = len(self._seed_priorities)
        return TierSplit(
            tiers=tuple(
                TierCount(t.tier, n, n / total if total else 0.0, t.share, t.min_priority)
                for t, n in zip(thresholds, counts, strict=True)
            ),
            total=total,
            window=self.observed,
            uses_shares=self.uses_shares,
        )

    def current(self) -> TierSplit:
        """The thresholds now, with no article counted (``total`` 0)."""
        return TierSplit(
            tiers=tuple(
                TierCount(t.tier, 0, 0.0, t.share, t.min_priority) for t in self.thresholds()
            ),
            total=0,
            window=self.observed,
            uses_shares=self.uses_shares,
        )

    def end_seeding(self) -> None:
        """Forget the list ``split`` counts (the per-article priorities stay
        until their articles arrive)."""
        self._seed_priorities = []

    @staticmethod
    def _tier_at(priority: float, thresholds: tuple[TierThreshold, ...]) -> int:
        for i, t in enumerate(thresholds[:-1]):
            if priority >= t.min_priority:
                return i
        return len(thresholds) - 1

"""The work ahead, per tier, as the dispatch plan needs it.

The composer knows what it has queued; the daemon knows how many rows the
store still holds, but not their tiers (a tier depends on priority, which is
only computed when an article is submitted). ``BacklogMeter`` keeps both
sides: the composer's depths, the store's count split by the tier shares of
what was submitted so far, each tier's mean tokens per article and its
arrival rate -- and says when the picture moved enough to plan again.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

__all__ = ["BacklogMeter", "TierBacklog"]

# A backlog that moved by less than this share keeps the plan.
_CHANGE: Final = 0.1


@dataclass(frozen=True, slots=True)
class TierBacklog:
    """One tier's known work: articles waiting (in the composer and, as the
    daemon reports, in the store), their mean estimated input tokens, and
    how fast articles arrive."""

    tier: str
    articles: int
    tokens_per_article: float = 0.0
    arrivals_per_s: float = 0.0


class BacklogMeter:
    """``half_life_s``: how fast the arrival rate and the token mean forget."""

    def __init__(self, tiers: Sequence[str], half_life_s: float = 60.0) -> None:
        if not half_life_s > 0:
            raise ValueError(f"half_life_s must be > 0, got {half_life_s}")
        self._tiers = tuple(tiers)
        self._half_life = half_life_s
        self._rate = dict.fromkeys(self._tiers, 0.0)
        self._tokens = dict.fromkeys(self._tiers, 0.0)
        self._submitted = dict.fromkeys(self._tiers, 0)
        self._rate_at: float | None = None
        self._external = 0
        self._last: dict[str, int] = {}

    def submitted(self, tier: str, tokens: float, now: float) -> None:
        """One article entered ``tier`` with ``tokens`` estimated input tokens."""
        if tier not in self._rate:
            return
        self._decay(now)
        self._rate[tier] += math.log(2) / self._half_life  # an exponentially weighted rate
        n = self._submitted[tier]
        weight = max(1 / (n + 1), 1 / 1000)  # a running mean, then slowly forgetting
        self._tokens[tier] += (tokens - self._tokens[tier]) * weight
        self._submitted[tier] = n + 1

    def _decay(self, now: float) -> None:
        if self._rate_at is not None and now > self._rate_at:
            factor = 0.5 ** ((now - self._rate_at) / self._half_life)
            for tier in self._rate:
                self._rate[tier] *= factor
        self._rate_at = now if self._rate_at is None else max(now, self._rate_at)

    def elsewhere(self, articles: int) -> None:
        """Articles waiting outside the composer (in the store), tiers unknown."""
        self._external = max(0, articles)

    def backlog(self, depths: Mapping[str, int], now: float) -> tuple[TierBacklog, ...]:
        """The work ahead: the composer's ``depths`` plus the store's share."""
        self._decay(now)
        total = sum(self._submitted.values())
        out = []
        for tier in self._tiers:
            share = self._submitted[tier] / total if total else 1 / len(self._tiers)
            articles = depths.get(tier, 0) + round(self._external * share)
            out.append(TierBacklog(tier, articles, self._tokens[tier], self._rate[tier]))
        return tuple(out)

    def changed(self, backlog: Sequence[TierBacklog]) -> bool:
        """Whether ``backlog`` moved enough since the last one reported (and
        remember it as reported when it did)."""
        moved = False
        for work in backlog:
            then = self._last.get(work.tier)
            if then is None or abs(work.articles - then) > max(1.0, _CHANGE * then):
                moved = True
        if moved:
            self._last = {work.tier: work.articles for work in backlog}
        return moved

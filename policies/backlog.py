"""The work ahead, per tier, as the dispatch plan needs it.

The composer knows what it has queued; the daemon knows how many rows the
store still holds, but not their tiers (a tier depends on priority, which is
only computed when an article is submitted). ``BacklogMeter`` keeps both
sides: the composer's depths, the store's count split by the tier shares of
what was submitted so far, and each tier's mean tokens per article -- and
says when the picture moved enough to plan again.

Arrival rates come only from who knows them (a daemon watching its store
grow): articles submitted to the composer are backlog, not arrivals -- a
file of a thousand articles handed over at once is not a stream of a
thousand a second, and planning it as one plans for work that never comes.
A stream is followed by replanning as its backlog moves.
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

    def __init__(self, tiers: Sequence[str]) -> None:
        self._tiers = tuple(tiers)
        self._tokens = dict.fromkeys(self._tiers, 0.0)
        self._submitted = dict.fromkeys(self._tiers, 0)
        self._external = 0
        self._arrivals = 0.0
        self._last: dict[str, int] = {}

    def submitted(self, tier: str, tokens: float) -> None:
        """One article entered ``tier`` with ``tokens`` estimated input tokens."""
        if tier not in self._submitted:
            return
        n = self._submitted[tier]
        weight = max(1 / (n + 1), 1 / 1000)  # a running mean, then slowly forgetting
        self._tokens[tier] += (tokens - self._tokens[tier]) * weight
        self._submitted[tier] = n + 1

    def tokens_per_article(self, tier: str) -> float:
        """The mean estimated input tokens of ``tier``'s articles (0: none yet)."""
        return self._tokens.get(tier, 0.0)

    def elsewhere(self, articles: int, arrivals_per_s: float = 0.0) -> None:
        """Articles waiting outside the composer (in the store), and how fast
        they arrive there; their tiers are unknown."""
        self._external = max(0, articles)
        self._arrivals = (
            arrivals_per_s if arrivals_per_s > 0 and math.isfinite(arrivals_per_s) else 0.0
        )

    def backlog(self, depths: Mapping[str, int]) -> tuple[TierBacklog, ...]:
        """The work ahead: the composer's ``depths`` plus the store's share."""
        total = sum(self._submitted.values())
        out = []
        for tier in self._tiers:
            share = self._submitted[tier] / total if total else 1 / len(self._tiers)
            articles = depths.get(tier, 0) + round(self._external * share)
            out.append(TierBacklog(tier, articles, self._tokens[tier], self._arrivals * share))
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

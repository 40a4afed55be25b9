"""Article priority: how hot its story is and how good its source is.

The formula (all constants come from ``PriorityConfig``; ``2**`` is a power of
two, ages are clamped to be non-negative)::

    size_term     = 1 - 2**(-size / size_scale)          # saturates with cluster size
    velocity_term = 1 - 2**(-recent / velocity_scale)    # saturates with recent arrivals
    freshness     = 2**(-(now - last_seen) / half_life_s)
    hotness       = freshness * (size_weight * size_term + velocity_weight * velocity_term)
                              / (size_weight + velocity_weight)
    goodness      = domains[domain or its nearest listed parent], else default_goodness
    priority      = (hotness_weight * hotness + goodness_weight * goodness)
                    / (hotness_weight + goodness_weight)

Every term lies in [0, 1], so the priority does too, and it never decreases
when hotness or goodness grows. ``recent`` is an exponentially decayed count
of the cluster's articles: each one contributes ``exp(-age / velocity_window_s)``,
so a cluster that steadily receives ``r`` articles per window reads ``recent == r``,
while the tracker keeps only one number per cluster instead of a list of
timestamps. An article without a cluster (or one the tracker has never seen)
counts as a cluster of one article seen at the article's own time (its
publication time, else ``now``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime

from tierbatch.policies.articles import Article, normalise_domain
from tierbatch.policies.config import PriorityConfig


@dataclass(frozen=True, slots=True)
class ClusterStats:
    """What the tracker knows about one story cluster at a given ``now``.

    ``size`` counts every article observed; ``first_seen``/``last_seen`` are the
    earliest and latest observation times (epoch seconds); ``recent`` is the
    decayed article count described in the module docstring.
    """

    size: int
    first_seen: float
    last_seen: float
    recent: float


def singleton_stats(at: float) -> ClusterStats:
    """The stats of a cluster holding only one article, seen at ``at``."""
    return ClusterStats(size=1, first_seen=at, last_seen=at, recent=1.0)


@dataclass(slots=True)
class _ClusterState:
    size: int
    first_seen: float
    last_seen: float
    # Decayed count as of ``ref_time``; decaying lazily keeps ``observe`` O(1).
    decayed: float
    ref_time: float


class ClusterTracker:
    """Per-cluster counters the BatchComposer keeps to compute hotness.

    ``observe`` is O(1): the velocity is an exponentially decayed counter with
    time constant ``velocity_window_s`` rather than a list of timestamps.
    Observations may arrive out of order (publication times often do); an older
    one is added already decayed. ``prune`` drops clusters nobody has seen
    lately so a long-running daemon's memory stays bounded; it scans every
    cluster, so call it periodically rather than per article.
    """

    def __init__(self, velocity_window_s: float = 3600.0) -> None:
        if not velocity_window_s > 0:
            raise ValueError(f"velocity_window_s must be positive, got {velocity_window_s!r}")
        self._tau = velocity_window_s
        self._clusters: dict[str, _ClusterState] = {}

    @property
    def velocity_window_s(self) -> float:
        return self._tau

    def __len__(self) -> int:
        return len(self._clusters)

    def __contains__(self, cluster_id: object) -> bool:
        return cluster_id in self._clusters

    def observe(self, cluster_id: str, at: float) -> None:
        """Count one article of ``cluster_id`` seen at ``at`` (epoch seconds)."""
        state = self._clusters.get(cluster_id)
        if state is None:
            self._clusters[cluster_id] = _ClusterState(1, at, at, 1.0, at)
            return
        state.size += 1
        state.first_seen = min(state.first_seen, at)
        state.last_seen = max(state.last_seen, at)
        if at >= state.ref_time:
            state.decayed = state.decayed * math.exp(-(at - state.ref_time) / self._tau) + 1.0
            state.ref_time = at
        else:
            state.decayed += math.exp(-(state.ref_time - at) / self._tau)

    def stats(self, cluster_id: str, now: float) -> ClusterStats | None:
        """The cluster's stats as of ``now``, or None when it is unknown.

        Observations later than ``now`` (clock skew between feeds) are not
        extrapolated backwards: they count fully, never more.
        """
        state = self._clusters.get(cluster_id)
        if state is None:
            return None
        age = max(0.0, now - state.ref_time)
        return ClusterStats(
            size=state.size,
            first_seen=state.first_seen,
            last_seen=state.last_seen,
            recent=state.decayed * math.exp(-age / self._tau),
        )

    def prune(self, now: float, max_age_s: float) -> int:
        """Forget clusters last seen more than ``max_age_s`` before ``now``.

        Returns how many were forgotten.
        """
        cutoff = now - max_age_s
        stale = [cid for cid, state in self._clusters.items() if state.last_seen < cutoff]
        for cid in stale:
            del self._clusters[cid]
        return len(stale)


def _saturate(value: float, scale: float) -> float:
    """``1 - 2**(-value/scale)``: 0 at 0, 1/2 at ``scale``, tending to 1."""
    if scale <= 0:
        return 1.0 if value > 0 else 0.0
    return 1.0 - float(2.0 ** (-max(0.0, value) / scale))


def _decay(age_s: float, half_life_s: float) -> float:
    age = max(0.0, age_s)
    if half_life_s <= 0:
        return 1.0 if age == 0 else 0.0
    return float(2.0 ** (-age / half_life_s))


def _weighted_mean(w1: float, v1: float, w2: float, v2: float) -> float:
    """Mean of two values in [0,1] under non-negative weights (negative ones
    count as 0). Two plain pairs, not a sequence: it runs for every article."""
    w1 = max(0.0, w1)
    w2 = max(0.0, w2)
    total = w1 + w2
    if total <= 0:
        return 0.0
    return min(1.0, max(0.0, (w1 * v1 + w2 * v2) / total))


def cluster_hotness(stats: ClusterStats | None, now: float, cfg: PriorityConfig) -> float:
    """Hotness in [0, 1]; ``None`` stands for a cluster of one article seen at ``now``."""
    if stats is None:
        stats = singleton_stats(now)
    heat = _weighted_mean(
        cfg.size_weight,
        _saturate(stats.size, cfg.size_scale),
        cfg.velocity_weight,
        _saturate(stats.recent, cfg.velocity_scale),
    )
    return heat * _decay(now - stats.last_seen, cfg.half_life_s)


def _domain_candidates(domain: str) -> list[str]:
    """``news.bbc.co.uk`` -> ``[news.bbc.co.uk, bbc.co.uk, co.uk]``: never a bare label.
    ``domain`` is already normalised."""
    labels = domain.split(".")
    return [".".join(labels[i:]) for i in range(len(labels) - 1) if all(labels[i:])]


def domain_goodness(domain: str, cfg: PriorityConfig) -> float:
    """The source's goodness in [0, 1] from ``cfg.domains``.

    A subdomain inherits its nearest listed parent's value, so listing
    ``bbc.co.uk`` covers ``news.bbc.co.uk``. Table keys are expected in
    normalised form (lower case, no ``www.``), as ``normalise_domain`` gives.
    """
    return _goodness(normalise_domain(domain), cfg)


def _goodness(domain: str, cfg: PriorityConfig) -> float:
    for candidate in _domain_candidates(domain):
        value = cfg.domains.get(candidate)
        if value is not None:
            return min(1.0, max(0.0, value))
    return min(1.0, max(0.0, cfg.default_goodness))


def combine(hotness: float, goodness: float, cfg: PriorityConfig) -> float:
    """The weighted mean of hotness and goodness: the last line of the formula."""
    return _weighted_mean(
        cfg.hotness_weight,
        min(1.0, max(0.0, hotness)),
        cfg.goodness_weight,
        min(1.0, max(0.0, goodness)),
    )


def article_time(article: Article, now: float) -> float:
    """The article's publication time in epoch seconds, else ``now``.

    A naive ``published_at`` is read as UTC rather than as this machine's
    local time, which a pure policy must not depend on.
    """
    published: datetime | None = article.published_at
    if published is None:
        return now
    if published.tzinfo is None:
        published = published.replace(tzinfo=UTC)
    return published.timestamp()


def score(article: Article, stats: ClusterStats | None, now: float, cfg: PriorityConfig) -> float:
    """The article's priority in [0, 1] (formula in the module docstring)."""
    if stats is None:
        stats = singleton_stats(article_time(article, now))
    return combine(
        cluster_hotness(stats, now, cfg),
        _goodness(article.source_domain, cfg),
        cfg,
    )

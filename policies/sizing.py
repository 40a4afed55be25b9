"""Sizing a backlog: which tier each article falls in, and what the quotas
allow for the lot -- the pure part of ``tierbatch plan`` and of the bound a
``run`` ends with.

The tier split is the composer's own: every article's cluster is counted
first (as the daemon warms its cluster statistics from the whole backlog
before it leases anything), then each article is scored by
``policies.priority.score`` and placed by the ``TierLadder``; its input
tokens are estimated as the composer estimates them (``TokenEstimator``,
without the prompt's overhead, which ``TierShape`` adds per request). Aging
is left out: it only promotes articles that wait, and a plan is made before
anyone waits. The work per tier then becomes requests (``TierShape.demand``:
full packs within the pack size and the per-request token limit) and the
planner (``policies.planner``) says how much of each model each tier gets,
when each tier is done and which limits decide that.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from tierbatch.policies.articles import Article
from tierbatch.policies.config import Config
from tierbatch.policies.planner import (
    ModelCapacity,
    Plan,
    TierDemand,
    TierPlan,
    TierShape,
    plan_dispatch,
)
from tierbatch.policies.priority import ClusterTracker, article_time, score
from tierbatch.policies.tier_assignment import TierAssigner, TierSplit
from tierbatch.policies.tiers import TierLadder
from tierbatch.policies.tokens import TokenEstimator

__all__ = [
    "Sizing",
    "TierLoad",
    "TierSizing",
    "size_backlog",
    "tier_loads",
    "tier_split_of",
    "windows_spanned",
]


@dataclass(frozen=True, slots=True)
class TierLoad:
    """One tier's share of a backlog: how many articles, and their mean
    estimated input tokens (the articles alone, no prompt)."""

    tier: str
    rank: int
    articles: int
    tokens_per_article: float = 0.0


def tier_loads(articles: Iterable[Article], config: Config, wall: float) -> tuple[TierLoad, ...]:
    """Every tier of ``config`` (highest first) with the articles of
    ``articles`` that fall in it at wall-clock time ``wall`` (epoch
    seconds); see the module docstring."""
    return tier_split_of(articles, config, wall)[0]


def tier_split_of(
    articles: Iterable[Article], config: Config, wall: float
) -> tuple[tuple[TierLoad, ...], TierSplit]:
    """``tier_loads``, and the split as ``run`` prints it at its start. The
    tiers are the composer's own: every priority of the input is counted
    towards the tier shares first (``TierAssigner.seed``, as a one-shot run
    seeds its whole input), then each article takes its tier -- so a ladder
    of shares splits by rank, as the run will."""
    items = list(articles)
    cfg = config.priority
    clusters = ClusterTracker(cfg.velocity_window_s)
    for article in items:
        if article.cluster_id is not None:
            clusters.observe(article.cluster_id, min(article_time(article, wall), wall))
    ladder = TierLadder(config.tiers, config.global_fallback)
    assigner = TierAssigner(ladder, config.composer.share_window)
    priorities = []
    for article in items:
        stats = None if article.cluster_id is None else clusters.stats(article.cluster_id, wall)
        priority = score(article, stats, wall, cfg)
        priorities.append(priority)
        assigner.seed(article.id, priority)
    split = assigner.split()
    tokens = TokenEstimator()
    overhead = tokens.estimate(0, 0)
    counts = [0] * len(ladder)
    token_sums = [0.0] * len(ladder)
    for article, priority in zip(items, priorities, strict=True):
        seeded = assigner.seeded_priority(article.id) is not None
        rank = assigner.assign(article.id, priority, seeded=seeded)
        counts[rank] += 1
        token_sums[rank] += tokens.estimate(len(article.text) + len(article.title), 1) - overhead
    loads = tuple(
        TierLoad(
            spec.name, rank, counts[rank], token_sums[rank] / counts[rank] if counts[rank] else 0.0
        )
        for rank, spec in enumerate(ladder.tiers)
    )
    return loads, split


def windows_spanned(finish_s: float, window_s: float) -> int:
    """How many quota windows a span from now to ``finish_s`` touches: one
    for work all sent at once, two for work whose last request goes one
    window later, ..."""
    if window_s <= 0 or not math.isfinite(finish_s):
        return 1
    return max(1, math.floor(max(0.0, finish_s) / window_s + 1e-9) + 1)


@dataclass(frozen=True, slots=True)
class TierSizing:
    """One tier in a sizing: its load, its demand in requests, and its part
    of the plan (None for a tier with nothing to do)."""

    load: TierLoad
    demand: TierDemand
    plan: TierPlan | None

    @property
    def finish_s(self) -> float | None:
        return 0.0 if self.plan is None else self.plan.finish_s

    def per_window(self, window_s: float) -> dict[str, float]:
        """The tier's planned requests per model, spread over the windows
        its work spans."""
        if self.plan is None:
            return {}
        finish = self.plan.finish_s
        windows = windows_spanned(finish if finish is not None else math.inf, window_s)
        return {model: n / windows for model, n in self.plan.requests.items() if n > 1e-6}


@dataclass(frozen=True, slots=True)
class Sizing:
    """A backlog sized against capacity: the tiers (highest first), the
    plan, and the window its per-window figures are counted in."""

    tiers: tuple[TierSizing, ...]
    plan: Plan
    window_s: float

    @property
    def articles(self) -> int:
        return sum(t.load.articles for t in self.tiers)

    @property
    def requests(self) -> float:
        return sum(t.demand.requests for t in self.tiers)

    @property
    def makespan_s(self) -> float | None:
        return self.plan.makespan_s

    @property
    def empty_tiers(self) -> tuple[str, ...]:
        return tuple(t.load.tier for t in self.tiers if t.load.articles == 0)

    def bottleneck(self) -> tuple[str, ...]:
        """The limits that decide when the tier finishing last is done:
        ``("hot: gemini-2.5-pro requests",)``; empty when none binds."""
        bound = [t for t in self.tiers if t.plan is not None and t.plan.binding]
        if not bound:
            return ()
        latest = max(bound, key=lambda t: t.finish_s if t.finish_s is not None else math.inf)
        assert latest.plan is not None
        limits = ", ".join(f"{b.model} {b.kind}" for b in latest.plan.binding)
        return (f"{latest.load.tier}: {limits}",)

    def bottlenecks(self) -> tuple[str, ...]:
        """``"hot: gemini-2.5-pro requests"`` for every tier whose finish a
        limit decides, in tier order."""
        out = []
        for tier in self.tiers:
            if tier.plan is None or not tier.plan.binding:
                continue
            limits = ", ".join(f"{b.model} {b.kind}" for b in tier.plan.binding)
            out.append(f"{tier.load.tier}: {limits}")
        return tuple(out)


def size_backlog(
    loads: Sequence[TierLoad],
    shapes: Sequence[TierShape],
    capacity: Mapping[str, ModelCapacity],
    *,
    window_s: float = 60.0,
) -> Sizing:
    """The plan for ``loads`` packed as ``shapes`` say, on ``capacity``
    (``QuotaPolicy.capacity``). Raises ``ValueError`` when a load names a
    tier without a shape."""
    by_tier = {shape.tier: shape for shape in shapes}
    demands = []
    for load in loads:
        shape = by_tier.get(load.tier)
        if shape is None:
            raise ValueError(f"tier {load.tier!r} has no shape")
        demands.append(shape.demand(load.articles, load.tokens_per_article))
    plan = plan_dispatch(demands, capacity)
    tiers = tuple(
        TierSizing(load, demand, plan.tier(load.tier) if demand.requests > 0 else None)
        for load, demand in zip(loads, demands, strict=True)
    )
    return Sizing(tiers, plan, window_s)

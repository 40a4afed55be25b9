"""Tier assignment by share, wired into the composer and the runtime:
seeding a run's input makes the split exact, a seeded article is counted
once, ``as_of`` replaces the wall clock, thresholds are reported."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from runtime_helpers import ScriptedProvider, small_config

from tierbatch.actors.clock import ScaledClock
from tierbatch.actors.runtime import Runtime
from tierbatch.actors.sinks import CollectingSink
from tierbatch.policies.articles import Article
from tierbatch.policies.config import Config, PriorityConfig
from tierbatch.policies.tier_assignment import TierAssigner
from tierbatch.policies.tiers import TierLadder


def share_config(base: Config | None = None, *, window: int = 10_000) -> Config:
    """small_config with hot = top 10%, warm = next 30%, cold = the rest."""
    cfg = base or small_config(extractors=2)
    hot, warm, cold = cfg.tiers
    return replace(
        cfg,
        tiers=(replace(hot, share=0.1), replace(warm, share=0.3), cold),
        composer=replace(cfg.composer, share_window=window),
    )


def low_priorities(n: int, seed: int = 3) -> list[float]:
    rng = random.Random(seed)
    return [rng.uniform(0.05, 0.3) for _ in range(n)]


def test_a_fixed_ladder_assigns_exactly_as_the_ladder_does() -> None:
    cfg = small_config()
    ladder = TierLadder(cfg.tiers, cfg.global_fallback)
    assigner = TierAssigner(ladder, window=100)
    for p in [0.0, 0.2, 0.33, 0.5, 0.66, 0.9, 1.0]:
        assert assigner.assign("a", p) == ladder.index_for(p)
    assert not assigner.uses_shares and assigner.observed == 0


def test_seeding_the_whole_input_makes_the_split_exact_and_matches_assignment() -> None:
    cfg = share_config(window=50)  # smaller than the input: seeding widens it
    assigner = TierAssigner(TierLadder(cfg.tiers, cfg.global_fallback), cfg.composer.share_window)
    priorities = low_priorities(1000)
    for i, p in enumerate(priorities):
        assigner.seed(f"a{i}", p)
    split = assigner.split()
    assert split.total == 1000 and split.window == 1000 and split.uses_shares
    hot, warm, cold = (t.articles for t in split.tiers)
    # Its share, up to the tie-break draws of the articles in the
    # threshold's bin (1/1000 of the priority range).
    assert hot == pytest.approx(100, abs=5)
    assert hot + warm == pytest.approx(400, abs=5)
    assert hot + warm + cold == 1000 and split.empty == ()
    # Every article, on arrival, gets the tier the split counted it in, and
    # arriving does not move the thresholds (it was counted when seeded).
    before = assigner.thresholds()
    tiers = [0, 0, 0]
    for i in range(1000):
        seeded = assigner.seeded_priority(f"a{i}")
        assert seeded == priorities[i]
        tiers[assigner.assign(f"a{i}", seeded, seeded=True)] += 1
    assert tiers == [hot, warm, cold]
    assert assigner.thresholds() == before and assigner.observed == 1000
    assert assigner.seeded_priority("a0") is None  # forgotten once used


def test_tied_priorities_are_split_by_share_not_all_sent_up() -> None:
    cfg = share_config()
    assigner = TierAssigner(TierLadder(cfg.tiers, cfg.global_fallback), 10_000)
    for i in range(2000):
        assigner.seed(f"a{i}", 0.2)  # one priority for all: one bin
    counts = [t.articles for t in assigner.split().tiers]
    assert counts[0] == pytest.approx(200, abs=30)
    assert counts[1] == pytest.approx(600, abs=40)
    # Each article's tier is fixed by its id: the same on arrival.
    served = [0, 0, 0]
    for i in range(2000):
        served[assigner.assign(f"a{i}", 0.2, seeded=True)] += 1
    assert served == counts


def test_an_absolute_ladder_reports_its_empty_tier() -> None:
    cfg = small_config()
    assigner = TierAssigner(TierLadder(cfg.tiers, cfg.global_fallback), 100)
    rng = random.Random(4)
    for i in range(200):
        assigner.seed(f"a{i}", rng.uniform(0.05, 0.6))
    split = assigner.split()
    assert split.empty == ("hot",)
    assert [t.min_priority for t in split.tiers] == [0.66, 0.33, 0.0]


def test_the_window_slides_on_a_stream_without_seeding() -> None:
    cfg = share_config(window=200)
    assigner = TierAssigner(TierLadder(cfg.tiers, cfg.global_fallback), cfg.composer.share_window)
    rng = random.Random(5)
    for i in range(2000):  # a feed whose priorities rise: old ones slide out
        assigner.assign(f"a{i}", rng.uniform(0.0, 0.2))
    low = assigner.thresholds()[0].min_priority
    tiers = [0, 0, 0]
    for i in range(2000):
        tiers[assigner.assign(f"b{i}", rng.uniform(0.5, 0.7))] += 1
    assert assigner.observed == 200
    assert assigner.thresholds()[0].min_priority > 0.5 > low
    assert tiers[0] / 2000 == pytest.approx(0.1, abs=0.05)


# ---- through the runtime ---------------------------------------------------------


def feed(n: int, end: datetime, seed: int = 11, clusters: int = 60) -> list[Article]:
    """Articles published over the 36 h before ``end``, in small clusters,
    from sources of middling goodness: no priority reaches 0.66."""
    rng = random.Random(seed)
    return [
        Article(
            id=f"f{i}",
            text=f"Maria Lopez spoke in Paris on item {i}.",
            title=f"Item {i}",
            domain=rng.choice(["warm.example", "cold.example"]),
            cluster_id=f"c{rng.randrange(clusters)}",
            published_at=end - timedelta(seconds=rng.uniform(0, 36 * 3600)),
        )
        for i in range(n)
    ]


def hotness_config(base: Config) -> Config:
    return replace(base, priority=PriorityConfig(domains=dict(base.priority.domains)))


def run_seeded(cfg: Config, articles: list[Article], as_of: float | None):
    sink = CollectingSink()
    clock = ScaledClock(20.0)
    with Runtime(cfg, ScriptedProvider(), sink, clock=clock, as_of=as_of) as runtime:
        runtime.seed_tiers(articles, clusters_observed=False)
        split = runtime.tier_split()
        runtime.submit(articles, clusters_observed=True)
        assert runtime.drain(timeout=60)
        thresholds = runtime.tier_thresholds()
    by_tier: dict[str, int] = {}
    for result in sink.results:
        by_tier[result.tier] = by_tier.get(result.tier, 0) + 1
    return split, by_tier, thresholds


def test_a_seeded_runtime_serves_each_tier_exactly_the_split_it_reported() -> None:
    end = datetime(2026, 11, 24, 12, tzinfo=UTC)
    articles = feed(400, end)
    cfg = share_config(hotness_config(small_config(extractors=2)))
    split, by_tier, thresholds = run_seeded(cfg, articles, end.timestamp())
    counted = {t.tier: t.articles for t in split.tiers}
    assert by_tier == counted
    assert counted["hot"] == pytest.approx(40, abs=6)
    assert [t.min_priority for t in thresholds.tiers] == [t.min_priority for t in split.tiers]
    assert thresholds.total == 0 and thresholds.window == 400


def test_as_of_scores_an_old_feed_as_it_was_then_not_all_cold() -> None:
    end = datetime(2026, 11, 24, 12, tzinfo=UTC)
    articles = feed(200, end, clusters=10)
    fixed = hotness_config(small_config(extractors=2))
    # A threshold that fresh stories of 20 articles reach.
    hot, warm, cold = fixed.tiers
    fixed = replace(fixed, tiers=(replace(hot, min_priority=0.4), warm, cold))
    wall_split, _, _ = run_seeded(fixed, articles, None)  # a week later: all stale
    then_split, by_tier, _ = run_seeded(fixed, articles, end.timestamp())
    assert wall_split.tiers[0].articles == 0 and "hot" in wall_split.empty
    assert then_split.tiers[0].articles > 0
    assert by_tier.get("hot", 0) == then_split.tiers[0].articles
    # ScaledClock starts at the wall clock: 2026-12 is after the feed's end.
    assert datetime.now(UTC) > end + timedelta(days=3)

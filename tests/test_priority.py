"""Priority: cluster tracking, hotness, domain goodness and the combined score."""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tierbatch.policies.articles import Article
from tierbatch.policies.config import PriorityConfig
from tierbatch.policies.priority import (
    ClusterStats,
    ClusterTracker,
    article_time,
    cluster_hotness,
    combine,
    domain_goodness,
    score,
    singleton_stats,
)

NOW = 1_750_000_000.0
HOUR = 3600.0

unit = st.floats(min_value=0.0, max_value=1.0)
weight = st.floats(min_value=0.0, max_value=10.0)
times = st.floats(min_value=NOW - 30 * 86400, max_value=NOW + 86400)


def configs() -> st.SearchStrategy[PriorityConfig]:
    return st.builds(
        PriorityConfig,
        hotness_weight=weight,
        goodness_weight=weight,
        size_weight=weight,
        velocity_weight=weight,
        half_life_s=st.floats(min_value=1.0, max_value=1e6),
        size_scale=st.floats(min_value=0.1, max_value=1e3),
        velocity_scale=st.floats(min_value=0.1, max_value=1e3),
        default_goodness=unit,
    )


def stats_strategy() -> st.SearchStrategy[ClusterStats]:
    return st.builds(
        lambda size, first, span, recent: ClusterStats(size, first, first + span, recent),
        st.integers(min_value=1, max_value=100_000),
        times,
        st.floats(min_value=0.0, max_value=86400.0),
        st.floats(min_value=0.0, max_value=1e5),
    )


def grown(stats: ClusterStats, extra: int) -> ClusterStats:
    return replace(stats, size=stats.size + extra)


# -- ClusterTracker ------------------------------------------------------


def test_unknown_cluster_has_no_stats() -> None:
    assert ClusterTracker().stats("nope", NOW) is None


def test_tracker_counts_and_spans() -> None:
    tracker = ClusterTracker(velocity_window_s=HOUR)
    tracker.observe("c", NOW - 100)
    tracker.observe("c", NOW - 300)  # out of order
    tracker.observe("c", NOW - 50)
    stats = tracker.stats("c", NOW)
    assert stats is not None
    assert stats.size == 3
    assert stats.first_seen == NOW - 300
    assert stats.last_seen == NOW - 50
    expected = sum(math.exp(-age / HOUR) for age in (100, 300, 50))
    assert stats.recent == pytest.approx(expected)


def test_recent_is_a_decayed_count() -> None:
    tracker = ClusterTracker(velocity_window_s=HOUR)
    tracker.observe("c", NOW)
    tracker.observe("c", NOW)
    later = tracker.stats("c", NOW + HOUR)
    assert later is not None
    assert later.recent == pytest.approx(2 * math.exp(-1))
    assert later.size == 2  # size never decays


def test_steady_rate_reads_articles_per_window() -> None:
    tracker = ClusterTracker(velocity_window_s=HOUR)
    per_window = 12
    step = HOUR / per_window
    for i in range(per_window * 20):
        tracker.observe("c", NOW + i * step)
    stats = tracker.stats("c", NOW + (per_window * 20 - 1) * step)
    assert stats is not None
    # A discrete sum of exp(-k*step/tau) overshoots r*tau by about 1/2.
    assert stats.recent == pytest.approx(per_window, abs=1.0)


def test_future_observations_are_not_amplified() -> None:
    tracker = ClusterTracker()
    tracker.observe("c", NOW + 500)
    stats = tracker.stats("c", NOW)
    assert stats is not None
    assert stats.recent == 1.0


def test_prune_forgets_only_stale_clusters() -> None:
    tracker = ClusterTracker()
    tracker.observe("old", NOW - 10 * HOUR)
    tracker.observe("fresh", NOW - HOUR)
    tracker.observe("revived", NOW - 10 * HOUR)
    tracker.observe("revived", NOW - 60)
    assert tracker.prune(NOW, max_age_s=2 * HOUR) == 1
    assert "old" not in tracker
    assert "fresh" in tracker
    assert "revived" in tracker
    assert len(tracker) == 2


def test_tracker_rejects_a_non_positive_window() -> None:
    with pytest.raises(ValueError, match="velocity_window_s"):
        ClusterTracker(velocity_window_s=0)


@given(st.lists(st.tuples(st.sampled_from("abc"), times), max_size=60), times)
def test_tracker_stats_are_sane(observations: list[tuple[str, float]], now: float) -> None:
    tracker = ClusterTracker(velocity_window_s=HOUR)
    for cluster_id, at in observations:
        tracker.observe(cluster_id, at)
    for cluster_id in "abc":
        seen = [at for cid, at in observations if cid == cluster_id]
        stats = tracker.stats(cluster_id, now)
        if not seen:
            assert stats is None
            continue
        assert stats is not None
        assert stats.size == len(seen)
        assert stats.first_seen == min(seen)
        assert stats.last_seen == max(seen)
        assert 0.0 <= stats.recent <= stats.size * (1 + 1e-9)
        # Matches the definition: a sum over ages, none of them negative.
        ref = max(seen)
        expected = sum(math.exp(-(ref - at) / HOUR) for at in seen)
        expected *= math.exp(-max(0.0, now - ref) / HOUR)
        assert stats.recent == pytest.approx(expected, rel=1e-6, abs=1e-12)


# -- hotness -------------------------------------------------------------


def test_hotness_worked_example() -> None:
    cfg = PriorityConfig(size_scale=10, velocity_scale=5, half_life_s=6 * HOUR)
    stats = ClusterStats(size=10, first_seen=NOW - 8 * HOUR, last_seen=NOW - 6 * HOUR, recent=5)
    # size term 1/2, velocity term 1/2, equal weights -> 1/2; one half-life old -> 1/4.
    assert cluster_hotness(stats, NOW, cfg) == pytest.approx(0.25)


def test_hotness_of_a_fresh_big_fast_cluster_tends_to_one() -> None:
    stats = ClusterStats(size=10_000, first_seen=NOW, last_seen=NOW, recent=10_000)
    assert cluster_hotness(stats, NOW, PriorityConfig()) == pytest.approx(1.0)


def test_no_cluster_counts_as_one_article_just_seen() -> None:
    cfg = PriorityConfig()
    assert cluster_hotness(None, NOW, cfg) == cluster_hotness(singleton_stats(NOW), NOW, cfg)
    expected = 0.5 * (1 - 2 ** (-1 / cfg.size_scale)) + 0.5 * (1 - 2 ** (-1 / cfg.velocity_scale))
    assert cluster_hotness(None, NOW, cfg) == pytest.approx(expected)


def test_future_last_seen_does_not_boost_hotness() -> None:
    cfg = PriorityConfig()
    fresh = ClusterStats(size=3, first_seen=NOW, last_seen=NOW, recent=3)
    future = ClusterStats(size=3, first_seen=NOW, last_seen=NOW + HOUR, recent=3)
    assert cluster_hotness(future, NOW, cfg) == cluster_hotness(fresh, NOW, cfg)


@given(stats_strategy(), st.integers(min_value=0, max_value=1000), times, configs())
def test_hotness_is_bounded_and_grows_with_size(
    stats: ClusterStats, extra: int, now: float, cfg: PriorityConfig
) -> None:
    base = cluster_hotness(stats, now, cfg)
    assert 0.0 <= base <= 1.0
    assert cluster_hotness(grown(stats, extra), now, cfg) >= base


@given(stats_strategy(), st.floats(min_value=0, max_value=1e6), times, configs())
def test_hotness_fades_with_age(
    stats: ClusterStats, wait: float, now: float, cfg: PriorityConfig
) -> None:
    assert cluster_hotness(stats, now + wait, cfg) <= cluster_hotness(stats, now, cfg)


# -- goodness ------------------------------------------------------------


GOOD = PriorityConfig(
    default_goodness=0.3,
    domains={"bbc.co.uk": 0.9, "news.bbc.co.uk": 0.8, "reuters.com": 1.0, "tabloid.example": 0.1},
)


@pytest.mark.parametrize(
    ("domain", "expected"),
    [
        ("news.bbc.co.uk", 0.8),  # an exact entry wins over its parent
        ("sport.bbc.co.uk", 0.9),  # falls back to the parent
        ("a.b.sport.bbc.co.uk", 0.9),
        ("WWW.Reuters.com.", 1.0),  # normalised before lookup
        ("uk.reuters.com:443", 1.0),
        ("tabloid.example", 0.1),
        ("unknown.org", 0.3),
        ("com", 0.3),  # a bare label never matches
        ("", 0.3),
    ],
)
def test_domain_goodness(domain: str, expected: float) -> None:
    assert domain_goodness(domain, GOOD) == expected


def test_a_bare_suffix_in_the_table_is_never_used() -> None:
    cfg = PriorityConfig(default_goodness=0.5, domains={"uk": 0.0})
    assert domain_goodness("bbc.co.uk", cfg) == 0.5


def test_goodness_is_clamped_to_unit_range() -> None:
    cfg = PriorityConfig(default_goodness=1.5, domains={"bad.example": -2.0})
    assert domain_goodness("bad.example", cfg) == 0.0
    assert domain_goodness("other.example", cfg) == 1.0


# -- score ---------------------------------------------------------------


def test_score_worked_example() -> None:
    cfg = PriorityConfig(hotness_weight=0.6, goodness_weight=0.4, domains={"bbc.co.uk": 0.9})
    stats = ClusterStats(size=10, first_seen=NOW, last_seen=NOW, recent=5)  # hotness 1/2
    article = Article(id="a", text="t", url="https://news.bbc.co.uk/x")
    assert score(article, stats, NOW, cfg) == pytest.approx(0.6 * 0.5 + 0.4 * 0.9)


def test_score_without_cluster_uses_the_publication_time() -> None:
    cfg = PriorityConfig()
    published = datetime.fromtimestamp(NOW - cfg.half_life_s, tz=UTC)
    old = Article(id="a", text="t", published_at=published)
    undated = Article(id="b", text="t")
    hot_now = cluster_hotness(None, NOW, cfg)
    assert score(undated, None, NOW, cfg) == pytest.approx(combine(hot_now, 0.5, cfg))
    assert score(old, None, NOW, cfg) == pytest.approx(combine(hot_now / 2, 0.5, cfg))


def test_naive_publication_time_is_read_as_utc() -> None:
    naive = Article(id="a", text="t", published_at=datetime(2025, 1, 1, 12, 0))
    aware = Article(id="b", text="t", published_at=datetime(2025, 1, 1, 12, 0, tzinfo=UTC))
    assert article_time(naive, NOW) == article_time(aware, NOW)
    assert article_time(Article(id="c", text="t"), NOW) == NOW


def test_zero_weights_give_zero() -> None:
    assert combine(1.0, 1.0, PriorityConfig(hotness_weight=0, goodness_weight=0)) == 0.0


@given(unit, unit, unit, unit, configs())
def test_combine_is_monotone_and_bounded(
    h1: float, h2: float, g1: float, g2: float, cfg: PriorityConfig
) -> None:
    lo_h, hi_h = sorted((h1, h2))
    lo_g, hi_g = sorted((g1, g2))
    low = combine(lo_h, lo_g, cfg)
    assert 0.0 <= low <= 1.0
    assert combine(hi_h, lo_g, cfg) >= low
    assert combine(lo_h, hi_g, cfg) >= low
    assert combine(hi_h, hi_g, cfg) <= 1.0


@given(stats_strategy(), st.integers(min_value=0, max_value=100), unit, unit, times, configs())
def test_score_is_monotone_in_cluster_size_and_goodness(
    stats: ClusterStats, extra: int, g1: float, g2: float, now: float, cfg: PriorityConfig
) -> None:
    lo_g, hi_g = sorted((g1, g2))
    article = Article(id="a", text="t", domain="site.example")
    low_cfg = replace(cfg, domains={"site.example": lo_g})
    high_cfg = replace(cfg, domains={"site.example": hi_g})
    base = score(article, stats, now, low_cfg)
    assert 0.0 <= base <= 1.0
    assert score(article, grown(stats, extra), now, low_cfg) >= base
    assert score(article, stats, now, high_cfg) >= base

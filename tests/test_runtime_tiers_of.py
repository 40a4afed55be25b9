"""``Runtime.tiers_of``: the tier a daemon routes an article by (batch or
interactive) is the tier ``submit`` queues it in, and asking queues nothing."""

from __future__ import annotations

from dataclasses import replace

from runtime_helpers import ScriptedProvider, make_articles, small_config

from tierbatch.actors.runtime import Runtime
from tierbatch.actors.sinks import CollectingSink


def test_tiers_of_is_the_tier_submit_gives_and_queues_nothing() -> None:
    articles = make_articles(60)
    sink = CollectingSink()
    with Runtime(small_config(), ScriptedProvider(), sink) as runtime:
        names = runtime.tiers_of(articles)
        assert runtime.stats().queued == 0
        assert set(names) == {"hot", "warm", "cold"}
        runtime.submit(articles, clusters_observed=True)
        assert runtime.drain(timeout=30)
    tiers = {r.article_id: r.tier for r in sink.results}
    assert [tiers[a.id] for a in articles] == list(names)


def test_tiers_by_share_count_a_classified_article_once() -> None:
    """With share tiers, ``tiers_of`` counts each article in the share
    window; submitting it afterwards keeps that tier and does not count it
    again (a batch-routed article, never submitted, is counted too)."""
    config = small_config()
    hot, warm, cold = config.tiers
    tiers = (replace(hot, share=0.1), replace(warm, share=0.3), cold)
    config = replace(config, tiers=tiers)
    articles = make_articles(50)
    sink = CollectingSink()
    with Runtime(config, ScriptedProvider(), sink) as runtime:
        names = runtime.tiers_of(articles)
        assert runtime.tier_thresholds().window == 50
        interactive = [a for a, t in zip(articles, names, strict=True) if t != "cold"]
        runtime.submit(interactive, clusters_observed=True)
        assert runtime.drain(timeout=30)
        assert runtime.tier_thresholds().window == 50
    tiers_of = dict(zip((a.id for a in articles), names, strict=True))
    assert {r.article_id: r.tier for r in sink.results} == {
        a.id: tiers_of[a.id] for a in interactive
    }

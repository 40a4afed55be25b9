"""``Runtime.tiers_of``: the tier a daemon routes an article by (batch or
interactive) is the tier ``submit`` queues it in, and asking queues nothing."""

from __future__ import annotations

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

"""The grounding check end to end: a model that loses track of its packs
(cross-article and invented entities, from the simulated provider and from
the local Gemini-compatible server over HTTP with the google-genai adapter)
is caught entity by entity, the results carry the counts and flags, and an
adaptive tier's pack size shrinks under it -- and stays at full size when
the model never errs."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace

import pytest
from cli_helpers import sample_lines
from runtime_helpers import small_config
from structlog.testing import capture_logs

from tierbatch.actors.clock import ScaledClock
from tierbatch.actors.ports import Provider
from tierbatch.actors.runtime import Runtime
from tierbatch.actors.sinks import CollectingSink
from tierbatch.adapters.gemini.genai_provider import GenaiProvider
from tierbatch.adapters.simulation.fake_entities import (
    AnswerQuality,
    article_text,
    extract_entities,
)
from tierbatch.adapters.simulation.fake_gemini import FakeGeminiServer
from tierbatch.adapters.simulation.gemini_emulator import FakeGeminiConfig
from tierbatch.adapters.simulation.simulated import SimulatedProvider
from tierbatch.adapters.storage.jsonl_input import parse_article
from tierbatch.policies.articles import Article
from tierbatch.policies.config import Config, GroundingConfig, ProviderConfig, ProviderKind
from tierbatch.policies.grounding import Grounding, PackTexts
from tierbatch.policies.results import Done

DOMAINS = ("hot.example", "warm.example", "cold.example")
PACKS = (4, 6, 10)


def sample_articles(n: int) -> list[Article]:
    """Real-looking articles of the shipped sample (distinct names per
    article, so a pack has entities to mix up), spread over the tiers."""
    articles = [parse_article(json.loads(line)) for line in sample_lines(n)]
    return [replace(a, domain=DOMAINS[i % 3]) for i, a in enumerate(articles)]


def config(*, adaptive: bool = False, window: int = 5, max_packs: int = 64) -> Config:
    base = small_config(per_request=PACKS, extractors=2, max_packs=max_packs)
    tiers = tuple(replace(t, adaptive_pack=adaptive) for t in base.tiers)
    return replace(
        base,
        tiers=tiers,
        grounding=GroundingConfig(window_requests=window, cross_article_threshold=0.05),
    )


def run(cfg: Config, provider: Provider, articles: Sequence[Article], clock: ScaledClock):
    sink = CollectingSink()
    with Runtime(cfg, provider, sink, clock=clock) as runtime:
        runtime.submit(list(articles))
        assert runtime.drain(timeout=120)
        stats = runtime.stats()
    return sink, stats


def check_every_entity(sink: CollectingSink, articles: Sequence[Article]) -> dict[str, int]:
    """Every done article's entities were each checked and handled by the
    default policy; returns the outcome totals."""
    by_id = {a.id: a for a in articles}
    totals = dict.fromkeys(Grounding, 0)
    assert len(sink.results) == len(articles)
    for result in sink.results:
        assert isinstance(result, Done), result
        article = by_id[result.article_id]
        counts = result.grounding
        assert counts is not None and 1 <= result.pack_size <= max(PACKS)
        # Every entity the model gave was checked (the fakes give one per
        # name found: swapping changes names, never how many).
        found = extract_entities(article_text(article.title, article.text), result.model)
        assert counts.total == len(found)
        own = PackTexts([(article.id, article.title, article.text)])
        flagged = [e for e in result.entities if e.flag is not None]
        # cross-article ones dropped, ungrounded ones flagged, the rest kept
        assert len(result.entities) == counts.grounded + counts.ungrounded
        assert {e.flag for e in flagged} <= {Grounding.UNGROUNDED}
        assert len(flagged) == counts.ungrounded
        for entity in result.entities:
            outcome = own.check(article.id, entity.name)
            expected = Grounding.GROUNDED if entity.flag is None else Grounding.UNGROUNDED
            assert outcome is expected, (entity, outcome)
        totals[Grounding.GROUNDED] += counts.grounded
        totals[Grounding.CROSS_ARTICLE] += counts.cross_article
        totals[Grounding.UNGROUNDED] += counts.ungrounded
    return totals


def test_a_model_that_loses_track_is_caught_on_the_simulated_provider():
    clock = ScaledClock(50.0)
    cfg = config()
    provider = SimulatedProvider(
        cfg.models,
        clock,
        seed=5,
        latency_s=0.2,
        quality=AnswerQuality(cross_article=0.2, invented=0.1),
    )
    articles = sample_articles(150)
    sink, stats = run(cfg, provider, articles, clock)
    totals = check_every_entity(sink, articles)
    assert totals[Grounding.CROSS_ARTICLE] > 0
    assert totals[Grounding.UNGROUNDED] > 0
    assert totals[Grounding.GROUNDED] > 0
    assert stats.pack_sizes == {}  # no tier is adaptive


def test_a_model_that_never_errs_keeps_every_entity_unflagged():
    clock = ScaledClock(50.0)
    cfg = config(adaptive=True)
    provider = SimulatedProvider(cfg.models, clock, seed=5, latency_s=0.2)
    articles = sample_articles(150)
    with capture_logs() as logs:
        sink, stats = run(cfg, provider, articles, clock)
    totals = check_every_entity(sink, articles)
    assert totals[Grounding.CROSS_ARTICLE] == totals[Grounding.UNGROUNDED] == 0
    assert stats.pack_sizes == {"hot": 4, "warm": 6, "cold": 10}  # full size throughout
    assert not [e for e in logs if e["event"] == "pack size lowered"]


def test_the_adaptive_pack_size_shrinks_under_a_high_cross_article_rate():
    clock = ScaledClock(50.0)
    # Few packs in flight per extractor, so work is packed as answers come
    # back (packs already made keep their size).
    cfg = config(adaptive=True, window=3, max_packs=2)
    provider = SimulatedProvider(
        cfg.models, clock, seed=5, latency_s=0.2, quality=AnswerQuality(cross_article=0.5)
    )
    articles = sample_articles(400)
    with capture_logs() as logs:
        sink, stats = run(cfg, provider, articles, clock)
    check_every_entity(sink, articles)
    lowered = [e for e in logs if e["event"] == "pack size lowered"]
    assert lowered, "no pack size was lowered"
    assert {e["tier"] for e in lowered} >= {"cold"}
    assert any(e["event"] == "model mixes up the articles of its packs" for e in logs)
    assert all(e["to"] == max(1, e["from"] // 2) for e in lowered)
    assert stats.pack_sizes["cold"] < 10
    # The requests that followed carried fewer articles.
    sizes = [r.pack_size for r in sink.results if isinstance(r, Done) and r.tier == "cold"]
    assert max(sizes[-20:]) < 10


@pytest.fixture
def fake_server():
    servers: list[FakeGeminiServer] = []

    def start(config: FakeGeminiConfig, clock: ScaledClock) -> str:
        server = FakeGeminiServer(config, clock=clock)
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.stop()


def test_a_model_that_loses_track_is_caught_over_http_with_google_genai(fake_server):
    clock = ScaledClock(1.0)
    cfg = config()
    quality = AnswerQuality(cross_article=0.2, invented=0.1)
    base_url = fake_server(FakeGeminiConfig(models=cfg.models, seed=2, quality=quality), clock)
    provider = GenaiProvider(
        ProviderConfig(kind=ProviderKind.GENAI, base_url=base_url), api_key="test-key-123"
    )
    articles = sample_articles(120)
    sink, _ = run(cfg, provider, articles, clock)
    totals = check_every_entity(sink, articles)
    assert totals[Grounding.CROSS_ARTICLE] > 0
    assert totals[Grounding.UNGROUNDED] > 0
    assert totals[Grounding.GROUNDED] > 0

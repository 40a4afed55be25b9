"""A full runtime run over real HTTP: the google-genai adapter against the
local Gemini-compatible server, with quotas that force 429s.

The server's real limits for one model are tighter than the config claims,
so the registry keeps being surprised by 429s and must honour every
``retryDelay``: after the registry hears of a 429, no request for that model
is granted until the delay has passed. Checked by joining the server's
request log with the registry's own decisions.
"""

from __future__ import annotations

import bisect
from collections import Counter, defaultdict
from dataclasses import replace

import pytest
from runtime_helpers import FLASH, LITE, PRO, RecordingObserver, make_articles, small_config

from tierbatch.actors.clock import ScaledClock
from tierbatch.actors.ports import ExtractionRequest, PackAnswer
from tierbatch.actors.runtime import Runtime
from tierbatch.actors.sinks import CollectingSink
from tierbatch.adapters.gemini.genai_provider import GenaiProvider
from tierbatch.adapters.simulation.fake_gemini import FakeGeminiServer
from tierbatch.adapters.simulation.gemini_emulator import FakeGeminiConfig
from tierbatch.policies.config import ProviderConfig, ProviderKind, QuotaConfig
from tierbatch.policies.outcomes import RateLimited
from tierbatch.policies.results import Done

WINDOW_S = 2.0  # a short "minute" so the test runs in seconds


class RecordingProvider:
    """Wraps a provider to remember when each request was granted."""

    def __init__(self, inner: GenaiProvider) -> None:
        self.inner = inner
        self.sent: dict[tuple[str, tuple[str, ...]], list[float]] = defaultdict(list)

    async def extract(self, request: ExtractionRequest) -> PackAnswer:
        key = (request.model, tuple(a.id for a in request.articles))
        self.sent[key].append(request.granted_at)
        return await self.inner.extract(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.fixture(scope="module")
def http_run():
    config = small_config(
        pro=(8, 200_000, 0),
        flash=(12, 400_000, 0),
        lite=(24, 800_000, 0),
        quota=QuotaConfig(window_s=WINDOW_S, margin_s=0.2),
    )
    server_limits = dict(config.models)
    server_limits[FLASH] = replace(config.models[FLASH], rpm=6)  # tighter than we think
    # One clock for both, whose steady and wall readings agree: the server's
    # log (the server's time) and the registry's decisions (steady time) then
    # share one timeline and can be joined.
    clock = ScaledClock(1.0)
    server = FakeGeminiServer(
        FakeGeminiConfig(models=server_limits, window_s=WINDOW_S, seed=1), clock=clock
    )
    base_url = server.start()
    try:
        genai = GenaiProvider(
            ProviderConfig(kind=ProviderKind.GENAI, base_url=base_url), api_key="test-key-123"
        )
        provider = RecordingProvider(genai)
        sink = CollectingSink()
        observer = RecordingObserver()
        articles = make_articles(600, seed=11)
        with Runtime(config, provider, sink, clock=clock, observer=observer) as runtime:
            runtime.submit(articles)
            assert runtime.drain(timeout=120)
    finally:
        server.stop()
    return {
        "articles": articles,
        "results": sink.results,
        "log": server.log,
        "observer": observer,
        "sent": provider.sent,
        "config": config,
    }


def test_no_article_lost_or_doubled(http_run):
    ids = [r.article_id for r in http_run["results"]]
    assert len(ids) == len(set(ids)) == 600
    assert set(ids) == {a.id for a in http_run["articles"]}
    assert all(isinstance(r, Done) for r in http_run["results"])
    answered = Counter(i for req in http_run["log"] if req.status == 200 for i in req.article_ids)
    assert set(answered) == set(ids)


def test_429s_happened_and_every_retry_delay_was_honoured(http_run):
    log = http_run["log"]
    observer = http_run["observer"]
    limited = [r for r in log if r.status == 429]
    assert limited, "the test needs 429s"
    assert all(r.retry_delay_s is not None for r in limited)
    reports = defaultdict(list)  # model -> times the registry learnt of a 429
    for model, outcome, at in observer.outcomes:
        if isinstance(outcome, RateLimited):
            reports[model].append(at)
    for times in reports.values():
        times.sort()
    violations = []
    for r429 in limited:
        times = reports[r429.model]
        k = bisect.bisect_left(times, r429.at)
        assert k < len(times), "every 429 is reported to the registry"
        known_at = times[k]
        end = r429.at + r429.retry_delay_s
        for req in log:
            if req.model != r429.model or not (r429.at < req.at < end):
                continue
            grants = http_run["sent"][(req.model, req.article_ids)]
            granted_at = max(g for g in grants if g <= req.at)
            if granted_at >= known_at:
                violations.append((r429, req, granted_at, known_at))
    assert not violations, violations[:3]


def test_no_grant_during_a_cooldown(http_run):
    observer = http_run["observer"]
    assert observer.cooldowns
    for model, start, until, _ in observer.cooldowns:
        inside = [
            g for g, _ in observer.grants if g.model == model and start <= g.granted_at < until
        ]
        assert not inside


def test_hot_articles_reached_their_primary(http_run):
    hot = [r for r in http_run["results"] if r.tier == "hot"]
    assert hot and any(r.model == PRO for r in hot)
    assert {r.model for r in http_run["results"]} <= {PRO, FLASH, LITE}

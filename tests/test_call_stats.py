"""Log volume: per-call lines are at debug; at info, one ``provider calls``
line per interval sums the calls up per model, and changes of state (a
cooldown starting) are logged once each, not once per 429."""

from __future__ import annotations

import asyncio
import io
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import wait_until
from provider_contract import KEY, MODEL
from runtime_helpers import (
    LITE,
    Gate,
    RecordingObserver,
    ScriptedProvider,
    answer_all,
    make_articles,
    small_config,
)
from structlog.testing import capture_logs

from tierbatch.actors.clock import ScaledClock
from tierbatch.actors.ports import ExtractionRequest, PackAnswer
from tierbatch.actors.runtime import Runtime
from tierbatch.actors.sinks import CollectingSink
from tierbatch.adapters.app.call_stats import CallStats, CallStatsProvider, percentile
from tierbatch.adapters.app.cli import EXIT_USAGE, main
from tierbatch.adapters.gemini.genai_provider import GenaiProvider
from tierbatch.adapters.simulation.fake_gemini import FakeGeminiServer
from tierbatch.adapters.simulation.gemini_emulator import FakeGeminiConfig
from tierbatch.policies.articles import Article
from tierbatch.policies.config import (
    ComposerConfig,
    Config,
    ModelSpec,
    ProviderConfig,
    RetryConfig,
    RuntimeConfig,
    TierSpec,
)
from tierbatch.policies.outcomes import (
    RateLimited,
    RateLimitScope,
    ServerError,
    Succeeded,
    Usage,
)
from tierbatch.policies.results import Done


def ok(tokens_in: int = 100, tokens_out: int = 10) -> PackAnswer:
    return PackAnswer(Succeeded(Usage(tokens_in, tokens_out)))


def limited() -> PackAnswer:
    return PackAnswer(RateLimited(RateLimitScope.REQUESTS_PER_MINUTE, 5.0, "quota"))


# ---- the pure aggregate ----------------------------------------------------------


def test_aggregate_is_flushed_once_the_interval_passes() -> None:
    stats = CallStats(60.0, start=1000.0)
    for i in range(10):
        stats.observe("flash", ok(100 + i, 10), latency_s=0.1 * (i + 1))
    stats.observe("flash", limited(), latency_s=0.05)
    stats.observe("flash", limited(), latency_s=0.05)
    stats.observe("pro", PackAnswer(ServerError(503, "The model is overloaded.")), 2.0)
    stats.observe("pro", "cancelled", 0.5)
    assert stats.flush_if_due(1059.9) is None

    summary = stats.flush_if_due(1060.0)
    assert summary is not None
    assert (summary.start, summary.end, summary.calls) == (1000.0, 1060.0, 14)
    flash, pro = summary.models["flash"], summary.models["pro"]
    assert flash.calls == 12
    assert flash.outcomes == {"rate_limited": 2, "succeeded": 10}
    assert flash.rate_limited == 2
    assert (flash.input_tokens, flash.output_tokens) == (sum(range(100, 110)), 100)
    assert flash.latency_p50_s == pytest.approx(0.4)  # 6th of 12: 0.05, 0.05, 0.1, ...
    assert flash.latency_p95_s == pytest.approx(1.0)
    assert flash.latency_mean_s == pytest.approx((5.5 + 0.1) / 12)
    assert pro.outcomes == {"cancelled": 1, "server_error": 1}
    assert pro.last_error == "ServerError: The model is overloaded."
    assert summary.fields()["models"]["flash"]["calls"] == 12

    # The next interval starts at the flush and holds nothing yet.
    assert stats.flush_if_due(1200.0) is None
    stats.observe("flash", ok(), 0.2)
    assert stats.flush_if_due(1259.0) is None
    later = stats.flush_if_due(1260.0)
    assert later is not None and later.calls == 1 and later.start == 1200.0


def test_percentiles_are_nearest_rank() -> None:
    assert percentile([], 50) == 0.0
    assert percentile([3.0], 95) == 3.0
    values = [float(v) for v in range(1, 101)]
    assert (percentile(values, 50), percentile(values, 95), percentile(values, 100)) == (
        50.0,
        95.0,
        100.0,
    )


def test_interval_must_be_positive() -> None:
    with pytest.raises(ValueError, match="interval_s"):
        CallStats(0.0, start=0.0)


# ---- the wrapper -------------------------------------------------------------------


class _Ticks:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_wrapper_logs_one_line_per_interval_and_the_rest_at_close() -> None:
    ticks = _Ticks()

    async def answer(request: ExtractionRequest) -> PackAnswer:
        ticks.now += 1.0  # each call takes one tick
        return limited() if request.model == "pro" else ok()

    wrapped = CallStatsProvider(ScriptedProvider(answer), 60.0, now=ticks)
    request = ExtractionRequest("flash", (Article(id="a", text="t"),), 5.0, 10)

    async def go() -> None:
        for _ in range(59):
            await wrapped.extract(request)
        await wrapped.extract(ExtractionRequest("pro", request.articles, 5.0, 10))
        await wrapped.extract(request)  # after the minute
        await wrapped.aclose()

    with capture_logs() as logs:
        asyncio.run(go())
    lines = [e for e in logs if e["event"] == "provider calls"]
    assert [e["log_level"] for e in lines] == ["info", "info"]
    first, last = lines
    assert first["calls"] == 60 and first["interval_s"] == 60.0
    assert first["models"]["flash"]["calls"] == 59
    assert first["models"]["pro"]["rate_limited"] == 1
    assert last["calls"] == 1


# ---- through the runtime -----------------------------------------------------------


def _one_model_config(n_extractors: int = 2) -> Config:
    return Config(
        models={MODEL: ModelSpec(MODEL, rpm=100_000, tpm=1_000_000_000, rpd=0)},
        tiers=(TierSpec("main", 0.0, MODEL, None, 1),),
        global_fallback=MODEL,
        composer=ComposerConfig(mix={"main": 4}),
        retry=RetryConfig(max_attempts=50, request_timeout_s=10.0),
        runtime=RuntimeConfig(extractors=n_extractors, max_packs_in_flight=4),
    )


# Info lines that are not about one call: start, stop, state changes, aggregates.
NOT_PER_CALL = {
    "runtime started",
    "runtime stopped",
    "model cooling down",
    "learnt limit",
    "provider calls",
}


def test_per_call_logs_are_debug_and_info_is_aggregated() -> None:
    articles = make_articles(24)
    server_model = {MODEL: ModelSpec(MODEL, rpm=6, tpm=0, rpd=0)}  # some calls get 429s
    fake = FakeGeminiConfig(models=server_model, window_s=0.3, hang_s=5.0)
    sink = CollectingSink()
    with FakeGeminiServer(fake) as server, capture_logs() as logs:
        inner = GenaiProvider(ProviderConfig(base_url=server.base_url), api_key=KEY)
        provider = CallStatsProvider(inner, interval_s=3600.0)
        with Runtime(_one_model_config(), provider, sink) as runtime:
            runtime.submit(articles)
            assert runtime.drain(timeout=60)
        served = server.log
    assert [type(r) for r in sink.results] == [Done] * len(articles)
    statuses = Counter(s.status for s in served)
    assert statuses[429] > 0, "the test's premise: some calls were refused"

    loud = [e for e in logs if e["log_level"] not in ("debug",)]
    assert [e["event"] for e in loud if e["event"] not in NOT_PER_CALL] == []
    per_call = [e for e in logs if e["event"] in ("gemini answered", "gemini call failed")]
    assert len(per_call) == len(served), "every call still has its debug line"
    assert {e["log_level"] for e in per_call} == {"debug"}

    [line] = [e for e in logs if e["event"] == "provider calls"]
    stats: dict[str, Any] = line["models"][MODEL]
    assert line["calls"] == stats["calls"] == len(served)
    assert stats["rate_limited"] == statuses[429]
    assert stats["outcomes"] == {"rate_limited": statuses[429], "succeeded": statuses[200]}
    assert stats["input_tokens"] == sum(s.input_tokens for s in served if s.status == 200)
    assert stats["output_tokens"] == sum(s.output_tokens for s in served if s.status == 200)
    assert 0 < stats["latency_p50_s"] <= stats["latency_p95_s"]


def test_cooldown_is_logged_once_not_once_per_429() -> None:
    """A burst of 429s for one model, all answered within its cooldown: one
    info line for the cooldown, the other 429s at debug."""
    gate = Gate()

    async def first_attempts_refused(request: ExtractionRequest) -> PackAnswer:
        if request.attempt > 1:
            return answer_all(request)
        await gate.wait()
        return limited()

    provider = ScriptedProvider(first_attempts_refused)
    observer = RecordingObserver()
    config = small_config(retry=RetryConfig(max_attempts=10))
    sink = CollectingSink()
    with capture_logs() as logs:
        runtime = Runtime(config, provider, sink, clock=ScaledClock(10), observer=observer)
        with runtime:
            runtime.submit(make_articles(60))
            wait_until(
                lambda: Counter(r.model for r in provider.requests)[LITE] >= 3,
                30,
                "three calls of one model in flight",
            )
            gate.open()
            assert runtime.drain(timeout=60)
    refused = Counter(m for m, o, _ in observer.outcomes if isinstance(o, RateLimited))
    cooling = [e for e in logs if e["event"] == "model cooling down"]
    still = [e for e in logs if e["event"] == "model still cooling down"]
    assert {e["log_level"] for e in cooling} == {"info"}
    assert {e["log_level"] for e in still} <= {"debug"}
    for model, count in refused.items():
        info = sum(1 for e in cooling if e["model"] == model)
        debug = sum(1 for e in still if e["model"] == model)
        assert info >= 1 and info + debug == count
    lite_info = sum(1 for e in cooling if e["model"] == LITE)
    assert lite_info < refused[LITE], "the burst's 429s share one cooldown line"


def test_stats_interval_must_not_be_negative(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    err = io.StringIO()
    code = main(
        ["run", "--sample", "--db", str(tmp_path / "x.sqlite"), "--stats-interval", "-1"],
        stdout=io.StringIO(),
        stderr=err,
    )
    assert code == EXIT_USAGE
    assert "--stats-interval -1" in err.getvalue()

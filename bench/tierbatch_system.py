"""tierbatch as a user embeds it: a ``Runtime`` over the google-genai provider
pointed at the local server, articles submitted as they arrive."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

from bench.harness import RunContext, SystemResult
from bench.measure import Recorder, thread_cpu_seconds
from bench.settings import BenchSettings
from tierbatch.actors.ports import ExtractionRequest, PackAnswer, Provider
from tierbatch.actors.runtime import Runtime
from tierbatch.adapters.gemini.genai_provider import GenaiProvider
from tierbatch.policies.config import (
    ComposerConfig,
    Config,
    ModelSpec,
    PriorityConfig,
    ProviderConfig,
    ProviderKind,
    QuotaConfig,
    RetryConfig,
    RuntimeConfig,
    TierSpec,
)
from tierbatch.policies.pack_quality import GroundingTally
from tierbatch.policies.results import Done, TerminalResult

# Tier thresholds: each tier's domains have a goodness between these.
_MIN_PRIORITY = (0.7, 0.4, 0.0)


def bench_config(settings: BenchSettings, base_url: str, *, packed: bool) -> Config:
    """The bench's quotas and tiers as a tierbatch config, every time constant
    of the defaults scaled to the bench's window (margin 0.5 s, backoff 1 s to
    60 s, request timeout 60 s). Aging is off so an article's tier -- and so
    tier fidelity -- is the one it was generated in."""
    models = {m.name: ModelSpec(m.name, m.rpm, m.tpm, m.rpd) for m in settings.models}
    tiers = tuple(
        TierSpec(
            t.name,
            _MIN_PRIORITY[i],
            t.model,
            t.fallback,
            t.per_request if packed else 1,
            # The shipped default's 30 s patience, scaled like every time constant.
            settings.real(30.0) if t.fallback else 0.0,
        )
        for i, t in enumerate(settings.tiers)
    )
    domains = {d: t.goodness for t in settings.tiers for d in t.domains}
    return Config(
        models=models,
        tiers=tiers,
        global_fallback=settings.global_fallback,
        composer=ComposerConfig(
            mix={t.name: t.mix for t in settings.tiers}, max_queued=500_000, aging_s=math.inf
        ),
        priority=PriorityConfig(
            hotness_weight=0.0, goodness_weight=1.0, default_goodness=0.2, domains=domains
        ),
        quota=QuotaConfig(
            window_s=settings.window_s,
            margin_s=settings.real(0.5),
            backoff_base_s=settings.real(1.0),
            backoff_max_s=settings.real(60.0),
        ),
        retry=RetryConfig(request_timeout_s=settings.real(60.0)),
        provider=ProviderConfig(kind=ProviderKind.GENAI, base_url=base_url),
        runtime=RuntimeConfig(extractors=EXTRACTORS, max_packs_in_flight=packs_in_flight(settings)),
    )


EXTRACTORS = 4


def packs_in_flight(settings: BenchSettings) -> int:
    """Per extractor: room for a window's requests of every model at once
    (and a quarter more), 64 at least. A rolling window admits a whole
    window's requests at its start; with less room the rest wait for
    answers, and at Gemini's own quotas (a thousand requests a window) the
    room, not the quota, set the pace."""
    window = sum(m.rpm for m in settings.models)
    return max(64, math.ceil(1.25 * window / EXTRACTORS))


class _NoProvider:
    async def extract(self, request: ExtractionRequest) -> PackAnswer:
        raise RuntimeError("prepare() first")

    async def aclose(self) -> None:
        pass


class RecorderSink:
    """The runtime's sink: every terminal result goes to the harness."""

    def __init__(self, recorder: Recorder) -> None:
        self._recorder = recorder
        self.grounding = GroundingTally()

    def grounding_rows(self) -> list[dict[str, object]]:
        """The grounding check's outcomes per tier, model and pack size."""
        return [
            {
                "tier": row.tier,
                "model": row.model,
                "pack_size": row.pack_size,
                "articles": row.articles,
                "grounded": row.counts.grounded,
                "cross_article": row.counts.cross_article,
                "ungrounded": row.counts.ungrounded,
            }
            for row in self.grounding.rows()
        ]

    def write(self, results: Sequence[TerminalResult]) -> None:
        self.grounding.add(results)
        now = time.time()
        for r in results:
            if isinstance(r, Done):
                self._recorder.record(r.article_id, True, r.model, now)
            else:
                self._recorder.record(r.article_id, False, r.last_model, now)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class LagRecordingProvider:
    """Wraps the provider to note, for every call, when quota was granted and
    when the call actually started: the registry's window opens at the grant,
    the server's when the request arrives, and the gap is what the window
    margin must cover."""

    def __init__(self, inner: Provider) -> None:
        self._inner = inner
        self.calls: list[tuple[float, float, str, tuple[str, ...]]] = []

    async def extract(self, request: ExtractionRequest) -> PackAnswer:
        started = time.time()
        # granted_at is the runtime's steady time (SystemClock: monotonic);
        # the server logs wall-clock times, so record the grant in wall time.
        granted = request.granted_at + (started - time.monotonic())
        self.calls.append((granted, started, request.model, tuple(a.id for a in request.articles)))
        return await self._inner.extract(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


class TierbatchSystem:
    def __init__(self, *, packed: bool) -> None:
        self.packed = packed
        self._runtime: Runtime | None = None
        self._provider = LagRecordingProvider(_NoProvider())
        self._sink: RecorderSink | None = None

    def prepare(self, ctx: RunContext) -> None:
        config = bench_config(ctx.settings, ctx.base_url, packed=self.packed)
        provider = LagRecordingProvider(
            GenaiProvider(
                config.provider,
                api_key=ctx.api_key,
                default_timeout_s=config.retry.request_timeout_s,
            )
        )
        self._provider = provider
        self._sink = RecorderSink(ctx.recorder)
        self._runtime = Runtime(config, provider, self._sink).start()

    def run(self, ctx: RunContext) -> SystemResult:
        runtime = self._runtime
        assert runtime is not None, "prepare() first"
        cpu_before = thread_cpu_seconds()
        fed: set[str] = set()
        for at, group in ctx.arrival_groups():
            if at >= ctx.deadline:
                break
            delay = at - time.time()
            if delay > 0:
                time.sleep(delay)
            runtime.submit([g.article for g in group])
            fed.update(g.article.id for g in group)
        runtime.drain(timeout=max(0.0, ctx.remaining()))
        stats = runtime.stats()
        cpu_after = thread_cpu_seconds()
        unfinished = runtime.stop(drain=False)
        return SystemResult(
            fed=fed,
            unfinished={a.id for a in unfinished},
            stats={
                "fallbacks": stats.fallbacks,
                "done_by_model": dict(stats.done_by_model),
                "failed_by_reason": dict(stats.failed_by_reason),
                "calls": [list(c) for c in self._provider.calls],
                "grounding": self._sink.grounding_rows() if self._sink else [],
                # what the registry ended with: the learnt limits and bursts
                "models": {
                    m.model: {
                        "learnt_rpm": m.learnt_rpm,
                        "learnt_tpm": m.learnt_tpm,
                        "burst": m.burst,
                        "limiter": m.limiter,
                    }
                    for m in stats.models
                },
            },
            cpu_by_thread={
                name: cpu - cpu_before.get(name, 0.0) for name, cpu in cpu_after.items()
            },
        )

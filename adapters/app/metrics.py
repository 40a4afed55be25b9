"""Prometheus metrics for ``tierbatch run`` and ``tierbatch daemon``.

Everything lives in one ``CollectorRegistry`` per ``Metrics`` object (not
prometheus-client's global one), so several runtimes in one process -- tests,
notebooks -- never collide. Three feeds fill it:

* ``MetricsObserver``: the registry actor's decisions (grants, outcomes and
  cooldowns), counted on the registry's own thread as they happen;
* ``TimedProvider``: wall-clock latency of every provider call, by model and
  outcome;
* the runtime's one count of terminal results (``count_results_from``),
  read when scraped, for the article and entity counters; ``observe_latency``: each
  done article's latency as the sink receives it; ``Metrics.update``:
  gauges refreshed from ``Runtime.stats()`` and the database's counts by
  the daemon loop.

``serve`` exposes them over HTTP on the loopback interface only: the metrics
name models and volumes, which is nobody else's business.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from threading import Thread
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from tierbatch.actors.ports import ExtractionRequest, PackAnswer, Provider
from tierbatch.adapters.storage.store import BatchReport
from tierbatch.policies.estimator import LimiterShape
from tierbatch.policies.outcomes import CallOutcome, RateLimited
from tierbatch.policies.quota import Grant
from tierbatch.policies.results import Done, TerminalResult
from tierbatch.policies.tally import TallySnapshot

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from tierbatch.actors.runtime import RuntimeStats

LOOPBACK = "127.0.0.1"
REQUEST_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)
LIMITER_SHAPES = tuple(shape.value for shape in LimiterShape)
ARTICLE_LATENCY_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0)


def outcome_label(outcome: CallOutcome) -> str:
    """``RateLimited`` -> ``rate_limited``: a stable label value per outcome type."""
    name = type(outcome).__name__
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name).lstrip("_")


class Metrics:
    """The metric families tierbatch exports (names in the README)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.grants = Counter(
            "tierbatch_requests_granted", "Requests granted quota, by model", ["model"], registry=r
        )
        self.requests = Counter(
            "tierbatch_requests",
            "Provider requests by model and outcome (succeeded, rate_limited, server_error, ...)",
            ["model", "outcome"],
            registry=r,
        )
        self.rate_limited = Counter(
            "tierbatch_rate_limited",
            "HTTP 429 answers by model and quota scope",
            ["model", "scope"],
            registry=r,
        )
        self.cooldowns = Counter(
            "tierbatch_cooldowns",
            "Cooldowns started, by model and reason",
            ["model", "reason"],
            registry=r,
        )
        self.tokens = Counter(
            "tierbatch_tokens",
            "Tokens reported by the provider, by model and direction (input, output)",
            ["model", "direction"],
            registry=r,
        )
        self._results = _ResultCounters()
        r.register(self._results)
        self.request_latency = Histogram(
            "tierbatch_request_latency_seconds",
            "Wall-clock time of one provider call, by model and outcome",
            ["model", "outcome"],
            buckets=REQUEST_LATENCY_BUCKETS,
            registry=r,
        )
        self.article_latency = Histogram(
            "tierbatch_article_latency_seconds",
            "From submission to the runtime until the article's entities were extracted, by tier",
            ["tier"],
            buckets=ARTICLE_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "tierbatch_queue_depth",
            "Articles queued in the runtime, by tier",
            ["tier"],
            registry=r,
        )
        self.in_extractors = Gauge(
            "tierbatch_articles_in_extractors", "Articles held by extractors", registry=r
        )
        self.in_flight = Gauge(
            "tierbatch_in_flight_requests", "Requests in flight, by model", ["model"], registry=r
        )
        self.requests_today = Gauge(
            "tierbatch_requests_today",
            "Requests counted against today's requests-per-day quota, by model",
            ["model"],
            registry=r,
        )
        self.cooling = Gauge(
            "tierbatch_model_cooling_down",
            "1 while the model is in a cooldown or out of its daily quota",
            ["model"],
            registry=r,
        )
        self.cooldown_remaining = Gauge(
            "tierbatch_cooldown_remaining_seconds",
            "Seconds until the model's cooldown or daily exhaustion ends (0: none)",
            ["model"],
            registry=r,
        )
        self.configured_rpm = Gauge(
            "tierbatch_configured_rpm",
            "The configured requests-per-window limit, by model (0: none)",
            ["model"],
            registry=r,
        )
        self.learnt_rpm = Gauge(
            "tierbatch_learnt_rpm",
            "The requests-per-window limit learnt from the provider's answers, by model "
            "(the configured one until a 429 below it)",
            ["model"],
            registry=r,
        )
        self.configured_tpm = Gauge(
            "tierbatch_configured_tpm",
            "The configured input-tokens-per-window limit, by model (0: none)",
            ["model"],
            registry=r,
        )
        self.learnt_tpm = Gauge(
            "tierbatch_learnt_tpm",
            "The input-tokens-per-window limit learnt from the provider's answers, by model",
            ["model"],
            registry=r,
        )
        self.learnt_burst = Gauge(
            "tierbatch_learnt_burst",
            "Requests the pacing may send at once, learnt from the provider, by model",
            ["model"],
            registry=r,
        )
        self.limiter_shape = Gauge(
            "tierbatch_limiter_shape",
            "1 for the shape the model's limiter showed (window, bucket, unknown), else 0",
            ["model", "shape"],
            registry=r,
        )
        self.pack_size = Gauge(
            "tierbatch_pack_size",
            "Articles per request an adaptive tier packs now (tiers[].adaptive_pack)",
            ["tier"],
            registry=r,
        )
        self.budget_usd = Gauge(
            "tierbatch_budget_usd_per_day",
            "The daily budget in USD ([budget] usd_per_day; 0: none)",
            registry=r,
        )
        self.budget_spent = Gauge(
            "tierbatch_budget_spent_usd",
            "USD spent today (settled calls), by tier",
            ["tier"],
            registry=r,
        )
        self.budget_committed = Gauge(
            "tierbatch_budget_committed_usd",
            "USD committed today: spent plus the estimates of calls in flight, by tier",
            ["tier"],
            registry=r,
        )
        self.budget_stopped = Gauge(
            "tierbatch_budget_stopped",
            "1 while the daily budget lets the tier start no call",
            ["tier"],
            registry=r,
        )
        self.budget_batch = Gauge(
            "tierbatch_budget_batch_usd",
            "USD of today's batch jobs (settled, and in flight at their estimate), by tier",
            ["tier"],
            registry=r,
        )
        self.budget_moved = Gauge(
            "tierbatch_budget_moved_to_batch",
            "1 while the daily budget sends the tier's new work to the Batch API "
            '(budget.on_exhausted = "batch"; until midnight)',
            ["tier"],
            registry=r,
        )
        self.batch_jobs = Gauge(
            "tierbatch_batch_jobs_in_flight",
            "Batch jobs in flight at the Batch API (every daemon's of the database)",
            registry=r,
        )
        self.batch_articles = Gauge(
            "tierbatch_batch_articles_in_flight",
            "Articles of the batch jobs in flight",
            registry=r,
        )
        self.batch_held = Gauge(
            "tierbatch_batch_articles_held",
            "Articles waiting for a batch job that the daily budget cannot pay for now, by tier",
            ["tier"],
            registry=r,
        )
        self.budget_reset = Gauge(
            "tierbatch_budget_reset_seconds",
            "Seconds until the daily budget resets (the quota day's midnight)",
            registry=r,
        )
        self.db_articles = Gauge(
            "tierbatch_db_articles",
            "Articles in the database queue table, by state",
            ["state"],
            registry=r,
        )

    # ---- feeds -------------------------------------------------------------

    def count_results_from(self, counts: Callable[[], TallySnapshot]) -> None:
        """Export ``counts()`` (``Runtime.result_counts``: the one count of
        terminal results) as the article and entity counters, read at every scrape."""
        self._results.source = counts

    def observe_latency(self, results: Sequence[TerminalResult]) -> None:
        """Each done article's latency, into ``tierbatch_article_latency_seconds``."""
        for result in results:
            if isinstance(result, Done):
                self.article_latency.labels(result.tier).observe(result.latency_s)

    def update(
        self,
        stats: RuntimeStats,
        now: float,
        db_counts: Mapping[str, int] | None = None,
        *,
        wall_offset: float = 0.0,
        batch: BatchReport | None = None,
        batch_held: Mapping[str, int] | None = None,
    ) -> None:
        """Refresh the gauges from a ``Runtime.stats()`` taken at steady
        ``now``; ``wall_offset`` turns it into wall time (the budget's reset
        is a wall-clock time). ``batch``: the database's batch jobs (None:
        not read this time); ``batch_held``: articles the budget holds from a
        batch job, by tier."""
        for tier, depth in stats.queued_by_tier.items():
            self.queue_depth.labels(tier).set(depth)
        self.in_extractors.set(stats.in_extractors)
        for tier, size in stats.pack_sizes.items():
            self.pack_size.labels(tier).set(size)
        for status in stats.models:
            self.in_flight.labels(status.model).set(status.in_flight)
            self.requests_today.labels(status.model).set(status.requests_today)
            until = stats.cooldowns.get(status.model, 0.0)
            self.cooling.labels(status.model).set(1 if until > now else 0)
            self.cooldown_remaining.labels(status.model).set(max(0.0, until - now))
            self.configured_rpm.labels(status.model).set(status.configured_rpm)
            self.learnt_rpm.labels(status.model).set(status.learnt_rpm)
            self.configured_tpm.labels(status.model).set(status.configured_tpm)
            self.learnt_tpm.labels(status.model).set(status.learnt_tpm)
            self.learnt_burst.labels(status.model).set(status.burst)
            for shape in LIMITER_SHAPES:
                self.limiter_shape.labels(status.model, shape).set(
                    1 if status.limiter == shape else 0
                )
        budget = stats.budget
        if budget is not None:
            self.budget_usd.set(budget.usd_per_day)
            for row in budget.tiers:
                self.budget_spent.labels(row.tier).set(row.spent_usd)
                self.budget_committed.labels(row.tier).set(row.committed_usd)
                self.budget_stopped.labels(row.tier).set(0 if row.may_spend else 1)
                self.budget_batch.labels(row.tier).set(row.batch_usd)
                self.budget_moved.labels(row.tier).set(1 if row.moved else 0)
            self.budget_reset.set(max(0.0, budget.resets_at - (now + wall_offset)))
        if db_counts is not None:
            for state, count in db_counts.items():
                self.db_articles.labels(state).set(count)
        if batch is not None:
            self.batch_jobs.set(batch.in_flight)
            self.batch_articles.set(batch.articles_in_flight)
        if batch_held is not None:
            for tier, count in batch_held.items():
                self.batch_held.labels(tier).set(count)

    def serve(self, port: int) -> MetricsServer:
        """Serve ``/metrics`` on 127.0.0.1:``port`` (0: any free port)."""
        server, thread = start_http_server(port, addr=LOOPBACK, registry=self.registry)
        return MetricsServer(server, thread)


@dataclass(slots=True)
class MetricsServer:
    server: WSGIServer
    thread: Thread

    @property
    def port(self) -> int:
        return int(self.server.server_port)

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}/metrics"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5.0)


class _ResultCounters(Collector):
    """The article and entity counters, read from the runtime's count at scrape time
    (none before ``Metrics.count_results_from``)."""

    def __init__(self) -> None:
        self.source: Callable[[], TallySnapshot] | None = None

    def collect(self) -> Iterable[Metric]:
        articles = CounterMetricFamily(
            "tierbatch_articles",
            "Articles that reached a terminal result, by outcome (done, failed) and tier",
            labels=["outcome", "tier"],
        )
        failures = CounterMetricFamily(
            "tierbatch_articles_failed_by_reason", "Failed articles by reason", labels=["reason"]
        )
        entities = CounterMetricFamily(
            "tierbatch_entities",
            "Entities of done articles by the grounding check's outcome (grounded, "
            "cross_article, ungrounded; before any drop), model, tier and request pack size",
            labels=["model", "tier", "pack_size", "grounding"],
        )
        counts = self.source() if self.source is not None else TallySnapshot()
        for tier, done in sorted(counts.done_by_tier.items()):
            articles.add_metric(["done", tier], done)
        for tier, failed in sorted(counts.failed_by_tier.items()):
            articles.add_metric(["failed", tier], failed)
        for reason, failed in sorted(counts.failed_by_reason.items()):
            failures.add_metric([reason], failed)
        for row in counts.grounding:
            for outcome, n in (
                ("grounded", row.counts.grounded),
                ("cross_article", row.counts.cross_article),
                ("ungrounded", row.counts.ungrounded),
            ):
                entities.add_metric([row.model, row.tier, str(row.pack_size), outcome], n)
        return [articles, failures, entities]


class MetricsObserver:
    """A ``RegistryObserver`` feeding ``Metrics``; cheap enough for the hot path."""

    def __init__(self, metrics: Metrics) -> None:
        self._m = metrics

    def on_grant(self, grant: Grant, tier_rank: int) -> None:
        self._m.grants.labels(grant.model).inc()

    def on_sent(self, grant_id: int, model: str, at: float) -> None:
        pass

    def on_outcome(self, model: str, outcome: CallOutcome, at: float) -> None:
        self._m.requests.labels(model, outcome_label(outcome)).inc()
        if isinstance(outcome, RateLimited):
            self._m.rate_limited.labels(model, str(outcome.scope)).inc()
        usage = getattr(outcome, "usage", None)
        if usage is not None:
            self._m.tokens.labels(model, "input").inc(usage.input_tokens)
            self._m.tokens.labels(model, "output").inc(usage.output_tokens)

    def on_cooldown(self, model: str, start: float, until: float, reason: str) -> None:
        self._m.cooldowns.labels(model, reason).inc()


class TimedProvider:
    """Wraps a provider to time each call into ``Metrics.request_latency``."""

    def __init__(self, inner: Provider, metrics: Metrics) -> None:
        self.inner = inner
        self._m = metrics

    async def extract(self, request: ExtractionRequest) -> PackAnswer:
        started = time.perf_counter()
        answer = await self.inner.extract(request)
        self._m.request_latency.labels(request.model, outcome_label(answer.outcome)).observe(
            time.perf_counter() - started
        )
        return answer

    async def aclose(self) -> None:
        await self.inner.aclose()

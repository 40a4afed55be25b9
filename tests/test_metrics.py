"""Prometheus metrics: what the observer, the timed provider and the daemon
feed in, scraped over HTTP from 127.0.0.1 as Prometheus would."""

from __future__ import annotations

import asyncio
import io
import threading
import urllib.request
from dataclasses import replace
from pathlib import Path

import pytest
from cli_helpers import sample_lines, wait_until, write_config
from prometheus_client.parser import text_string_to_metric_families

from tierbatch.actors.clock import ScaledClock
from tierbatch.actors.ports import ExtractionRequest, PackAnswer
from tierbatch.actors.runtime import RuntimeStats
from tierbatch.adapters.app.cli import EXIT_OK, main
from tierbatch.adapters.app.daemon import Daemon, DaemonOptions, default_snapshot_path
from tierbatch.adapters.app.metrics import (
    LOOPBACK,
    Metrics,
    MetricsObserver,
    TimedProvider,
    outcome_label,
)
from tierbatch.adapters.app.provider_factory import make_provider
from tierbatch.adapters.storage.config_file import load_config
from tierbatch.adapters.storage.ingest import ingest_jsonl
from tierbatch.adapters.storage.snapshot_file import SnapshotFile
from tierbatch.adapters.storage.sqlite_store import SqliteStore, default_owner
from tierbatch.policies.articles import Article
from tierbatch.policies.budget import BudgetState, TierBudget
from tierbatch.policies.budget_config import OnExhausted
from tierbatch.policies.grounding import GroundingCounts
from tierbatch.policies.outcomes import (
    RateLimited,
    RateLimitScope,
    ServerError,
    Succeeded,
    Usage,
)
from tierbatch.policies.quota import Grant, ModelStatus
from tierbatch.policies.results import Done, Failed, FailureReason

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Samples:
    """Every sample as (name, sorted labels) -> value."""
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def stats(now: float) -> RuntimeStats:
    status = ModelStatus(
        model="m-pro",
        requests_in_window=3,
        tokens_in_window=300,
        requests_today=42,
        in_flight=2,
        cooldown_until=now + 30,
        cooldown_reason="rate_limited",
        exhausted_until=None,
        unavailable=None,
        counters={},
    )
    return RuntimeStats(
        submitted=10,
        queued=4,
        queued_by_tier={"hot": 1, "cold": 3},
        in_extractors=5,
        in_flight_requests=2,
        done=1,
        failed=0,
        done_by_tier={"hot": 1},
        failed_by_tier={},
        done_by_model={"m-pro": 1},
        failed_by_reason={},
        fallbacks=0,
        requeued_after_crash=0,
        models=(status,),
        cooldowns={"m-pro": now + 30},
        paused=None,
    )


class AnsweringProvider:
    def __init__(self, answer: PackAnswer) -> None:
        self.answer = answer

    async def extract(self, request: ExtractionRequest) -> PackAnswer:
        return self.answer

    async def aclose(self) -> None:
        pass


def test_outcome_labels() -> None:
    assert outcome_label(RateLimited(RateLimitScope.UNKNOWN, None)) == "rate_limited"
    assert outcome_label(ServerError(503)) == "server_error"
    assert outcome_label(Succeeded(Usage(1, 2))) == "succeeded"


def test_every_feed_reaches_the_loopback_endpoint() -> None:
    metrics = Metrics()
    observer = MetricsObserver(metrics)
    observer.on_grant(Grant(1, "m-pro", 100.0, 500), 0)
    observer.on_outcome("m-pro", Succeeded(Usage(500, 80)), 101.0)
    observer.on_grant(Grant(2, "m-pro", 102.0, 500), 0)
    observer.on_outcome("m-pro", RateLimited(RateLimitScope.REQUESTS_PER_MINUTE, 26.0), 102.5)
    observer.on_cooldown("m-pro", 102.5, 128.5, "rate_limited")
    metrics.observe_results(
        [
            Done("a", (), "m-pro", "hot", 1, 250, 40, 1.5),
            Failed("b", FailureReason.TIMEOUT, "slow", "cold", 3),
        ]
    )
    metrics.update(stats(1000.0), 1000.0, {"queued": 7, "leased": 5, "done": 1, "failed": 1})
    timed = TimedProvider(AnsweringProvider(PackAnswer(ServerError(500))), metrics)
    request = ExtractionRequest("m-pro", (Article("a", "text"),), 5.0, 100)
    assert isinstance(asyncio.run(timed.extract(request)).outcome, ServerError)
    server = metrics.serve(0)
    try:
        assert server.server.server_address[0] == LOOPBACK
        samples = scrape(server.url)
    finally:
        server.close()
    assert value(samples, "tierbatch_requests_granted_total", model="m-pro") == 2
    assert value(samples, "tierbatch_requests_total", model="m-pro", outcome="succeeded") == 1
    assert value(samples, "tierbatch_requests_total", model="m-pro", outcome="rate_limited") == 1
    assert (
        value(samples, "tierbatch_rate_limited_total", model="m-pro", scope="requests_per_minute")
        == 1
    )
    assert value(samples, "tierbatch_cooldowns_total", model="m-pro", reason="rate_limited") == 1
    assert value(samples, "tierbatch_tokens_total", model="m-pro", direction="input") == 500
    assert value(samples, "tierbatch_articles_total", outcome="done", tier="hot") == 1
    assert value(samples, "tierbatch_articles_total", outcome="failed", tier="cold") == 1
    assert value(samples, "tierbatch_articles_failed_by_reason_total", reason="timeout") == 1
    assert value(samples, "tierbatch_article_latency_seconds_count", tier="hot") == 1
    assert value(samples, "tierbatch_article_latency_seconds_sum", tier="hot") == 1.5
    assert (
        value(
            samples,
            "tierbatch_request_latency_seconds_count",
            model="m-pro",
            outcome="server_error",
        )
        == 1
    )
    assert value(samples, "tierbatch_queue_depth", tier="cold") == 3
    assert value(samples, "tierbatch_articles_in_extractors") == 5
    assert value(samples, "tierbatch_in_flight_requests", model="m-pro") == 2
    assert value(samples, "tierbatch_requests_today", model="m-pro") == 42
    assert value(samples, "tierbatch_model_cooling_down", model="m-pro") == 1
    assert value(samples, "tierbatch_cooldown_remaining_seconds", model="m-pro") == 30
    assert value(samples, "tierbatch_db_articles", state="leased") == 5


def test_a_running_daemon_exports_its_work(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path / "c.toml"))
    clock = ScaledClock(speed=50.0)
    provider, _ = make_provider(config, clock)
    db = tmp_path / "m.sqlite"
    store = SqliteStore(db, owner=default_owner())
    ingest_jsonl(store, io.BytesIO("\n".join(sample_lines(30)).encode()), source_name="t")
    metrics = Metrics()
    server = metrics.serve(0)
    daemon = Daemon(
        config,
        store,
        provider=provider,
        snapshot=SnapshotFile(default_snapshot_path(db)),
        options=DaemonOptions(poll_interval_s=0.05, db_count_interval_s=0.05),
        clock=clock,
        metrics=metrics,
    )
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()
    try:
        wait_until(
            lambda: (
                value(scrape(server.url), "tierbatch_articles_total", outcome="done", tier="hot")
                == 30
            ),
            30,
            "30 articles counted done",
        )
        wait_until(
            lambda: value(scrape(server.url), "tierbatch_db_articles", state="done") == 30,
            30,
            "the database gauge to catch up",
        )
        samples = scrape(server.url)
    finally:
        daemon.request_stop()
        thread.join(30)
        server.close()
        store.close()
    requests = value(samples, "tierbatch_requests_total", model="m-pro", outcome="succeeded")
    assert requests == value(samples, "tierbatch_requests_granted_total", model="m-pro") >= 15
    assert (
        value(
            samples, "tierbatch_request_latency_seconds_count", model="m-pro", outcome="succeeded"
        )
        == requests
    )
    assert value(samples, "tierbatch_article_latency_seconds_count", tier="hot") == 30
    assert value(samples, "tierbatch_db_articles", state="queued") == 0


def test_cli_announces_the_metrics_endpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    config = write_config(tmp_path / "c.toml")
    articles = tmp_path / "in.jsonl"
    articles.write_text("\n".join(sample_lines(4)) + "\n")
    out, err = io.StringIO(), io.StringIO()
    code = main(
        [
            "run",
            str(articles),
            "--db",
            str(tmp_path / "r.sqlite"),
            "--config",
            str(config),
            "--metrics-port",
            "0",
            "--no-progress",
        ],
        stdout=out,
        stderr=err,
    )
    assert code == EXIT_OK, err.getvalue()
    assert f"metrics: http://{LOOPBACK}:" in out.getvalue()


def test_grounding_outcomes_and_adaptive_pack_sizes_are_exported() -> None:
    metrics = Metrics()
    counts = GroundingCounts(grounded=7, cross_article=2, ungrounded=1)
    metrics.observe_results(
        [
            Done("a", (), "m-pro", "hot", 1, 250, 40, 1.5, grounding=counts, pack_size=4),
            Done("b", (), "m-pro", "hot", 1, 250, 40, 1.5, grounding=counts, pack_size=4),
            Done("c", (), "m-pro", "hot", 1, 250, 40, 1.5),  # before the check: not counted
        ]
    )
    metrics.update(replace(stats(1000.0), pack_sizes={"hot": 2}), 1000.0)
    server = metrics.serve(0)
    try:
        samples = scrape(server.url)
    finally:
        server.close()

    def entities(outcome: str) -> float:
        labels = {"model": "m-pro", "tier": "hot", "pack_size": "4", "grounding": outcome}
        return value(samples, "tierbatch_entities_total", **labels)

    assert (entities("grounded"), entities("cross_article"), entities("ungrounded")) == (14, 4, 2)
    assert value(samples, "tierbatch_pack_size", tier="hot") == 2


def test_the_daily_budget_is_exported() -> None:
    budget = BudgetState(
        usd_per_day=5.0,
        day=1,
        spent_usd=4.5,
        committed_usd=5.25,
        resets_at=2000.0 + 3600.0,
        on_exhausted=OnExhausted.STOP,
        tiers=(
            TierBudget("hot", 4.0, 4.5, None, 0.0, True),
            TierBudget("cold", 0.5, 0.75, None, 0.0, False),
        ),
    )
    metrics = Metrics()
    metrics.update(replace(stats(1000.0), budget=budget), 1000.0, wall_offset=1000.0)
    server = metrics.serve(0)
    try:
        samples = scrape(server.url)
    finally:
        server.close()
    assert value(samples, "tierbatch_budget_usd_per_day") == 5.0
    assert value(samples, "tierbatch_budget_spent_usd", tier="hot") == 4.0
    assert value(samples, "tierbatch_budget_committed_usd", tier="cold") == 0.75
    assert value(samples, "tierbatch_budget_stopped", tier="cold") == 1
    assert value(samples, "tierbatch_budget_stopped", tier="hot") == 0
    assert value(samples, "tierbatch_budget_reset_seconds") == 3600.0

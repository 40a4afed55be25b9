"""Batch jobs end to end against the local fake server: the dispatcher
thread, the durable job rows of the SQLite store and the Batch API client.
The server runs on a test clock, so a job's turnaround passes when the
test moves it; everything else waits on the database, never on sleeps."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import wait_until
from provider_contract import ARTICLES
from test_fake_gemini_batch import ManualClock

from tierbatch.adapters.app.batch_dispatcher import BatchDispatcher
from tierbatch.adapters.gemini.batch_client import BatchItem, GeminiBatchClient
from tierbatch.adapters.simulation.batch_emulator import BatchFaultRates, BatchSettings
from tierbatch.adapters.simulation.fake_gemini import FakeGeminiServer
from tierbatch.adapters.simulation.gemini_emulator import FakeGeminiConfig
from tierbatch.adapters.storage.batch_store import BatchJobStore
from tierbatch.adapters.storage.sqlite_store import SqliteStore
from tierbatch.adapters.storage.store import StorageError
from tierbatch.policies.articles import Article
from tierbatch.policies.batch_jobs import JobRequest
from tierbatch.policies.config import Config, ProviderConfig, parse_config
from tierbatch.policies.results import Done, Failed
from tierbatch.policies.task import task_version

KEY = "batch-test-KEY-0123456789"
MODEL = "gemini-2.5-flash"
TURNAROUND_S = 3600.0
PRICE_IN, PRICE_OUT = 0.30, 2.50


def config(**batch: Any) -> Config:
    batch = {"poll_interval_s": 0.05, "collect_s": 0.0, **batch}
    return parse_config(
        {
            "global_fallback": MODEL,
            "models": {
                MODEL: {
                    "rpm": 1000,
                    "tpm": 1_000_000,
                    "rpd": 0,
                    "price_in_per_m": PRICE_IN,
                    "price_out_per_m": PRICE_OUT,
                }
            },
            "tiers": [
                {
                    "name": "cold",
                    "min_priority": 0.0,
                    "model": MODEL,
                    "max_articles_per_request": 2,
                    "mode": "batch",
                }
            ],
            "composer": {"mix": {"cold": 1}},
            "batch": batch,
        }
    )


def articles(n: int) -> list[Article]:
    """``n`` articles with the shared fixtures' texts (ids made unique)."""
    base = [ARTICLES[i % len(ARTICLES)] for i in range(n)]
    return [Article(id=f"b{i}", title=a.title, text=a.text) for i, a in enumerate(base)]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


def serve(clock: ManualClock, faults: BatchFaultRates | None = None) -> FakeGeminiServer:
    settings = BatchSettings(
        pending_s=60.0, turnaround_s=TURNAROUND_S, faults=faults or BatchFaultRates()
    )
    server = FakeGeminiServer(FakeGeminiConfig(batch=settings, seed=7), clock=clock)
    server.start()
    return server


@pytest.fixture
def server(clock: ManualClock) -> Iterator[FakeGeminiServer]:
    s = serve(clock)
    yield s
    s.stop()


class Setup:
    """A store with ``n`` leased articles and a running dispatcher."""

    def __init__(
        self,
        tmp_path: Path,
        server: FakeGeminiServer,
        cfg: Config,
        n: int,
        *,
        owner: str = "daemon-1",
        inline_limit_bytes: int | None = None,
        lease_s: float = 60.0,
        enqueue: bool = True,
    ) -> None:
        self.db = tmp_path / "q.sqlite"
        self.store = SqliteStore(self.db, owner=owner)
        self.articles = articles(n)
        if enqueue:
            self.store.enqueue(self.articles)
            assert len(self.store.lease(n, 600)) == n
        self.jobs = BatchJobStore(self.store, give_up_s=cfg.batch.give_up_s)
        extra = {} if inline_limit_bytes is None else {"inline_limit_bytes": inline_limit_bytes}
        self.client = GeminiBatchClient(
            ProviderConfig(base_url=server.base_url), api_key=KEY, **extra
        )
        self.dispatcher = BatchDispatcher(cfg, self.jobs, self.client, lease_s=lease_s, tick_s=0.01)

    def start(self, route: bool = True) -> Setup:
        self.dispatcher.start()
        if route:
            self.dispatcher.add([("cold", a) for a in self.articles])
        return self

    def phases(self) -> list[str]:
        return [j["phase"] for j in self.jobs.jobs()]

    def wait_phase(self, phase: str) -> None:
        def reached() -> bool:
            self.dispatcher.poll_now()
            phases = self.phases()
            return bool(phases) and all(p == phase for p in phases)

        wait_until(reached, 20, f"every job {phase}")

    def results(self) -> dict[str, Any]:
        return {r.article_id: r for r in self.store.results()}

    def close(self) -> None:
        self.dispatcher.stop()
        self.store.close()


def creates(server: FakeGeminiServer) -> int:
    return sum(r.method == "batches.create" for r in server.log)


def test_inline_job_settles_every_article_once_at_the_batch_price(
    tmp_path: Path, server: FakeGeminiServer, clock: ManualClock
) -> None:
    setup = Setup(tmp_path, server, config(), 5).start()
    try:
        setup.wait_phase("submitted")
        assert creates(server) == 1
        assert "files.upload" not in [r.method for r in server.log]
        assert setup.store.counts()["leased"] == 5  # held by the job, not by the daemon
        assert setup.store.release() == 0  # a daemon's stop leaves them alone
        clock.advance(TURNAROUND_S)
        setup.wait_phase("settled")
        results = setup.results()
        assert set(results) == {a.id for a in setup.articles}
        assert all(isinstance(r, Done) and r.model == MODEL for r in results.values())
        assert all(r.grounding is not None and r.pack_size in (1, 2) for r in results.values())
        assert {r.task_version for r in results.values()} == {task_version(config().task)}
        (job,) = setup.jobs.jobs()
        assert job["cost_usd"] > 0
        assert job["cost_usd"] == pytest.approx(job["interactive_cost_usd"] / 2)
        assert sum(r.cost_usd for r in results.values()) == pytest.approx(job["cost_usd"])
        report = setup.jobs.report()
        assert (report.in_flight, report.settled) == (0, 1)
        assert report.saved_usd == pytest.approx(job["cost_usd"])
        assert setup.store.counts()["done"] == 5
        assert creates(server) == 1
    finally:
        setup.close()


def test_file_source_job_settles(
    tmp_path: Path, server: FakeGeminiServer, clock: ManualClock
) -> None:
    setup = Setup(tmp_path, server, config(), 4, inline_limit_bytes=0).start()
    try:
        setup.wait_phase("submitted")
        assert "files.upload" in [r.method for r in server.log]
        clock.advance(TURNAROUND_S)
        setup.wait_phase("settled")
        assert all(isinstance(r, Done) for r in setup.results().values())
        assert len(setup.results()) == 4
    finally:
        setup.close()


def test_failed_request_inside_a_job_fails_only_its_articles(
    tmp_path: Path, clock: ManualClock
) -> None:
    server = serve(clock, BatchFaultRates(request_failure=0.5))
    setup = Setup(tmp_path, server, config(), 12).start()
    try:
        setup.wait_phase("submitted")
        clock.advance(TURNAROUND_S)
        setup.wait_phase("settled")
        results = setup.results()
        assert len(results) == 12
        failed = {i for i, r in results.items() if isinstance(r, Failed)}
        done = {i for i, r in results.items() if isinstance(r, Done)}
        assert failed and done  # seeded: some requests failed, the others answered
        assert all("request r" in results[i].detail for i in failed)
        # a failed request takes down its own pack only: whole packs fail
        (job,) = setup.jobs.jobs()
        assert job["detail"].endswith("failed requests")
        assert setup.store.counts()["leased"] == 0
    finally:
        setup.close()
        server.stop()


@pytest.mark.parametrize("fault", ["job_failure", "expiry"])
def test_failed_or_expired_job_gives_its_articles_back_to_the_queue(
    tmp_path: Path, clock: ManualClock, fault: str
) -> None:
    server = serve(clock, BatchFaultRates(**{fault: 1.0}))
    setup = Setup(tmp_path, server, config(), 3).start()
    try:
        setup.wait_phase("submitted")
        clock.advance(TURNAROUND_S)
        setup.wait_phase("returned")
        (job,) = setup.jobs.jobs()
        assert job["api_state"] == ("failed" if fault == "job_failure" else "expired")
        assert setup.results() == {}
        counts = setup.store.counts()
        assert (counts["queued"], counts["leased"]) == (3, 0)
        assert setup.dispatcher.take_interactive() == []
    finally:
        setup.close()
        server.stop()


def test_expired_job_goes_to_interactive_calls_when_configured(
    tmp_path: Path, clock: ManualClock
) -> None:
    server = serve(clock, BatchFaultRates(expiry=1.0))
    setup = Setup(tmp_path, server, config(on_job_failure="interactive"), 3).start()
    try:
        setup.wait_phase("submitted")
        clock.advance(TURNAROUND_S)
        setup.wait_phase("returned")
        back = setup.dispatcher.take_interactive()
        assert sorted(a.id for a in back) == sorted(a.id for a in setup.articles)
        # leased to this daemon again, for its interactive calls
        assert setup.store.release() == 3
    finally:
        setup.close()
        server.stop()


def _submitting_row(setup: Setup, job_id: str) -> tuple[JobRequest, ...]:
    """What a daemon killed right after ``begin`` left behind."""
    requests = [JobRequest("r0", tuple(a.id for a in setup.articles))]
    return setup.jobs.begin(job_id, "cold", MODEL, requests, poll_lease_s=0.0)


def test_nameless_row_whose_job_was_created_is_found_and_not_resubmitted(
    tmp_path: Path, server: FakeGeminiServer, clock: ManualClock
) -> None:
    setup = Setup(tmp_path, server, config(), 2, owner="dead-daemon")
    kept = _submitting_row(setup, "tierbatch-crashed-1")
    # The job reached the API, but its name was never stored.
    items = [BatchItem(r.key, tuple(setup.articles)) for r in kept]
    asyncio.run(setup.client.submit(MODEL, items, display_name="tierbatch-crashed-1"))
    setup.store.close()
    again = Setup(tmp_path, server, config(), 2, owner="daemon-2", enqueue=False).start(route=False)
    try:
        again.wait_phase("submitted")
        assert creates(server) == 1
        clock.advance(TURNAROUND_S)
        again.wait_phase("settled")
        assert len(again.results()) == 2
        assert creates(server) == 1
    finally:
        again.close()


def test_nameless_row_whose_job_never_reached_the_api_gives_articles_back(
    tmp_path: Path, server: FakeGeminiServer
) -> None:
    setup = Setup(tmp_path, server, config(), 2, owner="dead-daemon")
    _submitting_row(setup, "tierbatch-crashed-2")
    setup.store.close()
    again = Setup(tmp_path, server, config(), 2, owner="daemon-2", enqueue=False).start(route=False)
    try:
        again.wait_phase("returned")
        assert creates(server) == 0
        assert again.store.counts()["queued"] == 2
    finally:
        again.close()


def test_a_refused_job_sends_its_articles_to_interactive_calls(
    tmp_path: Path, clock: ManualClock
) -> None:
    settings = BatchSettings(pending_s=60.0, turnaround_s=TURNAROUND_S)
    server = FakeGeminiServer(
        FakeGeminiConfig(batch=settings, without_batch=frozenset({MODEL})), clock=clock
    )
    server.start()
    setup = Setup(tmp_path, server, config(), 3).start()
    try:
        setup.wait_phase("returned")
        (job,) = setup.jobs.jobs()
        assert job["detail"].startswith("not created")
        back: list[Article] = []
        wait_until(lambda: bool(back.extend(setup.dispatcher.take_interactive()) or back), 10, "")
        assert sorted(a.id for a in back) == ["b0", "b1", "b2"]
        assert setup.store.release() == 3  # leased to this daemon again
    finally:
        setup.close()
        server.stop()


def test_articles_whose_job_row_could_not_be_written_are_submitted_later(
    tmp_path: Path, server: FakeGeminiServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    setup = Setup(tmp_path, server, config(), 3)
    real_begin = setup.jobs.begin
    failures = iter([True])

    def flaky_begin(*args: Any, **kwargs: Any) -> Any:
        if next(failures, False):
            raise StorageError("disk full")
        return real_begin(*args, **kwargs)

    monkeypatch.setattr(setup.jobs, "begin", flaky_begin)
    setup.start()
    try:
        setup.wait_phase("submitted")
        (job,) = setup.jobs.jobs()
        assert job["articles"] == 3
        assert creates(server) == 1
    finally:
        setup.close()

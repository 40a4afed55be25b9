"""The batch jobs table over both stores (SQLite and PostgreSQL): the row
is written with its article ids before the job exists, the articles are
held by the job (no daemon leases them, a daemon's stop leaves them), a
job is settled exactly once, a dead daemon's jobs are taken over once its
poll lease expires, and a returned job's articles go back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from store_backends import Backend, FakeClock, PostgresBackend, SqliteBackend, article, done

from tierbatch.adapters.storage.batch_store import BatchJobStore, job_owner
from tierbatch.policies.batch_jobs import JobPhase, JobRequest


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "sqlite":
        return SqliteBackend(tmp_path)
    return PostgresBackend(request.getfixturevalue("postgres_url"))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


REQUESTS = [JobRequest("r0", ("1", "2")), JobRequest("r1", ("3",))]


def leased_store(backend: Backend, clock: FakeClock, owner: str = "owner-a") -> Any:
    store = backend.open(owner, clock)  # type: ignore[attr-defined]
    store.enqueue([article(i) for i in range(1, 5)])
    assert len(store.lease(4, 60)) == 4
    return store


def test_begin_hands_the_leases_to_the_job_and_settle_writes_once(
    backend: Backend, clock: FakeClock
) -> None:
    with leased_store(backend, clock) as store:
        jobs = BatchJobStore(store, give_up_s=3600)
        kept = jobs.begin("j1", "cold", "m", [*REQUESTS, JobRequest("r2", ("x",))], 30)
        assert kept == tuple(REQUESTS)  # "x" is not ours: left out, its request dropped
        (record,) = jobs.claim(30)
        assert (record.phase, record.name, record.article_ids) == (
            JobPhase.SUBMITTING,
            None,
            ("1", "2", "3"),
        )
        assert store.release() == 1  # only "4": the job's articles stay with the job
        assert store.lease(10, 60)[0].id == "4"
        assert backend.query(
            "SELECT COUNT(*) FROM articles WHERE lease_owner = ?", (job_owner("j1"),)
        ) == [(3,)]
        assert jobs.named("j1", "batches/abc")
        assert not jobs.named("j1", "batches/other")  # only a submitting row takes a name
        assert sorted(jobs.articles("j1")) == ["1", "2", "3"]
        results = [done("1"), done("2")]
        assert jobs.settle("j1", results, cost_usd=1.0, interactive_cost_usd=2.0, detail="") == 2
        assert jobs.settle("j1", results, cost_usd=1.0, interactive_cost_usd=2.0, detail="") == 0
        counts = store.counts()
        # "3" had no result: back to the queue; "4" is leased by owner-a
        assert (counts["done"], counts["queued"], counts["leased"]) == (2, 1, 1)
        report = jobs.report()
        assert (report.in_flight, report.settled, report.saved_usd) == (0, 1, 1.0)
        assert jobs.claim(30) == []


def test_a_dead_daemons_jobs_are_taken_over_after_its_poll_lease(
    backend: Backend, clock: FakeClock
) -> None:
    with leased_store(backend, clock, "dead") as dead:
        BatchJobStore(dead, give_up_s=3600).begin("j1", "cold", "m", REQUESTS, 30)
    with backend.open("alive", clock) as store:  # type: ignore[attr-defined]
        jobs = BatchJobStore(store, give_up_s=3600)
        assert jobs.claim(30) == []  # the dead daemon's poll lease still runs
        clock.now += 61  # past the poll lease and the dead daemon's own article leases
        (record,) = jobs.claim(30)
        assert record.job_id == "j1"
        # only "4" (an expired lease) is leased again: the job's articles stay with the job
        assert [a.id for a in store.lease(10, 60)] == ["4"]
        assert (
            jobs.give_back("j1", api_state=None, detail="never created", to_owner_for_s=None) == []
        )
        assert store.counts()["queued"] == 3
        assert jobs.report().returned == 1
        # the job's lease stays a strike, so failing jobs cannot go round for ever
        assert backend.query("SELECT attempts FROM articles WHERE id = '1'") == [(1,)]


def test_give_back_to_interactive_leases_the_articles_to_this_owner(
    backend: Backend, clock: FakeClock
) -> None:
    with leased_store(backend, clock) as store:
        jobs = BatchJobStore(store, give_up_s=3600)
        jobs.begin("j1", "cold", "m", REQUESTS, 30)
        jobs.named("j1", "batches/abc")
        back = jobs.give_back("j1", api_state="expired", detail="job expired", to_owner_for_s=60)
        assert sorted(a.id for a in back) == ["1", "2", "3"]
        assert store.write_results([done("1")]) == 1  # this owner's lease again
        assert store.release() == 3  # "2", "3" and "4"
        assert jobs.give_back("j1", api_state=None, detail="", to_owner_for_s=60) == []

"""The SQLite queue, results and rejects: leasing, exactly-once results, concurrency."""

from __future__ import annotations

import io
import json
import multiprocessing
import sqlite3
import tempfile
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from runtime_helpers import ScriptedProvider, make_articles, small_config

from tierbatch.actors.clock import ScaledClock
from tierbatch.actors.ports import Sink
from tierbatch.actors.runtime import Runtime
from tierbatch.adapters.app.status_report import read_status, render_status
from tierbatch.adapters.storage.ingest import IngestReport, ingest_jsonl
from tierbatch.adapters.storage.results_sink import ResultsNotWritten, ResultsSink
from tierbatch.adapters.storage.sqlite_store import (
    _LEASE_COLUMNS,
    EnqueueReport,
    IncompatibleSchema,
    ResultCount,
    SqliteStore,
    StorageError,
    default_owner,
)
from tierbatch.policies.articles import Article
from tierbatch.policies.results import (
    Done,
    Entity,
    EntityType,
    Failed,
    FailureReason,
    TerminalResult,
)


class FakeClock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def article(i: int | str, **kwargs: object) -> Article:
    return Article(id=str(i), text=f"text of {i}", **kwargs)  # type: ignore[arg-type]


def done(article_id: str, model: str = "gemini-a", tier: str = "high") -> Done:
    return Done(
        article_id=article_id,
        entities=(Entity("Ada Lovelace", EntityType.PERSON, 0.9, 2),),
        model=model,
        tier=tier,
        attempts=1,
        input_tokens=100,
        output_tokens=20,
        latency_s=1.5,
        cost_usd=0.001,
        fallback=model != "gemini-a",
        metadata={"lang": "en"},
    )


def failed(article_id: str) -> Failed:
    return Failed(
        article_id=article_id,
        reason=FailureReason.RETRIES_EXHAUSTED,
        detail="gemini-a: 429 x3",
        tier="low",
        attempts=3,
        last_model="gemini-a",
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "queue.db"


@pytest.fixture
def store(db: Path, clock: FakeClock) -> Iterator[SqliteStore]:
    with SqliteStore(db, owner="owner-a", clock=clock) as s:
        yield s


def raw(db: Path) -> sqlite3.Connection:
    return sqlite3.connect(db, isolation_level=None, timeout=5)


# -- schema and settings ------------------------------------------------------


def test_the_database_is_in_wal_mode_with_a_schema_version(store: SqliteStore, db: Path) -> None:
    conn = raw(db)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == ("1",)
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"articles", "results", "rejects", "meta"} <= tables
    assert store._conn().execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL


def test_an_incompatible_schema_version_is_refused(db: Path, clock: FakeClock) -> None:
    SqliteStore(db, owner="a", clock=clock).close()
    raw(db).execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(IncompatibleSchema, match="schema version 99"):
        SqliteStore(db, owner="a", clock=clock)


def test_an_in_memory_database_is_refused() -> None:
    with pytest.raises(ValueError, match="file"):
        SqliteStore(":memory:", owner="a")


def test_default_owner_is_unique_per_call() -> None:
    assert default_owner() != default_owner()
    assert default_owner().count(":") == 2


def test_lease_queries_use_indexes_so_their_cost_does_not_grow_with_the_table(
    store: SqliteStore,
) -> None:
    store.enqueue(article(i) for i in range(50))
    conn = store._conn()
    queries = [
        (
            f"SELECT {_LEASE_COLUMNS} FROM articles INDEXED BY articles_queue_order"
            " WHERE state = 'queued' ORDER BY priority DESC, enqueued_at LIMIT 10"
        ),
        (
            f"SELECT {_LEASE_COLUMNS} FROM articles WHERE state = 'leased' AND lease_expires < 1"
            " ORDER BY lease_expires LIMIT 10"
        ),
        "UPDATE articles SET lease_expires = 1 WHERE lease_owner = 'x' AND state = 'leased'",
    ]
    for query in queries:
        plan = " ".join(row[-1] for row in conn.execute("EXPLAIN QUERY PLAN " + query))
        assert "USING INDEX" in plan, (query, plan)
        assert "TEMP B-TREE" not in plan, (query, plan)


# -- enqueue and lease ---------------------------------------------------------


def test_enqueue_counts_duplicates_and_never_replaces(store: SqliteStore) -> None:
    assert store.enqueue([article(1), article(2)]) == EnqueueReport(inserted=2, duplicates=0)
    replacement = Article(id="1", text="a different text")
    assert store.enqueue([replacement, article(3), article(3)]) == EnqueueReport(1, 2)
    (leased,) = [a for a in store.lease(10, 60) if a.id == "1"]
    assert leased.text == "text of 1"


def test_lease_returns_oldest_first_and_marks_the_rows(
    store: SqliteStore, clock: FakeClock, db: Path
) -> None:
    store.enqueue([article("old")])
    clock.now += 1
    store.enqueue([article(f"n{i}") for i in range(5)])
    assert [a.id for a in store.lease(3, 60)] == ["old", "n0", "n1"]
    assert [a.id for a in store.lease(10, 60)] == ["n2", "n3", "n4"]
    assert store.lease(10, 60) == []
    rows = raw(db).execute("SELECT state, lease_owner, lease_expires, attempts FROM articles")
    assert set(rows) == {("leased", "owner-a", clock.now + 60, 1)}
    assert store.counts() == {"queued": 0, "leased": 6, "done": 0, "failed": 0}
    assert store.pending() == 6


def test_a_stored_priority_is_leased_first(store: SqliteStore) -> None:
    priorities = {"a": None, "b": 0.2, "c": 0.9, "d": None}
    store.enqueue([article(i) for i in "abcd"], priority_of=lambda a: priorities[a.id])
    assert [a.id for a in store.lease(4, 60)] == ["c", "b", "a", "d"]


def test_a_leased_article_round_trips_with_its_metadata(store: SqliteStore) -> None:
    original = Article(
        id="x",
        text="Body",
        title="T",
        url="https://www.bbc.co.uk/news/1",
        cluster_id="c1",
        published_at=datetime(2026, 11, 27, 9, 30, tzinfo=UTC),
        metadata={"lang": "en", "score": 3},
    )
    store.enqueue([original])
    (leased,) = store.lease(1, 60)
    assert leased == original
    assert dict(leased.metadata) == {"lang": "en", "score": 3}


def test_lease_with_a_non_positive_limit_takes_nothing(store: SqliteStore) -> None:
    store.enqueue([article(1)])
    assert store.lease(0, 60) == []
    assert store.counts()["queued"] == 1


def test_an_expired_lease_is_taken_over_by_another_owner(
    store: SqliteStore, db: Path, clock: FakeClock
) -> None:
    store.enqueue([article(1), article(2)])
    assert len(store.lease(2, 30)) == 2
    with SqliteStore(db, owner="owner-b", clock=clock) as other:
        assert other.lease(10, 30) == []  # still held
        clock.now += 31
        assert sorted(a.id for a in other.lease(10, 30)) == ["1", "2"]
    rows = raw(db).execute("SELECT lease_owner, attempts FROM articles").fetchall()
    assert rows == [("owner-b", 2), ("owner-b", 2)]


def test_renew_keeps_the_lease_of_the_owner_only(
    store: SqliteStore, db: Path, clock: FakeClock
) -> None:
    store.enqueue([article(i) for i in range(3)])
    store.lease(2, 30)
    with SqliteStore(db, owner="owner-b", clock=clock) as other:
        other.lease(1, 30)
        clock.now += 20
        assert store.renew(30) == 2
        clock.now += 20  # past the first deadline, within the renewed one
        assert other.lease(10, 30) == []  # its own lease is never "expired" to itself
        expires = dict(raw(db).execute("SELECT id, lease_expires FROM articles").fetchall())
        assert expires == {"0": clock.now + 10, "1": clock.now + 10, "2": clock.now - 10}
        clock.now += 11
        assert [a.id for a in other.lease(10, 30)] == ["0", "1"]


def test_release_returns_only_this_owners_leases_to_the_queue(
    store: SqliteStore, db: Path, clock: FakeClock
) -> None:
    store.enqueue([article(i) for i in range(4)])
    mine = store.lease(3, 60)
    with SqliteStore(db, owner="owner-b", clock=clock) as other:
        (theirs,) = other.lease(1, 60)
        assert store.release([mine[0].id, theirs.id, "unknown"]) == 1
        assert store.counts()["queued"] == 1
        assert store.release() == 2
        assert store.counts() == {"queued": 3, "leased": 1, "done": 0, "failed": 0}
        assert other.release() == 1
    conn = raw(db)
    assert conn.execute("SELECT COUNT(*) FROM articles WHERE lease_owner IS NOT NULL").fetchone()
    assert [a.id for a in store.lease(10, 60)] == ["0", "1", "2", "3"]


def test_another_process_can_insert_with_only_id_and_payload(
    store: SqliteStore, db: Path, clock: FakeClock
) -> None:
    payload = json.dumps({"id": "ext-1", "text": "from elsewhere", "feed": "rss"})
    raw(db).execute("INSERT INTO articles (id, payload) VALUES (?, ?)", ("ext-1", payload))
    (leased,) = store.lease(5, 60)
    assert leased.id == "ext-1"
    assert dict(leased.metadata) == {"feed": "rss"}


def test_an_invalid_payload_fails_its_article_instead_of_being_leased(
    store: SqliteStore, db: Path
) -> None:
    conn = raw(db)
    conn.execute("INSERT INTO articles (id, payload) VALUES ('bad', '{\"id\": \"bad\"}')")
    conn.execute(
        'INSERT INTO articles (id, payload) VALUES (\'alias\', \'{"id": "z", "text": "t"}\')'
    )
    store.enqueue([article("good")])
    assert [a.id for a in store.lease(10, 60)] == ["good"]
    results = {r.article_id: r for r in store.results()}
    assert set(results) == {"bad", "alias"}
    for result in results.values():
        assert isinstance(result, Failed)
        assert result.reason is FailureReason.BAD_REQUEST
    assert "missing field 'text'" in results["bad"].detail
    assert store.counts() == {"queued": 0, "leased": 1, "done": 0, "failed": 2}


def test_poison_row_after_poison_after_leases(db: Path, clock: FakeClock) -> None:
    """A row whose daemons keep dying while they hold it ends ``poison``
    after ``poison_after`` leases, instead of killing every next daemon."""
    with SqliteStore(db, owner="producer", clock=clock) as producer:
        producer.enqueue([article("p"), article("ok")])
    for n in range(3):
        with SqliteStore(db, owner=f"daemon-{n}", clock=clock) as daemon:
            taken = [a.id for a in daemon.lease(10, 30, poison_after=3)]
            assert "p" in taken
            if n == 0:
                assert daemon.write_results([done("ok")]) == 1
        clock.now += 31  # it died holding the lease
    with SqliteStore(db, owner="daemon-3", clock=clock) as daemon:
        assert daemon.lease(10, 30, poison_after=3) == []
        results = {r.article_id: r for r in daemon.results()}
        poison = results["p"]
        assert isinstance(poison, Failed)
        assert poison.reason is FailureReason.POISON
        assert "leased 3 times without a result" in poison.detail
        assert "retry.poison_after = 3" in poison.detail
        assert daemon.counts() == {"queued": 0, "leased": 0, "done": 1, "failed": 1}


def test_a_graceful_release_is_not_a_strike(store: SqliteStore, db: Path) -> None:
    store.enqueue([article(1)])
    for _ in range(5):
        assert [a.id for a in store.lease(1, 30, poison_after=2)] == ["1"]
        assert store.release() == 1
    assert raw(db).execute("SELECT state, attempts FROM articles").fetchall() == [("queued", 0)]
    store.lease(1, 30, poison_after=2)
    assert store.release(["1"]) == 1  # by id too
    assert [a.id for a in store.lease(1, 30, poison_after=2)] == ["1"]
    assert store.write_results([done("1")]) == 1


def test_its_own_expired_lease_is_neither_taken_back_nor_a_strike(
    store: SqliteStore, db: Path, clock: FakeClock
) -> None:
    """A live daemon whose renewal came late (or whose wall clock stepped)
    has not crashed: it keeps its lease; another owner takes it over."""
    store.enqueue([article(1)])
    assert [a.id for a in store.lease(1, 30, poison_after=2)] == ["1"]
    clock.now += 31
    assert store.lease(1, 30, poison_after=2) == []
    assert raw(db).execute("SELECT attempts FROM articles").fetchall() == [(1,)]
    with SqliteStore(db, owner="owner-b", clock=clock) as other:
        assert [a.id for a in other.lease(1, 30, poison_after=2)] == ["1"]
    assert raw(db).execute("SELECT attempts FROM articles").fetchall() == [(2,)]


def test_a_row_under_the_poison_limit_is_leased_again(db: Path, clock: FakeClock) -> None:
    with SqliteStore(db, owner="a", clock=clock) as first:
        first.enqueue([article(1)])
        first.lease(1, 30, poison_after=2)
    clock.now += 31
    with SqliteStore(db, owner="b", clock=clock) as second:
        assert [a.id for a in second.lease(1, 30, poison_after=2)] == ["1"]
        assert second.write_results([done("1")]) == 1
        assert second.counts()["done"] == 1
    with pytest.raises(ValueError, match="poison_after"):
        second.lease(1, 30, poison_after=0)


def test_stale_lease_owner_result_is_dropped(
    store: SqliteStore, db: Path, clock: FakeClock
) -> None:
    """A daemon whose lease expired and was taken over cannot settle the
    article ahead of the new owner: its result is dropped and counted."""
    store.enqueue([article(1)])
    store.lease(1, 30)
    clock.now += 31
    with SqliteStore(db, owner="owner-b", clock=clock) as new_owner:
        assert [a.id for a in new_owner.lease(1, 30)] == ["1"]
        assert store.write_results([failed("1")]) == 0
        assert store.stale_results == 1
        assert store.counts()["leased"] == 1
        assert new_owner.write_results([done("1")]) == 1
        assert list(new_owner.results()) == [done("1")]
        assert new_owner.duplicate_results == 0
    assert store.refused_results() == {"stale_results": 1, "duplicate_results": 0}
    assert store.counts() == {"queued": 0, "leased": 0, "done": 1, "failed": 0}


def test_an_expired_lease_nobody_took_over_still_takes_its_owners_result(
    store: SqliteStore, clock: FakeClock
) -> None:
    store.enqueue([article(1)])
    store.lease(1, 30)
    clock.now += 3600
    assert store.write_results([done("1")]) == 1
    assert store.stale_results == 0
    assert store.counts()["done"] == 1


def test_a_result_for_a_row_handed_back_to_the_queue_is_stale(store: SqliteStore) -> None:
    store.enqueue([article(1), article(2)])
    store.lease(2, 30)
    store.release(["1"])
    assert store.write_results([done("1"), done("2")]) == 1
    assert store.stale_results == 1
    assert store.counts() == {"queued": 1, "leased": 0, "done": 1, "failed": 0}


def test_status_shows_the_results_refused(
    store: SqliteStore, db: Path, clock: FakeClock, tmp_path: Path
) -> None:
    store.enqueue([article(1), article(2)])
    store.lease(2, 30)
    store.release(["1"])
    store.write_results([done("1"), done("2")])
    store.write_results([done("2")])
    config = small_config()
    status = read_status(db, tmp_path / "none.msgpack", config, now=clock.now)
    assert (status.stale_results, status.duplicate_results) == (1, 1)
    assert status.to_json()["stale_results"] == 1
    text = io.StringIO()
    render_status(status, text)
    assert (
        "results refused: 1 from a stale lease owner (dropped), 1 duplicate(s)" in text.getvalue()
    )


# -- results -------------------------------------------------------------------


def test_write_results_marks_articles_terminal_and_round_trips(
    store: SqliteStore, db: Path
) -> None:
    store.enqueue([article(1), article(2), article(3)])
    store.lease(3, 60)
    results: list[TerminalResult] = [done("1"), failed("2")]
    assert store.write_results(results) == 2
    assert store.counts() == {"queued": 0, "leased": 1, "done": 1, "failed": 1}
    assert list(store.results()) == results
    (back,) = store.results(["1"])
    assert isinstance(back, Done)
    assert dict(back.metadata) == {"lang": "en"}
    rows = raw(db).execute("SELECT lease_owner, lease_expires FROM articles WHERE id IN ('1', '2')")
    assert set(rows) == {(None, None)}
    assert store.pending() == 1


def test_a_second_terminal_write_is_ignored_and_counted(store: SqliteStore) -> None:
    store.enqueue([article(1)])
    store.lease(1, 60)
    assert store.write_results([done("1")]) == 1
    assert store.write_results([failed("1"), done("1", model="other")]) == 0
    assert store.duplicate_results == 2
    assert list(store.results()) == [done("1")]
    assert store.counts()["done"] == 1
    assert store.counts()["failed"] == 0


def test_results_for_articles_not_in_the_queue_are_stored(store: SqliteStore) -> None:
    assert store.write_results([done("submitted-directly")]) == 1
    assert [r.article_id for r in store.results()] == ["submitted-directly"]


def test_result_counts_group_by_status_tier_and_model(store: SqliteStore) -> None:
    store.write_results([done("1"), done("2"), done("3", model="b"), failed("4")])
    assert store.result_counts() == [
        ResultCount("done", "high", "b", 1, 100, 20, pytest.approx(0.001)),  # type: ignore[arg-type]
        ResultCount("done", "high", "gemini-a", 2, 200, 40, pytest.approx(0.002)),  # type: ignore[arg-type]
        ResultCount("failed", "low", "gemini-a", 1, 0, 0, 0.0),
    ]


def test_results_pages_through_many_rows_and_filters_by_id(store: SqliteStore) -> None:
    store.write_results([done(str(i)) for i in range(2500)])
    assert [r.article_id for r in store.results()] == [str(i) for i in range(2500)]
    wanted = [str(i) for i in range(0, 2500, 3)] + ["missing"]
    assert sorted(r.article_id for r in store.results(wanted)) == sorted(wanted[:-1])


def test_rejects_and_jsonl_ingest(store: SqliteStore, tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    lines = [
        json.dumps({"id": "a", "text": "t"}),
        "not json",
        json.dumps({"id": "b", "text": "t"}),
        json.dumps({"id": "a", "text": "again"}),
    ]
    path.write_text("\n".join(lines) + "\n")
    store.enqueue([article("b")])
    report = ingest_jsonl(store, path, batch_size=2)
    assert report == IngestReport(inserted=1, duplicates=1, rejected=2)
    rejects = store.rejects(str(path))
    assert [(r.line_no, r.reason.split(":")[0]) for r in rejects] == [
        (2, "not JSON"),
        (4, "duplicate id 'a' (first seen on line 1)"),
    ]
    assert store.rejects("other") == []
    assert store.counts()["queued"] == 2


# -- concurrency ---------------------------------------------------------------


def test_a_reader_is_not_blocked_by_an_open_write_transaction(store: SqliteStore, db: Path) -> None:
    store.enqueue([article(1)])
    writer = raw(db)
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("INSERT INTO articles (id, payload) VALUES ('2', '{}')")
    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(store.counts).result(timeout=2)["queued"] == 1
    writer.execute("COMMIT")
    assert store.counts()["queued"] == 2


def test_a_write_blocked_past_its_retries_raises_storage_error(db: Path, clock: FakeClock) -> None:
    with SqliteStore(db, owner="a", clock=clock, busy_timeout_s=0.02, busy_retries=1) as store:
        store.enqueue([article(1)])
        blocker = raw(db)
        blocker.execute("BEGIN IMMEDIATE")
        with pytest.raises(StorageError, match="locked"):
            store.lease(1, 60)
        blocker.execute("ROLLBACK")
        assert len(store.lease(1, 60)) == 1


def test_two_owners_leasing_concurrently_never_share_a_row(db: Path, clock: FakeClock) -> None:
    with SqliteStore(db, owner="seed", clock=clock) as seed:
        seed.enqueue(article(i) for i in range(600))
    start = threading.Barrier(3)

    def drain(owner: str) -> list[str]:
        taken: list[str] = []
        with SqliteStore(db, owner=owner, clock=clock) as store:
            start.wait()
            while batch := store.lease(7, 600):
                taken += [a.id for a in batch]
        return taken

    with ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(drain, f"owner-{n}") for n in range(3)]
        taken = [f.result(timeout=30) for f in futures]
    every = [i for ids in taken for i in ids]
    assert len(every) == len(set(every)) == 600


def _lease_in_process(path: str, owner: str, out: multiprocessing.Queue[list[str]]) -> None:
    taken: list[str] = []
    with SqliteStore(path, owner=owner) as store:
        while batch := store.lease(11, 600):
            taken += [a.id for a in batch]
    out.put(taken)


def test_two_processes_leasing_concurrently_never_share_a_row(db: Path) -> None:
    with SqliteStore(db, owner="seed") as seed:
        seed.enqueue(article(i) for i in range(1000))
    ctx = multiprocessing.get_context("spawn")
    out: multiprocessing.Queue[list[str]] = ctx.Queue()
    procs = [ctx.Process(target=_lease_in_process, args=(str(db), f"p{n}", out)) for n in range(2)]
    for proc in procs:
        proc.start()
    taken = [out.get(timeout=60) for _ in procs]
    for proc in procs:
        proc.join(timeout=60)
        assert proc.exitcode == 0
    every = [i for ids in taken for i in ids]
    assert len(every) == len(set(every)) == 1000


# -- the results sink ------------------------------------------------------------


class NotifyingStore(SqliteStore):
    """Signals every successful write, so tests wait on an event, not a sleep."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.wrote = threading.Event()
        self.writer_threads: set[str] = set()

    def write_results(self, results: Sequence[TerminalResult]) -> int:
        new = super().write_results(results)
        self.writer_threads.add(threading.current_thread().name)
        self.wrote.set()
        return new


def test_results_sink_is_a_sink(store: SqliteStore) -> None:
    sink = ResultsSink(store)
    assert isinstance(sink, Sink)
    sink.close()


def test_results_sink_buffers_until_full_then_writes(store: SqliteStore) -> None:
    sink = ResultsSink(store, flush_every=3, flush_interval_s=3600)
    sink.write([done("1"), done("2")])
    assert list(store.results()) == []
    sink.write([done("3")])
    assert [r.article_id for r in store.results()] == ["1", "2", "3"]
    sink.write([done("4")])
    sink.flush()
    assert len(list(store.results())) == 4
    sink.close()
    assert sink.written == 4


def test_results_sink_writes_old_results_from_its_own_thread(db: Path, clock: FakeClock) -> None:
    with NotifyingStore(db, owner="a", clock=clock) as store:
        store.enqueue([article(1)])
        store.lease(1, 60)
        sink = ResultsSink(store, flush_every=1000, flush_interval_s=0.01)
        sink.write([done("1")])
        assert store.wrote.wait(timeout=5)
        assert store.writer_threads == {"tierbatch-results-flusher"}
        assert store.counts()["done"] == 1  # the main thread's connection sees it
        sink.close()


def test_results_sink_close_flushes_and_leaves_no_thread(store: SqliteStore) -> None:
    sink = ResultsSink(store, flush_every=1000, flush_interval_s=3600)
    sink.write([done("1"), failed("2")])
    sink.close()
    assert len(list(store.results())) == 2
    assert not any(t.name == "tierbatch-results-flusher" for t in threading.enumerate())
    with pytest.raises(StorageError, match="closed"):
        sink.write([done("3")])


def test_results_sink_keeps_results_when_the_database_is_locked(db: Path, clock: FakeClock) -> None:
    with SqliteStore(db, owner="a", clock=clock, busy_timeout_s=0.02, busy_retries=0) as store:
        sink = ResultsSink(store, flush_every=1000, flush_interval_s=3600)
        sink.write([done("1"), done("2")])
        blocker = raw(db)
        blocker.execute("BEGIN IMMEDIATE")
        with pytest.raises(StorageError):
            sink.flush()
        blocker.execute("ROLLBACK")
        sink.write([done("3")])
        sink.close()
        assert [r.article_id for r in store.results()] == ["1", "2", "3"]


def test_the_sink_writes_from_another_thread_while_the_main_thread_leases(
    db: Path, clock: FakeClock
) -> None:
    with SqliteStore(db, owner="a", clock=clock) as store:
        store.enqueue(article(i) for i in range(300))
        sink = ResultsSink(store, flush_every=16, flush_interval_s=3600)
        with ThreadPoolExecutor(1, thread_name_prefix="composer") as composer:
            while batch := store.lease(25, 60):
                composer.submit(sink.write, [done(a.id) for a in batch]).result()
            composer.submit(sink.close).result()
        assert store.counts() == {"queued": 0, "leased": 0, "done": 300, "failed": 0}


class FlakyStore(SqliteStore):
    """Its results writes fail ``failures`` times (as a database under
    pressure does), then succeed; every successful write is signalled."""

    def __init__(self, *args: object, failures: int = 0, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.failures_left = failures
        self.calls = 0
        self.wrote = threading.Event()
        self._calls_lock = threading.Lock()

    def write_results(self, results: Sequence[TerminalResult]) -> int:
        with self._calls_lock:
            self.calls += 1
            fail = self.failures_left > 0
            self.failures_left -= fail
        if fail:
            raise StorageError(f"{self.path}: write failed: database is locked")
        new = super().write_results(results)
        self.wrote.set()
        return new


class DiskFullStore(SqliteStore):
    """SQLite reports the disk full on every results write."""

    def _write_results(
        self, conn: sqlite3.Connection, results: Sequence[TerminalResult], now: float
    ) -> int:
        raise sqlite3.OperationalError("database or disk is full")


def result_counts(db: Path) -> dict[str, int]:
    return dict(raw(db).execute("SELECT article_id, COUNT(*) FROM results GROUP BY article_id"))


def test_failed_flush_never_writes_twice(db: Path) -> None:
    """Results whose write failed are retried once per attempt, by the sink
    alone: none is stored twice (nor counted as a duplicate), none lost."""
    articles = make_articles(60)
    with FlakyStore(db, owner="a", failures=2) as store:
        sink = ResultsSink(store, flush_every=1, flush_interval_s=3600)
        with Runtime(small_config(), ScriptedProvider(), sink, clock=ScaledClock(20)) as rt:
            rt.submit(articles)
            assert rt.drain(timeout=30)
            # The first write that succeeds comes after both failures (stop()
            # flushes the sink, and would report a failure still pending).
            assert store.wrote.wait(timeout=10)
        sink.close()
        assert store.failures_left == 0
        assert store.duplicate_results == 0
        assert result_counts(db) == {a.id: 1 for a in articles}


def test_failed_flush_at_the_tail_does_not_stall_the_drain(db: Path) -> None:
    """The last write fails and no result follows it: the sink retries it by
    itself, and the drain does not wait for a retry nobody would make."""
    (only,) = make_articles(1)
    with FlakyStore(db, owner="a", failures=1) as store:
        sink = ResultsSink(store, flush_every=1, flush_interval_s=3600)
        with Runtime(small_config(), ScriptedProvider(), sink, clock=ScaledClock(20)) as rt:
            rt.submit([only])
            assert rt.drain(timeout=10)
            assert store.wrote.wait(timeout=10)  # the background retry
        sink.close()
        assert store.calls == 2
        assert result_counts(db) == {only.id: 1}


def test_results_sink_write_never_raises_and_retries_with_backoff(db: Path) -> None:
    with FlakyStore(db, owner="a", failures=3) as store:
        sink = ResultsSink(store, flush_every=1, flush_interval_s=3600, retry_s=0.001)
        sink.write([done("1")])  # the inline write fails: kept, not raised
        sink.write([done("2")])
        assert store.wrote.wait(timeout=10)
        sink.close()
        assert store.calls == 4
        assert sink.written == 2 and sink.unwritten == 0
        assert [r.article_id for r in store.results()] == ["1", "2"]


def test_results_sink_close_names_a_persistent_failure(db: Path, clock: FakeClock) -> None:
    with DiskFullStore(db, owner="a", clock=clock) as store:
        sink = ResultsSink(store, flush_every=1000, flush_interval_s=3600)
        sink.write([done("1"), failed("2")])
        with pytest.raises(StorageError, match="database or disk is full"):
            sink.flush()
        with pytest.raises(ResultsNotWritten) as caught:
            sink.close()
        assert caught.value.count == 2 == sink.unwritten
        message = str(caught.value)
        assert message.startswith("2 result(s) could not be written: ")
        assert str(db) in message and "database or disk is full" in message
        assert list(store.results()) == []
        with pytest.raises(StorageError, match="closed"):
            sink.write([done("3")])


# -- a state machine over the whole queue ---------------------------------------


class QueueMachine(RuleBasedStateMachine):
    """Random enqueue/lease/renew/release/finish/expire sequences by two owners:
    a valid lease is never granted twice, every article is in exactly one
    state, and each has at most one result."""

    LEASE_S = 30.0

    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.TemporaryDirectory()
        self.clock = FakeClock()
        path = Path(self.dir.name) / "q.db"
        self.stores = [SqliteStore(path, owner=f"o{n}", clock=self.clock) for n in range(2)]
        self.enqueued: set[str] = set()
        self.leases: dict[str, tuple[int, float]] = {}  # id -> (owner, deadline)
        self.finished: dict[str, str] = {}
        self.next_id = 0

    def held(self, who: int) -> list[str]:
        return sorted(i for i, (owner, _) in self.leases.items() if owner == who)

    @rule(count=st.integers(1, 6))
    def enqueue(self, count: int) -> None:
        ids = [str(self.next_id + i) for i in range(count)]
        self.next_id += count
        self.stores[0].enqueue(article(i) for i in ids)
        self.enqueued.update(ids)

    @rule(who=st.integers(0, 1), limit=st.integers(1, 5))
    def lease(self, who: int, limit: int) -> None:
        got = [a.id for a in self.stores[who].lease(limit, self.LEASE_S)]
        for article_id in got:
            assert article_id not in self.finished
            if article_id in self.leases:
                assert self.leases[article_id][1] < self.clock.now  # only expired leases
            self.leases[article_id] = (who, self.clock.now + self.LEASE_S)

    @rule(who=st.integers(0, 1), ok=st.booleans(), data=st.data())
    def finish(self, who: int, ok: bool, data: st.DataObject) -> None:
        if not self.held(who):
            return
        article_id = data.draw(st.sampled_from(self.held(who)))
        new = self.stores[who].write_results([done(article_id) if ok else failed(article_id)])
        assert new == 1
        self.finished[article_id] = "done" if ok else "failed"
        del self.leases[article_id]

    @rule(who=st.integers(0, 1), data=st.data())
    def finish_stale(self, who: int, data: st.DataObject) -> None:
        """A result from the owner that is not (or no longer) the holder."""
        theirs = self.held(1 - who)
        if not theirs:
            return
        article_id = data.draw(st.sampled_from(theirs))
        before = self.stores[who].stale_results
        assert self.stores[who].write_results([failed(article_id)]) == 0
        assert self.stores[who].stale_results == before + 1

    @rule(who=st.integers(0, 1))
    def finish_again(self, who: int) -> None:
        """A late duplicate result (e.g. from a daemon that lost its lease)."""
        if self.finished:
            article_id = min(self.finished)
            assert self.stores[who].write_results([failed(article_id)]) == 0

    @rule(who=st.integers(0, 1))
    def release(self, who: int) -> None:
        assert self.stores[who].release() == len(self.held(who))
        for article_id in self.held(who):
            del self.leases[article_id]

    @rule(who=st.integers(0, 1))
    def renew(self, who: int) -> None:
        assert self.stores[who].renew(self.LEASE_S) == len(self.held(who))
        for article_id in self.held(who):
            self.leases[article_id] = (who, self.clock.now + self.LEASE_S)

    @rule(seconds=st.sampled_from([1.0, 31.0]))
    def advance(self, seconds: float) -> None:
        self.clock.now += seconds

    @invariant()
    def every_article_is_in_one_state(self) -> None:
        counts = self.stores[1].counts()
        assert sum(counts.values()) == len(self.enqueued)
        assert counts["leased"] == len(self.leases)
        assert counts["done"] == sum(1 for s in self.finished.values() if s == "done")
        assert counts["failed"] == sum(1 for s in self.finished.values() if s == "failed")
        assert self.stores[0].pending() == len(self.enqueued) - len(self.finished)

    def teardown(self) -> None:
        results = {r.article_id: r for r in self.stores[0].results()}
        assert {i: "done" if r.ok else "failed" for i, r in results.items()} == self.finished
        for store in self.stores:
            store.close()
        self.dir.cleanup()


QueueMachine.TestCase.settings = settings(
    max_examples=25,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_queue_state_machine = QueueMachine.TestCase

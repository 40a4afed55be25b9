"""What only the SQLite store has: its file, WAL mode, the schema version of
the file, index use, busy writers and retries, ids SQLite lets be NULL or a
BLOB, and processes sharing one file. The behaviour both stores share is
tested against both in ``test_store_contract``."""

from __future__ import annotations

import multiprocessing
import sqlite3
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from store_backends import FakeClock, article, done, failed

from tierbatch.adapters.storage.queue_sql import SCHEMA_VERSION
from tierbatch.adapters.storage.results_sink import ResultsNotWrittenError, ResultsSink
from tierbatch.adapters.storage.sqlite_store import (
    _LEASE_COLUMNS,
    IncompatibleSchemaError,
    SqliteStore,
    StorageError,
    default_owner,
)
from tierbatch.policies.articles import Article
from tierbatch.policies.results import (
    TerminalResult,
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
    assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (
        str(SCHEMA_VERSION),
    )
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"articles", "results", "rejects", "meta"} <= tables
    assert store._conn().execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL


def test_an_incompatible_schema_version_is_refused(db: Path, clock: FakeClock) -> None:
    SqliteStore(db, owner="a", clock=clock).close()
    raw(db).execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(IncompatibleSchemaError, match="schema version 99"):
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


class DiskFullStore(SqliteStore):
    """SQLite reports the disk full on every results write."""

    def _write_results(
        self, conn: sqlite3.Connection, results: Sequence[TerminalResult], now: float
    ) -> int:
        raise sqlite3.OperationalError("database or disk is full")


def test_results_sink_close_names_a_persistent_failure(db: Path, clock: FakeClock) -> None:
    with DiskFullStore(db, owner="a", clock=clock) as store:
        sink = ResultsSink(store, flush_every=1000, flush_interval_s=3600)
        sink.write([done("1"), failed("2")])
        with pytest.raises(StorageError, match="database or disk is full"):
            sink.flush()
        with pytest.raises(ResultsNotWrittenError) as caught:
            sink.close()
        assert caught.value.count == 2 == sink.unwritten
        message = str(caught.value)
        assert message.startswith("2 result(s) could not be written: ")
        assert str(db) in message and "database or disk is full" in message
        assert list(store.results()) == []
        with pytest.raises(StorageError, match="closed"):
            sink.write([done("3")])


def test_a_row_whose_id_is_null_or_a_blob_is_failed_not_leased_forever(
    store: SqliteStore, db: Path
) -> None:
    """SQLite lets another process put NULL or a BLOB in a TEXT primary key;
    such a row can carry no result, so it is set aside as failed."""
    conn = raw(db)
    conn.executemany(
        "INSERT INTO articles (id, payload) VALUES (?, ?)",
        [
            (None, '{"id": "n", "text": "t"}'),
            (b"\xff", b"{}"),
            ("\ufffd", b'{"id": "x", "text": "t"}'),
        ],
    )
    store.enqueue([Article(id="good", text="t")])
    assert [a.id for a in store.lease(10, 60)] == ["good"]
    assert store.lease(10, 60) == []
    assert store.counts() == {"queued": 0, "leased": 1, "done": 0, "failed": 3}

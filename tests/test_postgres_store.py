"""What only the PostgreSQL store has: SKIP LOCKED leasing by many processes
at once, schema creation racing, the server's clock, lost connections,
passwords kept out of messages, index use, status read-only over a server,
and the driver being optional."""

from __future__ import annotations

import io
import multiprocessing
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import wait_until
from runtime_helpers import small_config
from store_backends import FakeClock, article, done

from tierbatch.adapters.app.status_report import StatusError, read_status
from tierbatch.adapters.storage.open_store import (
    MissingPostgresDriverError,
    display_name,
    file_stem,
    is_postgres_url,
    open_store,
)
from tierbatch.adapters.storage.queue_sql import SCHEMA_VERSION
from tierbatch.adapters.storage.store import IncompatibleSchemaError
from tierbatch.policies.errors import StorageError


def connect(url: str) -> Any:
    import psycopg

    return psycopg.connect(url, autocommit=True)


@pytest.fixture
def store(postgres_url: str) -> Iterator[Any]:
    from tierbatch.adapters.storage.postgres_store import PostgresStore

    with PostgresStore(postgres_url, owner="owner-a", clock=FakeClock()) as s:
        yield s


# -- URLs and the optional driver (no server needed) -----------------------------


def test_postgres_urls_are_recognised_and_shown_without_their_password() -> None:
    assert is_postgres_url("postgresql://u@h/db") and is_postgres_url("POSTGRES://h/db")
    assert not is_postgres_url("queue.sqlite") and not is_postgres_url("postgresql.sqlite")
    assert display_name("postgresql://ann:s3cret@db.example:5433/q") == (
        "postgresql://ann:***@db.example:5433/q"
    )
    assert display_name("postgres://h/q?password=s3cret&sslmode=require") == (
        "postgres://h/q?password=***&sslmode=require"
    )
    assert display_name("postgresql://ann@h/q") == "postgresql://ann@h/q"
    assert display_name("out.sqlite") == "out.sqlite"
    assert file_stem("postgresql://ann:pw@db.example:5433/q") == "postgresql-db.example-5433-q"
    assert file_stem("postgresql:///q") == "postgresql-local-q"


def test_a_missing_driver_names_the_extra_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tierbatch.adapters import storage

    monkeypatch.setitem(sys.modules, "psycopg", None)  # import psycopg now fails
    monkeypatch.delitem(sys.modules, "tierbatch.adapters.storage.postgres_store", raising=False)
    monkeypatch.delattr(storage, "postgres_store", raising=False)
    with pytest.raises(MissingPostgresDriverError, match=r"pip install 'tierbatch\[postgres\]'"):
        open_store("postgresql://u@127.0.0.1/db", owner="o")
    from tierbatch.adapters.app.cli import EXIT_USAGE, main

    out, err = io.StringIO(), io.StringIO()
    code = main(["enqueue", "in.jsonl", "--db", "postgresql://u@h/db"], stdout=out, stderr=err)
    assert code == EXIT_USAGE
    assert "PostgreSQL needs psycopg 3" in err.getvalue()
    assert "pip install 'tierbatch[postgres]'" in err.getvalue()


def test_a_connection_failure_names_the_database_without_its_password() -> None:
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"postgresql://ann:s3cret@127.0.0.1:{port}/q"
    with pytest.raises(StorageError) as caught:
        open_store(url, owner="o")
    message = str(caught.value)
    assert message.startswith(f"postgresql://ann:***@127.0.0.1:{port}/q: cannot open database")
    assert "s3cret" not in message


# -- schema -------------------------------------------------------------------------


def test_the_schema_is_created_once_even_by_stores_starting_together(postgres_url: str) -> None:
    from tierbatch.adapters.storage.postgres_store import PostgresStore

    start = threading.Barrier(4)

    def open_one(n: int) -> str:
        start.wait()
        with PostgresStore(postgres_url, owner=f"o{n}") as s:
            return s.owner

    with ThreadPoolExecutor(4) as pool:
        assert sorted(pool.map(open_one, range(4))) == ["o0", "o1", "o2", "o3"]
    with connect(postgres_url) as conn:
        tables = {
            row[0]
            for row in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
            )
        }
        version = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchall()
    assert {"articles", "results", "rejects", "meta"} <= tables
    assert version == [(str(SCHEMA_VERSION),)]


def test_an_incompatible_schema_version_is_refused(postgres_url: str) -> None:
    from tierbatch.adapters.storage.postgres_store import PostgresStore

    PostgresStore(postgres_url, owner="a").close()
    with connect(postgres_url) as conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(IncompatibleSchemaError, match="schema version 99"):
        PostgresStore(postgres_url, owner="a")


def test_lease_queries_are_served_in_order_by_indexes(store: Any, postgres_url: str) -> None:
    from tierbatch.adapters.storage.postgres_schema import EXPIRED_CANDIDATES, QUEUED_CANDIDATES
    from tierbatch.adapters.storage.queue_sql import to_format_params

    store.enqueue(article(i) for i in range(50))
    with connect(postgres_url) as conn:
        conn.execute("ANALYZE articles")
        conn.execute("SET enable_seqscan = off")  # a table this small would be scanned
        conn.execute("SET enable_bitmapscan = off")
        for sql, params in ((QUEUED_CANDIDATES, (10,)), (EXPIRED_CANDIDATES, (1.0, "me", 10))):
            plan = " ".join(
                row[0] for row in conn.execute("EXPLAIN " + to_format_params(sql), params)
            )
            assert "Index Scan" in plan, plan
            assert "Sort" not in plan, plan  # the index gives the order


# -- concurrency ---------------------------------------------------------------------


def test_leasing_skips_rows_another_transaction_holds_instead_of_waiting(
    store: Any, postgres_url: str
) -> None:
    store.enqueue(article(i) for i in range(6))
    pool = ThreadPoolExecutor(1)  # the store's connection is not the blocker's
    try:
        with connect(postgres_url) as blocker, blocker.transaction():
            held = blocker.execute(
                "SELECT id FROM articles ORDER BY enqueued_at, seq LIMIT 2 FOR UPDATE"
            ).fetchall()
            assert held == [("0",), ("1",)]
            # A lease that waited for the blocker would time out here (and
            # the blocker's rollback on the way out would let it finish).
            taken = pool.submit(store.lease, 3, 60).result(timeout=10)
        assert [a.id for a in taken] == ["2", "3", "4"]
    finally:
        pool.shutdown(wait=True)
    assert [a.id for a in store.lease(10, 60)] == ["0", "1", "5"]


def test_a_result_waits_for_a_lease_in_progress_and_is_then_stale(
    postgres_url: str,
) -> None:
    """The owner check cannot race a takeover: the results write waits for
    the row lock a leasing transaction holds, then sees the new owner."""
    from tierbatch.adapters.storage.postgres_store import PostgresStore

    clock = FakeClock()
    with (
        PostgresStore(postgres_url, owner="old", clock=clock) as old,
        PostgresStore(postgres_url, owner="new", clock=clock) as new,
    ):
        old.enqueue([article(1)])
        old.lease(1, 30)
        clock.now += 31
        locked, release = threading.Event(), threading.Event()
        original = new._candidates

        def slow_candidates(conn: Any, now: float, want: int) -> Any:
            rows = original(conn, now, want)
            locked.set()  # the row is locked by the lease from here on
            assert release.wait(10)
            return rows

        new._candidates = slow_candidates  # type: ignore[method-assign]
        with ThreadPoolExecutor(2) as pool:
            leasing = pool.submit(new.lease, 1, 30)
            assert locked.wait(10)
            writing = pool.submit(old.write_results, [done("1")])
            wait_until(lambda: lock_waits(postgres_url) == 1, 10, "the write to wait for the lock")
            release.set()
            assert [a.id for a in leasing.result(timeout=10)] == ["1"]
            assert writing.result(timeout=10) == 0
        assert old.stale_results == 1
        assert new.write_results([done("1")]) == 1


def lock_waits(url: str) -> int:
    """Sessions of this database waiting for a lock."""
    with connect(url) as conn:
        ((count,),) = conn.execute(
            "SELECT COUNT(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock'"
        ).fetchall()
    return int(count)


def _lease_in_process(url: str, owner: str, out: Any) -> None:
    from tierbatch.adapters.storage.postgres_store import PostgresStore

    taken: list[str] = []
    with PostgresStore(url, owner=owner) as store:
        out.put(("ready", owner))
        while batch := store.lease(9, 600):
            taken += [a.id for a in batch]
    out.put(("taken", taken))


def test_several_processes_leasing_at_once_never_share_a_row_and_take_them_all(
    postgres_url: str,
) -> None:
    from tierbatch.adapters.storage.postgres_store import PostgresStore

    with PostgresStore(postgres_url, owner="seed") as seed:
        seed.enqueue(article(i) for i in range(1500))
    ctx = multiprocessing.get_context("spawn")
    out: Any = ctx.Queue()
    procs = [
        ctx.Process(target=_lease_in_process, args=(postgres_url, f"p{n}", out)) for n in range(3)
    ]
    for proc in procs:
        proc.start()
    messages = [out.get(timeout=60) for _ in range(2 * len(procs))]
    for proc in procs:
        proc.join(timeout=60)
        assert proc.exitcode == 0
    taken = [ids for kind, ids in messages if kind == "taken"]
    every = [i for ids in taken for i in ids]
    assert len(every) == len(set(every)) == 1500
    with connect(postgres_url) as conn:
        owners = dict(
            conn.execute("SELECT lease_owner, COUNT(*) FROM articles GROUP BY lease_owner")
        )
    assert sum(owners.values()) == 1500 and set(owners) <= {"p0", "p1", "p2"}


# -- the server's clock and lost connections --------------------------------------


def test_without_a_clock_leases_run_on_the_servers_clock(postgres_url: str) -> None:
    from tierbatch.adapters.storage.postgres_store import PostgresStore

    with PostgresStore(postgres_url, owner="a") as store:
        store.enqueue([article(1)])
        with connect(postgres_url) as conn:
            ((before,),) = conn.execute("SELECT EXTRACT(EPOCH FROM now())::float8").fetchall()
            store.lease(1, 600)
            ((expires, enqueued),) = conn.execute(
                "SELECT lease_expires, enqueued_at FROM articles"
            ).fetchall()
            ((after,),) = conn.execute(
                "SELECT EXTRACT(EPOCH FROM clock_timestamp())::float8"
            ).fetchall()
    assert before + 600 <= expires <= after + 600
    assert enqueued <= after


def test_a_lost_connection_fails_one_call_and_the_next_reconnects(
    store: Any, postgres_url: str
) -> None:
    store.enqueue([article(1), article(2)])
    with connect(postgres_url) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    with pytest.raises(StorageError, match="failed"):
        store.lease(1, 60)
    assert [a.id for a in store.lease(2, 60)] == ["1", "2"]


# -- status ----------------------------------------------------------------------


def test_status_of_an_empty_database_creates_nothing(postgres_url: str, tmp_path: Path) -> None:
    with pytest.raises(StatusError, match="not a readable tierbatch database"):
        read_status(postgres_url, tmp_path / "none.msgpack", small_config())
    with connect(postgres_url) as conn:
        assert conn.execute("SELECT to_regclass('articles')").fetchall() == [(None,)]


def test_status_of_a_missing_database_names_it(postgres_url: str, tmp_path: Path) -> None:
    missing = postgres_url.rsplit("/", 1)[0] + "/no_such_db"
    with pytest.raises(StatusError, match="no_such_db: cannot open"):
        read_status(missing, tmp_path / "none.msgpack", small_config())

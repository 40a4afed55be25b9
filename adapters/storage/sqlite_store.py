"""The embedded default storage: a durable article queue, results and rejects in SQLite.

A daemon enqueues articles (or another process inserts them), leases a batch
at a time, hands them to the runtime, and the ``ResultsSink`` writes every
terminal result back in the same database. A lease expires unless renewed, so
articles held by a daemon that died are leased again by the next one: an
article is never lost, and its result is written exactly once.

Schema (version 2)::

    CREATE TABLE articles (              -- the queue
        id            TEXT PRIMARY KEY,
        payload       TEXT NOT NULL,      -- the article as one JSONL input line
        state         TEXT NOT NULL DEFAULT 'queued',
                                          -- 'queued' | 'leased' | 'done' | 'failed'
        priority      REAL,               -- optional; higher is leased first
        enqueued_at   REAL NOT NULL DEFAULT (now),   -- Unix epoch seconds
        lease_owner   TEXT,               -- who holds the lease (host:pid:uuid)
        lease_expires REAL,               -- epoch seconds; expired leases are taken over
        attempts      INTEGER NOT NULL DEFAULT 0,    -- strikes: leases that ended
                                          -- without a result or a release
        updated_at    REAL NOT NULL DEFAULT (now)
    );
    CREATE INDEX articles_state_lease ON articles(state, lease_expires);
    CREATE INDEX articles_queue_order ON articles(state, priority DESC, enqueued_at);
    CREATE INDEX articles_lease_owner ON articles(lease_owner)
        WHERE lease_owner IS NOT NULL;

    CREATE TABLE results (               -- exactly one terminal row per article
        article_id TEXT PRIMARY KEY, status TEXT NOT NULL,  -- 'done' | 'failed'
        entities TEXT NOT NULL,           -- JSON [{"name","type","salience","mentions"}],
                                          -- plus "flag" on an entity the grounding
                                          -- config flags and "fields" (the task's
                                          -- extra fields) on one that has any
        model TEXT, tier TEXT, attempts INTEGER,
        input_tokens INTEGER, output_tokens INTEGER, latency_s REAL, cost_usd REAL,
        fallback INTEGER NOT NULL,        -- 0 | 1
        reason TEXT, detail TEXT,         -- FailureReason value and what was tried
        metadata TEXT,                    -- JSON object
        finished_at REAL NOT NULL,
        pack_size INTEGER,                -- articles in the request that answered
        grounded INTEGER, cross_article INTEGER, ungrounded INTEGER,
                                          -- the grounding check's counts of the
                                          -- answer's entities, before drops
                                          -- (NULL: failed, or written by version 1)
        task_version TEXT                 -- the extraction task's version
                                          -- (NULL: failed, or written by version <= 2)
    );
    CREATE TABLE rejects (source TEXT NOT NULL, line_no INTEGER, reason TEXT NOT NULL,
                          raw_prefix TEXT, at REAL NOT NULL);
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        -- schema_version; stale_results and duplicate_results: how many
        -- results were refused (see "Results" below), over the database's life
    CREATE TABLE batch_jobs (...);  -- the Batch API's jobs (schema 4), see batch_store

A database of schema version 1 or 2 is migrated in place when a store opens
it (``ALTER TABLE results ADD COLUMN`` for the four grounding columns, then
``task_version``, in the schema transaction); its existing results keep NULL
there. ``tierbatch
status`` reads a version-1 database as it is, without the grounding table.
Version 3 is brought to 4 by creating ``batch_jobs``.

Inserting from another process needs only the id and the payload (the JSONL
input format, see ``tierbatch.adapters.storage.jsonl_input``)::

    INSERT INTO articles (id, payload) VALUES (?, ?) ON CONFLICT (id) DO NOTHING;

Leasing order: expired leases of other owners first (oldest deadline first),
then queued rows with a priority (highest first), then queued rows without
one, oldest first. An owner never takes over its own leases: it renews them
while it runs, so one that looks expired only means the wall clock stepped.
A row is never leased when it cannot be worked on; it gets a ``failed``
result instead, inside the leasing transaction, so it is neither lost nor
retried forever, and nothing about it can make ``lease`` raise:

* a payload that is not a valid article -- not UTF-8, not JSON, a missing
  or mistyped field, a bad URL or date, over 1 MB, a BLOB that is none of
  these, an id different from the row's -- fails with reason
  ``bad_request`` and the problem (naming the field) in ``detail``;
* **poison limit**: with ``lease(..., poison_after=N)``, a row whose
  ``attempts`` reached N fails with reason ``poison``. ``attempts`` counts
  strikes: it grows by one every time a lease is taken (a queued row, or an
  expired lease taken over from another owner -- an owner never takes its
  own leases back) and shrinks by one when the lease is handed back by
  ``release`` (a graceful stop, or a runtime queue that was full, is not a
  crash). So it counts the leases that ended without a result or a
  release -- the process holding the row died, or stopped renewing -- plus
  the lease held now. A crash blames every row its process held, so N
  should leave room for innocent batch-mates (the default is 3);
* a row whose id is not usable text (NULL or a BLOB, which SQLite allows in
  a TEXT primary key, or not UTF-8) cannot carry a result: it is set to
  ``failed`` without one and logged. Rows are addressed by ``rowid`` while
  leasing for this reason; a PostgreSQL store, whose keys are NOT NULL text,
  needs no such care.

Results: only the current lease owner writes a result. A result is stored
when its article's row is leased by this store's ``owner`` (even if that
lease has expired: nobody took it over), or when the article has no row
(the runtime used without the queue). A result for a row leased by another
owner, or handed back to the queue, comes from a stale lease: it is dropped,
counted (``stale_results``, and in ``meta``), and logged -- the new owner's
result is the one that counts. A second result for an article that already
has one is ignored and counted the same way (``duplicate_results``); a
result is written once and never overwritten.

Durability and concurrency: WAL journal, ``synchronous=NORMAL`` (a committed
transaction survives a process crash; the last ones may be lost on power
loss), ``busy_timeout``, and every write in a ``BEGIN IMMEDIATE`` transaction,
so two processes never lease the same row and readers never block the writer.

The queue algorithms are shared with ``PostgresStore`` (``sql_queue``);
this module holds what is SQLite's own: the file, WAL, ``BEGIN IMMEDIATE``
and its retries, rowid addressing and the typeof/CAST guards on leasing.

Threads: SQLite connections must not be shared between threads, so the store
opens one connection per thread on first use (``threading.local``). The
daemon's main thread can lease and enqueue while the runtime's composer
thread writes results through a ``ResultsSink``; each uses its own connection.
``close()`` closes all of them and must be called once the other threads are
done with the store.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import structlog

from tierbatch.adapters.storage.queue_rows import (
    Candidate,
    Holder,
    backlog_articles,
    epoch_of,
    usable_id,
)
from tierbatch.adapters.storage.queue_sql import BACKLOG_WHERE, read_queue_report
from tierbatch.adapters.storage.quota_lease import read_sharing
from tierbatch.adapters.storage.sql_queue import SqlQueueStore
from tierbatch.adapters.storage.sqlite_schema import SCHEMA
from tierbatch.adapters.storage.store import (
    EnqueueReport,
    IncompatibleSchemaError,
    QueueReport,
    ResultCount,
    StoredReject,
    default_owner,
    refused_counts,
)
from tierbatch.policies.articles import Article
from tierbatch.policies.errors import StorageError

_log = structlog.get_logger(__name__)

_SQLITE_BUSY = 5
_SQLITE_LOCKED = 6

T = TypeVar("T")

# Ids and payloads come back as bytes: a TEXT value another process wrote in
# invalid UTF-8 would make the fetch itself raise.
_LEASE_COLUMNS = "rowid, typeof(id), CAST(id AS BLOB), CAST(payload AS BLOB), attempts"
# A payload field, or NULL when the payload is not JSON text (json_extract
# would raise "malformed JSON" and fail the whole query).
_JSON_FIELD = (
    "CASE WHEN typeof(payload) = 'text' AND json_valid(payload)"
    " THEN json_extract(payload, '$.{field}') END"
)


class SqliteStore(SqlQueueStore):
    """The queue, results and rejects of one SQLite database file.

    ``owner`` identifies this process's leases; ``clock`` gives epoch seconds
    for lease deadlines and timestamps (tests pass a fake one).
    ``busy_timeout_s`` is how long SQLite waits for another writer before a
    statement fails; a failed transaction is then retried ``busy_retries``
    more times before ``StorageError`` is raised.
    """

    _ROW_KEY = "rowid"
    _INSERTION_ORDER = "rowid"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        owner: str,
        clock: Callable[[], float] = time.time,
        busy_timeout_s: float = 5.0,
        busy_retries: int = 3,
        batch_size: int = 2000,
    ) -> None:
        name = os.fspath(path)
        if name in ("", ":memory:") or name.startswith("file::memory:"):
            raise ValueError("SqliteStore needs a database file: every thread opens its own")
        super().__init__(name, owner=owner, clock=clock, batch_size=batch_size)
        self._busy_timeout_s = busy_timeout_s
        self._busy_retries = busy_retries
        conn = self._conn()
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        except sqlite3.Error as exc:
            self.close()
            raise StorageError(f"{self.path}: cannot open database: {exc}") from exc
        if str(mode).lower() != "wal":
            _log.warning("sqlite database not in WAL mode", path=self.path, journal_mode=mode)
        try:
            self._transact(self._create_schema)
        except StorageError:
            self.close()
            raise

    # -- connections and transactions ------------------------------------

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(
                self.path,
                timeout=self._busy_timeout_s,
                isolation_level=None,
                check_same_thread=False,
            )
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_s * 1000)}")
            conn.execute("PRAGMA synchronous = NORMAL")
        except sqlite3.Error as exc:
            raise StorageError(f"{self.path}: cannot open database: {exc}") from exc
        return conn

    def _close_connection(self, conn: sqlite3.Connection) -> None:
        try:
            conn.close()
        except sqlite3.Error as exc:  # pragma: no cover - closing is best effort
            _log.warning("closing the sqlite database failed", path=self.path, error=str(exc))

    def _transact(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``work`` in one ``BEGIN IMMEDIATE`` transaction, retrying the
        whole transaction when another writer keeps the database busy."""
        conn = self._conn()
        for attempt in range(self._busy_retries + 1):
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    value = work(conn)
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
                return value
            except sqlite3.OperationalError as exc:
                if _is_busy(exc) and attempt < self._busy_retries:
                    _log.info("sqlite database busy; retrying", path=self.path, attempt=attempt + 1)
                    time.sleep(min(0.05 * 2**attempt, 1.0))
                    continue
                raise StorageError(f"{self.path}: write failed: {exc}") from exc
            except sqlite3.Error as exc:
                raise StorageError(f"{self.path}: write failed: {exc}") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        try:
            return list(self._conn().execute(sql, params).fetchall())
        except sqlite3.Error as exc:
            raise StorageError(f"{self.path}: read failed: {exc}") from exc

    def _create_schema(self, conn: sqlite3.Connection) -> None:
        for statement in SCHEMA:
            conn.execute(statement)
        self._check_schema_version(conn)

    # -- the dialect's part of leasing and results ---------------------------

    def _candidates(self, conn: sqlite3.Connection, now: float, want: int) -> list[Candidate[int]]:
        rows = conn.execute(
            f"SELECT {_LEASE_COLUMNS} FROM articles"
            " WHERE state = 'leased' AND lease_expires < ? AND lease_owner IS NOT ?"
            " ORDER BY lease_expires LIMIT ?",
            (now, self.owner, want),
        ).fetchall()
        if len(rows) < want:
            rows += conn.execute(
                f"SELECT {_LEASE_COLUMNS} FROM articles INDEXED BY articles_queue_order"
                " WHERE state = 'queued' ORDER BY priority DESC, enqueued_at LIMIT ?",
                (want - len(rows),),
            ).fetchall()
        return [
            Candidate(rowid, usable_id(raw_id) if id_type == "text" else None, payload, attempts)
            for rowid, id_type, raw_id, payload, attempts in rows
        ]

    def _holders(self, conn: sqlite3.Connection, ids: Sequence[str]) -> dict[str, Holder]:
        condition, params = self._ids_in("id", ids)
        rows = conn.execute(
            f"SELECT id, state, lease_owner FROM articles WHERE {condition}", params
        )
        return {article_id: (state, owner) for article_id, state, owner in rows}

    def cluster_backlog(self, limit: int) -> list[tuple[str, str, float | None]]:
        rows = self._read(
            "SELECT CAST(id AS BLOB), CAST(CAST(cluster AS TEXT) AS BLOB),"
            " CAST(published AS BLOB) FROM ("
            f" SELECT id, enqueued_at, {_JSON_FIELD.format(field='cluster_id')} AS cluster,"
            f" {_JSON_FIELD.format(field='published_at')} AS published"
            " FROM articles WHERE state = 'queued')"
            " WHERE cluster IS NOT NULL ORDER BY enqueued_at DESC LIMIT ?",
            (limit,),
        )
        out: list[tuple[str, str, float | None]] = []
        for raw_id, raw_cluster, raw_published in rows:
            article_id = usable_id(raw_id)
            if article_id is None:
                continue
            cluster_id = bytes(raw_cluster).decode("utf-8", "replace")
            out.append((article_id, cluster_id, epoch_of(raw_published)))
        return out


def read_sqlite_report(path: str | os.PathLike[str], now: float) -> QueueReport:
    """What ``tierbatch status`` shows, through a read-only connection
    (``mode=ro``): in WAL mode it never blocks the daemon writing next to
    it, and it never creates tables or takes a write lock."""

    def read(conn: sqlite3.Connection) -> QueueReport:
        def query(sql: str, params: Sequence[Any]) -> list[Any]:
            return conn.execute(sql, params).fetchall()

        def has_table(name: str) -> bool:
            return bool(
                query("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,))
            )

        conn.execute("BEGIN")  # one snapshot for every read
        report = read_queue_report(query, now)
        owner, daemons, state = read_sharing(query, now, has_table)
        return replace(report, quota_owner=owner, daemons=daemons, quota_state=state)

    return _read_only(path, read)


def read_sqlite_backlog(path: str | os.PathLike[str]) -> tuple[list[Article], int]:
    """The queued and leased articles, but those batch jobs hold (for
    ``tierbatch plan``), read-only as ``read_sqlite_report``, and how many
    rows are not usable articles."""
    return _read_only(
        path,
        lambda conn: backlog_articles(
            conn.execute(
                "SELECT CAST(id AS BLOB), CAST(payload AS BLOB) FROM articles"
                f" WHERE {BACKLOG_WHERE} ORDER BY rowid"
            )
        ),
    )


def _read_only(path: str | os.PathLike[str], read: Callable[[sqlite3.Connection], T]) -> T:
    name = os.fspath(path)
    if not Path(name).is_file():
        raise StorageError(f"{name}: no such database")
    try:
        conn = sqlite3.connect(f"{Path(name).resolve().as_uri()}?mode=ro", uri=True, timeout=5.0)
    except sqlite3.Error as exc:
        raise StorageError(f"{name}: cannot open: {exc}") from exc
    try:
        return read(conn)
    except sqlite3.Error as exc:
        raise StorageError(f"{name}: not a readable tierbatch database: {exc}") from exc
    finally:
        conn.close()


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (_SQLITE_BUSY, _SQLITE_LOCKED)
    message = str(exc).lower()
    return "locked" in message or "busy" in message


__all__ = [
    "EnqueueReport",
    "IncompatibleSchemaError",
    "ResultCount",
    "SqliteStore",
    "StorageError",
    "StoredReject",
    "default_owner",
    "read_sqlite_report",
    "refused_counts",
]

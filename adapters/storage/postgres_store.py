"""A queue that many machines share: articles, results and rejects in PostgreSQL.

``tierbatch run/daemon/enqueue/status --db postgresql://user@host/dbname``
selects this store; any number of daemons, on any number of machines, lease
from one queue. It has the schema, the lease semantics, the exactly-once
results, the rejects and the counters of the SQLite store (``sqlite_store``
documents them; the algorithms are shared, in ``sql_queue``), through
psycopg 3 (the ``postgres`` extra).

Schema (version 2), created on first use (a version-1 database is
migrated in place, as in SQLite)::

    CREATE TABLE articles (
        id TEXT PRIMARY KEY, payload TEXT NOT NULL,
        state TEXT NOT NULL DEFAULT 'queued',   -- queued | leased | done | failed
        priority DOUBLE PRECISION,               -- higher is leased first; NULL last
        enqueued_at DOUBLE PRECISION NOT NULL DEFAULT (now, epoch seconds),
        lease_owner TEXT, lease_expires DOUBLE PRECISION,
        attempts INTEGER NOT NULL DEFAULT 0,     -- strikes, as in SQLite
        updated_at DOUBLE PRECISION NOT NULL DEFAULT (now));
    CREATE TABLE results (article_id TEXT PRIMARY KEY, status, entities, model,
        tier, attempts, input_tokens, output_tokens, latency_s, cost_usd,
        fallback, reason, detail, metadata, finished_at DOUBLE PRECISION,
        seq BIGINT GENERATED ALWAYS AS IDENTITY,    -- insertion order
        pack_size, grounded, cross_article, ungrounded,    -- the grounding check
        task_version);                                     -- the extraction task
    CREATE TABLE rejects (source, line_no BIGINT, reason, raw_prefix, at);
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT);
        -- schema_version, stale_results, duplicate_results
    FUNCTION tierbatch_json_or_null(text)   -- reads the backlog's clusters

The same columns as in SQLite; ``results.seq`` is the only addition (SQLite
pages by its rowid). Another process inserts work exactly as with SQLite::

    INSERT INTO articles (id, payload) VALUES (%s, %s) ON CONFLICT (id) DO NOTHING;

Concurrency:

* **Leasing** selects candidates ``FOR UPDATE SKIP LOCKED``: processes
  leasing at once never block each other and never take the same row (a
  row another transaction holds is skipped; one it just took is rechecked
  and left out). Expired leases first, then queued rows by priority (NULL
  last) and age, as in SQLite.
* **Results** lock their articles' rows (``FOR UPDATE``, in id order) before
  the owner check, so a lease cannot change hands between the check and
  the ``INSERT ... ON CONFLICT DO NOTHING``: only the current lease owner
  writes, exactly once. Renewing and releasing lock in the same order, so
  none of them can deadlock with another; a deadlock or serialization
  failure that happens anyway is retried (``retries``).
* **Time** is the server's: without a ``clock``, lease deadlines and
  timestamps come from PostgreSQL's ``clock_timestamp()``, so machines
  whose clocks disagree still agree on when a lease has expired.

PostgreSQL cannot store NUL characters in text: a result or reject text
holding one (or an unpaired surrogate) is stored with U+FFFD in its place,
and article ids holding one are rejected at input (as in SQLite).

Connections: one per thread, opened on first use, in autocommit mode with
explicit transactions. A connection that breaks (server restart, network)
is dropped and the next call opens another; the failing call raises
``StorageError`` and the caller retries (the daemon and ``ResultsSink`` do).
The URL's password never appears in messages: ``path`` is the URL without it.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, TypeVar

import psycopg
import structlog
from psycopg import errors

from tierbatch.adapters.storage.jsonl_input import Rejected
from tierbatch.adapters.storage.open_store import display_name, is_postgres_url
from tierbatch.adapters.storage.postgres_schema import (
    BACKLOG,
    EXPIRED_CANDIDATES,
    HOLDERS,
    QUEUED_CANDIDATES,
    QUOTA_TABLES_EXIST,
    RELEASE_ALL,
    RENEW,
    SCHEMA,
    SCHEMA_LOCK,
    SERVER_TIME,
    TABLE_EXISTS,
)
from tierbatch.adapters.storage.queue_rows import (
    Candidate,
    Holder,
    backlog_articles,
    epoch_of,
    usable_id,
)
from tierbatch.adapters.storage.queue_sql import (
    BACKLOG_WHERE,
    SCHEMA_VERSION,
    SCHEMA_VERSION_SQL,
    grounding_counts_sql,
    migrations_from,
    read_queue_report,
    result_counts_sql,
    to_format_params,
)
from tierbatch.adapters.storage.quota_lease import read_sharing
from tierbatch.adapters.storage.sql_queue import SqlQueueStore
from tierbatch.adapters.storage.store import QueueReport
from tierbatch.policies.articles import Article
from tierbatch.policies.errors import StorageError
from tierbatch.policies.results import TerminalResult

_log = structlog.get_logger(__name__)

T = TypeVar("T")

_RESULT_COUNTS = result_counts_sql(' COLLATE "C"')
_GROUNDING_COUNTS = grounding_counts_sql(' COLLATE "C"')
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
_RETRYABLE = (errors.SerializationFailure, errors.DeadlockDetected)


class PostgresStore(SqlQueueStore):
    """The queue, results and rejects of one PostgreSQL database.

    ``url`` is a libpq URL (``postgresql://`` or ``postgres://``; the
    usual ``PG*`` environment variables and ``~/.pgpass`` apply). ``owner``
    identifies this process's leases; ``clock`` (epoch seconds) defaults
    to the server's clock. A transaction that meets a deadlock or a
    serialization failure is retried ``retries`` more times.
    """

    _RESULT_COUNTS_SQL = _RESULT_COUNTS
    _LOCK_OWNER_ROW = " FOR UPDATE"
    _RENEW_SQL = RENEW
    _RELEASE_ALL_SQL = RELEASE_ALL

    def __init__(
        self,
        url: str,
        *,
        owner: str,
        clock: Callable[[], float] | None = None,
        retries: int = 3,
        connect_timeout_s: float = 10.0,
        batch_size: int = 2000,
    ) -> None:
        if not is_postgres_url(url):
            raise ValueError("PostgresStore needs a postgresql:// or postgres:// URL")
        super().__init__(
            display_name(url),
            owner=owner,
            clock=clock or self._server_time,
            batch_size=batch_size,
        )
        self._url = url
        self._retries = retries
        self._connect_timeout_s = connect_timeout_s
        try:
            self._transact(self._create_schema)
        except StorageError:
            self.close()
            raise

    # -- connections and transactions ------------------------------------

    def _connect(self) -> psycopg.Connection[Any]:
        try:
            return psycopg.connect(
                self._url,
                autocommit=True,
                connect_timeout=max(1, round(self._connect_timeout_s)),
                application_name="tierbatch",
            )
        except psycopg.Error as exc:
            raise StorageError(f"{self.path}: cannot open database: {_message(exc)}") from exc

    def _close_connection(self, conn: psycopg.Connection[Any]) -> None:
        try:
            conn.close()
        except psycopg.Error as exc:  # pragma: no cover - closing is best effort
            _log.warning(
                "closing the postgresql connection failed", path=self.path, error=_message(exc)
            )

    def _sql(self, sql: str) -> str:
        return to_format_params(sql)

    def _transact(self, work: Callable[[Any], T]) -> T:
        """Run ``work`` in one transaction; a deadlock or serialization
        failure rolls it back and runs it again, up to ``retries`` times."""
        for attempt in range(self._retries + 1):
            conn = self._conn()
            try:
                with conn.transaction():
                    return work(conn)
            except _RETRYABLE as exc:
                if attempt < self._retries:
                    _log.info(
                        "postgresql transaction conflict; retrying",
                        path=self.path,
                        attempt=attempt + 1,
                        error=_message(exc),
                    )
                    time.sleep(min(0.02 * 2**attempt, 0.5))
                    continue
                raise StorageError(f"{self.path}: write failed: {_message(exc)}") from exc
            except psycopg.Error as exc:
                self._drop_if_broken(conn)
                raise StorageError(f"{self.path}: write failed: {_message(exc)}") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        conn = self._conn()
        try:
            return list(conn.execute(self._sql(sql), params).fetchall())
        except psycopg.Error as exc:
            self._drop_if_broken(conn)
            raise StorageError(f"{self.path}: read failed: {_message(exc)}") from exc

    def _drop_if_broken(self, conn: psycopg.Connection[Any]) -> None:
        if conn.broken or conn.closed:
            self._forget_connection()

    def _execute_many(self, conn: Any, sql: str, rows: Sequence[Sequence[Any]]) -> int:
        if not rows:
            return 0
        with conn.cursor() as cursor:
            cursor.executemany(self._sql(sql), rows)
            return int(cursor.rowcount)

    def _server_time(self) -> float:
        """The server's clock, in epoch seconds."""
        ((now,),) = self._read(SERVER_TIME)
        return float(now)

    def _create_schema(self, conn: Any) -> None:
        conn.execute(SCHEMA_LOCK)
        if conn.execute(TABLE_EXISTS).fetchone()[0]:
            row = conn.execute(SCHEMA_VERSION_SQL).fetchone()
            current = row is not None and row[0] == str(SCHEMA_VERSION)
            if current and conn.execute(QUOTA_TABLES_EXIST).fetchone()[0]:
                return  # nothing to create: no DDL, no table locks
            if row is not None and not current:
                migrations_from(str(row[0]), self.path)  # refuses what it cannot migrate
        for statement in SCHEMA:
            conn.execute(statement)
        self._check_schema_version(conn)

    # -- the dialect's part of leasing and results ---------------------------

    def _candidates(self, conn: Any, now: float, want: int) -> list[Candidate[str]]:
        rows = conn.execute(self._sql(EXPIRED_CANDIDATES), (now, self.owner, want)).fetchall()
        if len(rows) < want:
            rows += conn.execute(self._sql(QUEUED_CANDIDATES), (want - len(rows),)).fetchall()
        return [
            Candidate(article_id, usable_id(article_id), payload, attempts)
            for article_id, payload, attempts in rows
        ]

    def _holders(self, conn: Any, ids: Sequence[str]) -> dict[str, Holder]:
        rows = conn.execute(self._sql(HOLDERS), (list(ids),))
        return {article_id: (state, owner) for article_id, state, owner in rows}

    def _ids_in(self, column: str, ids: Sequence[str]) -> tuple[str, Sequence[Any]]:
        return f"{column} = ANY(?)", (list(ids),)

    def _result_params(self, result: TerminalResult, now: float) -> Sequence[Any]:
        return tuple(_storable(value) for value in super()._result_params(result, now))

    def _reject_row(self, source: str, reject: Rejected, now: float) -> Sequence[Any]:
        return tuple(_storable(value) for value in super()._reject_row(source, reject, now))

    def cluster_backlog(self, limit: int) -> list[tuple[str, str, float | None]]:
        out: list[tuple[str, str, float | None]] = []
        for raw_id, cluster_id, published in self._read(BACKLOG, (limit,)):
            article_id = usable_id(raw_id)
            if article_id is not None:
                out.append((article_id, cluster_id, epoch_of(published)))
        return out


def read_postgres_report(url: str, now: float | None) -> QueueReport:
    """What ``tierbatch status`` shows, in one read-only snapshot (never
    creating tables). ``now`` None: expired leases by the server's clock."""

    def read(conn: psycopg.Connection[Any]) -> QueueReport:
        at = now
        if at is None:
            ((at,),) = conn.execute(SERVER_TIME).fetchall()

        def query(sql: str, params: Sequence[Any]) -> list[Any]:
            return conn.execute(to_format_params(sql), params).fetchall()

        def has_table(name: str) -> bool:
            return bool(query("SELECT to_regclass(?) IS NOT NULL", (name,))[0][0])

        report = read_queue_report(query, float(at), _RESULT_COUNTS, _GROUNDING_COUNTS)
        owner, daemons, state = read_sharing(query, float(at), has_table)
        return replace(report, quota_owner=owner, daemons=daemons, quota_state=state)

    return _read_only(url, "tierbatch status", read)


def read_postgres_backlog(url: str) -> tuple[list[Article], int]:
    """The queued and leased articles, but those batch jobs hold (for
    ``tierbatch plan``), in one read-only snapshot, and how many rows are
    not usable articles."""
    return _read_only(
        url,
        "tierbatch plan",
        lambda conn: backlog_articles(
            conn.execute(
                f"SELECT id, payload FROM articles WHERE {BACKLOG_WHERE} ORDER BY seq"
            ).fetchall()
        ),
    )


def _read_only(url: str, application: str, read: Callable[[psycopg.Connection[Any]], T]) -> T:
    """``read`` inside one read-only, repeatable-read transaction of a
    connection of its own, closed afterwards; errors as ``StorageError``."""
    name = display_name(url)
    try:
        conn = psycopg.connect(url, connect_timeout=10, application_name=application)
    except psycopg.Error as exc:
        raise StorageError(f"{name}: cannot open: {_message(exc)}") from exc
    try:
        conn.read_only = True
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        with conn.transaction():
            return read(conn)
    except psycopg.Error as exc:
        raise StorageError(f"{name}: not a readable tierbatch database: {_message(exc)}") from exc
    finally:
        conn.close()


def _storable(value: object) -> object:
    """Text PostgreSQL can hold: NUL and unpaired surrogates become U+FFFD."""
    if isinstance(value, str) and _UNSTORABLE.search(value):
        return _UNSTORABLE.sub("\ufffd", value)
    return value


def _message(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__

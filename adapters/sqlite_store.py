"""The embedded default storage: a durable article queue, results and rejects in SQLite.

A daemon enqueues articles (or another process inserts them), leases a batch
at a time, hands them to the runtime, and the ``ResultsSink`` writes every
terminal result back in the same database. A lease expires unless renewed, so
articles held by a daemon that died are leased again by the next one: an
article is never lost, and its result is written exactly once.

Schema (version 1)::

    CREATE TABLE articles (              -- the queue
        id            TEXT PRIMARY KEY,
        payload       TEXT NOT NULL,      -- the article as one JSONL input line
        state         TEXT NOT NULL DEFAULT 'queued',
                                          -- 'queued' | 'leased' | 'done' | 'failed'
        priority      REAL,               -- optional; higher is leased first
        enqueued_at   REAL NOT NULL DEFAULT (now),   -- Unix epoch seconds
        lease_owner   TEXT,               -- who holds the lease (host:pid:uuid)
        lease_expires REAL,               -- epoch seconds; expired leases are taken over
        attempts      INTEGER NOT NULL DEFAULT 0,    -- how many times it was leased
        updated_at    REAL NOT NULL DEFAULT (now)
    );
    CREATE INDEX articles_state_lease ON articles(state, lease_expires);
    CREATE INDEX articles_queue_order ON articles(state, priority DESC, enqueued_at);
    CREATE INDEX articles_lease_owner ON articles(lease_owner)
        WHERE lease_owner IS NOT NULL;

    CREATE TABLE results (               -- exactly one terminal row per article
        article_id TEXT PRIMARY KEY, status TEXT NOT NULL,  -- 'done' | 'failed'
        entities TEXT NOT NULL,           -- JSON [{"name","type","salience","mentions"}]
        model TEXT, tier TEXT, attempts INTEGER,
        input_tokens INTEGER, output_tokens INTEGER, latency_s REAL, cost_usd REAL,
        fallback INTEGER NOT NULL,        -- 0 | 1
        reason TEXT, detail TEXT,         -- FailureReason value and what was tried
        metadata TEXT,                    -- JSON object
        finished_at REAL NOT NULL
    );
    CREATE TABLE rejects (source TEXT NOT NULL, line_no INTEGER, reason TEXT NOT NULL,
                          raw_prefix TEXT, at REAL NOT NULL);
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);  -- schema_version

Inserting from another process needs only the id and the payload (the JSONL
input format, see ``tierbatch.adapters.jsonl_input``)::

    INSERT INTO articles (id, payload) VALUES (?, ?) ON CONFLICT (id) DO NOTHING;

Leasing order: expired leases first (oldest deadline first), then queued rows
with a priority (highest first), then queued rows without one, oldest first.
A payload that is not a valid article is not leased: it gets a ``failed``
result (reason ``bad_request``) so it is neither lost nor retried forever.

Durability and concurrency: WAL journal, ``synchronous=NORMAL`` (a committed
transaction survives a process crash; the last ones may be lost on power
loss), ``busy_timeout``, and every write in a ``BEGIN IMMEDIATE`` transaction,
so two processes never lease the same row and readers never block the writer.

Threads: SQLite connections must not be shared between threads, so the store
opens one connection per thread on first use (``threading.local``). The
daemon's main thread can lease and enqueue while the runtime's composer
thread writes results through a ``ResultsSink``; each uses its own connection.
``close()`` closes all of them and must be called once the other threads are
done with the store.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from itertools import islice
from typing import Any, TypeVar

import structlog

from tierbatch.adapters.jsonl_input import (
    DEFAULT_MAX_BYTES_PER_LINE,
    InvalidArticle,
    Rejected,
    Source,
    article_from_row,
    article_to_json,
    read_articles,
)
from tierbatch.adapters.result_json import DONE, FAILED, dumps, result_from_json, result_to_json
from tierbatch.policies.articles import Article
from tierbatch.policies.results import Failed, FailureReason, TerminalResult

log = structlog.get_logger(__name__)

SCHEMA_VERSION = 1
STATES = ("queued", "leased", "done", "failed")
_NOW_SQL = "((julianday('now') - 2440587.5) * 86400.0)"
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    f"""CREATE TABLE IF NOT EXISTS articles (
        id TEXT PRIMARY KEY,
        payload TEXT NOT NULL,
        state TEXT NOT NULL DEFAULT 'queued'
            CHECK (state IN ('queued', 'leased', 'done', 'failed')),
        priority REAL,
        enqueued_at REAL NOT NULL DEFAULT {_NOW_SQL},
        lease_owner TEXT,
        lease_expires REAL,
        attempts INTEGER NOT NULL DEFAULT 0,
        updated_at REAL NOT NULL DEFAULT {_NOW_SQL}
    )""",
    "CREATE INDEX IF NOT EXISTS articles_state_lease ON articles (state, lease_expires)",
    """CREATE INDEX IF NOT EXISTS articles_queue_order
        ON articles (state, priority DESC, enqueued_at)""",
    """CREATE INDEX IF NOT EXISTS articles_lease_owner
        ON articles (lease_owner) WHERE lease_owner IS NOT NULL""",
    """CREATE TABLE IF NOT EXISTS results (
        article_id TEXT PRIMARY KEY,
        status TEXT NOT NULL CHECK (status IN ('done', 'failed')),
        entities TEXT NOT NULL DEFAULT '[]',
        model TEXT,
        tier TEXT,
        attempts INTEGER,
        input_tokens INTEGER,
        output_tokens INTEGER,
        latency_s REAL,
        cost_usd REAL,
        fallback INTEGER NOT NULL DEFAULT 0,
        reason TEXT,
        detail TEXT,
        metadata TEXT,
        finished_at REAL NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS rejects (
        source TEXT NOT NULL,
        line_no INTEGER,
        reason TEXT NOT NULL,
        raw_prefix TEXT,
        at REAL NOT NULL
    )""",
)
_RESULT_COLUMNS = (
    "article_id",
    "status",
    "entities",
    "model",
    "tier",
    "attempts",
    "input_tokens",
    "output_tokens",
    "latency_s",
    "cost_usd",
    "fallback",
    "reason",
    "detail",
    "metadata",
    "finished_at",
)
_INSERT_RESULT = (
    f"INSERT INTO results ({', '.join(_RESULT_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(_RESULT_COLUMNS))}) ON CONFLICT (article_id) DO NOTHING"
)
_MARK_TERMINAL = """UPDATE articles
    SET state = (SELECT status FROM results WHERE article_id = articles.id),
        lease_owner = NULL, lease_expires = NULL, updated_at = ?
    WHERE id = ? AND state IN ('queued', 'leased')"""
_INSERT_ARTICLE = """INSERT INTO articles (id, payload, state, priority, enqueued_at, updated_at)
    VALUES (?, ?, 'queued', ?, ?, ?) ON CONFLICT (id) DO NOTHING"""
_INSERT_REJECT = (
    "INSERT INTO rejects (source, line_no, reason, raw_prefix, at) VALUES (?, ?, ?, ?, ?)"
)
_RELEASE_ONE = """UPDATE articles
    SET state = 'queued', lease_owner = NULL, lease_expires = NULL, updated_at = ?
    WHERE id = ? AND lease_owner = ? AND state = 'leased'"""
_SQLITE_BUSY = 5
_SQLITE_LOCKED = 6
_ID_CHUNK = 500

T = TypeVar("T")


class StorageError(Exception):
    """The database could not be read or written (after retrying busy errors)."""


class IncompatibleSchema(StorageError):
    """The database was created by an incompatible version of tierbatch."""


@dataclass(frozen=True, slots=True)
class EnqueueReport:
    inserted: int
    duplicates: int


@dataclass(frozen=True, slots=True)
class IngestReport:
    inserted: int
    duplicates: int
    rejected: int


RESULT_COUNTS_SQL = (
    "SELECT status, COALESCE(tier, ''), COALESCE(model, ''), COUNT(*),"
    " COALESCE(SUM(input_tokens), 0), COALESCE(SUM(output_tokens), 0),"
    " COALESCE(SUM(cost_usd), 0.0)"
    " FROM results GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
)


@dataclass(frozen=True, slots=True)
class ResultCount:
    """Results grouped by status, tier and model, with their token and cost sums."""

    status: str
    tier: str
    model: str
    count: int
    input_tokens: int
    output_tokens: int
    cost_usd: float


@dataclass(frozen=True, slots=True)
class StoredReject:
    source: str
    line_no: int
    reason: str
    raw_prefix: str
    at: float


def default_owner() -> str:
    """A lease owner id unique to this process: ``host:pid:random``."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class SqliteStore:
    """The queue, results and rejects of one SQLite database file.

    ``owner`` identifies this process's leases; ``clock`` gives epoch seconds
    for lease deadlines and timestamps (tests pass a fake one).
    ``busy_timeout_s`` is how long SQLite waits for another writer before a
    statement fails; a failed transaction is then retried ``busy_retries``
    more times before ``StorageError`` is raised.
    """

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
        self.path = os.fspath(path)
        if self.path in ("", ":memory:") or self.path.startswith("file::memory:"):
            raise ValueError("SqliteStore needs a database file: every thread opens its own")
        if not owner:
            raise ValueError("owner must be a non-empty lease owner id")
        self.owner = owner
        self._clock = clock
        self._busy_timeout_s = busy_timeout_s
        self._busy_retries = busy_retries
        self._batch_size = batch_size
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._closed = False
        self._duplicate_results = 0
        conn = self._conn()
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        except sqlite3.Error as exc:
            self.close()
            raise StorageError(f"{self.path}: cannot open database: {exc}") from exc
        if str(mode).lower() != "wal":
            log.warning("sqlite_not_wal", path=self.path, journal_mode=mode)
        try:
            self._transact(self._create_schema)
        except StorageError:
            self.close()
            raise

    # -- connections and transactions ------------------------------------

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        with self._lock:
            if self._closed:
                raise StorageError(f"{self.path}: store is closed")
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
            self._connections.append(conn)
        self._local.conn = conn
        return conn

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
                    log.info("sqlite_busy_retry", path=self.path, attempt=attempt + 1)
                    time.sleep(min(0.05 * 2**attempt, 1.0))
                    continue
                raise StorageError(f"{self.path}: write failed: {exc}") from exc
            except sqlite3.Error as exc:
                raise StorageError(f"{self.path}: write failed: {exc}") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        try:
            return self._conn().execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise StorageError(f"{self.path}: read failed: {exc}") from exc

    def _create_schema(self, conn: sqlite3.Connection) -> None:
        for statement in _SCHEMA:
            conn.execute(statement)
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row is None:
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('schema_version', ?)",
                (str(SCHEMA_VERSION),),
            )
        elif row[0] != str(SCHEMA_VERSION):
            raise IncompatibleSchema(
                f"{self.path}: schema version {row[0]}, this tierbatch uses {SCHEMA_VERSION}"
            )

    # -- queue ------------------------------------------------------------

    def enqueue(
        self,
        articles: Iterable[Article],
        *,
        priority_of: Callable[[Article], float | None] | None = None,
    ) -> EnqueueReport:
        """Add articles as 'queued', in batched transactions. An id already in
        the queue (in any state) is counted as a duplicate and left alone.
        ``priority_of`` sets the stored priority (None: lease oldest first).
        An article whose metadata shadows a field raises ``InvalidArticle``
        (batches before it are already committed)."""
        inserted = total = 0
        for batch in _batched(articles, self._batch_size):
            now = self._clock()
            rows = [
                (
                    a.id,
                    dumps(article_to_json(a)),
                    priority_of(a) if priority_of else None,
                    now,
                    now,
                )
                for a in batch
            ]
            inserted += self._transact(partial(_execute_many, _INSERT_ARTICLE, rows))
            total += len(rows)
        return EnqueueReport(inserted=inserted, duplicates=total - inserted)

    def add_rejects(self, source: str, rejects: Iterable[Rejected]) -> int:
        """Record input lines that were not valid articles; returns how many."""
        count = 0
        for batch in _batched(rejects, self._batch_size):
            now = self._clock()
            rows = [(source, r.line_no, r.reason, r.raw_prefix, now) for r in batch]
            self._transact(partial(_execute_many, _INSERT_REJECT, rows))
            count += len(rows)
        return count

    def lease(self, limit: int, lease_s: float) -> list[Article]:
        """Take up to ``limit`` articles for ``lease_s`` seconds: expired leases
        first, then the queue by priority and age. Atomic across processes."""
        if limit <= 0:
            return []
        return self._transact(lambda conn: self._lease(conn, limit, lease_s))

    def _lease(self, conn: sqlite3.Connection, limit: int, lease_s: float) -> list[Article]:
        now = self._clock()
        leased: list[Article] = []
        bad: list[Failed] = []
        while len(leased) < limit:
            want = limit - len(leased)
            rows = conn.execute(
                "SELECT id, payload FROM articles WHERE state = 'leased' AND lease_expires < ?"
                " ORDER BY lease_expires LIMIT ?",
                (now, want),
            ).fetchall()
            if len(rows) < want:
                rows += conn.execute(
                    "SELECT id, payload FROM articles INDEXED BY articles_queue_order"
                    " WHERE state = 'queued' ORDER BY priority DESC, enqueued_at LIMIT ?",
                    (want - len(rows),),
                ).fetchall()
            if not rows:
                break
            good: list[tuple[str, float, float, str]] = []
            for article_id, payload in rows:
                try:
                    article = article_from_row(payload)
                except InvalidArticle as exc:
                    bad.append(_invalid_payload(article_id, str(exc)))
                    conn.execute(
                        "UPDATE articles SET state = 'leased', attempts = attempts + 1"
                        " WHERE id = ?",
                        (article_id,),
                    )
                    continue
                if article.id != article_id:
                    bad.append(_invalid_payload(article_id, f"payload id is {article.id!r}"))
                    conn.execute(
                        "UPDATE articles SET state = 'leased', attempts = attempts + 1"
                        " WHERE id = ?",
                        (article_id,),
                    )
                    continue
                leased.append(article)
                good.append((self.owner, now + lease_s, now, article_id))
            conn.executemany(
                "UPDATE articles SET state = 'leased', lease_owner = ?, lease_expires = ?,"
                " attempts = attempts + 1, updated_at = ? WHERE id = ?",
                good,
            )
            if not bad and len(rows) < want:
                break
            if bad:
                self._write_results(conn, bad, now)
                bad = []
        return leased

    def renew(self, lease_s: float) -> int:
        """Extend every lease this owner holds to ``now + lease_s``; returns how many."""
        now = self._clock()
        return self._transact(
            lambda conn: (
                conn.execute(
                    "UPDATE articles SET lease_expires = ?, updated_at = ?"
                    " WHERE lease_owner = ? AND state = 'leased'",
                    (now + lease_s, now, self.owner),
                ).rowcount
            )
        )

    def release(self, ids: Iterable[str] | None = None) -> int:
        """Put leased articles back in the queue (on a graceful stop): those in
        ``ids``, or all this owner holds when None. Only this owner's leases
        are touched; returns how many were released."""
        now = self._clock()
        if ids is None:
            return self._transact(
                lambda conn: (
                    conn.execute(
                        "UPDATE articles SET state = 'queued', lease_owner = NULL,"
                        " lease_expires = NULL, updated_at = ?"
                        " WHERE lease_owner = ? AND state = 'leased'",
                        (now, self.owner),
                    ).rowcount
                )
            )
        released = 0
        for batch in _batched(ids, self._batch_size):
            rows = [(now, article_id, self.owner) for article_id in batch]
            released += self._transact(partial(_execute_many, _RELEASE_ONE, rows))
        return released

    # -- results ----------------------------------------------------------

    def write_results(self, results: Sequence[TerminalResult]) -> int:
        """Store terminal results and mark their articles done/failed, in one
        transaction. The first result for an id wins; a later one is ignored,
        counted in ``duplicate_results`` and logged. Returns how many were new."""
        if not results:
            return 0
        now = self._clock()
        return self._transact(lambda conn: self._write_results(conn, results, now))

    def _write_results(
        self, conn: sqlite3.Connection, results: Sequence[TerminalResult], now: float
    ) -> int:
        rows = [_result_row(r, now) for r in results]
        new: int = conn.executemany(_INSERT_RESULT, rows).rowcount
        conn.executemany(_MARK_TERMINAL, [(now, r.article_id) for r in results])
        duplicates = len(rows) - new
        if duplicates:
            with self._lock:
                self._duplicate_results += duplicates
            log.warning(
                "duplicate_terminal_results_ignored",
                path=self.path,
                count=duplicates,
                batch=len(rows),
                ids=[r.article_id for r in results[:5]],
            )
        return new

    @property
    def duplicate_results(self) -> int:
        """Terminal results ignored because the article already had one."""
        with self._lock:
            return self._duplicate_results

    def results(self, ids: Iterable[str] | None = None) -> Iterator[TerminalResult]:
        """The stored results: of ``ids`` (those that have one), or all in
        insertion order. Reads page by page, never holding a read open."""
        columns = ", ".join(_RESULT_COLUMNS)
        if ids is not None:
            for batch in _batched(ids, _ID_CHUNK):
                marks = ", ".join("?" * len(batch))
                for row in self._read(
                    f"SELECT {columns} FROM results WHERE article_id IN ({marks})", batch
                ):
                    yield _result_from_row(row)
            return
        last = 0
        while True:
            rows = self._read(
                f"SELECT rowid, {columns} FROM results WHERE rowid > ? ORDER BY rowid LIMIT 1000",
                (last,),
            )
            if not rows:
                return
            for row in rows:
                yield _result_from_row(row[1:])
            last = rows[-1][0]

    # -- status -----------------------------------------------------------

    def cluster_backlog(self, limit: int) -> list[tuple[str, str, float | None]]:
        """``(article id, cluster id, published_at epoch or None)`` of the
        newest ``limit`` queued articles that name a cluster, so a daemon can
        count its whole backlog towards cluster hotness before it leases."""
        rows = self._read(
            "SELECT id, CAST(json_extract(payload, '$.cluster_id') AS TEXT),"
            " json_extract(payload, '$.published_at') FROM articles"
            " WHERE state = 'queued' AND json_extract(payload, '$.cluster_id') IS NOT NULL"
            " ORDER BY enqueued_at DESC LIMIT ?",
            (limit,),
        )
        out: list[tuple[str, str, float | None]] = []
        for article_id, cluster_id, published in rows:
            at = None
            if isinstance(published, str):
                try:
                    stamp = datetime.fromisoformat(published.replace("Z", "+00:00"))
                    if stamp.tzinfo is None:
                        stamp = stamp.replace(tzinfo=UTC)
                    at = stamp.timestamp()
                except ValueError:
                    at = None
            out.append((article_id, cluster_id, at))
        return out

    def counts(self) -> dict[str, int]:
        """Articles per state (every state present, zero when empty)."""
        counts = dict.fromkeys(STATES, 0)
        for state, count in self._read("SELECT state, COUNT(*) FROM articles GROUP BY state"):
            counts[state] = count
        return counts

    def pending(self) -> int:
        """Articles not finished yet: queued or leased."""
        rows = self._read("SELECT COUNT(*) FROM articles WHERE state IN ('queued', 'leased')")
        return int(rows[0][0])

    def result_counts(self) -> list[ResultCount]:
        """Results per status, tier and model, with token and cost totals."""
        return [ResultCount(*row) for row in self._read(RESULT_COUNTS_SQL)]

    def rejects(self, source: str | None = None) -> list[StoredReject]:
        if source is None:
            rows = self._read("SELECT source, line_no, reason, raw_prefix, at FROM rejects")
        else:
            rows = self._read(
                "SELECT source, line_no, reason, raw_prefix, at FROM rejects WHERE source = ?",
                (source,),
            )
        return [StoredReject(*row) for row in rows]

    def close(self) -> None:
        """Close every thread's connection. Idempotent."""
        with self._lock:
            self._closed = True
            connections, self._connections = self._connections, []
        for conn in connections:
            try:
                conn.close()
            except sqlite3.Error as exc:  # pragma: no cover - closing is best effort
                log.warning("sqlite_close_failed", path=self.path, error=str(exc))
        self._local = threading.local()

    def __enter__(self) -> SqliteStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def ingest_jsonl(
    store: SqliteStore,
    source: Source,
    *,
    source_name: str | None = None,
    max_bytes_per_line: int = DEFAULT_MAX_BYTES_PER_LINE,
    batch_size: int = 2000,
) -> IngestReport:
    """Stream a JSONL file into the queue: valid articles are enqueued, bad
    lines recorded in ``rejects`` under ``source_name`` (default: the path)."""
    name = source_name or (os.fspath(source) if isinstance(source, str | os.PathLike) else "-")
    inserted = duplicates = rejected = 0
    articles: list[Article] = []
    bad: list[Rejected] = []

    def drain() -> None:
        nonlocal inserted, duplicates, rejected
        if articles:
            report = store.enqueue(articles)
            inserted += report.inserted
            duplicates += report.duplicates
            articles.clear()
        if bad:
            rejected += store.add_rejects(name, bad)
            bad.clear()

    for item in read_articles(source, max_bytes_per_line=max_bytes_per_line):
        if isinstance(item, Rejected):
            bad.append(item)
        else:
            articles.append(item)
        if len(articles) + len(bad) >= batch_size:
            drain()
    drain()
    return IngestReport(inserted=inserted, duplicates=duplicates, rejected=rejected)


class ResultsSink:
    """The runtime's ``Sink`` writing into a ``SqliteStore``.

    ``write`` only appends to a buffer (it runs on the runtime's composer
    thread); the buffer is written in one transaction when it reaches
    ``flush_every`` results (on the caller's thread, so a persistent failure
    surfaces as ``StorageError`` there), and a background thread writes it
    when its oldest result is ``flush_interval_s`` old, so results reach disk
    promptly even when the stream pauses. A failed background write keeps the
    results buffered and is retried; nothing is dropped silently. ``close``
    stops the thread and flushes; it does not close the store (close the
    sink first, then the store).
    """

    def __init__(
        self, store: SqliteStore, flush_every: int = 256, flush_interval_s: float = 0.5
    ) -> None:
        self._store = store
        self._flush_every = max(1, flush_every)
        self._interval = max(0.001, flush_interval_s)
        self._buffer: list[TerminalResult] = []
        self._oldest: float | None = None
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._closed = False
        self.written = 0
        self._thread = threading.Thread(
            target=self._flush_in_background, name="tierbatch-results-flusher", daemon=True
        )
        self._thread.start()

    def write(self, results: Sequence[TerminalResult]) -> None:
        if not results:
            return
        with self._lock:
            if self._closed:
                raise StorageError("ResultsSink is closed")
            self._buffer.extend(results)
            if self._oldest is None:
                self._oldest = time.monotonic()
            full = len(self._buffer) >= self._flush_every
        self._wake.set()
        if full:
            self.flush()

    def flush(self) -> None:
        """Write everything buffered so far; raises ``StorageError`` (keeping
        the results buffered) when the database cannot be written."""
        with self._flush_lock:
            with self._lock:
                batch, self._buffer = self._buffer, []
                self._oldest = None
            if not batch:
                return
            try:
                self.written += self._store.write_results(batch)
            except StorageError:
                with self._lock:
                    self._buffer[:0] = batch
                    self._oldest = time.monotonic()
                raise

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self._stopping.set()
        self._wake.set()
        self._thread.join()
        self.flush()

    def _flush_in_background(self) -> None:
        while True:
            self._wake.wait()
            if self._stopping.is_set():
                return
            with self._lock:
                if self._oldest is None:
                    self._wake.clear()
                    continue
                due_in = self._oldest + self._interval - time.monotonic()
            if due_in > 0:
                if self._stopping.wait(due_in):
                    return
                continue
            try:
                self.flush()
            except StorageError as exc:
                log.error("results_flush_failed_will_retry", error=str(exc))
            except Exception:  # keep flushing: close() will surface the error
                log.exception("results_flush_crashed_will_retry")


def _execute_many(sql: str, rows: Sequence[Sequence[Any]], conn: sqlite3.Connection) -> int:
    """Run ``sql`` once per row; returns the number of rows changed."""
    return int(conn.executemany(sql, rows).rowcount)


def _batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (_SQLITE_BUSY, _SQLITE_LOCKED)
    message = str(exc).lower()
    return "locked" in message or "busy" in message


def _invalid_payload(article_id: str, problem: str) -> Failed:
    log.warning("invalid_article_payload", article_id=article_id, problem=problem)
    return Failed(
        article_id=article_id,
        reason=FailureReason.BAD_REQUEST,
        detail=f"invalid payload in the articles table: {problem}",
        tier="",
        attempts=0,
    )


def _result_row(result: TerminalResult, now: float) -> tuple[Any, ...]:
    record = result_to_json(result)
    record["entities"] = dumps(record["entities"])
    record["metadata"] = dumps(record["metadata"]) if record["metadata"] else None
    record["fallback"] = int(record["fallback"])
    record["finished_at"] = now
    return tuple(record[column] for column in _RESULT_COLUMNS)


def _result_from_row(row: Sequence[Any]) -> TerminalResult:
    record = dict(zip(_RESULT_COLUMNS, row, strict=True))
    record["entities"] = json.loads(record["entities"] or "[]")
    record["metadata"] = json.loads(record["metadata"]) if record["metadata"] else {}
    if record["status"] not in (DONE, FAILED):
        raise StorageError(f"result {record['article_id']!r}: unknown status")
    return result_from_json(record)

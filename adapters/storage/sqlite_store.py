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
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        -- schema_version; stale_results and duplicate_results: how many
        -- results were refused (see "Results" below), over the database's life

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
  expired lease taken over from another owner) and shrinks by one when the lease is handed back by
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

Threads: SQLite connections must not be shared between threads, so the store
opens one connection per thread on first use (``threading.local``). The
daemon's main thread can lease and enqueue while the runtime's composer
thread writes results through a ``ResultsSink``; each uses its own connection.
``close()`` closes all of them and must be called once the other threads are
done with the store.
"""

from __future__ import annotations

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

from tierbatch.adapters.storage.jsonl_input import (
    InvalidArticle,
    Rejected,
    article_from_row,
    article_to_json,
    storable_text_problem,
)
from tierbatch.adapters.storage.result_json import dumps
from tierbatch.adapters.storage.sqlite_schema import (
    INSERT_ARTICLE,
    INSERT_REJECT,
    INSERT_RESULT,
    MARK_TERMINAL,
    META_ADD,
    RELEASE_ALL,
    RELEASE_ONE,
    RESULT_COLUMNS,
    RESULT_COUNTS_SQL,
    SCHEMA,
    SCHEMA_VERSION,
    STATES,
    UnknownResultStatus,
    result_from_row,
    result_row,
)
from tierbatch.policies.articles import Article
from tierbatch.policies.results import Failed, FailureReason, TerminalResult

log = structlog.get_logger(__name__)

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
        self._stale_results = 0
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
        for statement in SCHEMA:
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
        An article whose metadata shadows a field, or that holds text UTF-8
        cannot encode (an unpaired surrogate), raises ``InvalidArticle``
        (batches before it are already committed)."""
        inserted = total = 0
        for batch in _batched(articles, self._batch_size):
            now = self._clock()
            rows = [
                (a.id, _payload(a), priority_of(a) if priority_of else None, now, now)
                for a in batch
            ]
            inserted += self._transact(partial(_execute_many, INSERT_ARTICLE, rows))
            total += len(rows)
        return EnqueueReport(inserted=inserted, duplicates=total - inserted)

    def add_rejects(self, source: str, rejects: Iterable[Rejected]) -> int:
        """Record input lines that were not valid articles; returns how many."""
        count = 0
        for batch in _batched(rejects, self._batch_size):
            now = self._clock()
            rows = [(source, r.line_no, r.reason, r.raw_prefix, now) for r in batch]
            self._transact(partial(_execute_many, INSERT_REJECT, rows))
            count += len(rows)
        return count

    def lease(
        self, limit: int, lease_s: float, *, poison_after: int | None = None
    ) -> list[Article]:
        """Take up to ``limit`` articles for ``lease_s`` seconds: expired leases
        first, then the queue by priority and age. Atomic across processes.

        Rows that cannot be worked on get a ``failed`` result in the same
        transaction instead of being leased (see the module docstring): a
        bad payload (``bad_request``), and, with ``poison_after``, a row
        leased that many times without a result (``poison``). Never raises
        for what a row contains; only ``StorageError``.
        Never this owner's own leases: they are live while it runs (it renews
        them), so one that looks expired only means the wall clock stepped."""
        if limit <= 0:
            return []
        if poison_after is not None and poison_after < 1:
            raise ValueError(f"poison_after must be >= 1, got {poison_after}")
        return self._transact(lambda conn: self._lease(conn, limit, lease_s, poison_after))

    def _lease(
        self, conn: sqlite3.Connection, limit: int, lease_s: float, poison_after: int | None
    ) -> list[Article]:
        now = self._clock()
        leased: list[Article] = []
        while len(leased) < limit:
            want = limit - len(leased)
            # Ids and payloads come back as bytes: a TEXT value another process
            # wrote in invalid UTF-8 would make the fetch itself raise.
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
            if not rows:
                break
            take: list[int] = []
            refuse: list[int] = []
            failures: list[Failed] = []
            nameless: list[int] = []
            for rowid, id_type, raw_id, payload, attempts in rows:
                article_id = _usable_id(id_type, raw_id)
                if article_id is None:
                    nameless.append(rowid)
                    continue
                failure: Failed | None = None
                if poison_after is not None and attempts >= poison_after:
                    failure = _poisoned(article_id, attempts, poison_after)
                else:
                    article, problem = _article_of(article_id, payload)
                    if article is not None:
                        leased.append(article)
                        take.append(rowid)
                        continue
                    failure = _invalid_payload(article_id, problem)
                refuse.append(rowid)
                failures.append(failure)
            conn.executemany(_TAKE, [(self.owner, now + lease_s, now, r) for r in take])
            if failures:
                # Ours for the length of this transaction, so the owner check
                # of _write_results accepts the failure we write for it.
                conn.executemany(
                    "UPDATE articles SET state = 'leased', lease_owner = ?, lease_expires = ?,"
                    " updated_at = ? WHERE rowid = ?",
                    [(self.owner, now, now, rowid) for rowid in refuse],
                )
                self._write_results(conn, failures, now)
                conn.executemany(_SETTLE_REFUSED, [(now, rowid) for rowid in refuse])
            if nameless:
                log.warning(
                    "article_rows_without_a_usable_id_failed",
                    path=self.path,
                    count=len(nameless),
                    rowids=nameless[:5],
                )
                conn.executemany(
                    "UPDATE articles SET state = 'failed', lease_owner = NULL,"
                    " lease_expires = NULL, updated_at = ? WHERE rowid = ?",
                    [(now, rowid) for rowid in nameless],
                )
            if len(rows) < want:
                break  # no candidates beyond these: every one was settled above
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
        are touched; returns how many were released. A released lease is
        not a strike: ``attempts`` goes back down by one."""
        now = self._clock()
        if ids is None:
            return self._transact(
                lambda conn: conn.execute(RELEASE_ALL, (now, self.owner)).rowcount
            )
        released = 0
        for batch in _batched(ids, self._batch_size):
            rows = [(now, article_id, self.owner) for article_id in batch]
            released += self._transact(partial(_execute_many, RELEASE_ONE, rows))
        return released

    # -- results ----------------------------------------------------------

    def write_results(self, results: Sequence[TerminalResult]) -> int:
        """Store terminal results and mark their articles done/failed, in one
        transaction. Only the current lease owner's results are stored: one
        for a row another owner holds (or that went back to the queue) is
        dropped, counted in ``stale_results`` and logged. The first result
        for an id wins; a later one is ignored, counted in
        ``duplicate_results`` and logged. Returns how many were new."""
        if not results:
            return 0
        now = self._clock()
        return self._transact(lambda conn: self._write_results(conn, results, now))

    def _write_results(
        self, conn: sqlite3.Connection, results: Sequence[TerminalResult], now: float
    ) -> int:
        holders: dict[str, tuple[str, str | None]] = {}
        ids = list(dict.fromkeys(r.article_id for r in results))
        for batch in _batched(ids, _ID_CHUNK):
            marks = ", ".join("?" * len(batch))
            for article_id, state, owner in conn.execute(
                f"SELECT id, state, lease_owner FROM articles WHERE id IN ({marks})", batch
            ):
                holders[article_id] = (state, owner)
        accepted: list[TerminalResult] = []
        stale: list[TerminalResult] = []
        for result in results:
            holder = holders.get(result.article_id)
            if (
                holder is None
                or holder[0] in ("done", "failed")
                or holder == ("leased", self.owner)
            ):
                accepted.append(result)  # a terminal row already has its result: a duplicate
            else:
                stale.append(result)
        new = 0
        if accepted:
            new = conn.executemany(INSERT_RESULT, [result_row(r, now) for r in accepted]).rowcount
            conn.executemany(MARK_TERMINAL, [(now, r.article_id) for r in accepted])
        duplicates = len(accepted) - new
        if stale:
            conn.execute(META_ADD, ("stale_results", len(stale)))
            with self._lock:
                self._stale_results += len(stale)
            log.warning(
                "stale_lease_results_dropped",
                path=self.path,
                owner=self.owner,
                count=len(stale),
                ids=[r.article_id for r in stale[:5]],
                held_by=[holders[r.article_id][1] for r in stale[:5]],
            )
        if duplicates:
            conn.execute(META_ADD, ("duplicate_results", duplicates))
            with self._lock:
                self._duplicate_results += duplicates
            log.warning(
                "duplicate_terminal_results_ignored",
                path=self.path,
                count=duplicates,
                batch=len(results),
                ids=[r.article_id for r in accepted[:5]],
            )
        return new

    @property
    def duplicate_results(self) -> int:
        """Terminal results ignored because the article already had one."""
        with self._lock:
            return self._duplicate_results

    @property
    def stale_results(self) -> int:
        """Terminal results dropped because another owner held the lease."""
        with self._lock:
            return self._stale_results

    def refused_results(self) -> dict[str, int]:
        """``stale_results`` and ``duplicate_results`` over the database's
        life, every writer included (from ``meta``)."""
        return refused_counts(
            self._read(
                "SELECT key, value FROM meta WHERE key IN ('stale_results', 'duplicate_results')"
            )
        )

    def results(self, ids: Iterable[str] | None = None) -> Iterator[TerminalResult]:
        """The stored results: of ``ids`` (those that have one), or all in
        insertion order. Reads page by page, never holding a read open."""
        columns = ", ".join(RESULT_COLUMNS)
        if ids is not None:
            for batch in _batched(ids, _ID_CHUNK):
                marks = ", ".join("?" * len(batch))
                for row in self._read(
                    f"SELECT {columns} FROM results WHERE article_id IN ({marks})", batch
                ):
                    yield _decode(row)
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
                yield _decode(row[1:])
            last = rows[-1][0]

    # -- status -----------------------------------------------------------

    def cluster_backlog(self, limit: int) -> list[tuple[str, str, float | None]]:
        """``(article id, cluster id, published_at epoch or None)`` of the
        newest ``limit`` queued articles that name a cluster, so a daemon can
        count its whole backlog towards cluster hotness before it leases.
        Payloads that are not JSON text are skipped (leasing fails them)."""
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
            article_id = _usable_id("text", raw_id)
            if article_id is None:
                continue
            cluster_id = bytes(raw_cluster).decode("utf-8", "replace")
            out.append((article_id, cluster_id, _epoch(raw_published)))
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


_LEASE_COLUMNS = "rowid, typeof(id), CAST(id AS BLOB), CAST(payload AS BLOB), attempts"
# Taking a row is a strike (an owner never takes its own leases back).
_TAKE = """UPDATE articles
    SET state = 'leased', lease_owner = ?, lease_expires = ?, attempts = attempts + 1,
        updated_at = ?
    WHERE rowid = ?"""
# A refused row ends terminal even if a result for its id was already there.
_SETTLE_REFUSED = """UPDATE articles
    SET state = COALESCE((SELECT status FROM results WHERE article_id = articles.id), 'failed'),
        lease_owner = NULL, lease_expires = NULL, updated_at = ?
    WHERE rowid = ? AND state = 'leased'"""
# A payload field, or NULL when the payload is not JSON text (json_extract
# would raise "malformed JSON" and fail the whole query).
_JSON_FIELD = (
    "CASE WHEN typeof(payload) = 'text' AND json_valid(payload)"
    " THEN json_extract(payload, '$.{field}') END"
)


def _payload(article: Article) -> str:
    payload = dumps(article_to_json(article))
    problem = storable_text_problem(article.id) or storable_text_problem(payload)
    if problem:
        raise InvalidArticle(f"article {article.id!r}: {problem}")
    return payload


def _usable_id(id_type: str, raw: bytes | None) -> str | None:
    """The row's id as text, or None when it is NULL, a BLOB, empty or not UTF-8."""
    if id_type != "text" or raw is None:
        return None
    try:
        article_id = bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        return None
    return article_id if article_id.strip() else None


def _article_of(article_id: str, payload: bytes | None) -> tuple[Article | None, str]:
    """The row's article, or None and why it cannot be one."""
    try:
        article = article_from_row(b"" if payload is None else bytes(payload))
    except InvalidArticle as exc:
        return None, str(exc)
    except Exception as exc:  # a validation bug must not stop every lease after it
        log.exception("article_payload_check_crashed", article_id=article_id)
        return None, f"unexpected error while reading it: {exc!r}"
    if article.id != article_id:
        return None, f"payload id is {article.id!r}"
    return article, ""


def _invalid_payload(article_id: str, problem: str) -> Failed:
    log.warning("invalid_article_payload", article_id=article_id, problem=problem)
    return Failed(
        article_id=article_id,
        reason=FailureReason.BAD_REQUEST,
        detail=f"invalid payload in the articles table: {problem}",
        tier="",
        attempts=0,
    )


def _poisoned(article_id: str, attempts: int, poison_after: int) -> Failed:
    log.warning("poison_article_not_leased_again", article_id=article_id, leases=attempts)
    return Failed(
        article_id=article_id,
        reason=FailureReason.POISON,
        detail=f"leased {attempts} times without a result (each time the process holding it "
        f"died or stopped renewing its lease); not leased again (retry.poison_after = "
        f"{poison_after})",
        tier="",
        attempts=0,
    )


def _epoch(raw: bytes | None) -> float | None:
    """Epoch seconds of an ISO 8601 text, or None when it is not one."""
    if raw is None:
        return None
    try:
        stamp = datetime.fromisoformat(bytes(raw).decode("utf-8").replace("Z", "+00:00"))
        if stamp.tzinfo is None:
            stamp = stamp.replace(tzinfo=UTC)
        return stamp.timestamp()
    except (ValueError, OverflowError):
        return None


def refused_counts(rows: Iterable[Sequence[Any]]) -> dict[str, int]:
    """``{"stale_results": n, "duplicate_results": m}`` from ``meta`` rows (0 when absent)."""
    counts = {"stale_results": 0, "duplicate_results": 0}
    for key, value in rows:
        try:
            counts[key] = int(value)
        except (TypeError, ValueError):
            continue
    return counts


def _decode(row: Sequence[Any]) -> TerminalResult:
    try:
        return result_from_row(row)
    except UnknownResultStatus as exc:
        raise StorageError(str(exc)) from exc

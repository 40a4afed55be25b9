"""``SqlQueueStore``: the queue algorithms both stores share -- enqueue,
lease, renew, release, exactly-once results, reads -- over a small set of
dialect hooks that ``SqliteStore`` and ``PostgresStore`` fill in.

A subclass gives connections (one per thread, opened on first use),
transactions with its own retry rules, the leasing candidates (with the
locking its database needs) and the dialect's spelling of a few
statements. Statements are written with ``?`` placeholders; a subclass
whose driver wants another style overrides ``_sql``.

Longer than the house's ~450 lines on purpose: one class, the queue
algorithms both stores share, one SQL transaction per method; splitting it
would split what must stay identical for both stores.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from functools import partial
from typing import Any, ClassVar, TypeVar

import structlog

from tierbatch.adapters.storage.jsonl_input import Rejected
from tierbatch.adapters.storage.queue_rows import (
    Candidate,
    Holder,
    batched,
    payload_of,
    split_by_holder,
    triage,
)
from tierbatch.adapters.storage.queue_sql import (
    FAIL_NAMELESS,
    HOLD,
    INSERT_ARTICLE,
    INSERT_REJECT,
    INSERT_RESULT,
    MARK_TERMINAL,
    META_ADD,
    PENDING_SQL,
    REFUSED_SQL,
    REJECTS_SQL,
    RELEASE_ONE,
    RELEASE_SET,
    RENEW,
    RESULT_COLUMNS,
    RESULT_COUNTS_SQL,
    SCHEMA_VERSION,
    SCHEMA_VERSION_SQL,
    SET_SCHEMA_VERSION,
    SETTLE_REFUSED,
    STATE_COUNTS_SQL,
    STATES,
    TAKE,
    TASK_VERSIONS_SQL,
    UPDATE_SCHEMA_VERSION,
    UnknownResultStatusError,
    migrations_from,
    result_from_row,
    result_row,
)
from tierbatch.adapters.storage.quota_lease import QuotaLeaseStore
from tierbatch.adapters.storage.store import (
    EnqueueReport,
    ResultCount,
    StoredReject,
    refused_counts,
)
from tierbatch.policies.articles import Article
from tierbatch.policies.errors import StorageError
from tierbatch.policies.results import TerminalResult

_log = structlog.get_logger(__name__)

T = TypeVar("T")
ID_CHUNK = 500


class SqlQueueStore(QuotaLeaseStore, ABC):
    """The queue, results and rejects of one database (see ``store.Store``),
    and the shared quota's rows (``quota_lease``).

    ``owner`` identifies this process's leases; ``clock`` gives epoch
    seconds for lease deadlines and timestamps (tests pass a fake one).
    """

    # How the dialect addresses a row while leasing (SQLite: rowid).
    _ROW_KEY: ClassVar[str] = "id"
    # The column that orders rows as they were inserted.
    _INSERTION_ORDER: ClassVar[str] = "seq"
    # Orders the result groups by code point (PostgreSQL: COLLATE "C").
    _RESULT_COUNTS_SQL: ClassVar[str] = RESULT_COUNTS_SQL
    # Renewing and handing back every lease of an owner (PostgreSQL locks
    # the rows in id order first, like a results write, so neither can
    # deadlock with the other).
    _RENEW_SQL: ClassVar[str] = RENEW
    _RELEASE_ALL_SQL: ClassVar[str] = RELEASE_SET + "lease_owner = ? AND state = 'leased'"

    def __init__(
        self, path: str, *, owner: str, clock: Callable[[], float], batch_size: int
    ) -> None:
        if not owner:
            raise ValueError("owner must be a non-empty lease owner id")
        self.path = path
        self.owner = owner
        self._clock = clock
        self._batch_size = batch_size
        self._local = threading.local()
        self._connections: list[Any] = []
        self._lock = threading.Lock()
        self._closed = False
        self._duplicate_results = 0
        self._stale_results = 0

    # -- dialect hooks ----------------------------------------------------

    @abstractmethod
    def _connect(self) -> Any:
        """A new connection (raise ``StorageError`` when it cannot be had)."""

    @abstractmethod
    def _close_connection(self, conn: Any) -> None: ...

    @abstractmethod
    def _transact(self, work: Callable[[Any], T]) -> T:
        """Run ``work(conn)`` in one write transaction, retried as the
        dialect allows; raise ``StorageError`` when it fails."""

    @abstractmethod
    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """Run a read outside any write transaction (``?`` placeholders)."""

    @abstractmethod
    def _candidates(self, conn: Any, now: float, want: int) -> list[Candidate[Any]]:
        """Up to ``want`` rows to lease, locked for this transaction:
        expired leases first (oldest deadline first), then queued rows by
        priority (highest first, none last) and age."""

    @abstractmethod
    def _holders(self, conn: Any, ids: Sequence[str]) -> dict[str, Holder]:
        """(state, lease owner) of the rows of ``ids``, locked against a
        concurrent lease until the transaction ends."""

    def _result_pages(self) -> Iterator[list[Any]]:
        """Every results row, ``RESULT_COLUMNS`` in order, page by page in
        insertion order (SQLite's rowid, PostgreSQL's seq)."""
        columns = ", ".join(RESULT_COLUMNS)
        order = self._INSERTION_ORDER
        last = 0
        while True:
            rows = self._read(
                f"SELECT {order}, {columns} FROM results WHERE {order} > ?"
                f" ORDER BY {order} LIMIT 1000",
                (last,),
            )
            if not rows:
                return
            yield [row[1:] for row in rows]
            last = rows[-1][0]

    @abstractmethod
    def cluster_backlog(self, limit: int) -> list[tuple[str, str, float | None]]:
        """``(article id, cluster id, published_at epoch or None)`` of the
        newest ``limit`` queued articles that name a cluster, so a daemon can
        count its whole backlog towards cluster hotness before it leases.
        Payloads that are not JSON text are skipped (leasing fails them)."""

    def _sql(self, sql: str) -> str:
        return sql

    def _result_params(self, result: TerminalResult, now: float) -> Sequence[Any]:
        return result_row(result, now)

    def _ids_in(self, column: str, ids: Sequence[str]) -> tuple[str, Sequence[Any]]:
        """A ``column IN ids`` condition and its parameters."""
        return f"{column} IN ({', '.join('?' * len(ids))})", ids

    def _execute_many(self, conn: Any, sql: str, rows: Sequence[Sequence[Any]]) -> int:
        """Run ``sql`` once per row; returns the number of rows changed."""
        if not rows:
            return 0
        return int(conn.executemany(self._sql(sql), rows).rowcount)

    def _execute(self, conn: Any, sql: str, params: Sequence[Any] = ()) -> Any:
        return conn.execute(self._sql(sql), params)

    # -- connections --------------------------------------------------------

    def _conn(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        with self._lock:
            if self._closed:
                raise StorageError(f"{self.path}: store is closed")
            conn = self._connect()
            self._connections.append(conn)
        self._local.conn = conn
        return conn

    def _forget_connection(self) -> None:
        """Drop this thread's connection (it broke); the next call opens another."""
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is None:
            return
        with self._lock:
            if conn in self._connections:
                self._connections.remove(conn)
        self._close_connection(conn)

    def close(self) -> None:
        """Close every thread's connection. Idempotent."""
        with self._lock:
            self._closed = True
            connections, self._connections = self._connections, []
        for conn in connections:
            self._close_connection(conn)
        self._local = threading.local()

    def __enter__(self: T) -> T:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _check_schema_version(self, conn: Any) -> None:
        """Record the version of a new database; bring an older one up to
        date in place (``MIGRATIONS``, in the caller's schema transaction,
        so two processes starting at once migrate it once); refuse one this
        tierbatch cannot migrate."""
        row = self._execute(conn, SCHEMA_VERSION_SQL).fetchone()
        if row is None:
            self._execute(conn, SET_SCHEMA_VERSION, (str(SCHEMA_VERSION),))
            return
        statements = migrations_from(str(row[0]), self.path)
        if not statements:
            return
        for statement in statements:
            self._execute(conn, statement)
        self._execute(conn, UPDATE_SCHEMA_VERSION, (str(SCHEMA_VERSION),))
        _log.info(
            "database schema migrated", path=self.path, from_version=row[0], to=SCHEMA_VERSION
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
        cannot encode (an unpaired surrogate), raises ``InvalidArticleError``
        (batches before it are already committed)."""
        inserted = total = 0
        for batch in batched(articles, self._batch_size):
            now = self._clock()
            rows = [
                (a.id, payload_of(a), priority_of(a) if priority_of else None, now, now)
                for a in batch
            ]
            inserted += self._transact(partial(self._execute_many, sql=INSERT_ARTICLE, rows=rows))
            total += len(rows)
        return EnqueueReport(inserted=inserted, duplicates=total - inserted)

    def _reject_row(self, source: str, reject: Rejected, now: float) -> Sequence[Any]:
        return (source, reject.line_no, reject.reason, reject.raw_prefix, now)

    def add_rejects(self, source: str, rejects: Iterable[Rejected]) -> int:
        """Record input lines that were not valid articles; returns how many."""
        count = 0
        for batch in batched(rejects, self._batch_size):
            now = self._clock()
            rows = [self._reject_row(source, r, now) for r in batch]
            self._transact(partial(self._execute_many, sql=INSERT_REJECT, rows=rows))
            count += len(rows)
        return count

    def lease(
        self, limit: int, lease_s: float, *, poison_after: int | None = None
    ) -> list[Article]:
        """Take up to ``limit`` articles for ``lease_s`` seconds: expired leases
        first, then the queue by priority and age. Atomic across processes.

        Rows that cannot be worked on get a ``failed`` result in the same
        transaction instead of being leased (see ``store``): a bad payload
        (``bad_request``), and, with ``poison_after``, a row leased that
        many times without a result (``poison``). Never raises for what a
        row contains; only ``StorageError``."""
        if limit <= 0:
            return []
        if poison_after is not None and poison_after < 1:
            raise ValueError(f"poison_after must be >= 1, got {poison_after}")
        return self._transact(lambda conn: self._lease(conn, limit, lease_s, poison_after))

    def _lease(
        self, conn: Any, limit: int, lease_s: float, poison_after: int | None
    ) -> list[Article]:
        now = self._clock()
        leased: list[Article] = []
        key = self._ROW_KEY
        while len(leased) < limit:
            want = limit - len(leased)
            rows = self._candidates(conn, now, want)
            if not rows:
                break
            sorted_rows = triage(rows, poison_after)
            leased += sorted_rows.leased
            self._execute_many(
                conn,
                TAKE.format(key=key),
                [(self.owner, now + lease_s, now, k) for k in sorted_rows.take],
            )
            if sorted_rows.failures:
                refuse = sorted_rows.refuse
                self._execute_many(
                    conn, HOLD.format(key=key), [(self.owner, now, now, k) for k in refuse]
                )
                self._write_results(conn, sorted_rows.failures, now)
                self._execute_many(conn, SETTLE_REFUSED.format(key=key), [(now, k) for k in refuse])
            if sorted_rows.nameless:
                self._fail_nameless(conn, sorted_rows.nameless, now)
            if len(rows) < want:
                break  # no candidates beyond these: every one was settled above
        return leased

    def _fail_nameless(self, conn: Any, keys: Sequence[Hashable], now: float) -> None:
        _log.warning(
            "article rows without a usable id failed",
            path=self.path,
            count=len(keys),
            keys=list(keys[:5]),
        )
        self._execute_many(conn, FAIL_NAMELESS.format(key=self._ROW_KEY), [(now, k) for k in keys])

    def renew(self, lease_s: float) -> int:
        """Extend every lease this owner holds to ``now + lease_s``; returns how many."""
        now = self._clock()
        sql, params = self._RENEW_SQL, (now + lease_s, now, self.owner)
        return self._transact(lambda conn: int(self._execute(conn, sql, params).rowcount))

    def release(self, ids: Iterable[str] | None = None) -> int:
        """Put leased articles back in the queue (on a graceful stop): those in
        ``ids``, or all this owner holds when None. Only this owner's leases
        are touched; returns how many were released. A released lease is
        not a strike: ``attempts`` goes back down by one."""
        now = self._clock()
        if ids is None:
            sql, params = self._RELEASE_ALL_SQL, (now, self.owner)
            return self._transact(lambda conn: int(self._execute(conn, sql, params).rowcount))
        released = 0
        for batch in batched(sorted(set(ids)), self._batch_size):
            rows = [(now, article_id, self.owner) for article_id in batch]
            released += self._transact(partial(self._execute_many, sql=RELEASE_ONE, rows=rows))
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
        self,
        conn: Any,
        results: Sequence[TerminalResult],
        now: float,
        owner: str | None = None,
    ) -> int:
        """``owner``: whose leases the results settle (default this store's;
        a batch job's articles are leased to the job)."""
        owner = self.owner if owner is None else owner
        ids = sorted(set(r.article_id for r in results))
        holders: dict[str, Holder] = {}
        for batch in batched(ids, ID_CHUNK):
            holders.update(self._holders(conn, batch))
        accepted, stale = split_by_holder(results, holders, owner)
        new = 0
        if accepted:
            new = self._execute_many(
                conn, INSERT_RESULT, [self._result_params(r, now) for r in accepted]
            )
            self._execute_many(conn, MARK_TERMINAL, [(now, r.article_id) for r in accepted])
        duplicates = len(accepted) - new
        if stale:
            self._execute(conn, META_ADD, ("stale_results", len(stale)))
            with self._lock:
                self._stale_results += len(stale)
            _log.warning(
                "stale lease results dropped",
                path=self.path,
                owner=owner,
                count=len(stale),
                ids=[r.article_id for r in stale[:5]],
                held_by=[holders[r.article_id][1] for r in stale[:5]],
            )
        if duplicates:
            self._execute(conn, META_ADD, ("duplicate_results", duplicates))
            with self._lock:
                self._duplicate_results += duplicates
            _log.warning(
                "duplicate terminal results ignored",
                path=self.path,
                count=duplicates,
                batch=len(results),
                ids=[r.article_id for r in accepted[:5]],
            )
        return new

    @property
    def duplicate_results(self) -> int:
        """Terminal results this store ignored because the article already had one."""
        with self._lock:
            return self._duplicate_results

    @property
    def stale_results(self) -> int:
        """Terminal results this store dropped because another owner held the lease."""
        with self._lock:
            return self._stale_results

    def refused_results(self) -> dict[str, int]:
        """``stale_results`` and ``duplicate_results`` over the database's
        life, every writer included (from ``meta``)."""
        return refused_counts(self._read(REFUSED_SQL))

    def results(self, ids: Iterable[str] | None = None) -> Iterator[TerminalResult]:
        """The stored results: of ``ids`` (those that have one), or all in
        insertion order. Reads page by page, never holding a read open."""
        if ids is None:
            for page in self._result_pages():
                yield from (_decode(row) for row in page)
            return
        columns = ", ".join(RESULT_COLUMNS)
        for batch in batched(ids, ID_CHUNK):
            condition, params = self._ids_in("article_id", batch)
            for row in self._read(f"SELECT {columns} FROM results WHERE {condition}", params):
                yield _decode(row)

    # -- status -----------------------------------------------------------

    def counts(self) -> dict[str, int]:
        """Articles per state (every state present, zero when empty)."""
        counts = dict.fromkeys(STATES, 0)
        for state, count in self._read(STATE_COUNTS_SQL):
            counts[state] = int(count)
        return counts

    def pending(self) -> int:
        """Articles not finished yet: queued or leased."""
        return int(self._read(PENDING_SQL)[0][0])

    def task_versions(self) -> dict[str, int]:
        """Done results per task version ("" for rows written before versions)."""
        return {str(v or ""): int(n) for v, n in self._read(TASK_VERSIONS_SQL)}

    def result_counts(self) -> list[ResultCount]:
        """Results per status, tier and model, with token and cost totals."""
        return [ResultCount(*row) for row in self._read(self._RESULT_COUNTS_SQL)]

    def rejects(self, source: str | None = None) -> list[StoredReject]:
        if source is None:
            rows = self._read(REJECTS_SQL)
        else:
            rows = self._read(REJECTS_SQL + " WHERE source = ?", (source,))
        return [StoredReject(*row) for row in rows]


def _decode(row: Sequence[Any]) -> TerminalResult:
    try:
        return result_from_row(row)
    except UnknownResultStatusError as exc:
        raise StorageError(str(exc)) from exc

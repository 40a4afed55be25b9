"""The Batch API's jobs, durable in the queue's own database (SQLite or
PostgreSQL): the ``batch_jobs`` table (schema version 4) and the leases of
the articles a job carries.

While a job is in flight its articles stay ``leased`` -- to the job, not to
a daemon: ``lease_owner`` is ``batch:<job id>`` and the deadline is the
job's creation plus ``give_up_s`` and an hour. So no daemon leases them
again, a daemon's graceful stop (which releases its own leases) leaves
them alone, and their results are accepted only from whoever settles the
job (the owner check of every results write): exactly once, whatever
restarts in between.

``batch_jobs`` (one row per job):

=====================  ==================================================
id                     the job's id (``tierbatch-...``), also its display name at the API
name                   the API's name (``batches/...``); NULL while submitting
phase                  submitting, submitted, settled, returned
tier, model            the tier it serves and the model it runs on
requests               JSON ``{request key: [article ids]}``
articles               how many articles it carries
api_state              the job state last read from the API
poller, poll_expires   the daemon that polls it, until when (renewed each poll)
created_at, updated_at, finished_at   epoch seconds
cost_usd               what it cost at the batch price (settled jobs)
interactive_cost_usd   what the same tokens cost interactively
detail                 why it was returned, or how it settled
=====================  ==================================================

A daemon polls the jobs it polls already and those whose poll lease
expired (their daemon died): a restart picks up every job where it was.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tierbatch.adapters.storage.queue_rows import article_of
from tierbatch.adapters.storage.queue_sql import RELEASE_SET, read_batch_report
from tierbatch.adapters.storage.sql_queue import SqlQueueStore
from tierbatch.adapters.storage.store import BatchReport
from tierbatch.policies.articles import Article
from tierbatch.policies.batch_jobs import JobPhase, JobRequest
from tierbatch.policies.errors import StorageError
from tierbatch.policies.results import TerminalResult

__all__ = ["BatchJobStore", "BatchReport", "JobRecord", "job_owner", "read_batch_report"]

_ARTICLE_LEASE_MARGIN_S = 3600.0
_JOB_COLUMNS = "id, name, phase, tier, model, requests, api_state, poller, poll_expires, created_at"


_REQUEUE_COUNTED = """UPDATE articles
    SET state = 'queued', lease_owner = NULL, lease_expires = NULL, updated_at = ?
    WHERE lease_owner = ? AND state = 'leased'"""


def job_owner(job_id: str) -> str:
    """The lease owner of a job's articles."""
    return f"batch:{job_id}"


@dataclass(frozen=True, slots=True)
class JobRecord:
    """One job as stored."""

    job_id: str
    name: str | None
    phase: JobPhase
    tier: str
    model: str
    requests: tuple[JobRequest, ...]
    api_state: str | None
    created_at: float

    @property
    def article_ids(self) -> tuple[str, ...]:
        return tuple(i for r in self.requests for i in r.article_ids)


def _requests_json(requests: Sequence[JobRequest]) -> str:
    return json.dumps({r.key: list(r.article_ids) for r in requests}, ensure_ascii=False)


def _requests_of(text: str) -> tuple[JobRequest, ...]:
    data = json.loads(text)
    return tuple(JobRequest(str(k), tuple(str(i) for i in v)) for k, v in data.items())


class BatchJobStore:
    """The jobs of ``store``'s database, seen by ``store.owner`` (see the
    module docstring). Every method is one transaction; all raise only
    ``StorageError``."""

    def __init__(self, store: SqlQueueStore, *, give_up_s: float) -> None:
        self._store = store
        self._give_up_s = give_up_s

    @property
    def owner(self) -> str:
        return self._store.owner

    def now(self) -> float:
        """The store's clock (epoch seconds; PostgreSQL: the server's)."""
        return self._store._clock()

    def _tx(self, work: Any) -> Any:
        return self._store._transact(work)

    def _run(self, conn: Any, sql: str, params: Sequence[Any] = ()) -> Any:
        return self._store._execute(conn, sql, params)

    # ---- the life of a job --------------------------------------------------------

    def begin(
        self,
        job_id: str,
        tier: str,
        model: str,
        requests: Sequence[JobRequest],
        poll_lease_s: float,
    ) -> tuple[JobRequest, ...]:
        """Write the ``submitting`` row and hand the articles' leases from
        this owner to the job, in one transaction, before the job is
        created. An article this owner no longer holds (its lease was lost)
        is left out; returns the requests as stored (those left empty
        dropped; none at all: no row was written)."""

        def work(conn: Any) -> tuple[JobRequest, ...]:
            now = self.now()
            ids = [i for r in requests for i in r.article_ids]
            held: set[str] = set()
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                condition, params = self._store._ids_in("id", chunk)
                rows = self._run(
                    conn,
                    f"SELECT id FROM articles WHERE {condition}"
                    " AND lease_owner = ? AND state = 'leased'",
                    (*params, self.owner),
                ).fetchall()
                held.update(str(row[0]) for row in rows)
            kept = tuple(
                JobRequest(r.key, tuple(i for i in r.article_ids if i in held)) for r in requests
            )
            kept = tuple(r for r in kept if r.article_ids)
            if not kept:
                return ()
            expires = now + self._give_up_s + _ARTICLE_LEASE_MARGIN_S
            self._store._execute_many(
                conn,
                "UPDATE articles SET lease_owner = ?, lease_expires = ?, updated_at = ?"
                " WHERE id = ? AND lease_owner = ? AND state = 'leased'",
                [
                    (job_owner(job_id), expires, now, i, self.owner)
                    for r in kept
                    for i in r.article_ids
                ],
            )
            self._run(
                conn,
                "INSERT INTO batch_jobs (id, name, phase, tier, model, requests, articles,"
                " poller, poll_expires, created_at, updated_at)"
                " VALUES (?, NULL, 'submitting', ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    job_id,
                    tier,
                    model,
                    _requests_json(kept),
                    sum(len(r.article_ids) for r in kept),
                    self.owner,
                    now + poll_lease_s,
                    now,
                    now,
                ),
            )
            return kept

        result: tuple[JobRequest, ...] = self._tx(work)
        return result

    def named(self, job_id: str, name: str) -> bool:
        """Record the API's name of a ``submitting`` job this owner polls;
        False when the row is no longer that (another daemon resolved it)."""

        def work(conn: Any) -> bool:
            now = self.now()
            cursor = self._run(
                conn,
                "UPDATE batch_jobs SET name = ?, phase = 'submitted', api_state = 'pending',"
                " updated_at = ? WHERE id = ? AND phase = 'submitting' AND poller = ?",
                (name, now, job_id, self.owner),
            )
            return bool(cursor.rowcount)

        ok: bool = self._tx(work)
        return ok

    def claim(self, poll_lease_s: float) -> list[JobRecord]:
        """The jobs in flight this owner polls from now on: its own, and
        those whose poll lease expired; each one's lease is renewed."""

        def work(conn: Any) -> list[JobRecord]:
            now = self.now()
            self._run(
                conn,
                "UPDATE batch_jobs SET poller = ?, poll_expires = ?"
                " WHERE phase IN ('submitting', 'submitted')"
                " AND (poller = ? OR poller IS NULL OR poll_expires < ?)",
                (self.owner, now + poll_lease_s, self.owner, now),
            )
            rows = self._run(
                conn,
                f"SELECT {_JOB_COLUMNS} FROM batch_jobs"
                " WHERE phase IN ('submitting', 'submitted') AND poller = ? ORDER BY created_at",
                (self.owner,),
            ).fetchall()
            return [_record(row) for row in rows]

        records: list[JobRecord] = self._tx(work)
        return records

    def observed(self, job_id: str, api_state: str) -> None:
        """Remember the state the API last gave for the job."""
        self._tx(
            lambda conn: self._run(
                conn,
                "UPDATE batch_jobs SET api_state = ?, updated_at = ? WHERE id = ? AND poller = ?",
                (api_state, self.now(), job_id, self.owner),
            )
        )

    def articles(self, job_id: str) -> dict[str, Article]:
        """The articles the job still holds (by id), from their payloads."""
        rows = self._store._read(
            "SELECT id, payload FROM articles WHERE lease_owner = ? AND state = 'leased'",
            (job_owner(job_id),),
        )
        out: dict[str, Article] = {}
        for article_id, payload in rows:
            article, _problem = article_of(str(article_id), payload)
            if article is not None:
                out[article.id] = article
        return out

    def settle(
        self,
        job_id: str,
        results: Sequence[TerminalResult],
        *,
        cost_usd: float,
        interactive_cost_usd: float,
        detail: str,
    ) -> int:
        """Write the job's results and mark it settled, in one transaction:
        exactly once (a job already over, or polled by another daemon, is
        left alone: 0). Returns how many results were new."""
        new = self.settle_row(
            job_id,
            results,
            cost_usd=cost_usd,
            interactive_cost_usd=interactive_cost_usd,
            detail=detail,
        )
        return new or 0

    def settle_row(
        self,
        job_id: str,
        results: Sequence[TerminalResult],
        *,
        cost_usd: float,
        interactive_cost_usd: float,
        detail: str,
    ) -> int | None:
        """``settle``, telling a job this call settled (how many results were
        new) from one it left alone (None): the daily budget counts the
        job's cost once, from whoever settled it."""

        def work(conn: Any) -> int | None:
            now = self.now()
            cursor = self._run(
                conn,
                "UPDATE batch_jobs SET phase = 'settled', api_state = 'succeeded',"
                " cost_usd = ?, interactive_cost_usd = ?, finished_at = ?, updated_at = ?,"
                " detail = ? WHERE id = ? AND phase = 'submitted' AND poller = ?",
                (cost_usd, interactive_cost_usd, now, now, detail, job_id, self.owner),
            )
            if not cursor.rowcount:
                return None
            owner = job_owner(job_id)
            new = self._store._write_results(conn, results, now, owner=owner)
            # An article the results did not settle goes back to the queue.
            self._run(conn, RELEASE_SET + "lease_owner = ? AND state = 'leased'", (now, owner))
            return new

        new: int | None = self._tx(work)
        return new

    def give_back(
        self, job_id: str, *, api_state: str | None, detail: str, to_owner_for_s: float | None
    ) -> list[Article]:
        """Mark the job returned and its articles' leases given back: to
        the queue (``to_owner_for_s`` None; the lease counts towards
        ``retry.poison_after``, as a lease that ended without a result
        does), or to this owner for that many
        seconds, for interactive calls -- then they are returned (nothing
        for the queue). A job already over, or another daemon's, is left
        alone."""
        return self.return_job(
            job_id, api_state=api_state, detail=detail, to_owner_for_s=to_owner_for_s
        )[1]

    def return_job(
        self, job_id: str, *, api_state: str | None, detail: str, to_owner_for_s: float | None
    ) -> tuple[bool, list[Article]]:
        """``give_back``, also saying whether this call returned the job
        (False: it was over already, or another daemon's)."""

        def work(conn: Any) -> tuple[bool, list[Article]]:
            now = self.now()
            cursor = self._run(
                conn,
                "UPDATE batch_jobs SET phase = 'returned', api_state = COALESCE(?, api_state),"
                " finished_at = ?, updated_at = ?, detail = ?"
                " WHERE id = ? AND phase IN ('submitting', 'submitted') AND poller = ?",
                (api_state, now, now, detail, job_id, self.owner),
            )
            if not cursor.rowcount:
                return False, []
            owner = job_owner(job_id)
            if to_owner_for_s is None:
                # Unlike a daemon's release, the lease stays counted: an
                # article whose jobs keep failing ends ``poison`` after
                # ``retry.poison_after`` leases instead of going round for ever.
                self._run(conn, _REQUEUE_COUNTED, (now, owner))
                return True, []
            rows = self._run(
                conn,
                "SELECT id, payload FROM articles WHERE lease_owner = ? AND state = 'leased'",
                (owner,),
            ).fetchall()
            self._run(
                conn,
                "UPDATE articles SET lease_owner = ?, lease_expires = ?, updated_at = ?"
                " WHERE lease_owner = ? AND state = 'leased'",
                (self.owner, now + to_owner_for_s, now, owner),
            )
            articles = []
            for article_id, payload in rows:
                article, _ = article_of(str(article_id), payload)
                if article is not None:
                    articles.append(article)
            return True, articles

        returned: tuple[bool, list[Article]] = self._tx(work)
        return returned

    def report(self) -> BatchReport:
        return read_batch_report(self._store._read)

    def jobs(self) -> list[Mapping[str, Any]]:
        """Every job row (for tests and tools), oldest first."""
        rows = self._store._read(
            "SELECT id, name, phase, api_state, articles, cost_usd, interactive_cost_usd,"
            " detail FROM batch_jobs ORDER BY created_at, id"
        )
        keys = ("id", "name", "phase", "api_state", "articles", "cost_usd",
                "interactive_cost_usd", "detail")  # fmt: skip
        return [dict(zip(keys, row, strict=True)) for row in rows]


def _record(row: Sequence[Any]) -> JobRecord:
    job_id, name, phase, tier, model, requests, api_state, _poller, _expires, created = row
    try:
        parsed = _requests_of(str(requests))
    except (ValueError, AttributeError) as exc:
        raise StorageError(f"batch job {job_id}: unreadable requests ({exc})") from exc
    return JobRecord(
        job_id=str(job_id),
        name=None if name is None else str(name),
        phase=JobPhase(str(phase)),
        tier=str(tier),
        model=str(model),
        requests=parsed,
        api_state=None if api_state is None else str(api_state),
        created_at=float(created),
    )

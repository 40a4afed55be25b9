"""The batch dispatcher: the daemon's thread for Gemini's Batch API.

A thin shell: what goes to batch is ``policies.batch_routing``'s call (the
daemon asks it), when a job goes out, how it is packed, what its state
means and how its answers settle are ``policies.batch_jobs``'; durability
is ``BatchJobStore``'s. This thread only carries them out, on one asyncio
loop of its own, so a slow upload or poll never holds up the daemon's loop:

* ``add`` takes leased articles the router sent to batch; they wait per
  tier until they fill a job or the oldest has waited ``batch.collect_s``.
* Submitting is durable before it is sent: ``BatchJobStore.begin`` writes
  the ``submitting`` row with its article ids and hands their leases to the
  job, then the job is created (its display name is the row's id), then
  its name is stored. A create that fails for certain (the key or the
  request refused) gives the articles to interactive calls at once; one
  whose fate is unknown (a timeout, a 5xx) is looked up by display name --
  found, it is recorded; not found, its articles go to interactive calls;
  the lookup failing too leaves the row for the next poll.
* Every ``batch.poll_interval_s`` the jobs this daemon polls (its own, and
  any whose poll lease expired: a daemon that died) are polled: a
  ``submitting`` row without a name is resolved by display name (found:
  polled from then on; not found: it never reached the API, its articles
  go back); a succeeded job is settled (results exactly once); a failed,
  cancelled or expired one -- or one not over after ``batch.give_up_s``,
  which is cancelled -- gives its articles back: to the queue, or to this
  daemon's interactive calls (``batch.on_job_failure``), which the daemon
  takes with ``take_interactive``.

With a daily budget (``budget``), a job's estimate is committed to it
before the job's row is written (``Runtime.commit_batch``): only the
requests the day can pay for in full go out, the others wait in line for
the budget (the tier is *held*, asked again every ``batch.poll_interval_s``,
and at the latest at the quota day's midnight). A job's real cost settles
it when its results are written, 0 when its articles go back -- by
whichever daemon settles or returns the job.

Errors of the API or the database are logged and retried on the next
turn; nothing here can stop the daemon.

Longer than the house's ~450 lines on purpose: one thread carrying a job
through its whole life (commit, submit, poll, settle or return), whose
decisions are ``policies.batch_jobs``' and the budget's; split, the steps
of one job would be read in several places.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import structlog

from tierbatch.actors.ports import PackAnswer
from tierbatch.adapters.app.batch_budget import BatchBudget, JobBudget
from tierbatch.adapters.gemini.batch_client import (
    BatchError,
    BatchItem,
    BatchJobNotFoundError,
    JobState,
)
from tierbatch.adapters.storage.batch_store import BatchJobStore, JobRecord
from tierbatch.policies.articles import Article
from tierbatch.policies.batch_costs import TokenCounts
from tierbatch.policies.batch_jobs import (
    JobPhase,
    JobRequest,
    RequestAnswer,
    Step,
    job_is_due,
    pack_requests,
    settle_job,
    step_for,
)
from tierbatch.policies.config import BatchFailure, Config, ModelSpec, TierSpec
from tierbatch.policies.errors import StorageError
from tierbatch.policies.outcomes import AuthFailed, BadRequest, ModelNotFound
from tierbatch.policies.results import TerminalResult
from tierbatch.policies.task import task_version

__all__ = ["BatchBackend", "BatchBudget", "BatchDispatcher", "DispatcherStats"]

_log = structlog.get_logger(__name__)


class BatchBackend(Protocol):
    """What the dispatcher needs of the Batch API (``GeminiBatchClient``)."""

    async def submit(
        self, model: str, items: Sequence[BatchItem], *, display_name: str = ""
    ) -> str: ...

    async def poll(self, job: str) -> JobState: ...

    async def results_with_tokens(
        self, job: str, expected: Mapping[str, Sequence[str]] | None = None
    ) -> dict[str, tuple[PackAnswer, TokenCounts]]: ...

    async def find(self, display_name: str) -> str | None: ...

    async def cancel(self, job: str) -> None: ...


@dataclass(frozen=True, slots=True)
class DispatcherStats:
    """Articles waiting to be sent, and what this dispatcher did; ``held``:
    the tiers whose next job the daily budget cannot pay for now, with the
    articles waiting in each."""

    waiting: int
    submitted_jobs: int
    settled_jobs: int
    returned_jobs: int
    held: tuple[tuple[str, int], ...] = ()

    @property
    def held_waiting(self) -> int:
        return sum(n for _, n in self.held)


def _new_job_id() -> str:
    return f"tierbatch-{uuid.uuid4().hex[:16]}"


class BatchDispatcher:
    """See the module docstring. ``lease_s`` is the daemon's lease time (the
    poll lease of the jobs, and the lease articles handed to interactive
    calls get); ``tick_s`` how often the thread looks for due work;
    ``on_results`` sees the results of every job it settled (the daemon's
    tally and metrics); ``wake`` is set when a job ends."""

    def __init__(
        self,
        config: Config,
        jobs: BatchJobStore,
        backend: BatchBackend,
        *,
        lease_s: float,
        tick_s: float = 0.1,
        new_job_id: Callable[[], str] = _new_job_id,
        wake: threading.Event | None = None,
        on_results: Callable[[Sequence[TerminalResult]], None] | None = None,
        budget: BatchBudget | None = None,
    ) -> None:
        self._config = config
        self._job_budget = JobBudget(budget, config.batch.poll_interval_s)
        self._jobs = jobs
        self._backend = backend
        self._lease_s = lease_s
        self._tick_s = tick_s
        self._new_job_id = new_job_id
        self._wake_daemon = wake
        self._on_results = on_results
        self._tiers = {t.name: t for t in config.tiers}
        self._task_version = task_version(config.task)
        self._lock = threading.Lock()
        self._waiting: dict[str, deque[tuple[float, Article]]] = {}
        self._interactive: list[Article] = []
        self._submitting: set[str] = set()
        self._stop = threading.Event()
        self._poll_now = threading.Event()
        self._thread: threading.Thread | None = None
        self._submitted = self._settled = self._returned = 0
        self._tasks: set[asyncio.Task[None]] = set()

    # ---- the daemon's side (any thread) ----------------------------------------------

    def add(self, routed: Sequence[tuple[str, Article]]) -> None:
        """Articles (with their tier) the router sent to batch; their leases
        are the daemon's until a job takes them."""
        now = time.monotonic()
        with self._lock:
            for tier, article in routed:
                self._waiting.setdefault(tier, deque()).append((now, article))

    def take_interactive(self) -> list[Article]:
        """Articles of returned jobs to call interactively (leased to this
        daemon again)."""
        with self._lock:
            taken, self._interactive = self._interactive, []
        return taken

    def poll_now(self) -> None:
        """Poll the jobs at the next turn, not at the next interval."""
        self._poll_now.set()

    def stats(self) -> DispatcherStats:
        with self._lock:
            waiting = sum(len(q) for q in self._waiting.values())
            held = tuple(
                (t, len(self._waiting[t]))
                for t in sorted(self._job_budget.held())
                if self._waiting.get(t)
            )
            return DispatcherStats(waiting, self._submitted, self._settled, self._returned, held)

    @property
    def busy(self) -> bool:
        """Whether articles wait here or a job is being submitted."""
        with self._lock:
            return bool(self._submitting) or any(self._waiting.values())

    def retry_held(self) -> int:
        """Ask the daily budget again for the held tiers at the next turn
        (``JobBudget.retry_held``)."""
        return self._job_budget.retry_held()

    def refused_since(self, asked: int) -> bool:
        return self._job_budget.refused_since(asked)

    @property
    def busy_unheld(self) -> bool:
        """Whether a job is being submitted or articles wait here that the
        budget does not hold (they go out soon)."""
        with self._lock:
            if self._submitting:
                return True
            held = self._job_budget.held()
            return any(q for t, q in self._waiting.items() if t not in held)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="tierbatch-batch", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the thread (a call in flight finishes first, up to
        ``timeout``). Articles still waiting keep the daemon's leases: its
        final release hands them back; jobs in flight are resumed by the
        next daemon."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                _log.warning("batch dispatcher still busy at stop; left behind")

    # ---- the thread --------------------------------------------------------------------

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        interval = self._config.batch.poll_interval_s
        next_poll = 0.0
        while not self._stop.is_set():
            try:
                await self._submit_due()
                now = time.monotonic()
                if now >= next_poll or self._poll_now.is_set():
                    self._poll_now.clear()
                    next_poll = now + interval
                    await self._poll_all()
            except StorageError as exc:
                _log.error("batch bookkeeping failed; retrying", error=str(exc))
            except Exception:  # never let the thread die: log and go on
                _log.exception("batch dispatcher step failed; retrying")
            await asyncio.sleep(self._tick_s)

    # ---- submitting --------------------------------------------------------------------

    def _full_job(self, tier: TierSpec) -> int:
        return self._config.batch.max_requests_per_job * max(1, tier.max_articles_per_request)

    def _take_due(self) -> list[tuple[TierSpec, list[Article]]]:
        now = time.monotonic()
        due: list[tuple[TierSpec, list[Article]]] = []
        with self._lock:
            for name, queue in self._waiting.items():
                tier = self._tiers.get(name)
                if tier is None or not queue:
                    continue
                if self._job_budget.waits(name, now) and not self._poll_now.is_set():
                    continue  # the budget holds it: ask again later
                full = self._full_job(tier)
                if job_is_due(len(queue), queue[0][0], now, full, self._config.batch.collect_s):
                    taken = [queue.popleft()[1] for _ in range(min(full, len(queue)))]
                    due.append((tier, taken))
        return due

    def _put_back(self, tier: str, articles: Sequence[Article]) -> None:
        """Articles taken for a job that could not be written: first in line again."""
        now = time.monotonic()
        with self._lock:
            queue = self._waiting.setdefault(tier, deque())
            queue.extendleft((now, a) for a in reversed(articles))

    async def _submit_due(self) -> None:
        for tier, articles in self._take_due():
            await self._submit(tier, articles)

    async def _submit(self, tier: TierSpec, articles: list[Article]) -> None:
        by_id = {a.id: a for a in articles}
        packs = pack_requests(
            [(a.id, len(a.title) + len(a.text)) for a in articles],
            max(1, tier.max_articles_per_request),
            # characters, not tokens: about 4 per token, so this stays within the limit
            self._config.runtime.max_input_tokens_per_request * 3,
        )
        job_id = self._new_job_id()
        requests = [JobRequest(f"r{n}", ids) for n, ids in enumerate(packs)]
        model = tier.model
        with self._lock:
            self._submitting.add(job_id)
        try:
            requests = await self._committed(job_id, tier, model, requests, by_id)
            if not requests:
                return
            articles = [by_id[i] for r in requests for i in r.article_ids]
            try:
                kept = self._jobs.begin(job_id, tier.name, model, requests, self._lease_s)
            except StorageError:
                self._put_back(tier.name, articles)  # still the daemon's leases: try again
                self._settle_budget(job_id, tier.name, 0.0, self._jobs_now())
                raise
            if not kept:
                self._settle_budget(job_id, tier.name, 0.0, self._jobs_now())
                return
            items = [BatchItem(r.key, tuple(by_id[i] for i in r.article_ids)) for r in kept]
            log = _log.bind(job_id=job_id, tier=tier.name, model=model)
            name: str | None
            try:
                name = await self._backend.submit(model, items, display_name=job_id)
            except BatchError as exc:
                refused = isinstance(exc.outcome, AuthFailed | BadRequest | ModelNotFound)
                log.warning("batch job not created", error=str(exc), refused=refused)
                name, sure = (None, True) if refused else await self._find(job_id)
                if name is None:
                    if sure:
                        self._give_back(
                            job_id,
                            None,
                            f"not created: {exc}",
                            tier=tier.name,
                            submitted_at=self._jobs_now(),
                            interactive=True,
                        )
                    return  # the lookup failed too: the next poll looks it up again
            self._record_name(job_id, name, kept)
        finally:
            with self._lock:
                self._submitting.discard(job_id)

    async def _committed(
        self,
        job_id: str,
        tier: TierSpec,
        model: str,
        requests: list[JobRequest],
        by_id: Mapping[str, Article],
    ) -> list[JobRequest]:
        """The requests the daily budget commits (all of them without one);
        the articles of the others go back first in line (the tier is held)."""
        approved = await self._job_budget.commit(job_id, tier.name, model, requests, by_id)
        if approved < len(requests):
            self._put_back(
                tier.name, [by_id[i] for r in requests[approved:] for i in r.article_ids]
            )
        return requests[:approved]

    def _settle_budget(self, job_id: str, tier: str, usd: float, submitted_at: float) -> None:
        self._job_budget.settle(job_id, tier, usd, submitted_at)

    async def _find(self, job_id: str) -> tuple[str | None, bool]:
        """The job's name by display name (None: not there), and whether
        the lookup itself worked (False: nothing can be concluded)."""
        try:
            return await self._backend.find(job_id), True
        except BatchError as exc:
            _log.warning("batch job lookup failed", job_id=job_id, error=str(exc))
            return None, False

    def _record_name(self, job_id: str, name: str, requests: Sequence[JobRequest]) -> None:
        if self._jobs.named(job_id, name):
            self._submitted += 1
            _log.info(
                "batch job recorded",
                job_id=job_id,
                job=name,
                requests=len(requests),
                articles=sum(len(r.article_ids) for r in requests),
            )
        else:
            # Another daemon resolved the row meanwhile (and gave its
            # articles back): this job's answers would be refused anyway.
            _log.warning("batch job row taken over; cancelling the job", job_id=job_id, job=name)
            self._cancel_quietly(name)

    def _cancel_quietly(self, name: str) -> None:
        async def cancel() -> None:
            try:
                await self._backend.cancel(name)
            except BatchError as exc:
                _log.warning("batch job not cancelled", job=name, error=str(exc))

        task = asyncio.get_running_loop().create_task(cancel())
        self._tasks.add(task)  # a task nobody holds may be collected before it runs
        task.add_done_callback(self._tasks.discard)

    # ---- polling -------------------------------------------------------------------------

    async def _poll_all(self) -> None:
        for record in self._jobs.claim(self._lease_s):
            with self._lock:
                if record.job_id in self._submitting:
                    continue
            try:
                await self._poll(record)
            except BatchError as exc:
                _log.warning(
                    "batch job poll failed; retrying", job_id=record.job_id, error=str(exc)
                )

    async def _poll(self, record: JobRecord) -> None:
        log = _log.bind(job_id=record.job_id, job=record.name, tier=record.tier)
        if record.phase is JobPhase.SUBMITTING or record.name is None:
            name, sure = await self._find(record.job_id)
            if name is not None:
                log.info("batch job found by its display name", job=name)
                self._record_name(record.job_id, name, record.requests)
            elif sure:
                log.info("batch job was never created; its articles go back")
                self._give_back_record(record, None, "never created")
            return
        try:
            state = await self._backend.poll(record.name)
        except BatchJobNotFoundError:
            log.warning("batch job gone at the API; its articles go back")
            self._give_back_record(record, None, "the API does not know the job")
            return
        if state.value != record.api_state:
            self._jobs.observed(record.job_id, state.value)
            log.info("batch job state", state=state.value)
        step = step_for(
            state.value, record.created_at, self._jobs_now(), self._config.batch.give_up_s
        )
        if step is Step.SETTLE:
            await self._settle(record)
        elif step is Step.RETURN:
            self._give_back_record(record, state.value, f"job {state.value}")
        elif step is Step.GIVE_UP:
            try:
                await self._backend.cancel(record.name)
            except BatchError as exc:
                log.warning("batch job not cancelled", error=str(exc))
            self._give_back_record(record, "cancelled", "not over within batch.give_up_s")

    def _jobs_now(self) -> float:
        return self._jobs.now()

    async def _settle(self, record: JobRecord) -> None:
        assert record.name is not None
        expected = {r.key: r.article_ids for r in record.requests}
        raw = await self._backend.results_with_tokens(record.name, expected)
        answers = {
            key: RequestAnswer(answer.outcome, answer.answers, tokens)
            for key, (answer, tokens) in raw.items()
        }
        articles = self._jobs.articles(record.job_id)
        tier = self._tiers.get(record.tier) or TierSpec(record.tier, 0.0, record.model)
        spec = self._config.models.get(record.model) or ModelSpec(record.model, 0, 0, 0)
        settlement = settle_job(
            record.name,
            record.requests,
            answers,
            articles,
            tier=tier,
            model=record.model,
            spec=spec,
            batch=self._config.batch,
            grounding=self._config.grounding.policy,
            submitted_at=record.created_at,
            now=self._jobs_now(),
            task_version=self._task_version,
        )
        detail = f"{len(settlement.results)} results, {settlement.failed_requests} failed requests"
        settled = self._jobs.settle_row(
            record.job_id,
            settlement.results,
            cost_usd=settlement.cost_usd,
            interactive_cost_usd=settlement.interactive_cost_usd,
            detail=detail,
        )
        if settled is not None:
            self._settle_budget(record.job_id, record.tier, settlement.cost_usd, record.created_at)
        new = settled or 0
        self._settled += 1
        if new and self._on_results is not None:
            self._on_results(settlement.results)
        _log.info(
            "batch job settled",
            job_id=record.job_id,
            job=record.name,
            tier=record.tier,
            results=new,
            failed_requests=settlement.failed_requests,
            cost_usd=round(settlement.cost_usd, 6),
            saved_usd=round(settlement.interactive_cost_usd - settlement.cost_usd, 6),
        )
        if self._wake_daemon is not None:
            self._wake_daemon.set()

    def _give_back_record(self, record: JobRecord, api_state: str | None, detail: str) -> None:
        self._give_back(
            record.job_id, api_state, detail, tier=record.tier, submitted_at=record.created_at
        )

    def _give_back(
        self,
        job_id: str,
        api_state: str | None,
        detail: str,
        *,
        tier: str,
        submitted_at: float,
        interactive: bool | None = None,
    ) -> None:
        if interactive is None:
            interactive = self._config.batch.on_job_failure is BatchFailure.INTERACTIVE
        returned, articles = self._jobs.return_job(
            job_id,
            api_state=api_state,
            detail=detail,
            to_owner_for_s=self._lease_s if interactive else None,
        )
        if returned:
            self._settle_budget(job_id, tier, 0.0, submitted_at)  # nothing was billed
        self._returned += 1
        _log.info(
            "batch job returned",
            job_id=job_id,
            detail=detail,
            to="interactive" if interactive else "queue",
            articles=len(articles),
        )
        if articles:
            with self._lock:
                self._interactive.extend(articles)
        if self._wake_daemon is not None:
            self._wake_daemon.set()

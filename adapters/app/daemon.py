"""The long-running loop behind ``tierbatch run`` and ``tierbatch daemon``.

It moves articles from the queue (SQLite or PostgreSQL) through an embedded ``Runtime`` and
back into the results table, and it is built to be killed:

* **Bounded memory.** Articles are leased in chunks that keep the runtime's
  queue a few composer batches deep, never the whole backlog, so a queue of
  a million rows costs what a queue of a thousand does.
* **Leases, renewed.** Every leased row carries a deadline that the loop
  pushes forward every third of the lease time. A daemon that dies stops
  renewing; its rows expire and the next daemon takes them. A graceful stop
  hands back (releases) what it did not finish at once. Deadlines are
  wall-clock times (other processes read them), but renewals are timed on
  the monotonic clock, and a step of the wall clock renews at once, so a
  forward step does not let another daemon take over live leases.
* **Results exactly once.** Terminal results go through the store's
  ``ResultsSink``, which retries failed writes itself: one row per article,
  written only by the row's current lease owner.
* **Poison rows end.** Leasing passes ``retry.poison_after`` to the store: a
  row leased that many times without a result (each time its daemon died)
  gets a ``poison`` result instead of killing the next daemon too. A bad
  payload gets a ``bad_request`` result; neither stops the loop.
* **One quota for every daemon.** The daemons on one queue share one
  registry (``quota_link``): one of them, elected through the database,
  owns the quota state and serves grants to the others; a lone daemon
  simply owns it. The owner restores the state at start (from the
  database, or the snapshot file), saves it while granting and once more
  when it stops, so a restart in the middle of the day -- or another daemon
  taking over from a dead owner -- still knows what the day has spent. A
  snapshot that cannot be used is set aside and counting starts fresh,
  saying so.
* **Signals.** The first SIGTERM/SIGINT stops leasing and dispatching at
  once: no new provider call starts, the leases of everything not in a
  call are released at once, and only the calls in flight may finish, for
  up to ``drain_timeout_s``; a second signal stops at once (leases cover
  whatever was in flight).
* **Failure.** If the runtime fails (an actor died, extractors keep
  crashing), the loop stops at once; every shutdown step still runs, each
  in its own guard, so leases are released and the quota state saved.
* **A failing database at shutdown** (disk full) does not skip the hand-back:
  the unfinished articles are released first, then the last results are
  written, then whatever this daemon still holds is released even if that
  write failed (those articles are done again by the next daemon, never
  lost). The problem is reported in ``DaemonReport.storage_error``.

The loop wakes when results arrive (to top up the runtime's queue) and at
least every ``poll_interval_s`` (to see rows other processes inserted).

Longer than the house's ~450 lines on purpose: the loop and its shutdown
sequence, every step of which runs even when an earlier one failed; one
class, so the order of the steps is visible.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from types import FrameType
from typing import Any

import structlog

from tierbatch.actors.clock import Clock, SystemClock, wall_offset
from tierbatch.actors.observer import RegistryObserver
from tierbatch.actors.ports import Provider
from tierbatch.actors.registry_handle import RegistryHandle
from tierbatch.actors.runtime import Runtime, RuntimeStats
from tierbatch.adapters.app.batch_dispatcher import BatchBackend, BatchDispatcher
from tierbatch.adapters.app.leases import LeaseKeeper
from tierbatch.adapters.app.metrics import Metrics, MetricsObserver, TimedProvider
from tierbatch.adapters.app.progress import NoProgress, ProgressReporter, ProgressView, RateMeter
from tierbatch.adapters.app.quota_file import (
    default_snapshot_path,  # noqa: F401 (its old home)
)
from tierbatch.adapters.app.quota_link import (
    QuotaLink,
    QuotaStateLoad,
    QuotaUnavailableError,
    SharingOptions,
    load_quota_state,  # noqa: F401 (re-exported)
)
from tierbatch.adapters.app.quota_server import parse_address
from tierbatch.adapters.app.ray_link import RayLink
from tierbatch.adapters.app.summary import ModelUsage, usage_between
from tierbatch.adapters.storage.batch_store import BatchJobStore, BatchReport
from tierbatch.adapters.storage.results_sink import ResultsSink
from tierbatch.adapters.storage.snapshot_file import SnapshotFile
from tierbatch.adapters.storage.sql_queue import SqlQueueStore
from tierbatch.adapters.storage.store import Store
from tierbatch.adapters.storage.tiers_file import write_tiers
from tierbatch.policies.articles import Article
from tierbatch.policies.batch_routing import Route, routes
from tierbatch.policies.budget import BudgetState
from tierbatch.policies.config import Config, TierMode
from tierbatch.policies.errors import (
    FatalProviderError,
    QueueFullError,
    RuntimeFailureError,
    SnapshotError,
    StorageError,
    TierbatchError,
)
from tierbatch.policies.outcomes import CallOutcome
from tierbatch.policies.quota import Grant, ModelStatus
from tierbatch.policies.results import TerminalResult
from tierbatch.policies.tally import TallySnapshot
from tierbatch.policies.task import check_versions, task_version
from tierbatch.policies.tier_assignment import TierSplit

_log = structlog.get_logger(__name__)

_MAX_STORAGE_FAILURES = 20
# Seconds between refreshes of the metrics and the progress display.
_REPORT_INTERVAL_S = 0.25
_SEED_CHUNK = 2000


def log_tier_split(split: TierSplit) -> None:
    """The split at the start of a run: a line per tier, a warning per
    empty one (a threshold no article of the input reaches)."""
    for t in split.tiers:
        _log.info(
            "tier split",
            tier=t.tier,
            articles=t.articles,
            fraction=round(t.fraction, 4),
            share=t.share,
            min_priority=round(t.min_priority, 4),
        )
    for name in split.empty:
        _log.warning("tier receives no article of the input", tier=name, total=split.total)


@dataclass(frozen=True, slots=True)
class DaemonOptions:
    """How the loop paces itself.

    ``lease_s``: how long a leased row stays ours without renewal.
    ``queue_batches``: the runtime's queue is topped up to this many
    composer batches. ``exit_when_done``: stop (``run``) once no row is
    queued or leased and the runtime is idle, instead of waiting for more.
    ``prewarm_clusters``: at start, the newest this-many queued articles
    count towards their clusters' hotness before anything is leased, so an
    article's priority reflects its story's whole backlog, not just what was
    leased so far (0 turns it off; it bounds memory and start-up time).
    ``quota_address``: where this daemon serves grants to the others when it
    owns the shared quota (``HOST`` or ``HOST:PORT``; port 0: any free
    one); ``quota_lease_s``: how long a dead owner can strand the quota
    (and how long a killed daemon's row still shows in ``tierbatch status``).
    """

    lease_s: float = 60.0
    poll_interval_s: float = 0.5
    drain_timeout_s: float = 30.0
    queue_batches: int = 4
    snapshot_interval_s: float = 2.0
    db_count_interval_s: float = 5.0
    exit_when_done: bool = False
    prewarm_clusters: int = 200_000
    quota_address: str = "127.0.0.1:0"
    quota_lease_s: float = 10.0

    def __post_init__(self) -> None:
        parse_address(self.quota_address)  # raises ValueError naming the problem
        names = ("lease_s", "poll_interval_s", "snapshot_interval_s", "db_count_interval_s")
        for name in (*names, "quota_lease_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.drain_timeout_s < 0:
            raise ValueError(f"drain_timeout_s must be >= 0, got {self.drain_timeout_s}")
        if self.queue_batches < 1:
            raise ValueError(f"queue_batches must be >= 1, got {self.queue_batches}")


class StopReason(StrEnum):
    FINISHED = "finished"  # run: every article in the database is terminal
    SIGNAL = "signal"  # asked to stop; drained
    IMMEDIATE = "immediate"  # asked twice, or the drain timed out
    FATAL = "fatal"  # the provider refused the configuration (401/403)
    STORAGE = "storage"  # the database kept failing (see DaemonReport.storage_error)
    FAILED = "failed"  # the runtime failed: an actor died, extractors kept crashing
    BUDGET = "budget"  # run: the daily budget holds all the work left


@dataclass(frozen=True, slots=True)
class DaemonReport:
    """How a run ended and what it did (this process only). ``fatal_error``
    says what stopped it when ``reason`` is FATAL or FAILED."""

    reason: StopReason
    fatal_error: str | None
    elapsed_s: float
    tally: TallySnapshot
    usage: tuple[ModelUsage, ...]
    released: int
    quota_state: QuotaStateLoad
    # The database failed (during the run or at shutdown): what and where.
    storage_error: str | None = None
    # What stopped the run, as the error the command line maps to its exit
    # code: the database failing first, else the runtime's fatal error.
    failure: TierbatchError | None = None
    # The Batch API's jobs in the database at the end (None: no tier uses it).
    batch: BatchReport | None = None
    # The daily budget at the end of the run (None without a [budget]).
    budget: BudgetState | None = None
    # Whether the run had the Batch API to move tiers to (the budget line's words).
    batch_api: bool = False


class _CooldownsOnly:
    """The shared registry's observer for this daemon's metrics: its own
    grants and outcomes come from its ``RegistryHandle``, so only the
    cooldowns (the quota's, whoever's call caused them) come from here."""

    def __init__(self, inner: RegistryObserver) -> None:
        self._inner = inner

    def on_grant(self, grant: Grant, tier_rank: int) -> None:
        pass

    def on_sent(self, grant_id: int, model: str, at: float) -> None:
        pass

    def on_outcome(self, model: str, outcome: CallOutcome, at: float) -> None:
        pass

    def on_cooldown(self, model: str, start: float, until: float, reason: str) -> None:
        self._inner.on_cooldown(model, start, until, reason)


class _WakingSink:
    """The runtime's sink: the store's ``ResultsSink``, then the metrics'
    latency histogram, then a wake-up for the loop so it can top up the
    runtime's queue. (The runtime counts the results itself.)"""

    def __init__(self, inner: ResultsSink, wake: threading.Event, metrics: Metrics | None) -> None:
        self.inner = inner
        self._wake = wake
        self._metrics = metrics

    def write(self, results: Sequence[TerminalResult]) -> None:
        self.inner.write(results)
        if self._metrics is not None:
            self._metrics.observe_latency(results)
        self._wake.set()

    def flush(self) -> None:
        """Never raises: the runtime calls it at the end of ``stop``, and an
        error there would lose the unfinished articles it returns. The sink
        keeps retrying; ``close`` reports a persistent failure."""
        try:
            self.inner.flush()
        except StorageError as exc:
            _log.warning("results not flushed yet; retrying in the background", error=str(exc))

    def close(self) -> None:
        self.inner.close()


class Daemon:
    """Runs the queue in ``store`` through a runtime until done or told to stop.

    ``provider_description`` is only for logs. ``metrics`` (optional) is
    fed by the runtime; ``progress`` is updated as the loop turns.
    ``unavailable_models`` (model -> reason) are routed around from the
    start (the models check found them missing). ``run`` may be called once.
    ``as_of``: priority compares publication times with this instant (epoch
    seconds) instead of the wall clock. ``tier_seed``: a one-shot run's
    whole input, whose priorities fill the tier-share window before anything
    is leased (``Runtime.seed_tiers``); ``on_tier_split`` is then told how
    it splits into tiers. ``tiers_file``: where the tier thresholds in use
    are saved for ``status`` (at start, then as they move).
    """

    def __init__(
        self,
        config: Config,
        store: Store,
        *,
        provider: Provider,
        snapshot: SnapshotFile,
        options: DaemonOptions | None = None,
        provider_description: str = "",
        clock: Clock | None = None,
        metrics: Metrics | None = None,
        progress: ProgressReporter | None = None,
        unavailable_models: Mapping[str, str] | None = None,
        batch_backend: BatchBackend | None = None,
        allow_mixed_versions: bool = False,
        as_of: float | None = None,
        tier_seed: Callable[[], Iterable[Article]] | None = None,
        on_tier_split: Callable[[TierSplit], None] | None = None,
        tiers_file: Path | None = None,
        ray_registry: Callable[[], Any] | None = None,
    ) -> None:
        self.config = config
        self._batch_backend = batch_backend
        self._batch: BatchDispatcher | None = None
        self._batch_jobs: BatchJobStore | None = None
        self._auto = any(t.mode is TierMode.AUTO for t in config.tiers)
        # The routing reads the plan (auto tiers) or the budget (moved tiers):
        # both want the whole backlog, the store's rows included.
        self._routes_by_backlog = self._auto or config.batch_by_budget
        self._allow_mixed_versions = allow_mixed_versions
        self._as_of = as_of
        self._tier_seed = tier_seed
        self._on_tier_split = on_tier_split
        self._tiers_file = tiers_file
        self._saved_thresholds: tuple[float, ...] | None = None
        self.store = store
        # The quota through a registry actor on Ray (``--ray``) instead of
        # the database-elected owner: it owns the quota state and its saving.
        self._ray_registry = ray_registry
        self._unavailable_models = dict(unavailable_models or {})
        self.options = options or DaemonOptions()
        self._provider = provider
        self._provider_description = provider_description
        self._snapshot = snapshot
        self._clock: Clock = clock or SystemClock()
        self._metrics = metrics
        self._progress: ProgressReporter = progress or NoProgress()
        self._wake = threading.Event()
        self._stop_requested = threading.Event()
        self._immediate = threading.Event()
        self._runtime: Runtime | None = None
        # Ids whose cluster was counted by the start-up prewarm and that are
        # not submitted yet: they must not be counted a second time.
        self._prewarmed: set[str] = set()
        self._ran = False
        self._storage_failures = 0
        self._rate = RateMeter()
        self._next_report = 0.0
        self._results_sink: ResultsSink | None = None
        self._released_at_signal = 0
        self._link: Any = None
        self._batch_seen: BatchReport | None = None  # the jobs as last read, for the display
        # The budget's re-ask (``BatchDispatcher.retry_held``) a run waits for
        # before it stops on a budget that holds its batch work.
        self._retry_asked: int | None = None

    # ---- control (thread- and signal-safe) ---------------------------------

    def request_stop(self, *, immediate: bool = False) -> None:
        """Stop leasing and drain; a second request (or ``immediate``) stops at once."""
        if immediate or self._stop_requested.is_set():
            self._immediate.set()
        self._stop_requested.set()
        self._wake.set()

    def handle_signal(self, signum: int, _frame: FrameType | None) -> None:
        """A signal handler: only sets flags (the loop logs what it does)."""
        self.request_stop()

    @property
    def tally(self) -> TallySnapshot:
        """The results of this run so far, as the runtime counted them."""
        runtime = self._runtime
        return runtime.result_counts() if runtime is not None else TallySnapshot()

    # ---- the loop --------------------------------------------------------------

    def run(self) -> DaemonReport:
        if self._ran:
            raise RuntimeError("Daemon.run may be called once; create a new Daemon")
        self._ran = True
        check_task_versions(self.store, self.config, allow=self._allow_mixed_versions)
        started = time.monotonic()
        provider = self._provider
        if self._metrics is not None:
            provider = TimedProvider(provider, self._metrics)
        handle, link = self._quota_link()
        self._link = link
        results_sink = ResultsSink(self.store)
        self._results_sink = results_sink
        sink = _WakingSink(results_sink, self._wake, self._metrics)
        runtime = Runtime(
            self.config, provider, sink, clock=self._clock, registry=handle, as_of=self._as_of
        )
        self._runtime = runtime
        if self._metrics is not None:
            self._metrics.count_results_from(runtime.result_counts)
        try:
            runtime.start()
        except BaseException:
            results_sink.close()
            link.close()
            raise
        self._start_batch(runtime)
        reason = StopReason.IMMEDIATE
        baseline: tuple[ModelStatus, ...] = ()
        final: RuntimeStats | None = None
        released = 0
        problems: list[str] = []
        quota = link.quota_load
        try:
            with contextlib.suppress(FatalProviderError, RuntimeFailureError):
                baseline = runtime.stats().models
            try:
                self._prewarm(runtime)
            except (FatalProviderError, RuntimeFailureError) as exc:  # the loop stops at once
                _log.error("cluster prewarm failed", error=str(exc))
            try:
                self._seed_tiers(runtime)
            except (FatalProviderError, RuntimeFailureError) as exc:  # the loop stops at once
                _log.error("tier seeding failed", error=str(exc))
            except OSError as exc:  # the input could not be read again: go on unseeded
                _log.warning(
                    "tier seeding failed; the share window fills as articles arrive",
                    error=str(exc),
                )
            _log.info(
                "daemon ready",
                db=self.store.path,
                snapshot=str(self._snapshot.path),
                quota_state="restored" if quota.state is not None else "fresh",
                quota_role=link.role,
                quota_epoch=link.epoch,
                quota_address=link.address,
                provider=self._provider_description,
                lease_s=self.options.lease_s,
                pid=os.getpid(),
            )
            leases = LeaseKeeper(
                lambda: self._storage(self.store.renew, self.options.lease_s),
                self.options.lease_s,
                self._clock,
            )
            self._progress.start()
            try:
                reason = self._stopped_by(runtime, lambda: self._work(runtime, started, leases))
                if reason is StopReason.SIGNAL:
                    reason = self._stopped_by(
                        runtime, lambda: self._drain(runtime, started, leases)
                    )
            except StorageError as exc:
                _log.error(
                    "the database keeps failing; stopping", db=self.store.path, error=str(exc)
                )
                problems.append(str(exc))
                reason = StopReason.STORAGE
            with contextlib.suppress(FatalProviderError, RuntimeFailureError):
                final = runtime.stats()
                self._report(runtime, started, None, stats=final)
        finally:
            released, shutdown_problems = self._shut_down(runtime, link, results_sink)
            released += self._released_at_signal
            problems.extend(shutdown_problems)
        fatal = runtime.fatal_error
        if isinstance(fatal, RuntimeFailureError):
            reason = StopReason.FAILED
        elif fatal is not None:
            reason = StopReason.FATAL
        elif problems:
            reason = StopReason.STORAGE
        storage_error = "; ".join(problems) or None
        report = DaemonReport(
            reason=reason,
            fatal_error=None if fatal is None else str(fatal),
            elapsed_s=time.monotonic() - started,
            tally=runtime.result_counts(),
            usage=_own_usage(usage_between(baseline, final.models), handle)
            if final is not None
            else (),
            released=released,
            quota_state=quota,
            storage_error=storage_error,
            failure=StorageError(storage_error) if storage_error is not None else fatal,
            batch=self._batch_report(),
            budget=final.budget if final is not None else None,
            batch_api=self._batch is not None,
        )
        _log.info(
            "daemon stopped",
            reason=str(report.reason),
            finished=report.tally.done_total + report.tally.failed_total,
            released=released,
        )
        return report

    def _quota_link(self) -> tuple[Any, Any]:
        """This daemon's way to the shared quota: joined, or owned (or, with
        ``--ray``, the project's registry actor)."""
        if self._ray_registry is not None:
            ray_handle = self._ray_registry()
            ray_link = RayLink(ray_handle, self.store, self.options.quota_lease_s)
            ray_link.start()
            return ray_handle, ray_link
        opts, quota = self.options, self.config.quota
        window_s = quota.window_s + quota.margin_s
        host, port = parse_address(opts.quota_address)
        sharing = SharingOptions(
            host=host,
            port=port,
            lease_s=opts.quota_lease_s,
            save_interval_s=min(1.0, opts.snapshot_interval_s, window_s / 8),
        )
        metrics = None if self._metrics is None else MetricsObserver(self._metrics)
        handle = RegistryHandle(
            self._clock,
            window_s=window_s,
            keep_s=sharing.lease_s + sharing.save_interval_s,
            observer=metrics,
        )
        try:
            link = QuotaLink(
                self.config,
                self.store,
                self._clock,
                handle,
                options=sharing,
                snapshot=self._snapshot,
                observer=None if metrics is None else _CooldownsOnly(metrics),
                unavailable_models=self._unavailable_models,
            )
        except OSError as exc:
            raise QuotaUnavailableError(
                f"cannot serve the shared quota on {opts.quota_address}: {exc.strerror or exc}"
            ) from None
        try:
            link.start()
        except BaseException:
            link.close()
            raise
        return handle, link

    @staticmethod
    def _stopped_by(runtime: Runtime, step: Any) -> Any:
        """Run a step of the loop; a fatal error of the runtime ends it (the
        report then says which, from ``runtime.fatal_error``)."""
        try:
            return step()
        except (FatalProviderError, RuntimeFailureError) as exc:
            _log.error("stopping: the runtime cannot go on", error=str(exc))
            return StopReason.FAILED if isinstance(exc, RuntimeFailureError) else StopReason.FATAL

    def _work(self, runtime: Runtime, started: float, leases: LeaseKeeper) -> StopReason:
        """Keep the runtime's queue topped up from the store until stopped
        (or, for ``run``, until nothing is left). Each turn asks the composer
        how full its queue is; the registry is asked only for a report."""
        opts = self.options
        target = max(1, opts.queue_batches * self.config.composer.batch_size)
        low_water = target // 2
        next_db_count = 0.0
        db_idle_until = 0.0
        while True:
            if self._stop_requested.is_set():
                return StopReason.IMMEDIATE if self._immediate.is_set() else StopReason.SIGNAL
            if runtime.fatal_error is not None:
                failed = isinstance(runtime.fatal_error, RuntimeFailureError)
                return StopReason.FAILED if failed else StopReason.FATAL
            now = time.monotonic()
            if leases.keep():
                runtime.recheck_quota()  # a new quota day (and budget) may have begun
            self._take_back_from_batch(runtime)
            stats = runtime.stats(quota=False)
            idle_db = now < db_idle_until
            # Articles the budget holds from a batch job count as queued, so
            # a held tier fills the queue no more than an interactive one.
            queued = stats.queued + self._batch_held_waiting()
            if queued <= low_water and not idle_db:
                want = target - queued
                leased = (
                    self._storage(
                        self.store.lease,
                        want,
                        opts.lease_s,
                        poison_after=self.config.retry.poison_after,
                    )
                    or []
                )
                if leased:
                    self._submit(runtime, leased)
                    stats = runtime.stats(quota=False)
                if len(leased) < want:
                    db_idle_until = now + opts.poll_interval_s
            db_counts = None
            if now >= next_db_count:
                db_counts = self._storage(self.store.counts)
                next_db_count = now + opts.db_count_interval_s
                if db_counts is not None and self._batch is not None and self._routes_by_backlog:
                    # the auto tiers' deadline and the budget are judged on the whole backlog
                    runtime.backlog_elsewhere(db_counts.get("queued", 0))
                self._save_thresholds(runtime)
            reported = self._report(runtime, started, db_counts)
            if opts.exit_when_done and reported is not None and self._budget_holds_all(reported):
                _log.info(
                    "the daily budget holds all the work left; stopping",
                    stopped=list(reported.budget.stopped_tiers) if reported.budget else [],
                    batch_held=dict(self._batch.stats().held) if self._batch else {},
                )
                return StopReason.BUDGET
            if (
                opts.exit_when_done
                and now < db_idle_until
                and stats.queued == 0
                and stats.in_extractors == 0
                and self._all_terminal(runtime)
            ):
                return StopReason.FINISHED
            timeout = opts.poll_interval_s if now < db_idle_until else 0.05
            self._wake.wait(timeout)
            self._wake.clear()

    def _all_terminal(self, runtime: Runtime) -> bool:
        """No row queued or leased anywhere (results buffered are written first)."""
        assert self._results_sink is not None
        self._storage(self._results_sink.flush)
        pending: int | None = self._storage(self.store.pending)
        return pending == 0

    def _prewarm(self, runtime: Runtime) -> None:
        limit = self.options.prewarm_clusters
        if limit <= 0:
            return
        backlog = self._storage(self.store.cluster_backlog, limit) or []
        now = self._clock.wall()  # publication times are wall-clock times
        runtime.observe_clusters((cluster, now if at is None else at) for _, cluster, at in backlog)
        self._prewarmed = {article_id for article_id, _, _ in backlog}
        if backlog:
            _log.info("cluster statistics warmed from the backlog", articles=len(backlog))

    def _seed_tiers(self, runtime: Runtime) -> None:
        """Fill the tier-share window with the whole input before leasing,
        report the split (a warning per empty tier), save the thresholds."""
        if self._tier_seed is not None:
            chunk: list[Article] = []
            for article in self._tier_seed():
                chunk.append(article)
                if len(chunk) >= _SEED_CHUNK:
                    runtime.seed_tiers(chunk)
                    chunk = []
            if chunk:
                runtime.seed_tiers(chunk)
            split = runtime.tier_split()
            log_tier_split(split)
            if self._on_tier_split is not None:
                self._on_tier_split(split)
        self._save_thresholds(runtime)

    def _save_thresholds(self, runtime: Runtime) -> None:
        """Save the tier thresholds for ``status`` when they moved. Best
        effort: a failed write is logged, never stops the loop."""
        if self._tiers_file is None:
            return
        split = runtime.tier_thresholds()
        if split.uses_shares and split.window == 0:
            return  # nothing ranked yet: a share implies no threshold
        values = tuple(t.min_priority for t in split.tiers)
        if values == self._saved_thresholds:
            return
        try:
            write_tiers(self._tiers_file, split, as_of=self._as_of, saved_at=self._clock.wall())
        except OSError as exc:
            _log.warning("tier thresholds not saved", path=str(self._tiers_file), error=str(exc))
            return
        self._saved_thresholds = values

    def _submit(self, runtime: Runtime, leased: list[Article]) -> None:
        if self._prewarmed:
            counted = [a for a in leased if a.id in self._prewarmed]
            fresh = [a for a in leased if a.id not in self._prewarmed]
            self._prewarmed.difference_update(a.id for a in counted)
            self._submit_part(runtime, counted, clusters_observed=True)
            self._submit_part(runtime, fresh, clusters_observed=False)
        else:
            self._submit_part(runtime, leased, clusters_observed=False)

    def _submit_part(
        self,
        runtime: Runtime,
        leased: list[Article],
        *,
        clusters_observed: bool,
        route: bool = True,
    ) -> None:
        if not leased:
            return
        if route and self._batch is not None:
            leased = self._route(runtime, leased, clusters_observed)
            clusters_observed = True
            if not leased:
                return
        try:
            receipt = runtime.submit(leased, block=False, clusters_observed=clusters_observed)
        except QueueFullError as full:
            unplaced = leased[len(leased) - full.remaining :]
            self._storage(self.store.release, [a.id for a in unplaced])
            _log.debug("runtime queue full; leases handed back", released=len(unplaced))
            return
        if receipt.duplicates:
            # Already in the runtime, or finished with the result not yet
            # written: the lease stays ours and the result settles the row.
            _log.info(
                "leased articles already in the runtime",
                count=len(receipt.duplicates),
                first=receipt.duplicates[0],
            )

    # ---- the Batch API -------------------------------------------------------------

    def _start_batch(self, runtime: Runtime) -> None:
        """The batch dispatcher, when a tier uses the Batch API and there is
        one to use (google-genai's); else those tiers run interactively."""
        config = self.config
        if not config.uses_batch:
            return
        tiers = [t.name for t in config.tiers if t.mode is not TierMode.INTERACTIVE]
        if self._batch_backend is None or not isinstance(self.store, SqlQueueStore):
            if tiers:
                _log.warning(
                    "tiers use the Batch API but the provider has none (google-genai only); "
                    "they run interactively",
                    tiers=tiers,
                )
            if config.batch_by_budget:
                _log.warning(
                    'budget.on_exhausted = "batch" but the provider has no Batch API '
                    "(google-genai only): tiers the budget stops wait for midnight"
                )
            return
        budget = runtime if config.budget.enabled else None
        if budget is not None and self._ray_registry is not None:
            _log.warning(
                "with --ray, batch jobs are not counted in the daily budget "
                "(the Ray registry does not take them yet); only interactive calls are"
            )
            budget = None
        self._batch_jobs = BatchJobStore(self.store, give_up_s=config.batch.give_up_s)
        self._batch = BatchDispatcher(
            config,
            self._batch_jobs,
            self._batch_backend,
            lease_s=self.options.lease_s,
            wake=self._wake,
            on_results=self._batch_results,
            budget=budget,
        )
        self._batch.start()
        if self._routes_by_backlog:
            # Plan the whole backlog before the first lease, so the auto
            # tiers' first articles are routed by a plan, not by its absence
            # (``stats`` is a round trip through the composer, which has
            # passed the backlog on to the registry by then).
            with contextlib.suppress(StorageError):
                runtime.backlog_elsewhere(self.store.counts().get("queued", 0))
                runtime.stats()
        _log.info(
            "batch dispatcher started",
            tiers=tiers,
            budget_moves_tiers=config.batch_by_budget,
            poll_interval_s=config.batch.poll_interval_s,
        )

    def _batch_results(self, results: Sequence[TerminalResult]) -> None:
        """A settled job's results, counted in the runtime's one count (the
        dispatcher's thread; the count is thread-safe)."""
        runtime = self._runtime
        if runtime is not None:
            runtime.count_settled(results)
        if self._metrics is not None:
            self._metrics.observe_latency(results)

    def _route(self, runtime: Runtime, leased: list[Article], observed: bool) -> list[Article]:
        """Send the leased articles of tiers that go to batch now to the
        dispatcher; returns the others (their clusters are counted)."""
        assert self._batch is not None
        tiers = runtime.tiers_of(leased, clusters_observed=observed)
        budget = runtime.budget() if self.config.batch_by_budget else None
        way = routes(self.config.tiers, runtime.plan() if self._auto else None, budget)
        to_batch = [
            (tier, a) for tier, a in zip(tiers, leased, strict=True) if way[tier] is Route.BATCH
        ]
        if not to_batch:
            return leased
        self._batch.add(to_batch)
        _log.debug("articles routed to the Batch API", count=len(to_batch))
        batched = {a.id for _, a in to_batch}
        return [a for a in leased if a.id not in batched]

    def _take_back_from_batch(self, runtime: Runtime) -> None:
        """Articles of batch jobs that failed, to call interactively."""
        if self._batch is None:
            return
        back = self._batch.take_interactive()
        if back:
            self._submit_part(runtime, back, clusters_observed=False, route=False)

    def _batch_held_waiting(self) -> int:
        """Articles waiting in the dispatcher for the daily budget."""
        return 0 if self._batch is None else self._batch.stats().held_waiting

    def _budget_holds_all(self, stats: RuntimeStats) -> bool:
        """``budget_holds_all``, with the batch dispatcher's work: articles it
        holds for the budget are held work; any other (a job going out, or
        in flight at the API, whose settle may free money) is not."""
        batch = self._batch
        if batch is None:
            return budget_holds_all(stats)
        held = batch.stats()
        if batch.busy_unheld:
            return False  # a job goes out (perhaps one the re-ask below let through)
        if not held.held_waiting:
            self._retry_asked = None
            return budget_holds_all(stats)
        report = None
        if budget_holds_all(stats, allow_idle=True):
            report = self._batch_report()
        if report is None or report.in_flight:
            self._retry_asked = None
            return False
        # Nothing is in flight any more, but what settled last may have
        # freed money since the budget held these: ask it once more, and
        # stop only once it said no after everything settled.
        if self._retry_asked is None:
            self._retry_asked = batch.retry_held()
            return False
        return batch.refused_since(self._retry_asked)

    def _batch_report(self) -> BatchReport | None:
        if self._batch_jobs is None:
            return None
        try:
            return self._batch_jobs.report()
        except StorageError as exc:
            _log.warning("batch jobs not read", error=str(exc))
            return None

    def _drain(self, runtime: Runtime, started: float, leases: LeaseKeeper) -> StopReason:
        """Stop at once, except for the calls in flight: no new call starts
        (so no quota is spent after the signal), the leases of everything
        not in a call go back to the queue now, and the calls in flight get
        up to ``drain_timeout_s`` to finish (what they leave unfinished is
        released at the end)."""
        opts = self.options
        returned = runtime.begin_shutdown()
        if self._batch is not None:
            # no job is submitted after the signal either; jobs in flight
            # are resumed by the next daemon
            _guarded("batch dispatcher stop", self._batch.stop)
        released = self._storage(self.store.release, [a.id for a in returned]) or 0
        self._released_at_signal = released
        _log.info(
            "stopping: no more leasing or new calls; leases of work not in flight released; "
            "waiting for the calls in flight (signal again to stop at once)",
            released=released,
            timeout_s=opts.drain_timeout_s,
        )
        deadline = time.monotonic() + opts.drain_timeout_s
        while not self._immediate.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                _log.warning(
                    "drain timed out; stopping at once (unfinished leases are released)",
                    timeout_s=opts.drain_timeout_s,
                )
                return StopReason.IMMEDIATE
            if runtime.drain(timeout=min(0.25, remaining)):
                return StopReason.SIGNAL
            leases.keep()
            self._report(runtime, started, None, draining=True)
        _log.warning("second stop request: stopping at once")
        return StopReason.IMMEDIATE

    def _shut_down(
        self, runtime: Runtime, link: QuotaLink, results_sink: ResultsSink
    ) -> tuple[int, list[str]]:
        """Stop the runtime, leave the shared quota (an owner saves its state
        once more and hands the quota to the next daemon), hand back
        unfinished leases, write the last results; returns how many leases
        were released and the database problems met.

        The final save happens after the runtime stopped, so it includes
        every request that finished. Every step runs
        whatever became of the ones before it (each in its own guard): a
        failed runtime still has its threads stopped, its results written
        and this owner's leases released. The order is what keeps a failing
        database (disk full) from losing anything: release what the runtime
        hands back, then write the last results, then release whatever this
        owner still holds -- all of it (``release()`` with no ids), so
        nothing depends on a dead composer's ledger, and the rows whose
        results could not be written go back too, for the next daemon."""
        problems: list[str] = []
        released = 0
        try:
            if self._batch is not None:
                _guarded("batch dispatcher stop", self._batch.stop)
            unfinished = _guarded("runtime stop", lambda: runtime.stop(drain=False)) or []
            _guarded("leave the shared quota", link.close)
            if unfinished:
                try:
                    released += self.store.release([a.id for a in unfinished])
                except StorageError as exc:
                    _log.error("could not release leases; they will expire", error=str(exc))
                    problems.append(f"could not release leases: {exc}")
            try:
                results_sink.close()
            except StorageError as exc:
                _log.error(
                    "could not write the last results; their articles go back to the queue",
                    db=self.store.path,
                    error=str(exc),
                    results=results_sink.unwritten,
                )
                problems.append(f"{exc} (their articles go back to the queue)")
            except Exception:
                _log.exception("shutdown step failed; going on", step="write the last results")
            try:
                released += self.store.release()
            except StorageError as exc:
                _log.error("could not release leases; they will expire", error=str(exc))
                problems.append(f"could not release leases, they will expire: {exc}")
        finally:
            _guarded("progress display", self._progress.stop)
        return released, problems

    # ---- helpers -----------------------------------------------------------------

    def _report(
        self,
        runtime: Runtime,
        started: float,
        db_counts: Mapping[str, int] | None,
        *,
        draining: bool = False,
        stats: RuntimeStats | None = None,
    ) -> RuntimeStats | None:
        """Refresh the metrics and the progress display from the runtime's
        stats: at most every ``_REPORT_INTERVAL_S`` (the registry is asked
        only then), always with fresh database counts or given ``stats``.
        Returns the stats it showed (None: not due yet)."""
        real = time.monotonic()
        if stats is None:
            if db_counts is None and real < self._next_report:
                return None
            stats = runtime.stats()
        self._next_report = real + _REPORT_INTERVAL_S
        elapsed = real - started
        finished = stats.terminal
        now = self._clock.now()
        if self._link is not None:  # for this daemon's heartbeat
            self._link.backlog = stats.queued + stats.in_extractors
        batch = self._batch
        held: dict[str, int] | None = None
        if batch is not None:
            if db_counts is not None:
                self._batch_seen = self._batch_report() or self._batch_seen
            held = dict.fromkeys((t.name for t in self.config.tiers), 0)
            held.update(batch.stats().held)
        if self._metrics is not None:
            self._metrics.update(
                stats,
                now,
                db_counts,
                wall_offset=wall_offset(self._clock),
                batch=self._batch_seen if db_counts is not None else None,
                batch_held=held,
            )
        self._progress.update(
            ProgressView(
                elapsed_s=elapsed,
                now=now,
                stats=stats,
                finished=finished,
                rate_per_s=self._rate.add(elapsed, finished),
                db_counts=db_counts,
                models=self.config.models,
                draining=draining,
                plan=runtime.plan(),
                wall_now=now + wall_offset(self._clock),
                batch=self._batch_seen,
                batch_api=batch is not None,
                batch_held=tuple((t, n) for t, n in (held or {}).items() if n),
            )
        )
        return stats

    def _storage(self, operation: Any, *args: Any, **kwargs: Any) -> Any:
        """Run a store operation; a failure is logged and retried on a later
        turn of the loop (leases outlive short outages), up to a limit."""
        try:
            value = operation(*args, **kwargs)
        except StorageError as exc:
            self._storage_failures += 1
            _log.error(
                "database operation failed; retrying",
                operation=getattr(operation, "__name__", str(operation)),
                error=str(exc),
                failures=self._storage_failures,
            )
            if self._storage_failures >= _MAX_STORAGE_FAILURES:
                raise
            return None
        self._storage_failures = 0
        return value


def _own_usage(usage: Sequence[ModelUsage], handle: Any) -> tuple[ModelUsage, ...]:
    """The run's usage per model with this daemon's own requests, 429s and
    tokens (the shared registry counts every daemon's); cooldown time is
    the quota's. A handle that cannot tell (Ray) leaves the project's."""
    if not hasattr(handle, "counters"):
        return tuple(usage)
    own = handle.counters()
    return tuple(
        replace(
            u,
            requests=own.get(u.model, {}).get("granted", 0),
            rate_limited=own.get(u.model, {}).get("rate_limited", 0),
            input_tokens=own.get(u.model, {}).get("input_tokens", 0),
            output_tokens=own.get(u.model, {}).get("output_tokens", 0),
        )
        for u in usage
    )


def check_task_versions(store: Store, config: Config, *, allow: bool = False) -> None:
    """Refuse (``MixedTaskVersionsError``, naming the versions) a store whose
    results table holds results of another task version than ``config``'s,
    unless ``allow`` or ``task.allow_mixed_versions`` says mixing is fine."""
    check_versions(
        store.task_versions(),
        task_version(config.task),
        allowed=allow or config.task.allow_mixed_versions,
        where=f"the results table of {store.path}",
    )


def budget_holds_all(stats: RuntimeStats, *, allow_idle: bool = False) -> bool:
    """Whether the daily budget holds every piece of work the runtime has:
    nothing in flight (no settlement can free money), and every tier with
    articles queued or requests waiting may not spend. ``allow_idle``: a
    runtime with no work at all counts as held too (the work is elsewhere:
    a batch job the budget holds)."""
    budget = stats.budget
    if budget is None or stats.in_flight_requests:
        return False
    waiting = {tier for tier, n in budget.waiting if n}
    queued = {tier for tier, n in stats.queued_by_tier.items() if n}
    work = waiting | queued
    if not work:
        return allow_idle and not stats.in_extractors
    return work <= set(budget.stopped_tiers)


def _guarded(what: str, step: Any) -> Any:
    """One shutdown step: a failure is logged (once, here) and the next step runs."""
    try:
        return step()
    except (StorageError, SnapshotError) as exc:
        _log.error("shutdown step failed; going on", step=what, error=str(exc))
    except Exception:
        _log.exception("shutdown step failed; going on", step=what)
    return None


@contextlib.contextmanager
def signals_stop(daemon: Daemon) -> Iterator[None]:
    """Route SIGTERM and SIGINT to ``daemon.handle_signal`` while in the block
    (main thread only; elsewhere it does nothing) and put the old handlers back."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, daemon.handle_signal) for sig in _STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

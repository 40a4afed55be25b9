"""Runtime: the facade a daemon embeds.

    with Runtime(config, provider, sink) as rt:
        rt.submit(articles)
        rt.drain()

It starts the three actors -- one ModelRegistry, one BatchComposer, a pool of
Extractors under a Supervisor -- and the one event-loop thread they share for
provider calls, and on ``stop`` tears every one of them down again.

Failure: pykka supervises nothing, so the runtime does. A crashed extractor
is replaced by the supervisor (its state is disposable: the composer's
ledger takes back what it held). The registry, the composer and the
supervisor are not restarted: an unhandled exception there is a bug that
may have left their state half-updated, and a restart would need every
peer to re-address it. Instead the runtime *fails* at once, from the dying
actor's own ``on_failure``: it records a ``RuntimeFailureError`` naming the
actor, stops dispatching, tells the extractors to give everything back, and
answers every pending ``submit``/``drain`` with that error. ``stop`` still
runs every step (each in its own guard) and returns what it can, so a
durable queue hands the work out again.

Longer than the house's ~450 lines on purpose: the facade's public methods,
each documented; the work is done by the actors and policies it wires.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from types import TracebackType
from typing import Any, TypeVar

import pykka
import structlog

from tierbatch.actors.clock import Clock, SystemClock, wall_offset
from tierbatch.actors.composer import BatchComposer
from tierbatch.actors.event_loop import LaunchPacer, LoopThread
from tierbatch.actors.extractor import Extractor, ExtractorDeps
from tierbatch.actors.messages import (
    BacklogElsewhere,
    BeginShutdown,
    Classify,
    CommitBatch,
    GetBudgetState,
    GetComposerStats,
    GetPlan,
    GetQuotaSnapshot,
    GetQuotaStatus,
    GetTierSplit,
    GetTierThresholds,
    ObserveClusters,
    Pause,
    Quiesce,
    ReleaseHolder,
    SeedTiers,
    SettleBatch,
    StopGranting,
    Submit,
    TakeReturned,
    TakeUnfinished,
    Wake,
    WhenDrained,
    WhenSpace,
    WindDown,
)
from tierbatch.actors.observer import RegistryObserver
from tierbatch.actors.ports import Provider, Sink
from tierbatch.actors.registry import ModelRegistry
from tierbatch.actors.sinks import CountingSink
from tierbatch.actors.stats import RuntimeStats, SubmitReceipt
from tierbatch.actors.supervisor import ExtractorCrashed, StopPool, StopRestarting, Supervisor
from tierbatch.actors.threads import ThreadLedger
from tierbatch.policies.articles import Article
from tierbatch.policies.budget import BudgetSnapshotError, BudgetState, DailyBudget
from tierbatch.policies.config import Config, TierMode
from tierbatch.policies.errors import (
    ActorDiedError,
    FatalProviderError,
    QueueFullError,
    RuntimeFailureError,
    RuntimeNotRunningError,
    ShuttingDownError,
)
from tierbatch.policies.planner import Plan, TierShape
from tierbatch.policies.quota import ModelStatus, QuotaPolicy
from tierbatch.policies.results import TerminalResult
from tierbatch.policies.tally import TallySnapshot
from tierbatch.policies.tier_assignment import TierSplit
from tierbatch.policies.tiers import TierLadder
from tierbatch.policies.tokens import TokenEstimator

_log = structlog.get_logger(__name__)

T = TypeVar("T")

# How often a wait on an actor's answer checks that the actor still lives
# (pykka answers nothing for an ask that raced the actor's death).
_LIVENESS_CHECK_S = 0.5
# Bounds on the teardown, so ``stop`` returns whatever is stuck.
ACTOR_STOP_TIMEOUT_S = 10.0
PROVIDER_CLOSE_TIMEOUT_S = 10.0


class Runtime:
    """Quota-aware, tiered extraction over a provider, into a sink.

    ``clock`` defaults to ``SystemClock`` (steady time from the monotonic
    clock, calendar time from the wall clock); ``quota_state`` is a
    snapshot from ``quota_snapshot()`` of an earlier run (so per-day usage
    survives a restart), restored here: one that cannot be used raises
    ``SnapshotError`` before anything starts; ``observer`` watches registry
    decisions; ``crash_hook`` is a testing aid called by an extractor with
    every batch it receives (an exception there crashes that extractor);
    ``unavailable_models`` (model -> reason) are routed around from the
    start, as after a 404 -- what a models check before the run found
    missing. ``registry`` is a registry started elsewhere (a
    ``RegistryHandle`` to a quota shared with other processes): the runtime
    then starts none of its own, ignores ``quota_state``, ``observer`` and
    ``unavailable_models`` (whoever owns the registry applies them), and
    leaves stopping it to its owner.
    """

    def __init__(
        self,
        config: Config,
        provider: Provider,
        sink: Sink,
        *,
        clock: Clock | None = None,
        quota_state: Mapping[str, Any] | None = None,
        observer: RegistryObserver | None = None,
        crash_hook: Any = None,
        unavailable_models: Mapping[str, str] | None = None,
        registry: Any = None,
        as_of: float | None = None,
    ) -> None:
        self.config = config
        self._external_registry = registry
        self._as_of = as_of
        self._unavailable_models = dict(unavailable_models or {})
        self.provider = provider
        self.sink = sink
        # Every result passes here on its way to ``sink``: the one count.
        self._counted = CountingSink(sink)
        self.clock: Clock = clock or SystemClock()
        # A registry of our own gets its policy and budget here, so a
        # snapshot that cannot be used fails before anything starts; an
        # external one (a shared quota) is its owner's.
        self._policy: QuotaPolicy | None = (
            None if registry is not None else self._quota_policy(quota_state)
        )
        self._budget: DailyBudget | None = (
            None if registry is not None else make_budget(config, quota_state)
        )
        self._ladder = TierLadder(config.tiers, config.global_fallback)
        self._observer = observer
        self._crash_hook = crash_hook
        self._fatal: FatalProviderError | RuntimeFailureError | None = None
        self._fatal_lock = threading.Lock()
        self._failed = False  # a RuntimeFailureError happened (handled once)
        self._started = False
        self._stopped = False
        self._shutting_down = False
        # Set on shutdown or failure: a call still waiting for its launch
        # turn is not sent.
        self._dispatch_stopped = threading.Event()
        self._loop: LoopThread | None = None
        self._registry: pykka.ActorRef[Any] | None = None
        self._composer: pykka.ActorRef[Any] | None = None
        self._supervisor: pykka.ActorRef[Any] | None = None
        # Every extractor ever started, so teardown and failure reach them
        # without the supervisor (which may be the actor that died).
        self._extractors: list[pykka.ActorRef[Any]] = []
        self._extractors_lock = threading.Lock()
        self._threads = ThreadLedger()
        # What a dead composer's ledger still held, for ``stop`` to return.
        self._composer_leftovers: tuple[Article, ...] = ()

    # ---- lifecycle ---------------------------------------------------------------

    def _quota_policy(self, quota_state: Mapping[str, Any] | None) -> QuotaPolicy:
        """The registry's policy: fresh, or restored from ``quota_state``
        (raising ``SnapshotError`` when that cannot be used)."""
        config = self.config
        if quota_state is not None:
            # The snapshot's times are wall-clock; this process's steady clock
            # has its own origin, so convert with the offset now.
            policy = QuotaPolicy.restore(
                config.models, config.quota, quota_state, wall_offset=wall_offset(self.clock)
            )
            policy.forget_in_flight()
            policy.clear_unavailable()  # a new process probes 404ed models again
        else:
            policy = QuotaPolicy(config.models, config.quota)
        for model, reason in self._unavailable_models.items():
            policy.mark_unavailable(model, reason)
        return policy

    def start(self) -> Runtime:
        if self._started:
            raise RuntimeNotRunningError("this Runtime was already started; create a new one")
        self._started = True
        config, clock, ladder = self.config, self.clock, self._ladder
        if self._external_registry is not None:
            self._registry = self._external_registry
            watch = getattr(self._registry, "watch", None)
            if watch is not None:
                watch(self._on_actor_died)
        else:
            self._registry = self._start_registry()
        self._loop = LoopThread()
        self._loop.start()
        threads = self._threads
        registry = self._registry
        self._composer = BatchComposer.start(
            config,
            ladder,
            self._counted,
            clock,
            self._on_composer_died,
            threads,
            backlog_to=lambda backlog: _tell(registry, backlog),
            as_of=self._as_of,
        )
        composer, loop = self._composer, self._loop
        deps = ExtractorDeps(
            config=config,
            ladder=ladder,
            provider=self.provider,
            clock=clock,
            loop=loop,
            pacer=LaunchPacer(clock.to_real(config.runtime.launch_stagger_s)),
            registry=registry,
            composer=composer,
            on_crash=self._on_extractor_crash,
            on_fatal=self._on_fatal,
            on_peer_dead=self._on_peer_dead,
            dispatch_stopped=self._dispatch_stopped,
            threads=threads,
            crash_hook=self._crash_hook,
        )

        def start_extractor(extractor_id: int) -> pykka.ActorRef[Any]:
            ref = Extractor.start(extractor_id, deps)
            with self._extractors_lock:
                self._extractors = [r for r in self._extractors if r.is_alive()]
                self._extractors.append(ref)
            return ref

        self._supervisor = Supervisor.start(
            config.runtime.extractors,
            start_extractor,
            registry,
            composer,
            clock,
            self._fail,
            on_died=self._on_actor_died,
            threads=threads,
        )
        _log.info(
            "runtime started",
            extractors=config.runtime.extractors,
            tiers=[t.name for t in config.tiers],
            models=sorted(config.models),
        )
        return self

    def _start_registry(self) -> pykka.ActorRef[Any]:
        policy = self._policy
        assert policy is not None  # made in __init__ unless the registry is external
        config = self.config
        return ModelRegistry.start(
            policy,
            self.clock,
            self._observer,
            self._on_actor_died,
            self._threads,
            tiers=tier_shapes(config, self._ladder) if config.quota.plan else (),
            budget=self._budget,
        )

    def __enter__(self) -> Runtime:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop(drain=exc_type is None)

    def stop(self, *, drain: bool = True, timeout: float | None = None) -> list[Article]:
        """Stop every actor and thread this runtime started.

        With ``drain`` it first waits (up to ``timeout`` seconds) for every
        submitted article to become terminal. Articles that are not terminal
        when the pool stops are returned -- never written as results -- so a
        durable queue can hand them out again (after ``begin_shutdown``:
        those not already returned by it).

        Every step runs even when an earlier one failed (each is guarded and
        bounded in time), so a failed runtime still stops its threads, closes
        the provider and flushes the sink.
        """
        if not self._started or self._stopped:
            return []
        if drain and self._fatal is None:
            with contextlib.suppress(FatalProviderError, RuntimeFailureError):
                self.drain(timeout)
        self._stopped = True
        self._dispatch_stopped.set()
        steps = _Teardown()
        supervisor, composer, registry = self._supervisor, self._composer, self._registry
        if supervisor is not None:
            steps.run(
                "supervisor",
                lambda: supervisor.ask(StopPool(), block=True, timeout=ACTOR_STOP_TIMEOUT_S),
            )
        steps.stop_all("extractor", self._live_extractors())
        steps.stop_all("supervisor", [supervisor] if supervisor else [])
        unfinished: list[Article] | None = None
        if composer is not None:
            unfinished = steps.run(
                "composer",
                lambda: composer.ask(TakeUnfinished(), block=True, timeout=ACTOR_STOP_TIMEOUT_S),
            )
        if unfinished is None:
            # The composer died: its failure handler hands over its ledger
            # on its own thread, which ends once that is done.
            self._threads.join(ACTOR_STOP_TIMEOUT_S, role="composer")
            unfinished = list(self._composer_leftovers)
        self._composer_leftovers = ()
        steps.stop_all("composer", [composer] if composer else [])
        if self._external_registry is None:  # an external one is its owner's to stop
            steps.stop_all("registry", [registry] if registry else [])
        loop = self._loop
        if loop is not None:
            steps.run(
                "provider",
                lambda: loop.run(self.provider.aclose(), timeout=PROVIDER_CLOSE_TIMEOUT_S),
            )
            steps.run("event loop", loop.stop)
        steps.run("sink", self.sink.flush)
        left = self._threads.join(ACTOR_STOP_TIMEOUT_S)
        if left:
            _log.error("runtime stop: actor threads still running; left behind", threads=left)
        steps.log_dead()
        _log.info("runtime stopped", unfinished=len(unfinished))
        return unfinished

    def begin_shutdown(self) -> list[Article]:
        """Stop dispatching now and hand back, at once, every article that
        is not in a provider call: queued ones, and those extractors hold
        while waiting for quota or a launch turn. No new call starts after
        this returns. Calls in flight run on: when one ends, what succeeded
        becomes terminal and the rest is given back instead of retried.

        Then ``drain(timeout)`` waits for those calls, and ``stop()``
        returns what they gave back (and whatever a timeout cut short).
        ``submit`` raises ``ShuttingDownError`` from now on. A daemon releases
        the returned articles' leases at once.
        """
        composer = self._running_composer()
        self._shutting_down = True
        self._dispatch_stopped.set()
        self._ask(composer, "composer", BeginShutdown())
        if self._registry is not None:
            with contextlib.suppress(RuntimeFailureError):
                self._ask(self._registry, "registry", StopGranting())
        # Each extractor gives back what it holds outside a call (GiveBack
        # reaches the composer before its answer to us does), so the
        # composer's answer below includes all of it.
        answers = [(ref, ref.ask(WindDown(), block=False)) for ref in self._live_extractors()]
        deadline = time.monotonic() + ACTOR_STOP_TIMEOUT_S
        for ref, answer in answers:
            with contextlib.suppress(pykka.ActorDeadError, pykka.Timeout, RuntimeFailureError):
                self._await(answer, ref, "extractor", max(0.0, deadline - time.monotonic()))
        returned: list[Article] = self._ask(composer, "composer", TakeReturned())
        _log.info(
            "shutting down: no new calls; work not in flight handed back", returned=len(returned)
        )
        return returned

    # ---- work ----------------------------------------------------------------------

    def submit(
        self,
        articles: Iterable[Article],
        *,
        block: bool = True,
        timeout: float | None = None,
        clusters_observed: bool = False,
    ) -> SubmitReceipt:
        """Queue articles for extraction.

        When the queue is full, ``block`` waits for room (up to ``timeout``
        seconds) and otherwise raises ``QueueFullError`` at once; ``QueueFullError``
        says how many were accepted, which were the first ones, in order.
        Pass ``clusters_observed=True`` for articles already counted with
        ``observe_clusters``.
        """
        composer = self._running_composer()
        self._raise_if_fatal()
        if self._shutting_down:
            raise ShuttingDownError("the runtime is shutting down: it takes no more articles")
        pending = tuple(articles)
        for index, article in enumerate(pending):
            if not isinstance(article, Article):
                raise TypeError(
                    f"submit: item {index} is a {type(article).__name__}, not an Article"
                )
        deadline = None if timeout is None else time.monotonic() + timeout
        accepted = 0
        duplicates: list[str] = []
        while pending:
            part: SubmitReceipt = self._ask(
                composer, "composer", Submit(pending, observe=not clusters_observed)
            )
            accepted += part.accepted
            duplicates.extend(part.duplicates)
            pending = pending[part.consumed :]
            if not pending:
                break
            capacity = self.config.composer.max_queued
            if not block:
                raise QueueFullError(accepted, len(pending), capacity)
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise QueueFullError(accepted, len(pending), capacity)
            space: pykka.ThreadingFuture[bool] = self._ask(composer, "composer", WhenSpace())
            try:
                has_space = self._await(space, composer, "composer", remaining)
            except pykka.Timeout:
                raise QueueFullError(accepted, len(pending), capacity) from None
            if not has_space:
                self._raise_if_fatal()
                if self._shutting_down:
                    raise ShuttingDownError(
                        "the runtime began shutting down while submit was waiting"
                    )
                raise RuntimeNotRunningError("the runtime stopped while submit was waiting")
        return SubmitReceipt(accepted, tuple(duplicates))

    def tiers_of(
        self, articles: Iterable[Article], *, clusters_observed: bool = False
    ) -> tuple[str, ...]:
        """The tier name each article would be queued in, without queueing
        it (a daemon sends a batch tier's articles to the Batch API this
        way). Unless ``clusters_observed``, the articles count towards their
        clusters' hotness, as ``submit`` counts them: submit them afterwards
        with ``clusters_observed=True``."""
        composer = self._running_composer()
        self._raise_if_fatal()
        names: tuple[str, ...] = self._ask(
            composer, "composer", Classify(tuple(articles), observe=not clusters_observed)
        )
        return names

    def observe_clusters(self, observations: Iterable[tuple[str, float]]) -> None:
        """Count ``(cluster_id, published_at epoch seconds)`` pairs towards
        cluster hotness without queueing anything. A daemon with a large
        backlog calls this for the whole backlog, then submits a few batches
        at a time with ``clusters_observed=True``, so an article's priority
        reflects its cluster's full size rather than what was leased so far.
        """
        composer = self._running_composer()
        try:
            composer.tell(ObserveClusters(tuple(observations)))
        except pykka.ActorDeadError:
            raise self._dead("composer") from None

    def recheck_quota(self) -> None:
        """Have the registry read the clock and serve its waiters now, not
        at its timer: after the wall clock stepped (a new quota day, and a
        new daily budget, may have begun), or when a test moved its clock."""
        registry = self._registry
        if registry is None:
            raise RuntimeNotRunningError("the runtime is not running")
        try:
            registry.tell(Wake(-1))
        except pykka.ActorDeadError:
            raise self._dead("registry") from None

    def seed_tiers(self, articles: Iterable[Article], *, clusters_observed: bool = True) -> None:
        """Count the priorities of articles that will be submitted later
        towards the tier shares first (a one-shot run seeds its whole input,
        so its tier split is exact rather than a warm-up). A seeded article
        keeps the priority it was seeded with. Call in chunks; then
        ``tier_split``. ``clusters_observed=False`` also counts the articles
        towards cluster hotness (nothing else did)."""
        composer = self._running_composer()
        self._ask(composer, "composer", SeedTiers(tuple(articles), observe=not clusters_observed))

    def tier_split(self) -> TierSplit:
        """How the seeded articles fall into the tiers now; ends seeding."""
        split: TierSplit = self._ask(self._running_composer(), "composer", GetTierSplit())
        return split

    def tier_thresholds(self) -> TierSplit:
        """Every tier's ``min_priority`` now (a share tier's moves with the
        window of recent priorities); counts are 0."""
        split: TierSplit = self._ask(self._running_composer(), "composer", GetTierThresholds())
        return split

    def backlog_elsewhere(self, articles: int, arrivals_per_s: float = 0.0) -> None:
        """Tell the dispatch plan how many articles wait outside the runtime
        (a daemon's store) and how fast new ones arrive there, so it plans
        for the whole backlog, not only for the few batches leased so far.
        Their tiers are estimated from what was submitted so far."""
        composer = self._running_composer()
        try:
            composer.tell(BacklogElsewhere(max(0, int(articles)), float(arrivals_per_s)))
        except pykka.ActorDeadError:
            raise self._dead("composer") from None

    def plan(self) -> Plan | None:
        """The dispatch plan in force: requests per tier and model, when each
        tier should finish, which limits bind (None before the first plan)."""
        assert self._registry is not None
        self._running_composer()
        plan: Plan | None = self._ask(self._registry, "registry", GetPlan())
        return plan

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until every article submitted so far is terminal (after
        ``begin_shutdown``: until the calls in flight have ended). Returns
        False on timeout; raises ``FatalProviderError`` when the provider
        refused the configuration and ``RuntimeFailureError`` when the runtime
        itself failed."""
        composer = self._running_composer()
        self._raise_if_fatal()
        drained: pykka.ThreadingFuture[bool] = self._ask(composer, "composer", WhenDrained())
        try:
            ok = self._await(drained, composer, "composer", timeout)
        except pykka.Timeout:
            return False
        self._raise_if_fatal()
        return bool(ok)

    # ---- introspection ---------------------------------------------------------------

    def stats(self, *, quota: bool = True) -> RuntimeStats:
        """Counts and quota state: one ask of the composer, and one of the
        registry unless ``quota`` is False (then ``models`` and
        ``cooldowns`` are empty -- enough to see how full the queue is).
        Works after a provider error or a failure as long as the composer
        and registry live; raises ``RuntimeFailureError`` when one of them
        died."""
        composer = self._running_composer()
        assert self._registry is not None
        part: RuntimeStats = self._ask(composer, "composer", GetComposerStats())
        if not quota:
            return replace(part, results=self._counted.counts())
        models: tuple[ModelStatus, ...] = self._ask(self._registry, "registry", GetQuotaStatus())
        budget: BudgetState | None = (
            self._ask(self._registry, "registry", GetBudgetState())
            if self.config.budget.enabled
            else None
        )
        now = self.clock.now()
        cooldowns = {
            m.model: max(m.cooldown_until or 0.0, m.exhausted_until or 0.0)
            for m in models
            if max(m.cooldown_until or 0.0, m.exhausted_until or 0.0) > now
        }
        return replace(
            part,
            results=self._counted.counts(),
            models=models,
            cooldowns=cooldowns,
            budget=budget,
        )

    def budget(self) -> BudgetState | None:
        """The daily budget as of now (None without a ``[budget]``): one ask
        of the registry."""
        if not self.config.budget.enabled:
            return None
        registry = self._registry
        if registry is None:
            raise RuntimeNotRunningError("the runtime is not running")
        self._running_composer()
        budget: BudgetState | None = self._ask(registry, "registry", GetBudgetState())
        return budget

    def commit_batch(
        self, job_id: str, tier: str, model: str, request_tokens: Sequence[int]
    ) -> int:
        """A batch job is about to be created (an embedder's own, or the
        daemon's batch dispatcher's): commit its estimate, at the
        ``[batch] discount``, to the daily budget first. Returns how many of
        its requests (the first ones) the day can pay for: all of them
        without a budget, 0 when none fits (do not create it; try again
        later). Settle every committed job with ``settle_batch``."""
        tokens = tuple(int(t) for t in request_tokens)
        if not self.config.budget.enabled:
            return len(tokens)
        registry = self._registry
        if registry is None:
            raise RuntimeNotRunningError("the runtime is not running")
        message = CommitBatch(job_id, tier, model, tokens, self.config.batch.discount)
        approved: int = self._ask(registry, "registry", message)
        return approved

    def settle_batch(self, job_id: str, tier: str, usd: float, submitted_at: float) -> None:
        """A batch job is over: it cost ``usd`` (0 when its articles went
        back). ``submitted_at`` (epoch seconds) dates it for a budget that
        never committed it. Idempotent by ``job_id``."""
        if not self.config.budget.enabled:
            return
        registry = self._registry
        if registry is None:
            raise RuntimeNotRunningError("the runtime is not running")
        try:
            registry.tell(SettleBatch(job_id, tier, float(usd), float(submitted_at)))
        except pykka.ActorDeadError:
            raise self._dead("registry") from None

    def result_counts(self) -> TallySnapshot:
        """The terminal results handed to the sink so far, counted once each
        (done per tier and model, failed per tier and reason). Asks no
        actor: it answers from any thread, before ``start``, after a failure
        and after ``stop``."""
        return self._counted.counts()

    def count_settled(self, results: Sequence[TerminalResult]) -> None:
        """Count terminal results settled outside the runtime -- a batch
        job's, written by the daemon's batch dispatcher -- in the same one
        count ``result_counts`` and ``stats`` read (thread-safe)."""
        self._counted.count(results)

    def quota_snapshot(self) -> dict[str, Any]:
        """The registry's state as plain data (msgpack-ready). After the
        registry died, its last state is read directly (nothing changes it
        any more), so the day's usage can still be saved."""
        registry = self._registry
        if registry is None or (self._policy is None and self._external_registry is None):
            raise RuntimeNotRunningError("the runtime is not running")
        if registry.is_alive():
            with contextlib.suppress(RuntimeFailureError):
                snapshot: dict[str, Any] = self._ask(registry, "registry", GetQuotaSnapshot())
                return snapshot
        if self._policy is None:
            raise RuntimeNotRunningError("the shared registry is gone")
        last = self._policy.snapshot()
        if self._budget is not None:
            last["budget"] = self._budget.snapshot()
        return last

    @property
    def fatal_error(self) -> FatalProviderError | RuntimeFailureError | None:
        """What stopped the run: the provider refused the configuration
        (``FatalProviderError``) or the runtime failed
        (``RuntimeFailureError``); None while healthy. It is what ``submit``
        and ``drain`` raise from then on."""
        return self._fatal

    # ---- internals -------------------------------------------------------------------

    def _running_composer(self) -> pykka.ActorRef[Any]:
        if not self._started or self._stopped or self._composer is None:
            raise RuntimeNotRunningError("the runtime is not running (use start() or a with block)")
        return self._composer

    def _raise_if_fatal(self) -> None:
        fatal = self._fatal
        if fatal is None:
            return
        raise fatal.with_traceback(None)

    def _live_extractors(self) -> list[pykka.ActorRef[Any]]:
        with self._extractors_lock:
            return [ref for ref in self._extractors if ref.is_alive()]

    def _ask(self, ref: pykka.ActorRef[Any], actor: str, message: Any) -> Any:
        """Ask an actor and wait for the answer; a dead actor is a
        ``RuntimeFailureError``, never a hang. An exception the handler raised
        (the actor lives on) reaches the caller as it is."""
        try:
            future = ref.ask(message, block=False)
        except pykka.ActorDeadError:
            raise self._dead(actor) from None
        return self._await(future, ref, actor, None)

    def _await(
        self,
        future: pykka.Future[T],
        ref: pykka.ActorRef[Any],
        actor: str,
        timeout: float | None,
    ) -> T:
        """``future.get(timeout)``, checking every so often that the actor
        that should answer it still lives. Raises ``pykka.Timeout``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            wait = _LIVENESS_CHECK_S
            if deadline is not None:
                wait = max(0.0, min(wait, deadline - time.monotonic()))
            try:
                return future.get(timeout=wait)
            except pykka.ActorDeadError:
                raise self._dead(actor) from None
            except pykka.Timeout:
                if not ref.is_alive():
                    raise self._dead(actor) from None
                if deadline is not None and time.monotonic() >= deadline:
                    raise

    def _dead(self, actor: str) -> RuntimeFailureError:
        """The failure to raise when ``actor`` was found dead (a dying actor
        normally fails the runtime itself; this covers the race)."""
        if actor != "extractor":
            self._fail(ActorDiedError(actor))
        fatal = self._fatal
        if isinstance(fatal, RuntimeFailureError):
            return fatal
        return ActorDiedError(actor)

    def _on_extractor_crash(self, extractor_id: int, error: str, blamed: tuple[str, ...]) -> None:
        supervisor = self._supervisor
        if supervisor is not None:
            try:
                supervisor.tell(ExtractorCrashed(extractor_id, error, blamed))
            except pykka.ActorDeadError:
                if not self._stopped:
                    self._fail(ActorDiedError("supervisor"))

    def _on_actor_died(self, actor: str, error: BaseException) -> None:
        """``on_failure`` of the registry or the supervisor (their thread)."""
        self._fail(ActorDiedError(actor, error))

    def _on_composer_died(
        self, actor: str, error: BaseException, unfinished: tuple[Article, ...]
    ) -> None:
        self._composer_leftovers = unfinished
        self._fail(ActorDiedError(actor, error))

    def _on_peer_dead(self, actor: str) -> None:
        if self._stopped:  # stop() stops them all: a late tell finds them gone
            return
        self._fail(ActorDiedError(actor))

    def _fail(self, error: RuntimeFailureError) -> None:
        """Turn the runtime fatal (first failure wins). Called on whichever
        thread noticed -- often a dying actor's own -- so it only tells."""
        with self._fatal_lock:
            first = not self._failed
            self._failed = True
            fatal = self._fatal
            if fatal is None:  # a provider error that came first stays the cause
                self._fatal = error
            elif (
                isinstance(fatal, ActorDiedError)
                and fatal.cause is None
                and error.actor == fatal.actor
                and error.cause is not None
            ):
                # A peer found it dead before its own on_failure said why.
                self._fatal = error
                _log.error(
                    "the runtime failed: cause",
                    actor=error.actor,
                    error=error.detail,
                    exc_info=error.cause,
                )
        if not first:
            return
        self._dispatch_stopped.set()
        _tell(self._supervisor, StopRestarting())
        _tell(self._composer, Pause(str(error)))
        _tell(self._registry, StopGranting())
        for ref in self._live_extractors():
            _tell(ref, Quiesce())
        _log.error(
            "the runtime failed: no more work is dispatched; unfinished articles are handed "
            "back by stop(). This is not a provider or API key problem.",
            actor=error.actor,
            error=error.detail,
            exc_info=error.cause,
        )

    def _on_fatal(self, extractor_id: int, error: FatalProviderError) -> None:
        with self._fatal_lock:
            first = self._fatal is None
            if first:
                self._fatal = error
        if not first:
            return
        _log.error(
            "the provider refused the configuration; no more work is dispatched. "
            "Check the API key (GEMINI_API_KEY / GOOGLE_API_KEY) and that its project "
            "may use these models. Queued articles are kept.",
            error=str(error),
        )
        _tell(self._composer, Pause(str(error)))
        _tell(self._registry, ReleaseHolder(extractor_id))


def make_budget(config: Config, quota_state: Mapping[str, Any] | None) -> DailyBudget | None:
    """The daily budget of ``config`` (None without one), with the day's
    spend of ``quota_state`` when it holds one; calls it recorded in flight
    count as spent (their fate is unknown). A saved budget this build
    cannot read is logged and ignored: the day then counts from 0."""
    if not config.budget.enabled:
        return None
    budget = DailyBudget(
        config.budget,
        [(t.name, config.model(t.model)) for t in config.tiers],
        config.models,
        config.quota.timezone,
        batch_only=[t.name for t in config.tiers if t.mode is TierMode.BATCH],
    )
    saved = None if quota_state is None else quota_state.get("budget")
    if saved is not None:
        try:
            budget.restore(saved)
        except BudgetSnapshotError as exc:
            _log.warning(
                "the saved daily budget could not be read; counting from 0", error=str(exc)
            )
        budget.forget_in_flight()
    return budget


def tier_shapes(config: Config, ladder: TierLadder) -> tuple[TierShape, ...]:
    """How each tier packs its articles, for the dispatch plan."""
    overhead = TokenEstimator().estimate(0, 0)
    return tuple(
        TierShape(
            tier=spec.name,
            rank=rank,
            chain=ladder.chain(rank),
            per_request=spec.max_articles_per_request,
            overhead_tokens=overhead,
            max_request_tokens=config.runtime.max_input_tokens_per_request,
        )
        for rank, spec in enumerate(ladder.tiers)
    )


def _tell(ref: pykka.ActorRef[Any] | None, message: Any) -> None:
    if ref is not None:
        with contextlib.suppress(pykka.ActorDeadError):
            ref.tell(message)


class _Teardown:
    """Runs teardown steps so that each runs whatever became of the others:
    an actor found dead is expected after a failure and noted (logged once,
    at the end); anything else is logged with its traceback."""

    def __init__(self) -> None:
        self.dead: list[str] = []

    def run(self, what: str, step: Callable[[], T]) -> T | None:
        try:
            return step()
        except pykka.ActorDeadError:
            self.dead.append(what)
        except pykka.Timeout:
            _log.error("runtime stop: step timed out; going on", step=what)
        except Exception:
            _log.exception("runtime stop: step failed; going on", step=what)
        return None

    def stop_all(self, what: str, refs: list[pykka.ActorRef[Any]]) -> None:
        """Ask every actor of ``refs`` to stop, then wait for them together
        (bounded): a stuck one is left behind, logged, and never blocks
        process exit (actor threads are daemon threads)."""
        pending = []
        for ref in refs:
            if not ref.is_alive():
                self.dead.append(what)
                continue
            pending.append((ref, ref.stop(block=False)))
        deadline = time.monotonic() + ACTOR_STOP_TIMEOUT_S
        stuck = 0
        for _ref, future in pending:
            try:
                future.get(timeout=max(0.0, deadline - time.monotonic()))
            except pykka.Timeout:
                stuck += 1
            except Exception:
                _log.exception("runtime stop: stopping an actor failed", actor=what)
        if stuck:
            _log.error(
                "runtime stop: actors did not stop in time; left behind",
                actor=what,
                count=stuck,
                timeout_s=ACTOR_STOP_TIMEOUT_S,
            )

    def log_dead(self) -> None:
        if self.dead:
            _log.warning(
                "runtime stop: some actors were already dead (after a failure this is expected)",
                actors=sorted(set(self.dead)),
            )


__all__ = ["Runtime", "RuntimeStats", "SubmitReceipt"]

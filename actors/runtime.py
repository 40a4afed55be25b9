"""Runtime: the facade a daemon embeds.

    with Runtime(config, provider, sink) as rt:
        rt.submit(articles)
        rt.drain()

It starts the three actors -- one ModelRegistry, one BatchComposer, a pool of
Extractors under a Supervisor -- and the one event-loop thread they share for
provider calls, and on ``stop`` tears every one of them down again.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import pykka
import structlog

from tierbatch.actors.clock import Clock, SystemClock, wall_offset
from tierbatch.actors.composer import BatchComposer, ComposerStats, SubmitResult
from tierbatch.actors.errors import FatalProviderError, QueueFull, RuntimeNotRunning
from tierbatch.actors.event_loop import LaunchPacer, LoopThread
from tierbatch.actors.extractor import Extractor, ExtractorDeps
from tierbatch.actors.messages import (
    GetComposerStats,
    GetQuotaSnapshot,
    GetQuotaStatus,
    ObserveClusters,
    Pause,
    ReleaseHolder,
    Submit,
    TakeUnfinished,
    WhenDrained,
    WhenSpace,
)
from tierbatch.actors.observer import RegistryObserver
from tierbatch.actors.ports import Provider, Sink
from tierbatch.actors.registry import ModelRegistry
from tierbatch.actors.supervisor import ExtractorCrashed, StopPool, Supervisor
from tierbatch.policies.articles import Article
from tierbatch.policies.config import Config
from tierbatch.policies.quota import ModelStatus, QuotaPolicy
from tierbatch.policies.tiers import TierLadder

_log = structlog.get_logger("tierbatch.runtime")


@dataclass(frozen=True, slots=True)
class SubmitReceipt:
    """``accepted`` articles will each reach exactly one terminal result;
    ``duplicates`` were refused because that id is already queued, in
    flight, or finished recently in this runtime."""

    accepted: int
    duplicates: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RuntimeStats:
    """``cooldowns`` (model -> until) and the models' deadlines are steady
    clock times: subtract ``runtime.clock.now()`` for the seconds left."""

    submitted: int
    queued: int
    queued_by_tier: dict[str, int]
    in_extractors: int
    in_flight_requests: int
    done: int
    failed: int
    done_by_tier: dict[str, int]
    failed_by_tier: dict[str, int]
    done_by_model: dict[str, int]
    failed_by_reason: dict[str, int]
    fallbacks: int
    requeued_after_crash: int
    models: tuple[ModelStatus, ...]
    cooldowns: dict[str, float]
    paused: str | None

    @property
    def terminal(self) -> int:
        return self.done + self.failed


class Runtime:
    """Quota-aware, tiered extraction over a provider, into a sink.

    ``clock`` defaults to ``SystemClock`` (steady time from the monotonic
    clock, calendar time from the wall clock); ``quota_state`` is a snapshot from
    ``quota_snapshot()`` of an earlier run (so per-day usage survives a
    restart); ``observer`` watches registry decisions; ``crash_hook`` is a
    testing aid called by an extractor with every batch it receives (an
    exception there crashes that extractor).
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
    ) -> None:
        self.config = config
        self.provider = provider
        self.sink = sink
        self.clock: Clock = clock or SystemClock()
        self._quota_state = quota_state
        self._observer = observer
        self._crash_hook = crash_hook
        self._fatal: Exception | None = None
        self._fatal_lock = threading.Lock()
        self._started = False
        self._stopped = False
        self._loop: LoopThread | None = None
        self._registry: pykka.ActorRef[Any] | None = None
        self._composer: pykka.ActorRef[Any] | None = None
        self._supervisor: pykka.ActorRef[Any] | None = None

    # ---- lifecycle ---------------------------------------------------------------

    def start(self) -> Runtime:
        if self._started:
            raise RuntimeNotRunning("this Runtime was already started; create a new one")
        self._started = True
        config, clock = self.config, self.clock
        if self._quota_state is not None:
            # The snapshot's times are wall-clock; this process's steady clock
            # has its own origin, so convert with the offset now.
            policy = QuotaPolicy.restore(
                config.models, config.quota, self._quota_state, wall_offset=wall_offset(clock)
            )
            policy.forget_in_flight()
            policy.clear_unavailable()  # a new process probes 404ed models again
        else:
            policy = QuotaPolicy(config.models, config.quota)
        self._loop = LoopThread()
        self._loop.start()
        self._registry = ModelRegistry.start(policy, clock, self._observer)
        self._composer = BatchComposer.start(config, self.sink, clock)
        registry, composer, loop = self._registry, self._composer, self._loop
        deps = ExtractorDeps(
            config=config,
            ladder=TierLadder(config.tiers, config.global_fallback),
            provider=self.provider,
            clock=clock,
            loop=loop,
            pacer=LaunchPacer(clock.to_real(config.runtime.launch_stagger_s)),
            registry=registry,
            composer=composer,
            on_crash=self._on_extractor_crash,
            on_fatal=self._on_fatal,
            crash_hook=self._crash_hook,
        )
        self._supervisor = Supervisor.start(
            config.runtime.extractors,
            lambda extractor_id: Extractor.start(extractor_id, deps),
            registry,
            composer,
            clock,
            self._on_give_up,
        )
        _log.info(
            "runtime started",
            extractors=config.runtime.extractors,
            tiers=[t.name for t in config.tiers],
            models=sorted(config.models),
        )
        return self

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
        durable queue can hand them out again.
        """
        if not self._started or self._stopped:
            return []
        if drain and self._fatal is None:
            with contextlib.suppress(FatalProviderError):
                self.drain(timeout)
        self._stopped = True
        assert self._supervisor and self._composer and self._registry and self._loop
        extractors: list[pykka.ActorRef[Any]] = self._supervisor.ask(StopPool(), block=True)
        for ref in extractors:
            ref.stop()
        self._supervisor.stop()
        unfinished: list[Article] = self._composer.ask(TakeUnfinished(), block=True)
        self._composer.stop()
        self._registry.stop()
        try:
            self._loop.run(self.provider.aclose(), timeout=10.0)
        except Exception:
            _log.exception("provider close failed")
        self._loop.stop()
        self.sink.flush()
        _log.info("runtime stopped", unfinished=len(unfinished))
        return unfinished

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
        seconds) and otherwise raises ``QueueFull`` at once; ``QueueFull``
        says how many were accepted, which were the first ones, in order.
        Pass ``clusters_observed=True`` for articles already counted with
        ``observe_clusters``.
        """
        composer = self._running_composer()
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
            result: SubmitResult = composer.ask(
                Submit(pending, observe=not clusters_observed), block=True
            )
            accepted += result.accepted
            duplicates.extend(result.duplicates)
            pending = pending[result.consumed :]
            if not pending:
                break
            capacity = self.config.composer.max_queued
            if not block:
                raise QueueFull(accepted, len(pending), capacity)
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise QueueFull(accepted, len(pending), capacity)
            space: pykka.ThreadingFuture[bool] = composer.ask(WhenSpace(), block=True)
            try:
                if not space.get(timeout=remaining):
                    self._raise_if_fatal()
                    raise RuntimeNotRunning("the runtime stopped while submit was waiting")
            except pykka.Timeout:
                raise QueueFull(accepted, len(pending), capacity) from None
        return SubmitReceipt(accepted, tuple(duplicates))

    def observe_clusters(self, observations: Iterable[tuple[str, float]]) -> None:
        """Count ``(cluster_id, published_at epoch seconds)`` pairs towards
        cluster hotness without queueing anything. A daemon with a large
        backlog calls this for the whole backlog, then submits a few batches
        at a time with ``clusters_observed=True``, so an article's priority
        reflects its cluster's full size rather than what was leased so far.
        """
        self._running_composer().tell(ObserveClusters(tuple(observations)))

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until every article submitted so far is terminal. Returns
        False on timeout; raises ``FatalProviderError`` when the provider
        refused the configuration."""
        composer = self._running_composer()
        self._raise_if_fatal()
        drained: pykka.ThreadingFuture[bool] = composer.ask(WhenDrained(), block=True)
        try:
            ok = drained.get(timeout=timeout)
        except pykka.Timeout:
            return False
        self._raise_if_fatal()
        return bool(ok)

    # ---- introspection ---------------------------------------------------------------

    def stats(self) -> RuntimeStats:
        composer = self._running_composer()
        assert self._registry is not None
        c: ComposerStats = composer.ask(GetComposerStats(), block=True)
        models: tuple[ModelStatus, ...] = self._registry.ask(GetQuotaStatus(), block=True)
        now = self.clock.now()
        cooldowns = {
            m.model: max(m.cooldown_until or 0.0, m.exhausted_until or 0.0)
            for m in models
            if max(m.cooldown_until or 0.0, m.exhausted_until or 0.0) > now
        }
        return RuntimeStats(
            submitted=c.submitted,
            queued=c.queued,
            queued_by_tier=c.queued_by_tier,
            in_extractors=c.held,
            in_flight_requests=sum(m.in_flight for m in models),
            done=c.done,
            failed=c.failed,
            done_by_tier=c.done_by_tier,
            failed_by_tier=c.failed_by_tier,
            done_by_model=c.done_by_model,
            failed_by_reason=c.failed_by_reason,
            fallbacks=c.fallbacks,
            requeued_after_crash=c.requeued_after_crash,
            models=models,
            cooldowns=cooldowns,
            paused=c.paused,
        )

    def quota_snapshot(self) -> dict[str, Any]:
        """The registry's state as plain data (msgpack-ready)."""
        if self._registry is None:
            raise RuntimeNotRunning("the runtime is not running")
        snapshot: dict[str, Any] = self._registry.ask(GetQuotaSnapshot(), block=True)
        return snapshot

    @property
    def fatal_error(self) -> Exception | None:
        return self._fatal

    # ---- internals -------------------------------------------------------------------

    def _running_composer(self) -> pykka.ActorRef[Any]:
        if not self._started or self._stopped or self._composer is None:
            raise RuntimeNotRunning("the runtime is not running (use start() or a with block)")
        return self._composer

    def _raise_if_fatal(self) -> None:
        if self._fatal is not None:
            raise FatalProviderError(str(self._fatal)) from self._fatal

    def _on_extractor_crash(self, extractor_id: int, error: str, blamed: tuple[str, ...]) -> None:
        supervisor = self._supervisor
        if supervisor is not None:
            with contextlib.suppress(pykka.ActorDeadError):
                supervisor.tell(ExtractorCrashed(extractor_id, error, blamed))

    def _on_fatal(self, extractor_id: int, error: Exception) -> None:
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
        if self._composer is not None:
            with contextlib.suppress(pykka.ActorDeadError):
                self._composer.tell(Pause(str(error)))
        if self._registry is not None:
            with contextlib.suppress(pykka.ActorDeadError):
                self._registry.tell(ReleaseHolder(extractor_id))

    def _on_give_up(self, reason: str) -> None:
        self._on_fatal(0, RuntimeError(reason))


__all__ = ["Runtime", "RuntimeStats", "SubmitReceipt"]

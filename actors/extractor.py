"""Extractor: turns a batch into request packs and walks each pack's fallback
chain through the registry until every article is terminal.

An extractor never sleeps and never blocks: it asks the registry for quota
(answered when there is some), launches the call on the shared event loop,
and handles the completion when it is told. Everything it owns -- packs,
per-article budgets, the token estimator -- lives in its own thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import pykka
import structlog

from tierbatch.actors.clock import Clock
from tierbatch.actors.event_loop import LaunchPacer, LoopThread
from tierbatch.actors.messages import (
    Acquire,
    AcquireFailed,
    CallDone,
    Finished,
    GiveBack,
    Granted,
    Quiesce,
    Report,
    RequestWork,
    Sent,
    WindDown,
    WorkBatch,
)
from tierbatch.actors.ports import (
    ExtractionRequest,
    PackAnswer,
    Provider,
    bind_request_sent,
)
from tierbatch.actors.threads import ThreadLedger
from tierbatch.policies.composition import Queued
from tierbatch.policies.config import Config
from tierbatch.policies.outcomes import (
    Abandoned,
    AuthFailed,
    BadRequest,
    Cancelled,
    ModelNotFound,
    RateLimited,
    ServerError,
    Succeeded,
    TimedOut,
)
from tierbatch.policies.quota import Grant
from tierbatch.policies.results import (
    AnswerProblem,
    Done,
    Extraction,
    Failed,
    FailureReason,
    ProblemKind,
    TerminalResult,
)
from tierbatch.policies.tiers import TierLadder
from tierbatch.policies.tokens import TokenEstimator

_log = structlog.get_logger("tierbatch.extractor")


def safe_teller(ref: pykka.ActorRef[Any]) -> Callable[[Any], None]:
    """A reply function that drops messages to an actor that has died, so a
    reply to a crashed extractor never takes down the actor replying."""

    def tell(message: Any) -> None:
        with contextlib.suppress(pykka.ActorDeadError):
            ref.tell(message)

    return tell


@dataclass(slots=True)
class _Progress:
    """Per-article bookkeeping while an extractor holds it."""

    item: Queued
    est_tokens: int
    attempts: int = 0
    failures: int = 0
    last_model: str | None = None
    last_reason: FailureReason = FailureReason.RETRIES_EXHAUSTED
    last_detail: str = ""


class _Launch:
    """Whether a granted call has left, decided once and atomically between
    the event-loop thread (about to send it) and the extractor (winding
    down, taking back what has not left)."""

    __slots__ = ("_lock", "_state")

    _PENDING, _STARTED, _WITHDRAWN = 0, 1, 2

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state = self._PENDING

    def start(self) -> bool:
        """The call may leave now (False: it was withdrawn)."""
        with self._lock:
            if self._state == self._PENDING:
                self._state = self._STARTED
            return self._state == self._STARTED

    def withdraw(self) -> bool:
        """Take the call back if it has not left (False: it has)."""
        with self._lock:
            if self._state == self._PENDING:
                self._state = self._WITHDRAWN
            return self._state == self._WITHDRAWN


@dataclass(slots=True)
class _Pack:
    pack_id: int
    tier: int
    members: list[_Progress]
    batch: int = 0
    excluded: frozenset[str] = frozenset()
    grant: Grant | None = None
    future: concurrent.futures.Future[Any] | None = field(default=None, repr=False)
    launch: _Launch | None = field(default=None, repr=False)

    @property
    def est_tokens(self) -> int:
        return sum(p.est_tokens for p in self.members)

    @property
    def enqueued_at(self) -> float:
        return min(p.item.enqueued_at for p in self.members)


@dataclass(frozen=True, slots=True)
class ExtractorDeps:
    """What every extractor of a pool shares."""

    config: Config
    ladder: TierLadder
    provider: Provider
    clock: Clock
    loop: LoopThread
    pacer: LaunchPacer
    registry: pykka.ActorRef[Any]
    composer: pykka.ActorRef[Any]
    on_crash: Callable[[int, str, tuple[str, ...]], None]
    on_fatal: Callable[[int, Exception], None]
    # Told when a tell to the registry or the composer finds it dead.
    on_peer_dead: Callable[[str], None] = lambda _name: None
    # Set when the runtime stops dispatching: a call still waiting for its
    # launch turn is not sent.
    dispatch_stopped: threading.Event = field(default_factory=threading.Event)
    threads: ThreadLedger | None = None
    crash_hook: Callable[[tuple[Queued, ...]], None] | None = None


class ProviderConfigurationError(Exception):
    """The provider refused our credentials or project (401/403)."""


class Extractor(pykka.ThreadingActor):
    # A stuck actor thread must never keep the process from exiting.
    use_daemon_thread = True

    def __init__(self, extractor_id: int, deps: ExtractorDeps) -> None:
        super().__init__()
        self.extractor_id = extractor_id
        self._deps = deps
        self._cfg = deps.config
        self._ladder = deps.ladder
        self._clock = deps.clock
        self._estimator = TokenEstimator()
        self._packs: dict[int, _Pack] = {}
        self._pack_ids = itertools.count(1)
        self._capacity = deps.config.runtime.max_packs_in_flight
        self._work_requested = False
        self._halted = False
        # Winding down: no new call, no retry; what is not done goes back.
        self._winding_down = False
        self._tell: Callable[[Any], None] = lambda _m: None
        self._log = _log.bind(extractor=extractor_id)
        # The articles of the message being handled: blamed if it crashes us.
        self._handling: tuple[str, ...] = ()

    # ---- lifecycle -------------------------------------------------------------

    def on_start(self) -> None:
        if self._deps.threads is not None:
            self._deps.threads.add_current("extractor")
        self._tell = safe_teller(self.actor_ref)
        self._want_work()

    def on_stop(self) -> None:
        self._cancel_calls()

    def on_failure(self, exception_type: Any, exception_value: Any, traceback: Any) -> None:
        self._cancel_calls()
        self._deps.on_crash(
            self.extractor_id, f"{exception_type.__name__}: {exception_value}", self._handling
        )

    def _cancel_calls(self) -> None:
        """Cancel calls still out; their grants were spent, as far as anyone
        can tell, so they are reported abandoned rather than refunded."""
        for pack in self._packs.values():
            if pack.future is not None and pack.grant is not None and pack.future.cancel():
                self._to_registry(Report(pack.grant.grant_id, Abandoned()))

    def _to_registry(self, message: Any) -> None:
        """A tell that survives a dead registry: the runtime is told and
        fails; this extractor does not crash (and get restarted) over it."""
        try:
            self._deps.registry.tell(message)
        except pykka.ActorDeadError:
            self._deps.on_peer_dead("registry")

    def _to_composer(self, message: Any) -> None:
        try:
            self._deps.composer.tell(message)
        except pykka.ActorDeadError:
            self._deps.on_peer_dead("composer")

    # ---- messages --------------------------------------------------------------

    def on_receive(self, message: Any) -> Any:
        match message:
            case WorkBatch(batch):
                self._handling = tuple(item.article.id for item in batch.items)
                self._work_requested = False
                if self._deps.crash_hook is not None:
                    self._deps.crash_hook(batch.items)
                self._log.debug("batch received", batch=batch.batch_id, articles=len(batch.items))
                self._take(batch.batch_id, batch.items)
                self._want_work()
            case Granted(pack_id, grant):
                self._handling = self._pack_articles(pack_id)
                self._on_granted(pack_id, grant)
            case AcquireFailed(pack_id, reason, detail):
                self._handling = self._pack_articles(pack_id)
                self._on_acquire_failed(pack_id, reason, detail)
            case CallDone():
                self._handling = self._pack_articles(message.pack_id)
                self._on_call_done(message)
                self._want_work()
            case WindDown():
                self._wind_down()
            case Quiesce():
                self._quiesce()
            case _:
                raise TypeError(f"Extractor: unexpected message {message!r}")
        return None

    def _pack_articles(self, pack_id: int) -> tuple[str, ...]:
        pack = self._packs.get(pack_id)
        return () if pack is None else tuple(m.item.article.id for m in pack.members)

    def _want_work(self) -> None:
        if self._work_requested or self._halted or len(self._packs) >= self._capacity:
            return
        self._work_requested = True
        self._to_composer(RequestWork(self.extractor_id, self._tell))

    # ---- packing -----------------------------------------------------------------

    def _take(self, batch_id: int, items: Iterable[Queued]) -> None:
        by_tier: dict[int, list[_Progress]] = {}
        for item in items:
            est = self._article_tokens(item)
            by_tier.setdefault(item.tier, []).append(_Progress(item, est))
        for tier, members in sorted(by_tier.items()):
            for chunk in self._chunks(tier, members):
                self._acquire(_Pack(next(self._pack_ids), tier, chunk, batch_id))

    def _chunks(self, tier: int, members: list[_Progress]) -> Iterable[list[_Progress]]:
        """Packs of at most the tier's articles-per-request and the token budget."""
        per_request = self._ladder.tiers[tier].max_articles_per_request
        budget = self._cfg.runtime.max_input_tokens_per_request
        overhead = self._request_overhead()
        chunk: list[_Progress] = []
        tokens = overhead
        for member in members:
            if chunk and (len(chunk) >= per_request or tokens + member.est_tokens > budget):
                yield chunk
                chunk, tokens = [], overhead
            chunk.append(member)
            tokens += member.est_tokens
        if chunk:
            yield chunk

    def _sent(self, grant_id: int, at: float) -> None:
        """Called on the event-loop thread; a tell is thread-safe."""
        self._to_registry(Sent(grant_id, at))

    def _article_tokens(self, item: Queued) -> int:
        """The article's share of a request's estimated input tokens."""
        chars = len(item.article.text) + len(item.article.title)
        return max(1, self._estimator.estimate(chars, 1) - self._request_overhead())

    def _request_overhead(self) -> int:
        """Estimated tokens of the prompt around the articles."""
        return self._estimator.estimate(0, 0)

    def _acquire(self, pack: _Pack) -> None:
        if self._winding_down or self._halted:
            # Stopping: no new call and no retry; the article goes back.
            self._give_back(pack.members)
            return
        chain = tuple(m for m in self._ladder.chain(pack.tier) if m not in pack.excluded)
        if not chain:
            self._finish_failed(pack.members, pack.tier)
            return
        self._packs[pack.pack_id] = pack
        self._to_registry(
            Acquire(
                request_id=pack.pack_id,
                holder=self.extractor_id,
                chain=chain,
                est_tokens=pack.est_tokens + self._request_overhead(),
                tier_rank=pack.tier,
                enqueued_at=pack.enqueued_at,
                reply=self._tell,
                patience_s=self._ladder.tiers[pack.tier].fallback_patience_s,
                tier=self._ladder.tiers[pack.tier].name,
            )
        )

    # ---- calls -------------------------------------------------------------------

    def _on_granted(self, pack_id: int, grant: Grant) -> None:
        pack = self._packs.get(pack_id)
        if pack is None or self._halted or self._winding_down:
            self._to_registry(Report(grant.grant_id, Cancelled()))
            if pack is not None:
                del self._packs[pack_id]
                self._give_back(pack.members)
            return
        for member in pack.members:
            member.attempts += 1
            member.last_model = grant.model
        request = ExtractionRequest(
            model=grant.model,
            articles=tuple(m.item.article for m in pack.members),
            timeout_s=self._clock.to_real(self._cfg.retry.request_timeout_s),
            est_input_tokens=grant.est_tokens,
            grant_id=grant.grant_id,
            granted_at=grant.granted_at,
            attempt=max(m.attempts for m in pack.members),
        )
        pack.grant = grant
        pack.launch = launch = _Launch()
        future = self._deps.loop.submit(
            _invoke(
                self._deps.provider,
                request,
                self._deps.pacer,
                self._clock,
                self._sent,
                self._deps.dispatch_stopped,
                launch,
            )
        )
        pack.future = future
        tell = self._tell
        clock = self._clock

        def done(fut: concurrent.futures.Future[tuple[PackAnswer, float, float]]) -> None:
            """Always tells the actor, whatever became of the call: a pack
            whose completion is never told would hang, its lease renewed
            forever."""
            if fut.cancelled():
                # Only the runtime cancels calls (stop, failure), and it has
                # reported the grant abandoned already.
                now = clock.now()
                tell(CallDone(pack_id, grant, PackAnswer(Abandoned()), now, now))
                return
            try:
                answer, started, finished = fut.result()
            except BaseException as exc:  # _invoke maps errors; this is a last resort
                now = clock.now()
                answer = PackAnswer(ServerError(None, f"provider call failed: {_describe(exc)}"))
                started = finished = now
            tell(CallDone(pack_id, grant, answer, started, finished))

        future.add_done_callback(done)

    def _on_acquire_failed(self, pack_id: int, reason: str, detail: str) -> None:
        pack = self._packs.pop(pack_id, None)
        if pack is None:
            return
        if reason == "stopped":  # the registry stopped granting: give it back
            self._give_back(pack.members)
            return
        for member in pack.members:
            member.last_reason = FailureReason.NO_MODEL
            member.last_detail = f"no model of the chain can take it ({reason}): {detail}"
        self._finish_failed(pack.members, pack.tier)
        self._want_work()

    def _on_call_done(self, done: CallDone) -> None:
        pack = self._packs.pop(done.pack_id, None)
        outcome = done.answer.outcome
        if pack is None and isinstance(outcome, Abandoned):
            return  # cancelled by us; reported when it was cancelled
        self._to_registry(Report(done.grant.grant_id, outcome))
        if pack is None:
            return
        model = done.grant.model
        log = self._log.bind(
            model=model,
            tier=self._ladder.tiers[pack.tier].name,
            batch=pack.batch,
            article=[m.item.article.id for m in pack.members],
        )
        match outcome:
            case Succeeded(usage):
                self._estimator.calibrate(done.grant.est_tokens, usage.input_tokens)
                self._on_answer(pack, done, usage.input_tokens, usage.output_tokens)
            case RateLimited():
                log.debug("rate limited", articles=len(pack.members), scope=str(outcome.scope))
                self._retry(pack, None, count_failure=False)
            case ServerError(status, message):
                log.debug("server error", status=status, detail=message)
                self._retry(
                    pack, (FailureReason.RETRIES_EXHAUSTED, f"server error {status}: {message}")
                )
            case TimedOut(after_s):
                log.debug("request timed out", after_s=after_s)
                self._retry(
                    pack, (FailureReason.TIMEOUT, f"no answer from {model} in {after_s:.1f}s")
                )
            case ModelNotFound():
                self._retry(pack, None, count_failure=False)
            case Cancelled():
                # Never sent (it waited too long for a connection of the
                # provider's pool): not the articles' fault, nor the model's.
                log.debug("call not sent", articles=len(pack.members))
                self._retry(pack, None, count_failure=False)
            case BadRequest(message):
                log.warning("bad request", detail=message)
                for member in pack.members:
                    member.last_reason = FailureReason.BAD_REQUEST
                    member.last_detail = f"{model} refused the request: {message}"
                self._finish_failed(pack.members, pack.tier)
            case AuthFailed(status, message):
                self._halt(pack, ProviderConfigurationError(f"HTTP {status}: {message}"))
            case Cancelled() | Abandoned():
                # Not sent (dispatch stopped before its launch turn), or
                # cancelled by the runtime: the articles go back untried.
                self._give_back(pack.members)
            case _:
                self._retry(pack, (FailureReason.RETRIES_EXHAUSTED, f"{type(outcome).__name__}"))

    def _on_answer(self, pack: _Pack, done: CallDone, tokens_in: int, tokens_out: int) -> None:
        model = done.grant.model
        spec = self._cfg.models[model]
        tier = self._ladder.tiers[pack.tier]
        total_est = max(1, pack.est_tokens)
        results: list[TerminalResult] = []
        retry: dict[bool, list[_Progress]] = {True: [], False: []}
        now = self._clock.now()
        for member in pack.members:
            article = member.item.article
            answer = done.answer.answers.get(article.id, AnswerProblem(ProblemKind.MISSING))
            if isinstance(answer, Extraction):
                share = member.est_tokens / total_est
                t_in, t_out = round(tokens_in * share), round(tokens_out * share)
                results.append(
                    Done(
                        article_id=article.id,
                        entities=answer.entities,
                        model=model,
                        tier=tier.name,
                        attempts=member.attempts,
                        input_tokens=t_in,
                        output_tokens=t_out,
                        latency_s=max(0.0, now - member.item.enqueued_at),
                        cost_usd=(t_in * spec.price_in_per_m + t_out * spec.price_out_per_m) / 1e6,
                        fallback=model != tier.model,
                        metadata=article.metadata,
                    )
                )
                continue
            member.failures += 1
            member.last_reason = FailureReason.INVALID_ANSWER
            member.last_detail = f"{model}: {answer.kind}" + (
                f" ({answer.detail})" if answer.detail else ""
            )
            retry[answer.kind is ProblemKind.TRUNCATED].append(member)
        self._send(results)
        excluded = pack.excluded | {model}
        # A truncated answer is retried in smaller packs: the answer did not fit.
        for truncated, members in retry.items():
            survivors = self._within_budget(members, pack.tier)
            if not survivors:
                continue
            if truncated and len(survivors) > 1:
                half = (len(survivors) + 1) // 2
                groups = [survivors[:half], survivors[half:]]
                next_excluded = pack.excluded
            else:
                groups = [survivors]
                next_excluded = excluded
            for group in groups:
                self._acquire(
                    _Pack(next(self._pack_ids), pack.tier, group, pack.batch, next_excluded)
                )

    def _retry(
        self,
        pack: _Pack,
        failure: tuple[FailureReason, str] | None,
        *,
        count_failure: bool = True,
    ) -> None:
        if failure is not None:
            for member in pack.members:
                member.last_reason, member.last_detail = failure
                member.failures += count_failure
        survivors = self._within_budget(pack.members, pack.tier)
        if survivors:
            self._acquire(
                _Pack(next(self._pack_ids), pack.tier, survivors, pack.batch, pack.excluded)
            )

    def _within_budget(self, members: list[_Progress], tier: int) -> list[_Progress]:
        retry = self._cfg.retry
        spent = [
            m
            for m in members
            if m.attempts >= retry.max_attempts or m.failures >= retry.max_failures
        ]
        if spent:
            self._finish_failed(spent, tier)
        return [m for m in members if m not in spent]

    def _finish_failed(self, members: list[_Progress], tier: int) -> None:
        name = self._ladder.tiers[tier].name
        self._send(
            [
                Failed(
                    article_id=m.item.article.id,
                    reason=m.last_reason,
                    detail=m.last_detail or "retry budget spent",
                    tier=name,
                    attempts=m.attempts,
                    last_model=m.last_model,
                    metadata=m.item.article.metadata,
                )
                for m in members
            ]
        )

    def _send(self, results: list[TerminalResult]) -> None:
        if results:
            self._to_composer(Finished(self.extractor_id, tuple(results)))

    def _give_back(self, members: Iterable[_Progress]) -> None:
        ids = tuple(m.item.article.id for m in members)
        if ids:
            self._to_composer(GiveBack(self.extractor_id, ids))

    def _halt(self, pack: _Pack, error: Exception) -> None:
        """A configuration error: stop taking work and give everything back."""
        self._halted = True
        members = [m for p in [pack, *self._packs.values()] for m in p.members]
        self._cancel_calls()
        self._packs.clear()
        self._give_back(members)
        self._deps.on_fatal(self.extractor_id, error)

    def _quiesce(self) -> None:
        """The runtime failed: cancel every call, give everything back."""
        self._halted = True
        members = [m for p in self._packs.values() for m in p.members]
        self._cancel_calls()
        self._packs.clear()
        self._give_back(members)

    def _wind_down(self) -> None:
        """Shutting down: packs not in a provider call go back now; calls in
        flight finish (``_acquire`` gives back what would be retried)."""
        self._winding_down = True
        self._halted = True  # no more work requests
        waiting = [
            p
            for p in self._packs.values()
            if p.future is None or (p.launch is not None and p.launch.withdraw())
        ]
        for pack in waiting:
            del self._packs[pack.pack_id]
        self._give_back(m for p in waiting for m in p.members)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


async def _invoke(
    provider: Provider,
    request: ExtractionRequest,
    pacer: LaunchPacer,
    clock: Clock,
    sent: Callable[[int, float], None],
    dispatch_stopped: threading.Event,
    launch: _Launch,
) -> tuple[PackAnswer, float, float]:
    """Run one provider call with the runtime's own timeout. Never raises
    (unless the runtime itself cancels it): a provider that raises -- a
    stray ``CancelledError`` included -- is reported as a server error. The
    registry hears when the request really leaves, so its window follows
    the provider's. A call whose launch turn comes after dispatch stopped is
    not sent at all (``Cancelled``: the grant is refunded), nor is one
    withdrawn by a winding-down extractor.

    The runtime's timeout is a backstop behind the provider's own: it allows
    ``timeout_s`` after the provider's latest send mark, and before any mark
    twice that from the start (a provider may first wait up to ``timeout_s``
    for a connection of its own pool; see ``ExtractionRequest``)."""
    await pacer.turn()
    if dispatch_stopped.is_set() or not launch.start():
        now = clock.now()
        return PackAnswer(Cancelled()), now, now
    started = clock.now()
    sent(request.grant_id, started)
    loop = asyncio.get_running_loop()
    backstop: asyncio.Timeout | None = None

    def restart() -> None:
        if backstop is not None and not backstop.expired() and not finished:
            backstop.reschedule(loop.time() + request.timeout_s)

    def on_sent() -> None:
        # Any thread: the provider may send from a worker thread.
        sent(request.grant_id, clock.now())
        with contextlib.suppress(RuntimeError):  # the loop closed: nothing to restart
            loop.call_soon_threadsafe(restart)

    finished = False
    # This coroutine runs as its own task, so the binding is private to it.
    bind_request_sent(on_sent)
    try:
        async with asyncio.timeout(2 * request.timeout_s) as backstop:
            try:
                answer = await provider.extract(request)
            finally:
                finished = True
    except TimeoutError:
        answer = PackAnswer(TimedOut(after_s=clock.now() - started))
    except asyncio.CancelledError as exc:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise  # the runtime cancelled this call (stop, failure)
        # The provider's own doing (an SDK cancelling an inner task, ...):
        # a failed call like any other, so the pack fails over.
        answer = PackAnswer(ServerError(None, f"provider raised {_describe(exc)}"))
    except Exception as exc:
        answer = PackAnswer(ServerError(None, f"provider raised {_describe(exc)}"))
    return answer, started, clock.now()

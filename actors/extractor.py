"""Extractor: turns a batch into request packs and walks each pack's fallback
chain through the registry until every article is terminal.

An extractor never sleeps and never blocks: it asks the registry for quota
(answered when there is some), launches the call on the shared event loop
(``tierbatch.actors.calls``), and handles the completion when it is told.
Everything it owns -- packs, per-article budgets, the token estimator --
lives in its own thread. The decisions are pure policies it only carries
out: how to pack and merge (``policies.packing``), what an outcome means
for each article (``policies.settlement``), when the retry budget ends one
(``policies.attempts``), and what each is charged (``policies.costs``).

Longer than the house's ~450 lines on purpose: one actor's handlers; what a
pack does is decided in policies (packing, attempts, settlement), and what
is left is one actor's state transitions, kept together so they read in one
place.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import itertools
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import pykka
import structlog

from tierbatch.actors.calls import Launch, invoke, tell_when_done
from tierbatch.actors.clock import Clock
from tierbatch.actors.event_loop import LaunchPacer, LoopThread
from tierbatch.actors.messages import (
    Acquire,
    AcquireFailed,
    CallDone,
    Finished,
    GiveBack,
    Granted,
    PackChecked,
    Quiesce,
    Report,
    RequestWork,
    Sent,
    WindDown,
    Withdraw,
    WorkBatch,
)
from tierbatch.actors.ports import ExtractionRequest, PackAnswer, Provider
from tierbatch.actors.threads import ThreadLedger
from tierbatch.policies.attempts import ArticleProgress, RetryBudget
from tierbatch.policies.composition import Queued
from tierbatch.policies.config import Config
from tierbatch.policies.errors import FatalProviderError
from tierbatch.policies.outcomes import Abandoned, Cancelled, Usage
from tierbatch.policies.packing import (
    Pack,
    PackLimits,
    article_tokens,
    capped,
    chunk,
    fallback_cutoff,
    merge_room,
    merge_waiting,
    request_overhead,
    request_raw,
)
from tierbatch.policies.quota import Grant
from tierbatch.policies.results import TerminalResult
from tierbatch.policies.settlement import (
    Answered,
    FailPack,
    GiveBackPack,
    Halt,
    Retry,
    acquire_failure,
    classify,
    plan_retry,
    settle_answers,
)
from tierbatch.policies.task import task_version
from tierbatch.policies.tiers import TierLadder
from tierbatch.policies.tokens import TokenEstimator

_log = structlog.get_logger(__name__)


def safe_teller(ref: pykka.ActorRef[Any]) -> Callable[[Any], None]:
    """A reply function that drops messages to an actor that has died, so a
    reply to a crashed extractor never takes down the actor replying."""

    def tell(message: Any) -> None:
        with contextlib.suppress(pykka.ActorDeadError):
            ref.tell(message)

    return tell


@dataclass(slots=True, eq=False)
class _Pack(Pack):
    """A pack and, once granted, its call on the event loop."""

    sent_tokens: int = 0  # the request's estimate, which calibration compares with usage
    future: concurrent.futures.Future[Any] | None = field(default=None, repr=False)
    launch: Launch | None = field(default=None, repr=False)


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
    on_fatal: Callable[[int, FatalProviderError], None]
    # Told when a tell to the registry or the composer finds it dead.
    on_peer_dead: Callable[[str], None] = lambda _name: None
    # Set when the runtime stops dispatching: a call still waiting for its
    # launch turn is not sent.
    dispatch_stopped: threading.Event = field(default_factory=threading.Event)
    threads: ThreadLedger | None = None
    crash_hook: Callable[[tuple[Queued, ...]], None] | None = None


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
        self._budget = RetryBudget.of(deps.config.retry)
        self._grounding = deps.config.grounding.policy
        self._task_version = task_version(deps.config.task)
        self._packs: dict[int, _Pack] = {}
        self._pack_ids = itertools.count(1)
        self._capacity = deps.config.runtime.max_packs_in_flight
        # The adaptive tiers' pack sizes, as the composer last said (by tier name).
        self._pack_sizes: dict[str, int] = {}
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
            case WorkBatch(batch, pack_sizes):
                self._pack_sizes = dict(pack_sizes)
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
        return () if pack is None else pack.article_ids

    def _want_work(self) -> None:
        if self._work_requested or self._halted or len(self._packs) >= self._capacity:
            return
        self._work_requested = True
        self._to_composer(RequestWork(self.extractor_id, self._tell))

    # ---- packing -----------------------------------------------------------------

    def _take(self, batch_id: int, items: Iterable[Queued]) -> None:
        by_tier: dict[int, list[ArticleProgress]] = {}
        for item in items:
            est = article_tokens(self._estimator, item.article)
            by_tier.setdefault(item.tier, []).append(ArticleProgress(item, est))
        for tier, members in sorted(by_tier.items()):
            for group in chunk(members, self._limits(tier)):
                self._acquire(self._new_pack(tier, group, batch_id))

    def _limits(self, tier: int) -> PackLimits:
        spec = self._ladder.tiers[tier]
        return PackLimits.of(
            spec,
            self._cfg.runtime,
            request_overhead(self._estimator),
            self._pack_sizes.get(spec.name),
        )

    def _chain(self, pack: Pack) -> tuple[str, ...]:
        return tuple(m for m in self._ladder.chain(pack.tier) if m not in pack.excluded)

    def _new_pack(
        self,
        tier: int,
        members: Iterable[ArticleProgress],
        batch: int,
        excluded: frozenset[str] = frozenset(),
    ) -> _Pack:
        return _Pack(next(self._pack_ids), tier, list(members), batch, excluded)

    def _sent(self, grant_id: int, at: float, tokens: int) -> None:
        """Called on the event-loop thread; a tell is thread-safe."""
        self._to_registry(Sent(grant_id, at, tokens))

    def _acquire(self, pack: _Pack) -> None:
        if self._winding_down or self._halted or self._deps.dispatch_stopped.is_set():
            # Stopping: no new call, no retry (a grant would only come back
            # Cancelled, an attempt spent each time); the articles go back.
            self._give_back(pack.members)
            return
        chain = self._chain(pack)
        if not chain:
            self._finish_failed(pack.members, pack.tier)
            return
        overhead = request_overhead(self._estimator)
        pack.acquired_tokens = pack.est_tokens
        own = pack.acquired_tokens + overhead
        # (never so much that a model of its chain could not take it at all)
        tpms = [t for t in (self._cfg.models[m].tpm for m in chain) if t > 0]
        room = capped(self._limits(pack.tier), min(tpms)) if tpms else self._limits(pack.tier)
        pack.extra_tokens = merge_room(pack, own, room)
        self._packs[pack.pack_id] = pack
        pack.asked_at = self._clock.now()
        self._to_registry(
            Acquire(
                request_id=pack.pack_id,
                holder=self.extractor_id,
                chain=chain,
                est_tokens=own + pack.extra_tokens,
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
            # Also a pack merged into another and withdrawn, granted before
            # the registry read the withdrawal: the grant goes unused.
            self._to_registry(Report(grant.grant_id, Cancelled()))
            if pack is not None:
                del self._packs[pack_id]
                self._give_back(pack.members)
            return
        # Fill it from its siblings still waiting (articles that trickled in
        # as small batches); the emptied ones' requests are withdrawn.
        patience = self._ladder.tiers[pack.tier].fallback_patience_s
        cutoff = fallback_cutoff(self._chain(pack), grant.model, patience, self._clock.now())
        # The grant reserved the pack's own estimate (as it asked: members it
        # gave to a sibling since left room) and room for siblings to merge;
        # the merged request never carries more than that.
        own = pack.request_estimate(grant.est_tokens) - pack.extra_tokens
        limits = capped(self._limits(pack.tier), grant.est_tokens)
        pack.sent_tokens, emptied = merge_waiting(pack, own, self._packs, limits, asked_by=cutoff)
        for donor in emptied:
            del self._packs[donor]
            self._to_registry(Withdraw(donor, self.extractor_id))
        if emptied:
            self._want_work()  # room for more work now
        self._handling = pack.article_ids
        for member in pack.members:
            member.tried(grant.model)
        request = ExtractionRequest(
            model=grant.model,
            articles=tuple(m.item.article for m in pack.members),
            timeout_s=self._clock.to_real(self._cfg.retry.request_timeout_s),
            est_input_tokens=pack.sent_tokens,
            grant_id=grant.grant_id,
            granted_at=grant.granted_at,
            attempt=max(m.attempts for m in pack.members),
        )
        pack.grant = grant
        pack.launch = launch = Launch()
        deps = self._deps
        future: concurrent.futures.Future[PackAnswer] = deps.loop.submit(
            invoke(
                deps.provider,
                request,
                deps.pacer,
                self._clock,
                self._sent,
                deps.dispatch_stopped,
                launch,
            )
        )
        pack.future = future
        tell_when_done(future, pack_id, grant, self._tell)

    def _on_acquire_failed(self, pack_id: int, reason: str, detail: str) -> None:
        pack = self._packs.pop(pack_id, None)
        if pack is None:
            return
        action = acquire_failure(reason, detail)
        if isinstance(action, GiveBackPack):
            self._give_back(pack.members)
            return
        for member in pack.members:
            member.failed(action.reason, action.detail, counts=False)
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
        action = classify(outcome, model, len(pack.members))
        if action.note is not None:
            log = self._log.bind(
                model=model,
                tier=self._ladder.tiers[pack.tier].name,
                batch=pack.batch,
                article=list(pack.article_ids),
            )
            getattr(log, action.note.level)(action.note.event, **action.note.fields)
        match action:
            case Answered(usage):
                self._estimator.learn(request_raw(self._estimator, pack), usage.input_tokens)
                self._on_answer(pack, done, usage)
            case Retry():
                plan = plan_retry(pack.members, action, self._budget)
                self._finish_failed(plan.spent, pack.tier)
                if plan.retry:
                    self._acquire(self._new_pack(pack.tier, plan.retry, pack.batch, pack.excluded))
            case FailPack(reason, detail):
                for member in pack.members:
                    member.failed(reason, detail, counts=False)
                self._finish_failed(pack.members, pack.tier)
            case Halt(detail):
                self._halt(pack, FatalProviderError(detail))
            case GiveBackPack():
                self._give_back(pack.members)

    def _on_answer(self, pack: _Pack, done: CallDone, usage: Usage) -> None:
        model = done.grant.model
        plan = settle_answers(
            pack.members,
            done.answer.answers,
            model=model,
            spec=self._cfg.models[model],
            tier=self._ladder.tiers[pack.tier],
            excluded=pack.excluded,
            usage=usage,
            budget=self._budget,
            now=self._clock.now(),
            grounding=self._grounding,
            task_version=self._task_version,
        )
        if plan.done:
            tier = self._ladder.tiers[pack.tier].name
            self._to_composer(PackChecked(tier, model, len(pack.members), plan.grounding))
        self._send(plan.done)
        self._finish_failed(plan.spent, pack.tier)
        for retry in plan.retries:
            self._acquire(self._new_pack(pack.tier, retry.members, pack.batch, retry.excluded))

    def _finish_failed(self, members: Iterable[ArticleProgress], tier: int) -> None:
        name = self._ladder.tiers[tier].name
        self._send([m.result(name) for m in members])

    def _send(self, results: Iterable[TerminalResult]) -> None:
        batch = tuple(results)
        if batch:
            self._to_composer(Finished(self.extractor_id, batch))

    def _give_back(self, members: Iterable[ArticleProgress]) -> None:
        ids = tuple(m.item.article.id for m in members)
        if ids:
            self._to_composer(GiveBack(self.extractor_id, ids))

    def _halt(self, pack: _Pack, error: FatalProviderError) -> None:
        """A configuration error: stop taking work and give everything back
        (``pack``'s call has ended: there is nothing of it to cancel)."""
        self._packs[pack.pack_id] = pack
        self._quiesce()
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

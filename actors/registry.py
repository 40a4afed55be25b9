"""ModelRegistry: the one owner of every model's quota state.

It wraps a ``QuotaPolicy`` and serialises every decision through its inbox,
so quota state needs no lock. A caller that cannot be granted now waits
*inside* the registry -- ordered by tier, then age -- and is answered the
moment capacity exists; nobody sleeps on a guess and nobody polls. One
``Waker`` is re-armed to the next moment capacity can appear by time alone
(a cooldown's end, a window entry's expiry, the daily reset); reports of
finished calls wake waiters too.

Fairness across models: a waiter that cannot be served reserves the models of
its chain for the rest of that pass, so a later or lower-tier request never
overtakes it on a model it is waiting for, while requests for other models
still go ahead (no head-of-line blocking).
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
from collections import Counter
from typing import Any

import pykka
import structlog

from tierbatch.actors.clock import Clock
from tierbatch.actors.messages import (
    Acquire,
    AcquireFailed,
    GetQuotaSnapshot,
    GetQuotaStatus,
    Granted,
    ReleaseHolder,
    Report,
    Sent,
    Wake,
)
from tierbatch.actors.observer import NullObserver, RegistryObserver
from tierbatch.actors.waker import Waker
from tierbatch.policies.outcomes import (
    Abandoned,
    ModelNotFound,
    RateLimited,
    ServerError,
    TimedOut,
)
from tierbatch.policies.quota import Grant, NoRoute, QuotaPolicy

_log = structlog.get_logger("tierbatch.registry")

# Outcomes after which a model may have entered a cooldown worth reporting.
_COOLING_OUTCOMES = (RateLimited, ServerError, TimedOut)


class ModelRegistry(pykka.ThreadingActor):
    def __init__(
        self,
        policy: QuotaPolicy,
        clock: Clock,
        observer: RegistryObserver | None = None,
    ) -> None:
        super().__init__()
        self._policy = policy
        self._clock = clock
        self._observer: RegistryObserver = observer or NullObserver()
        # (tier_rank, enqueued_at, seq, message); popped in that order.
        self._waiters: list[tuple[int, float, int, Acquire]] = []
        self._with_deadline = 0
        # How many waiters want each model: a pass over the waiters stops as
        # soon as every wanted model is reserved, however long the queue.
        self._demand: Counter[str] = Counter()
        self._seq = itertools.count()
        # grant_id -> (holder, model)
        self._grants: dict[int, tuple[int, str]] = {}
        self._warned_unavailable: set[str] = set()
        self._waker = Waker(clock, self._tell_wake, name="tierbatch-registry-waker")

    # ---- lifecycle -----------------------------------------------------------

    def on_start(self) -> None:
        self._waker.start()

    def on_stop(self) -> None:
        self._waker.stop()
        now = self._clock.now()
        for entry in self._waiters:
            entry[3].reply(AcquireFailed(entry[3].request_id, "expired", "registry stopped"))
        self._waiters.clear()
        # Calls still out are of unknown fate: count them spent.
        for grant_id in list(self._grants):
            self._policy.report(grant_id, Abandoned(), now)
        self._grants.clear()

    def _tell_wake(self, generation: int) -> None:
        with contextlib.suppress(pykka.ActorDeadError):
            self.actor_ref.tell(Wake(generation))

    # ---- messages ------------------------------------------------------------

    def on_receive(self, message: Any) -> Any:
        match message:
            case Acquire():
                self._on_acquire(message)
            case Report(grant_id, outcome):
                self._on_report(grant_id, outcome)
            case Sent(grant_id, at):
                held = self._grants.get(grant_id)
                if held is not None and self._policy.sent(grant_id, at):
                    self._observer.on_sent(grant_id, held[1], at)
            case Wake():
                self._serve(self._clock.now())
            case ReleaseHolder(holder):
                self._on_release_holder(holder)
            case GetQuotaStatus():
                return self._policy.status(self._clock.now())
            case GetQuotaSnapshot():
                return self._policy.snapshot()
            case _:
                raise TypeError(f"ModelRegistry: unexpected message {message!r}")
        return None

    def _on_acquire(self, msg: Acquire) -> None:
        now = self._clock.now()
        if not self._waiters:
            result = self._policy.acquire(msg.chain, msg.est_tokens, now, msg.patience_s)
            if isinstance(result, Grant):
                self._grant(msg, result)
                return
            if isinstance(result, NoRoute):
                msg.reply(AcquireFailed(msg.request_id, "no_route", result.reason))
                return
        self._push(msg)
        self._serve(now)

    def _on_report(self, grant_id: int, outcome: Any) -> None:
        now = self._clock.now()
        held = self._grants.pop(grant_id, None)
        if not self._policy.report(grant_id, outcome, now) or held is None:
            return
        _, model = held
        self._observer.on_outcome(model, outcome, now)
        if isinstance(outcome, ModelNotFound):
            self._warn_unavailable(model, outcome.message)
        elif isinstance(outcome, _COOLING_OUTCOMES):
            self._observe_cooldown(model, now)
        self._serve(now)

    def _on_release_holder(self, holder: int) -> None:
        now = self._clock.now()
        for grant_id, (owner, _) in list(self._grants.items()):
            if owner == holder:
                del self._grants[grant_id]
                self._policy.report(grant_id, Abandoned(), now)
        kept = [entry for entry in self._waiters if entry[3].holder != holder]
        if len(kept) != len(self._waiters):
            for entry in self._waiters:
                if entry[3].holder == holder:
                    self._forget(entry[3])
            heapq.heapify(kept)
            self._waiters = kept
        self._serve(now)

    # ---- decisions -------------------------------------------------------------

    def _push(self, msg: Acquire) -> None:
        heapq.heappush(self._waiters, (msg.tier_rank, msg.enqueued_at, next(self._seq), msg))
        self._demand.update(set(msg.chain))
        if msg.deadline is not None:
            self._with_deadline += 1

    def _forget(self, msg: Acquire) -> None:
        """Bookkeeping for a waiter that leaves the queue."""
        self._demand.subtract(set(msg.chain))
        if msg.deadline is not None:
            self._with_deadline -= 1

    def _grant(self, msg: Acquire, grant: Grant) -> None:
        self._grants[grant.grant_id] = (msg.holder, grant.model)
        self._observer.on_grant(grant, msg.tier_rank)
        msg.reply(Granted(msg.request_id, grant))

    def _serve(self, now: float) -> None:
        """Answer every waiter that can be answered now, in order."""
        waiters = self._waiters
        reserved: set[str] = set()
        wanted = {model for model, count in self._demand.items() if count > 0}
        kept: list[tuple[int, float, int, Acquire]] = []
        while waiters and not reserved >= wanted:
            entry = heapq.heappop(waiters)
            msg = entry[3]
            if msg.deadline is not None and now >= msg.deadline:
                self._forget(msg)
                msg.reply(AcquireFailed(msg.request_id, "expired", "deadline passed"))
                continue
            chain = tuple(m for m in msg.chain if m not in reserved)
            patience = msg.patience_s if chain and chain[0] == msg.chain[0] else 0.0
            result = self._policy.acquire(chain, msg.est_tokens, now, patience) if chain else None
            if isinstance(result, Grant):
                self._forget(msg)
                self._grant(msg, result)
            elif isinstance(result, NoRoute) and len(chain) == len(msg.chain):
                self._forget(msg)
                msg.reply(AcquireFailed(msg.request_id, "no_route", result.reason))
            else:
                kept.append(entry)
                reserved.update(self._wanted(msg, now))
        for entry in kept:
            heapq.heappush(waiters, entry)
        self._arm(now)

    def _wanted(self, msg: Acquire, now: float) -> tuple[str, ...]:
        """The models a waiting request holds back from the waiters behind it:
        its whole chain, or only its primary when it is patiently waiting for
        that one while its fallbacks have room for others."""
        if msg.patience_s > 0:
            eta = self._policy.earliest(msg.chain[0], msg.est_tokens, now)
            if eta is not None and now < eta <= now + msg.patience_s:
                return msg.chain[:1]
        return msg.chain

    def _arm(self, now: float) -> None:
        if not self._waiters:
            self._waker.arm(None)
            return
        at = self._policy.next_event(now)
        if self._with_deadline:
            deadlines = [e[3].deadline for e in self._waiters if e[3].deadline is not None]
            soonest = min(d for d in deadlines if d is not None)
            at = soonest if at is None else min(at, soonest)
        self._waker.arm(at)

    # ---- reporting -------------------------------------------------------------

    def _observe_cooldown(self, model: str, now: float) -> None:
        for status in self._policy.status(now):
            if status.model != model:
                continue
            until = status.cooldown_until
            if status.exhausted_until is not None:
                until = max(until or 0.0, status.exhausted_until)
                reason = "requests_per_day"
            else:
                reason = status.cooldown_reason or "cooldown"
            if until is not None and until > now:
                self._observer.on_cooldown(model, now, until, reason)
                _log.info(
                    "model cooling down",
                    model=model,
                    seconds=round(until - now, 3),
                    reason=reason,
                )

    def _warn_unavailable(self, model: str, message: str) -> None:
        if model in self._warned_unavailable:
            return
        self._warned_unavailable.add(model)
        _log.warning(
            "MODEL UNAVAILABLE: the provider answered 404; every chain now skips it. "
            "It may be retired or misspelt: update the config.",
            model=model,
            detail=message,
        )

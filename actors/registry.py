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
still go ahead (no head-of-line blocking). Within its tier's fallback
patience a waiter leaves a fallback to the packs whose primary it is, and
holds out for its own primary when that frees in time.

Time: every decision reads the clock's steady ``now`` (windows, cooldowns,
waits, deadlines) and its wall offset at that moment, which the policy uses
only for the Pacific day; snapshots are taken in wall-clock time.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
from collections import Counter
from collections.abc import Callable
from typing import Any

import pykka
import structlog

from tierbatch.actors.clock import Clock, wall_offset
from tierbatch.actors.messages import (
    Acquire,
    AcquireFailed,
    GetQuotaSnapshot,
    GetQuotaStatus,
    Granted,
    ReleaseHolder,
    Report,
    Sent,
    StopGranting,
    Wake,
    Withdraw,
)
from tierbatch.actors.observer import NullObserver, RegistryObserver
from tierbatch.actors.threads import ThreadLedger
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

# A waiting request: (tier_rank, enqueued_at, seq, message, queued_at).
_Entry = tuple[int, float, int, Acquire, float]

# Outcomes after which a model may have entered a cooldown worth reporting.
_COOLING_OUTCOMES = (RateLimited, ServerError, TimedOut)


class ModelRegistry(pykka.ThreadingActor):
    """``on_died`` is called (on this actor's thread) if a message handler
    raises: the actor is then dead, so the runtime must stop using it."""

    # A stuck actor thread must never keep the process from exiting.
    use_daemon_thread = True

    def __init__(
        self,
        policy: QuotaPolicy,
        clock: Clock,
        observer: RegistryObserver | None = None,
        on_died: Callable[[str, BaseException], None] | None = None,
        threads: ThreadLedger | None = None,
    ) -> None:
        super().__init__()
        self._threads = threads
        self._policy = policy
        self._clock = clock
        self._observer: RegistryObserver = observer or NullObserver()
        self._on_died = on_died
        # After StopGranting: every request is answered "stopped".
        self._stopped_granting = False
        # (tier_rank, enqueued_at, seq, message, queued_at): popped in that order.
        self._waiters: list[_Entry] = []
        self._with_deadline = 0
        # How many waiters want each model: a pass over the waiters stops as
        # soon as every wanted model is reserved, however long the queue.
        self._demand: Counter[str] = Counter()
        # How many waiters have each model as their primary (first choice).
        self._primary_demand: Counter[str] = Counter()
        # When patient waiters' patience ends (lazy heap: seq no longer live).
        self._patience_ends: list[tuple[float, int]] = []
        self._live_patience: set[int] = set()
        self._seq = itertools.count()
        # grant_id -> (holder, model)
        self._grants: dict[int, tuple[int, str]] = {}
        self._warned_unavailable: set[str] = set()
        # model -> (until, reason) of the cooldown last logged
        self._cooling: dict[str, tuple[float, str]] = {}
        self._offset = wall_offset(clock)  # wall minus steady, as of the last clock read
        self._waker = Waker(clock, self._tell_wake, name="tierbatch-registry-waker")

    # ---- lifecycle -----------------------------------------------------------

    def on_start(self) -> None:
        if self._threads is not None:
            self._threads.add_current("registry")
        self._waker.start()

    def on_stop(self) -> None:
        self._waker.stop()
        now, offset = self._read_clock()
        self._answer_waiters("registry stopped")
        # Calls still out are of unknown fate: count them spent.
        for grant_id in list(self._grants):
            self._policy.report(grant_id, Abandoned(), now, wall_offset=offset)
        self._grants.clear()

    def _read_clock(self) -> tuple[float, float]:
        """Steady now, and the wall offset at that moment. The offset is
        kept for the rest of the message's handling, so one decision sees
        one calendar day."""
        now = self._clock.now()
        self._offset = self._clock.wall() - now
        return now, self._offset

    def on_failure(self, exception_type: Any, exception_value: Any, traceback: Any) -> None:
        """A handler raised: this actor is dead. Stop the timer thread (pykka
        calls no ``on_stop`` now), answer every waiter so no pack hangs on
        a dead registry, and tell the runtime."""
        self._waker.stop()
        with contextlib.suppress(Exception):
            self._answer_waiters("the registry died")
        if self._on_died is not None:
            self._on_died("registry", exception_value)

    def _answer_waiters(self, detail: str) -> None:
        waiters, self._waiters = self._waiters, []
        for entry in waiters:
            entry[3].reply(AcquireFailed(entry[3].request_id, "stopped", detail))

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
                self._serve(self._read_clock()[0])
            case ReleaseHolder(holder):
                self._on_release_holder(holder)
            case Withdraw(request_id, holder):
                self._on_withdraw(request_id, holder)
            case StopGranting():
                self._stopped_granting = True
                self._answer_waiters("the runtime is shutting down")
                self._demand.clear()
                self._primary_demand.clear()
                self._live_patience.clear()
                self._with_deadline = 0
                self._waker.arm(None)
            case GetQuotaStatus():
                now, offset = self._read_clock()
                return self._policy.status(now, wall_offset=offset)
            case GetQuotaSnapshot():
                return self._policy.snapshot(wall_offset=self._read_clock()[1])
            case _:
                raise TypeError(f"ModelRegistry: unexpected message {message!r}")
        return None

    def _on_acquire(self, msg: Acquire) -> None:
        if self._stopped_granting:
            msg.reply(AcquireFailed(msg.request_id, "stopped", "the runtime is shutting down"))
            return
        now, offset = self._read_clock()
        if not self._waiters:
            result = self._policy.acquire(
                msg.chain, msg.est_tokens, now, msg.patience_s, wall_offset=offset
            )
            if isinstance(result, Grant):
                self._grant(msg, result)
                return
            if isinstance(result, NoRoute):
                msg.reply(AcquireFailed(msg.request_id, "no_route", result.reason))
                return
        self._push(msg, now)
        self._serve(now)

    def _on_report(self, grant_id: int, outcome: Any) -> None:
        now, offset = self._read_clock()
        held = self._grants.pop(grant_id, None)
        if not self._policy.report(grant_id, outcome, now, wall_offset=offset) or held is None:
            return
        _, model = held
        self._observer.on_outcome(model, outcome, now)
        if isinstance(outcome, ModelNotFound):
            self._warn_unavailable(model, outcome.message)
        elif isinstance(outcome, _COOLING_OUTCOMES):
            self._observe_cooldown(model, now)
        self._serve(now)

    def _on_release_holder(self, holder: int) -> None:
        now, offset = self._read_clock()
        for grant_id, (owner, _) in list(self._grants.items()):
            if owner == holder:
                del self._grants[grant_id]
                self._policy.report(grant_id, Abandoned(), now, wall_offset=offset)
        kept = [entry for entry in self._waiters if entry[3].holder != holder]
        if len(kept) != len(self._waiters):
            for entry in self._waiters:
                if entry[3].holder == holder:
                    self._forget(entry)
            heapq.heapify(kept)
            self._waiters = kept
        self._serve(now)

    def _on_withdraw(self, request_id: int, holder: int) -> None:
        """Drop a waiting request without an answer (its articles moved into
        another pack); one already granted was answered and is left alone."""
        kept = [e for e in self._waiters if (e[3].request_id, e[3].holder) != (request_id, holder)]
        if len(kept) == len(self._waiters):
            return
        for entry in self._waiters:
            if (entry[3].request_id, entry[3].holder) == (request_id, holder):
                self._forget(entry)
        heapq.heapify(kept)
        self._waiters = kept
        self._serve(self._read_clock()[0])

    # ---- decisions -------------------------------------------------------------

    def _push(self, msg: Acquire, now: float) -> None:
        seq = next(self._seq)
        heapq.heappush(self._waiters, (msg.tier_rank, msg.enqueued_at, seq, msg, now))
        self._demand.update(set(msg.chain))
        self._primary_demand[msg.chain[0]] += 1
        if msg.deadline is not None:
            self._with_deadline += 1
        if msg.patience_s > 0 and len(msg.chain) > 1:
            self._live_patience.add(seq)
            heapq.heappush(self._patience_ends, (now + msg.patience_s, seq))

    def _forget(self, entry: _Entry) -> None:
        """Bookkeeping for a waiter that leaves the queue."""
        msg = entry[3]
        self._demand.subtract(set(msg.chain))
        self._primary_demand[msg.chain[0]] -= 1
        self._live_patience.discard(entry[2])
        if msg.deadline is not None:
            self._with_deadline -= 1

    def _grant(self, msg: Acquire, grant: Grant) -> None:
        self._grants[grant.grant_id] = (msg.holder, grant.model)
        self._observer.on_grant(grant, msg.tier_rank)
        msg.reply(Granted(msg.request_id, grant))

    def _serve(self, now: float) -> None:
        """Answer every waiter that can be answered now, in order. A grant can
        lift another waiter's restraint (nobody else wants that fallback any
        more), so passes repeat while they grant something."""
        while self._serve_pass(now):
            pass
        self._arm(now)

    def _serve_pass(self, now: float) -> bool:
        granted = False
        waiters = self._waiters
        reserved: set[str] = set()
        wanted = {model for model, count in self._demand.items() if count > 0}
        kept: list[_Entry] = []
        while waiters and not reserved >= wanted:
            entry = heapq.heappop(waiters)
            msg = entry[3]
            if msg.deadline is not None and now >= msg.deadline:
                self._forget(entry)
                msg.reply(AcquireFailed(msg.request_id, "expired", "deadline passed"))
                continue
            chain = self._allowed(entry, reserved, now)
            patience = (
                self._patience_left(entry, now) if chain and chain[0] == msg.chain[0] else 0.0
            )
            result = (
                self._policy.acquire(chain, msg.est_tokens, now, patience, wall_offset=self._offset)
                if chain
                else None
            )
            if isinstance(result, Grant):
                self._forget(entry)
                self._grant(msg, result)
                granted = True
            elif isinstance(result, NoRoute) and len(chain) == len(msg.chain):
                self._forget(entry)
                msg.reply(AcquireFailed(msg.request_id, "no_route", result.reason))
            else:
                kept.append(entry)
                reserved.update(self._holds(entry, chain, now))
        for entry in kept:
            heapq.heappush(waiters, entry)
        return granted and bool(kept)

    def _allowed(self, entry: _Entry, reserved: set[str], now: float) -> tuple[str, ...]:
        """The models of a waiter's chain it may be granted in this pass.

        Not those held back for waiters ahead of it. And while it is within
        its patience, not a fallback that other packs are waiting for as
        *their* primary: a model's own tier has the first claim on it, so
        the most important articles get the best model without spending the
        capacity the lower tiers have no other way to use. Past its patience
        a pack takes whatever model of its chain has room.
        """
        msg = entry[3]
        chain = [m for m in msg.chain if m not in reserved]
        if chain and self._patience_left(entry, now) > 0:
            primary = msg.chain[0]
            chain = [m for m in chain if m == primary or self._primary_demand[m] <= 0]
        return tuple(chain)

    @staticmethod
    def _patience_left(entry: _Entry, now: float) -> float:
        """How much longer a waiter may hold out for its primary: its
        patience counts from when it started waiting, so no pack waits for
        its primary longer than that in all."""
        return max(0.0, entry[4] + entry[3].patience_s - now)

    def _holds(self, entry: _Entry, allowed: tuple[str, ...], now: float) -> tuple[str, ...]:
        """The models a waiting request holds back from the waiters behind it:
        those it may take, or only its primary when it is waiting for that
        one because it frees within its patience."""
        msg = entry[3]
        left = self._patience_left(entry, now)
        if allowed and allowed[0] == msg.chain[0] and left > 0:
            eta = self._policy.earliest(msg.chain[0], msg.est_tokens, now, wall_offset=self._offset)
            if eta is not None and now < eta <= now + left:
                return allowed[:1]
        return allowed

    def _arm(self, now: float) -> None:
        if not self._waiters:
            self._waker.arm(None)
            return
        at = self._policy.next_event(now, wall_offset=self._offset)
        if self._with_deadline:
            deadlines = [e[3].deadline for e in self._waiters if e[3].deadline is not None]
            soonest = min(d for d in deadlines if d is not None)
            at = soonest if at is None else min(at, soonest)
        ends = self._patience_ends
        while ends and (ends[0][1] not in self._live_patience or ends[0][0] <= now):
            heapq.heappop(ends)
        if ends:
            at = ends[0][0] if at is None else min(at, ends[0][0])
        self._waker.arm(at)

    # ---- reporting -------------------------------------------------------------

    def _observe_cooldown(self, model: str, now: float) -> None:
        for status in self._policy.status(now, wall_offset=self._offset):
            if status.model != model:
                continue
            until = status.cooldown_until
            if status.exhausted_until is not None:
                until = max(until or 0.0, status.exhausted_until)
                reason = "requests_per_day"
            else:
                reason = status.cooldown_reason or "cooldown"
            if until is None or until <= now:
                continue
            self._observer.on_cooldown(model, now, until, reason)
            # Every 429 of a burst re-reports the same cooldown: a line at
            # info when one starts (or turns into another kind, such as the
            # day's quota running out), at debug while it goes on.
            last = self._cooling.get(model)
            self._cooling[model] = (until, reason)
            seconds = round(until - now, 3)
            if last is None or last[0] <= now or last[1] != reason:
                _log.info("model cooling down", model=model, seconds=seconds, reason=reason)
            else:
                _log.debug("model still cooling down", model=model, seconds=seconds, reason=reason)

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

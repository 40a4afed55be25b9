"""A daemon's handle on the shared registry actor, shaped like the pykka
``ActorRef`` the extractors, supervisor, composer and runtime already use
(``tell``, ``ask``, ``is_alive``, ``stop``), so the local runtime runs
unchanged against a registry on another machine.

What it adds on the way, and nothing else:

* every call numbered, so the actor runs this daemon's calls in the order
  it made them (Ray keeps no order for an async actor; see ``in_order``);
* holder ids made unique across daemons (every daemon numbers its
  extractors from 1);
* steady times turned into wall times and back (see ``registry_actor``);
* a reply: an ``Acquire``'s answer is the return value of one actor call,
  handed to the ``reply`` callable when it arrives;
* ``StopGranting`` is this daemon's, not everyone's: it answers this
  daemon's waiting requests "stopped" and withdraws them from the shared
  registry, which goes on granting to the other daemons;
* a heartbeat, so the registry drops the waits and grants of a daemon that
  was killed; ``stop`` leaves the registry at once;
* a ledger of its grants (``hand_over``): when an answer names a new
  incarnation of the actor (Ray restarted it from its last saved state),
  the daemon hands over what it holds and reported since, so the restarted
  registry counts the window the provider counts;
* the counts a daemon's row in the queue's ``daemons`` table shows
  (``granted``, ``waiting``) and which registry serves it (``where``),
  as the database-shared quota's ``RegistryHandle`` has them.

The interface is deliberately the small one a local registry has, so a
registry reached another way (a TCP handle, say) can share it.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import secrets
import threading
from typing import Any

import pykka
import structlog

from tierbatch.actors.clock import Clock, wall_offset
from tierbatch.actors.messages import (
    Acquire,
    AcquireFailed,
    Backlog,
    GetBudgetState,
    GetPlan,
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
from tierbatch.adapters.ray.hand_over import GrantLedger, Incarnation
from tierbatch.adapters.ray.wire import shift_status
from tierbatch.policies.outcomes import Cancelled
from tierbatch.policies.quota import OutstandingGrant

_log = structlog.get_logger(__name__)

_HOLDER_BITS = 20  # a daemon's own holder ids stay below 2**20
LEAVE_TIMEOUT_S = 5.0


def no_reply(_answer: Any) -> None:
    """The ``reply`` an ``Acquire`` carries over the wire (the real one stays
    here): a module-level function, so the message pickles."""


class RemoteRegistryRef:
    def __init__(
        self,
        actor: Any,
        clock: Clock,
        *,
        heartbeat_s: float = 2.0,
        where: str = "ray",
        keep_s: float = 70.0,
    ) -> None:
        """``keep_s``: how long a finished grant stays in the ledger (the
        quota's window with its margin, and the actor's save interval)."""
        if clock.to_real(1.0) != 1.0:
            raise ValueError("a registry on Ray needs a real-time clock (SystemClock)")
        self._actor = actor
        self._clock = clock
        self.where = where  # the registry: ray://CLUSTER/NAMESPACE/ACTOR
        self._granted = 0
        self.client = f"{secrets.token_hex(6)}"
        self._base = secrets.randbits(40) << _HOLDER_BITS
        self._lock = threading.Lock()
        self._waiting: dict[tuple[int, int], Acquire] = {}  # local (holder, request id) -> ask
        self._stopped_granting = False
        self._alive = True
        self._stopping = threading.Event()
        self._outbox: list[Any] = []
        self._send_lock = threading.Lock()  # one flush at a time, in order
        self._flush_due = threading.Event()
        self._seq = 0  # the number of this client's next call (taken under _send_lock)
        self._ledger = GrantLedger(keep_s)  # under _lock
        import ray

        self._ray = ray
        self._incarnation: Incarnation = ray.get(actor.join.remote(self.client))
        self.restored_from = self._incarnation.restored_from
        self._heartbeat = threading.Thread(
            target=self._beat, args=(heartbeat_s,), name="tierbatch-ray-heartbeat", daemon=True
        )
        self._heartbeat.start()
        threading.Thread(target=self._flusher, name="tierbatch-ray-flusher", daemon=True).start()

    # ---- the ActorRef interface ------------------------------------------------------

    def is_alive(self) -> bool:
        return self._alive

    def tell(self, message: Any) -> None:
        if not self._alive:
            raise pykka.ActorDeadError("the registry handle is stopped or lost its actor")
        match message:
            case Acquire():
                self._acquire(message)
            case Withdraw(request_id, holder):
                with self._lock:
                    self._waiting.pop((holder, request_id), None)
                self._send(Withdraw(request_id, self._holder(holder)))
            case ReleaseHolder(holder):
                with self._lock:
                    for key in [k for k in self._waiting if k[0] == holder]:
                        del self._waiting[key]
                    self._ledger.released(self._holder(holder), self._clock.wall())
                self._send(ReleaseHolder(self._holder(holder)))
            case Sent(grant_id, at, tokens):
                wall = at + wall_offset(self._clock)
                with self._lock:
                    self._ledger.sent(grant_id, wall)
                self._send(Sent(grant_id, wall, tokens))
            case Report():
                with self._lock:
                    self._ledger.reported(message, self._clock.wall())
                self._send(message)
            case Backlog() | Wake():
                self._send(message)
            case StopGranting():
                self._stop_granting()
            case _:
                raise TypeError(f"RemoteRegistryRef: unexpected message {message!r}")

    def ask(self, message: Any, block: bool = True, timeout: float | None = None) -> Any:
        future: pykka.ThreadingFuture[Any] = pykka.ThreadingFuture()
        match message:
            case StopGranting():
                self.tell(message)
                future.set(None)
            case GetQuotaStatus() | GetQuotaSnapshot() | GetPlan() | GetBudgetState():
                if not self._alive:
                    raise pykka.ActorDeadError("the registry handle is stopped")
                with self._send_lock:  # after what this client told before it
                    self._flush_locked()
                    pending = self._actor.ask.remote(message, self.client, self._next_seq())
                    pending = pending.future()
                pending.add_done_callback(lambda done: self._answer_question(message, done, future))
            case _:
                raise TypeError(f"RemoteRegistryRef: unexpected question {message!r}")
        return future.get(timeout=timeout) if block else future

    def stop(self, block: bool = True, timeout: float | None = None) -> Any:
        """Leave the shared registry (it drops this daemon's waits and
        abandons its grants still out) -- the actor itself lives on."""
        future: pykka.ThreadingFuture[Any] = pykka.ThreadingFuture()
        if self._alive:
            with self._send_lock:
                self._flush_locked()
                leaving = self._actor.leave.remote(self.client, self._next_seq())
            self._alive = False
            self._stopping.set()
            self._flush_due.set()
            try:
                self._ray.get(leaving, timeout=LEAVE_TIMEOUT_S)
            except Exception as exc:  # the registry drops us after its client timeout anyway
                _log.warning("could not leave the registry", error=str(exc))
            self._answer_waiting("the registry handle stopped")
        future.set(True)
        return future.get(timeout=timeout) if block else future

    @property
    def granted(self) -> int:
        """Grants this daemon received (and kept) since it joined."""
        with self._lock:
            return self._granted

    @property
    def waiting(self) -> int:
        """This daemon's requests waiting for quota now."""
        with self._lock:
            return len(self._waiting)

    # ---- internals -------------------------------------------------------------------

    def _holder(self, holder: int) -> int:
        return self._base + holder

    def _send(self, message: Any) -> None:
        """Queue a one-way message; the flusher sends what queued up in one
        call, so a request's ``Sent`` and ``Report`` cost no call of their
        own under load. The client's order is kept: an ``Acquire`` flushes
        what is queued before it goes, and every call carries its number."""
        with self._lock:
            self._outbox.append(message)
        self._flush_due.set()

    def _flush(self) -> None:
        with self._send_lock:
            self._flush_locked()

    def _next_seq(self) -> int:
        """The number of the call about to go (the caller holds
        ``_send_lock``): the actor runs this client's calls in this order,
        which Ray does not keep for an async actor."""
        seq = self._seq
        self._seq += 1
        return seq

    def _flush_locked(self) -> None:
        """Send what queued up (the caller holds ``_send_lock``)."""
        with self._lock:
            batch, self._outbox = self._outbox, []
        if batch:
            ref = self._actor.tell_many.remote(self.client, self._next_seq(), batch)
            ref.future().add_done_callback(self._check_sent)

    def _flusher(self) -> None:
        while True:
            self._flush_due.wait()
            self._flush_due.clear()
            self._flush()
            if self._stopping.is_set():
                return

    def _check_sent(self, done: concurrent.futures.Future[Any]) -> None:
        exc = done.exception()
        if exc is not None:
            self._lost(exc)
        else:
            self._seen_incarnation(done.result())

    def _seen_incarnation(self, incarnation: Any) -> None:
        """An answer named the actor's incarnation: a new one (Ray restarted
        the actor) gets this daemon's ledger, once."""
        if not isinstance(incarnation, Incarnation):
            return
        with self._lock:
            if incarnation.token == self._incarnation.token:
                return
            self._incarnation = incarnation
            # (Read without _send_lock, which this callback may run under:
            # a call numbered this one concurrently is simply a new one.)
            ledger = self._ledger.hand_over(incarnation, self._clock.wall(), self._seq)
        _log.warning(
            "the registry actor restarted; handing over this daemon's grants",
            restored_from=incarnation.restored_from,
            in_flight=sum(len(g) for _, g in ledger.grants),
            reports=len(ledger.reports),
        )
        # Not in the client's order: the actor holds this client's other calls until it has it.
        self._actor.hand_over.remote(self.client, ledger).future().add_done_callback(
            self._check_handed_over
        )

    def _check_handed_over(self, done: concurrent.futures.Future[Any]) -> None:
        exc = done.exception()
        if exc is not None:
            _log.error("could not hand the grants over to the registry", error=repr(exc))

    def _lost(self, exc: BaseException) -> None:
        if self._alive and not self._stopping.is_set():
            _log.error("the registry actor cannot be reached", error=repr(exc))
            self._alive = False
            self._answer_waiting("the registry actor cannot be reached")

    def _acquire(self, msg: Acquire) -> None:
        key = (msg.holder, msg.request_id)
        with self._lock:
            if self._stopped_granting:
                stopped = True
            else:
                stopped = False
                self._waiting[key] = msg
        if stopped:
            msg.reply(AcquireFailed(msg.request_id, "stopped", "the runtime is shutting down"))
            return
        offset = wall_offset(self._clock)
        wire = dataclasses.replace(
            msg,
            holder=self._holder(msg.holder),
            reply=no_reply,
            enqueued_at=msg.enqueued_at + offset,
            deadline=None if msg.deadline is None else msg.deadline + offset,
        )
        with self._send_lock:  # after what this client told before it
            self._flush_locked()
            pending = self._actor.acquire.remote(self.client, self._next_seq(), wire).future()
        pending.add_done_callback(lambda done: self._answered(msg, done))

    def _answered(self, msg: Acquire, done: concurrent.futures.Future[Any]) -> None:
        """On a Ray thread: hand the answer over, unless this request was
        withdrawn or answered here already (a grant is then given back)."""
        exc = done.exception()
        answer = None if exc is not None else done.result()
        with self._lock:
            mine = self._waiting.pop((msg.holder, msg.request_id), None) is msg
            if mine and isinstance(answer, Granted):
                self._granted += 1
                grant = answer.grant
                self._ledger.granted(
                    self._holder(msg.holder),
                    OutstandingGrant(
                        grant.grant_id, grant.model, grant.est_tokens, grant.granted_at
                    ),
                )
        if exc is not None:
            self._lost(exc)
            if mine:
                msg.reply(AcquireFailed(msg.request_id, "stopped", "the registry is unreachable"))
            return
        if isinstance(answer, Granted):
            grant = answer.grant
            if not mine:
                self._send(Report(grant.grant_id, Cancelled()))
                return
            local = grant.granted_at - wall_offset(self._clock)
            answer = Granted(answer.request_id, dataclasses.replace(grant, granted_at=local))
        if mine and answer is not None:
            msg.reply(answer)

    def _answer_question(
        self, message: Any, done: concurrent.futures.Future[Any], future: pykka.ThreadingFuture[Any]
    ) -> None:
        exc = done.exception()
        if exc is not None:
            future.set_exception((type(exc), exc, exc.__traceback__))
            return
        answer = done.result()
        if isinstance(message, GetQuotaStatus):
            answer = shift_status(answer, -wall_offset(self._clock))
        future.set(answer)

    def _stop_granting(self) -> None:
        """This daemon stops: its waiting requests end "stopped" here and
        are withdrawn there; the shared registry goes on for the others."""
        with self._lock:
            self._stopped_granting = True
            waiting = list(self._waiting.values())
            self._waiting.clear()
        for msg in waiting:
            with contextlib.suppress(Exception):
                self._send(Withdraw(msg.request_id, self._holder(msg.holder)))
            msg.reply(AcquireFailed(msg.request_id, "stopped", "the runtime is shutting down"))

    def _answer_waiting(self, detail: str) -> None:
        with self._lock:
            waiting = list(self._waiting.values())
            self._waiting.clear()
        for msg in waiting:
            msg.reply(AcquireFailed(msg.request_id, "stopped", detail))

    def _beat(self, interval_s: float) -> None:
        while not self._stopping.wait(interval_s):
            try:
                incarnation = self._ray.get(self._actor.heartbeat.remote(self.client), timeout=30)
            except Exception as exc:
                _log.warning("registry heartbeat failed", error=repr(exc))
            else:
                self._seen_incarnation(incarnation)


__all__ = ["RemoteRegistryRef", "no_reply"]

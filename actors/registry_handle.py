"""RegistryHandle: the registry a runtime talks to when the quota is shared.

Several processes spend one provider quota, so one of them at a time runs
the ModelRegistry that owns the quota state and the others reach it over a
link. The handle is what a runtime and its extractors hold in place of the
registry's ActorRef (``tell``, ``ask``, ``is_alive``, ``stop``). It forwards
to its current *target* -- a local ModelRegistry, or a client of a remote
one -- and keeps what a change of owner needs, so that nothing hangs and no
quota is forgotten when the owner dies and another takes over:

* the Acquires sent and not answered yet: re-sent to the next target, in
  the order they were first sent (they keep their ``enqueued_at``);
* the grants not reported yet, and those finished within the last window
  (plus ``keep_s``): handed to the next owner (``AdoptGrants``), which
  keeps their ids and window places and accounts their reports;
* while there is no target (an owner died, the next one is not elected
  yet): the reports and withdrawals, delivered in order once there is one;
  asks are answered from the last answer seen, so a runtime's ``stats``
  never waits for an election.

``StopGranting`` belongs to this runtime alone: the handle answers its own
waiters "stopped" and withdraws them from the registry, and never forwards
it, because a shared registry goes on serving the other processes.

Answers carry the target generation they were asked under: an answer from
a target the handle has since left is dropped (its request went to the new
target), and a grant that arrives for a request no longer waiting (it was
withdrawn meanwhile) is given back at once (``Cancelled``).

It also feeds an observer with this process's own grants, sends and
outcomes (the shared registry's observer sees every process's).
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import pykka

from tierbatch.actors.clock import Clock
from tierbatch.actors.messages import (
    Acquire,
    AcquireFailed,
    AdoptGrants,
    Backlog,
    CommitBatch,
    Granted,
    ReleaseHolder,
    Report,
    Sent,
    StopGranting,
    Withdraw,
)
from tierbatch.actors.observer import NullObserver, RegistryObserver
from tierbatch.policies.errors import RuntimeStateError
from tierbatch.policies.outcomes import Cancelled, RateLimited, Succeeded
from tierbatch.policies.quota import OutstandingGrant

__all__ = ["LinkLostError", "RegistryHandle"]


class LinkLostError(RuntimeStateError):
    """A remote registry's connection dropped before it answered."""


@dataclass(slots=True)
class _Out:
    """A grant this process holds (or held): steady times of this process."""

    holder: int
    model: str
    est_tokens: int
    granted_at: float
    sent_at: float | None = None

    def outstanding(self, grant_id: int, *, in_flight: bool) -> OutstandingGrant:
        return OutstandingGrant(
            grant_id, self.model, self.est_tokens, self.granted_at, self.sent_at, in_flight
        )


class RegistryHandle:
    """``window_s`` is the quota's window (with its margin): how long a
    finished grant still matters to a new owner; ``keep_s`` keeps it that
    much longer (the owner's snapshot interval, at least), so a take-over
    can count what the dead owner's last snapshot missed."""

    def __init__(
        self,
        clock: Clock,
        *,
        window_s: float,
        keep_s: float = 0.0,
        observer: RegistryObserver | None = None,
    ) -> None:
        self._clock = clock
        self._keep_s = max(0.0, window_s) + max(0.0, keep_s)
        self._observer: RegistryObserver = observer or NullObserver()
        self._lock = threading.Lock()
        self._target: Any = None
        self._generation = 0
        self._pending: dict[tuple[int, int], Acquire] = {}
        self._grants: dict[int, _Out] = {}
        self._recent: deque[tuple[float, int, _Out]] = deque()  # (finished, grant id, grant)
        self._gap: dict[int, _Out] = {}  # reported while there was no target
        self._outbox: list[Any] = []  # what waits for the next target
        self._backlog: Backlog | None = None
        self._stopped = False
        self._closed = False
        self._answers: dict[type, Any] = {}
        self._on_died: Callable[[str, BaseException], None] | None = None
        self._granted = 0
        self._counters: dict[str, dict[str, int]] = {}  # model -> this process's counts

    # ---- the target --------------------------------------------------------------

    def retarget(self, target: Any) -> None:
        """Send from now on to ``target`` (an ActorRef-like; None: nobody, for
        now). A new target is handed this process's outstanding grants, then
        every pending Acquire again, then what waited, then the backlog.
        Raises what the target's ``tell`` raises (a dead local registry)."""
        with self._lock:
            self._generation += 1
            self._target = target
            if target is None:
                return
            now = self._clock.now()
            self._prune(now)
            by_holder: dict[int, list[OutstandingGrant]] = {}
            for grant_id, out in (*self._grants.items(), *self._gap.items()):
                by_holder.setdefault(out.holder, []).append(
                    out.outstanding(grant_id, in_flight=True)
                )
            for _, grant_id, out in self._recent:
                if grant_id not in self._gap and grant_id not in self._grants:
                    by_holder.setdefault(out.holder, []).append(
                        out.outstanding(grant_id, in_flight=False)
                    )
            for holder, grants in by_holder.items():
                target.tell(AdoptGrants(holder, tuple(grants)))
            generation = self._generation
            for ask in self._pending.values():
                target.tell(self._wrap(ask, generation))
            for message in self._outbox:
                target.tell(message)
            self._outbox.clear()
            self._gap.clear()
            if self._backlog is not None:
                target.tell(self._backlog)

    def watch(self, on_died: Callable[[str, BaseException], None]) -> None:
        """``on_died`` is told when a local registry this handle points at dies."""
        self._on_died = on_died

    def registry_died(self, actor: str, error: BaseException) -> None:
        """A local registry's ``on_died``: passed on to the watcher."""
        if self._on_died is not None:
            self._on_died(actor, error)

    @property
    def granted(self) -> int:
        """Grants this process received so far."""
        with self._lock:
            return self._granted

    def counters(self) -> dict[str, dict[str, int]]:
        """Per model, this process's own ``granted``, ``rate_limited``,
        ``input_tokens`` and ``output_tokens`` (the shared registry's
        counters are every process's)."""
        with self._lock:
            return {model: dict(counts) for model, counts in self._counters.items()}

    @property
    def waiting(self) -> int:
        """Acquires of this process not answered yet."""
        with self._lock:
            return len(self._pending)

    # ---- the ActorRef face ---------------------------------------------------------

    def tell(self, message: Any) -> None:
        match message:
            case Acquire():
                self._acquire(message)
            case Report():
                self._report(message)
            case Sent(grant_id, at):
                with self._lock:
                    out = self._grants.get(grant_id)
                    if out is not None:
                        out.sent_at = at
                    self._forward(message, keep=False)
                if out is not None:
                    self._observer.on_sent(grant_id, out.model, at)
            case Withdraw(request_id, holder):
                with self._lock:
                    if self._pending.pop((holder, request_id), None) is not None:
                        self._forward(message, keep=False)
            case ReleaseHolder(holder):
                self._release(message, holder)
            case Backlog():
                with self._lock:
                    self._backlog = message
                    self._forward(message, keep=False)
            case StopGranting():
                self._stop_granting()
            case _:
                with self._lock:
                    self._forward(message, keep=True)

    def ask(self, message: Any, block: bool = True, timeout: float | None = None) -> Any:
        """Asks the target; with none, or when a remote one is lost before it
        answers, the last answer seen to that kind of question (None before
        the first)."""
        future: pykka.ThreadingFuture[Any] = pykka.ThreadingFuture()
        if isinstance(message, StopGranting):
            self._stop_granting()
            future.set(None)
        elif isinstance(message, CommitBatch):
            # Never an answer seen before: without an owner to commit it
            # there, nothing of the job is committed (it waits and asks again).
            with self._lock:
                target = self._target
            if target is None:
                future.set(0)
            else:
                inner = target.ask(message, block=False)
                future.set_get_hook(functools.partial(_committed, inner))
        else:
            kind = type(message)
            with self._lock:
                target = self._target
                cached = self._answers.get(kind)
            if target is None:
                future.set(cached)
            else:
                inner = target.ask(message, block=False)
                future.set_get_hook(functools.partial(self._answer, kind, inner))
        return future.get(timeout=timeout) if block else future

    def is_alive(self) -> bool:
        with self._lock:
            target, closed = self._target, self._closed
        return not closed and (target is None or bool(target.is_alive()))

    def stop(self, block: bool = True, timeout: float | None = None) -> Any:
        """Stops using the target (whoever started it stops it)."""
        with self._lock:
            self._closed = True
            self._target = None
            self._generation += 1
        future: pykka.ThreadingFuture[Any] = pykka.ThreadingFuture()
        future.set(None)
        return None if block else future

    # ---- internals -----------------------------------------------------------------

    def _forward(self, message: Any, *, keep: bool) -> None:
        """To the target (under the lock); kept for the next one if ``keep``."""
        if self._target is not None:
            self._target.tell(message)
        elif keep:
            self._outbox.append(message)

    def _wrap(self, ask: Acquire, generation: int) -> Acquire:
        return replace(ask, reply=functools.partial(self._answered, generation, ask))

    def _acquire(self, ask: Acquire) -> None:
        refused: AcquireFailed | None = None
        with self._lock:
            if self._stopped or self._closed:
                refused = AcquireFailed(ask.request_id, "stopped", "the runtime is shutting down")
            else:
                self._pending[(ask.holder, ask.request_id)] = ask
                if self._target is not None:
                    self._target.tell(self._wrap(ask, self._generation))
        if refused is not None:
            ask.reply(refused)

    def _answered(self, generation: int, ask: Acquire, answer: Any) -> None:
        """A registry's answer to ``ask`` (on the registry's or the link's thread)."""
        key = (ask.holder, ask.request_id)
        give_back = None
        with self._lock:
            current = generation == self._generation
            waiting = current and self._pending.get(key) is ask
            if waiting:
                del self._pending[key]
                if isinstance(answer, Granted):
                    grant = answer.grant
                    self._grants[grant.grant_id] = _Out(
                        ask.holder, grant.model, grant.est_tokens, grant.granted_at
                    )
                    self._granted += 1
                    self._count(grant.model, "granted")
            elif current and isinstance(answer, Granted):
                give_back = self._target  # withdrawn meanwhile: not used
        if give_back is not None:
            with contextlib.suppress(pykka.ActorDeadError):
                give_back.tell(Report(answer.grant.grant_id, Cancelled()))
            return
        if not waiting:
            return
        if isinstance(answer, Granted):
            self._observer.on_grant(answer.grant, ask.tier_rank)
        ask.reply(answer)

    def _report(self, report: Report) -> None:
        now = self._clock.now()
        with self._lock:
            out = self._grants.pop(report.grant_id, None)
            outcome = report.outcome
            if out is not None and not isinstance(outcome, Cancelled | RateLimited):
                self._recent.append((now, report.grant_id, out))
                self._prune(now)
            if out is not None and isinstance(outcome, RateLimited):
                self._count(out.model, "rate_limited")
            elif out is not None and isinstance(outcome, Succeeded):
                self._count(out.model, "input_tokens", max(0, outcome.usage.input_tokens))
                self._count(out.model, "output_tokens", max(0, outcome.usage.output_tokens))
            if self._target is not None:
                self._target.tell(report)
            elif out is not None:
                self._gap[report.grant_id] = out
                self._outbox.append(report)
        if out is not None:
            self._observer.on_outcome(out.model, report.outcome, now)

    def _release(self, message: ReleaseHolder, holder: int) -> None:
        now = self._clock.now()
        with self._lock:
            for key in [k for k in self._pending if k[0] == holder]:
                del self._pending[key]
            for grant_id, out in [(g, o) for g, o in self._grants.items() if o.holder == holder]:
                del self._grants[grant_id]  # spent, as far as anyone knows
                self._recent.append((now, grant_id, out))
            self._forward(message, keep=False)

    def _stop_granting(self) -> None:
        with self._lock:
            self._stopped = True
            waiting = list(self._pending.values())
            self._pending.clear()
            target = self._target
            if target is not None:
                for ask in waiting:
                    with contextlib.suppress(pykka.ActorDeadError):
                        target.tell(Withdraw(ask.request_id, ask.holder))
        for ask in waiting:
            ask.reply(AcquireFailed(ask.request_id, "stopped", "the runtime is shutting down"))

    def _answer(self, kind: type, inner: Any, timeout: float | None) -> Any:
        try:
            value = inner.get(timeout=timeout)
        except LinkLostError:
            with self._lock:
                return self._answers.get(kind)
        with self._lock:
            self._answers[kind] = value
        return value

    def _count(self, model: str, name: str, amount: int = 1) -> None:
        counts = self._counters.setdefault(model, {})
        counts[name] = counts.get(name, 0) + amount

    def _prune(self, now: float) -> None:
        recent, horizon = self._recent, now - self._keep_s
        while recent and recent[0][0] < horizon:
            recent.popleft()


def _committed(inner: Any, timeout: float | None) -> int:
    """The owner's answer to a ``CommitBatch``; 0 when the link to it was
    lost first (whatever the owner committed then is its own to settle)."""
    try:
        approved: int = inner.get(timeout=timeout)
    except LinkLostError:
        return 0
    return approved

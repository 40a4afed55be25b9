"""One provider call of an extractor, on the shared event-loop thread.

The extractor actor never awaits: it submits ``invoke`` to the loop and is
told ``CallDone`` when the call ends, whatever became of it. Between the
two threads, ``Launch`` decides once whether a granted call has left, so a
winding-down extractor can take back a call still waiting for its launch
turn without racing the loop that is about to send it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Callable
from typing import Any

from tierbatch.actors.clock import Clock
from tierbatch.actors.event_loop import LaunchPacer
from tierbatch.actors.messages import CallDone
from tierbatch.actors.ports import ExtractionRequest, PackAnswer, Provider, bind_request_sent
from tierbatch.policies.outcomes import Abandoned, Cancelled, ServerError, TimedOut
from tierbatch.policies.quota import Grant


class Launch:
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


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def tell_when_done(
    future: concurrent.futures.Future[PackAnswer],
    pack_id: int,
    grant: Grant,
    tell: Callable[[Any], None],
) -> None:
    """Tell the extractor ``CallDone`` when ``future`` ends, whatever became
    of the call: a pack whose completion is never told would hang, its
    lease renewed forever."""

    def done(fut: concurrent.futures.Future[PackAnswer]) -> None:
        if fut.cancelled():
            # Only the runtime cancels calls (stop, failure), and it has
            # reported the grant abandoned already.
            tell(CallDone(pack_id, grant, PackAnswer(Abandoned())))
            return
        try:
            answer = fut.result()
        except BaseException as exc:  # invoke maps errors; this is a last resort
            answer = PackAnswer(ServerError(None, f"provider call failed: {describe(exc)}"))
        tell(CallDone(pack_id, grant, answer))

    future.add_done_callback(done)


async def invoke(
    provider: Provider,
    request: ExtractionRequest,
    pacer: LaunchPacer,
    clock: Clock,
    sent: Callable[[int, float, int], None],
    dispatch_stopped: threading.Event,
    launch: Launch,
) -> PackAnswer:
    """Run one provider call with the runtime's own timeout. Never raises
    (unless the runtime itself cancels it): a provider that raises -- a
    stray ``CancelledError`` included -- is reported as a server error. The
    registry hears when the request really leaves, so its window follows
    the provider's: once per request (``sent``), at the provider's first
    send mark, or -- from a provider that marks nothing -- at the start of
    the call, told when the call ends (before its outcome is). A call whose
    launch turn comes after dispatch stopped is not sent at all
    (``Cancelled``: the grant is refunded), nor is one withdrawn by a
    winding-down extractor.

    The runtime's timeout is a backstop behind the provider's own: it allows
    ``timeout_s`` after the provider's latest send mark, and before any mark
    twice that from the start (a provider may first wait up to ``timeout_s``
    for a connection of its own pool; see ``ExtractionRequest``)."""
    await pacer.turn()
    if dispatch_stopped.is_set() or not launch.start():
        return PackAnswer(Cancelled())
    started = clock.now()
    # Taken (never released) by whichever tells the registry first.
    told = threading.Lock()
    loop = asyncio.get_running_loop()
    backstop: asyncio.Timeout | None = None

    def restart() -> None:
        if backstop is not None and not backstop.expired() and not finished:
            backstop.reschedule(loop.time() + request.timeout_s)

    def on_sent() -> None:
        # Any thread: the provider may send from a worker thread.
        if told.acquire(blocking=False):
            sent(request.grant_id, clock.now(), request.est_input_tokens)
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
        answer = PackAnswer(ServerError(None, f"provider raised {describe(exc)}"))
    except Exception as exc:
        answer = PackAnswer(ServerError(None, f"provider raised {describe(exc)}"))
    if not isinstance(answer.outcome, Cancelled) and told.acquire(blocking=False):
        # the provider marked nothing: it left at the start
        sent(request.grant_id, started, request.est_input_tokens)
    return answer

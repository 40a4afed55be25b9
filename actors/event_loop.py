"""One asyncio event loop on its own thread, shared by every extractor.

Provider calls are coroutines: hundreds can be in flight on this one thread
while each extractor actor stays responsive. Awaiting a pykka future would
block the loop, so completions travel the other way: a done-callback tells
the owning actor.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

import structlog

T = TypeVar("T")

_log = structlog.get_logger(__name__)


class LoopThread:
    """``stop_timeout_s`` (default ``STOP_TIMEOUT_S``) bounds ``stop``: a
    task that will not end when cancelled (a provider swallowing
    ``CancelledError``) is logged and left behind on this daemon thread
    instead of hanging the caller."""

    STOP_TIMEOUT_S = 10.0

    def __init__(self, name: str = "tierbatch-io", *, stop_timeout_s: float | None = None) -> None:
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._stop_timeout = self.STOP_TIMEOUT_S if stop_timeout_s is None else stop_timeout_s
        self._stop_requested = False
        # Set on the loop thread at stop: what was still running then.
        self._left_at_stop: list[str] = []

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def start(self) -> None:
        self._thread.start()
        self._ready.wait()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop and wait for it from another thread."""
        return self.submit(coro).result(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout: float | None = None) -> bool:
        """Cancel whatever is still running, close the loop, join the thread
        for at most ``timeout`` seconds (default: the constructor's). Returns
        False, logging what is left, when the thread did not end in time."""
        if not self._thread.is_alive():
            return True
        with_timeout = self._stop_timeout if timeout is None else timeout
        if not self._stop_requested:  # once: a second stop only waits longer
            self._stop_requested = True
            with contextlib.suppress(RuntimeError):  # closed meanwhile
                self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(with_timeout)
        if not self._thread.is_alive():
            return True
        _log.error(
            "event loop thread did not stop in time; left behind (it is a daemon thread)",
            timeout_s=with_timeout,
            tasks=list(self._left_at_stop),
        )
        return False

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.call_soon(self._ready.set)
        try:
            self._loop.run_forever()
        finally:
            pending = asyncio.all_tasks(self._loop)
            self._left_at_stop = [_describe_task(task) for task in pending]
            for task in pending:
                task.cancel()
            if pending:
                self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.run_until_complete(self._loop.shutdown_default_executor())
            self._loop.close()


def _describe_task(task: asyncio.Task[Any]) -> str:
    coro = task.get_coro()
    name = getattr(coro, "__qualname__", None) or repr(coro)
    return f"{task.get_name()}: {name}"


class LaunchPacer:
    """Spaces request launches at least ``interval_s`` real seconds apart
    (the seed plan's stagger). Used only on the loop thread: no lock."""

    def __init__(self, interval_s: float) -> None:
        self._interval = interval_s
        self._next = 0.0

    async def turn(self) -> None:
        if self._interval <= 0:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        at = max(now, self._next)
        self._next = at + self._interval
        if at > now:
            await asyncio.sleep(at - now)

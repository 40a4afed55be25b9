"""One call's deadline, counted from the moment it has a connection.

A call can queue before it reaches the network: for a connection of the
httpx pool (google-genai) or for a worker thread (google-generativeai).
That queue is not the server's doing, so it must not eat the request's
timeout -- a timeout counts against the model's health and can cool it
down. So waiting for a connection has a budget of its own (``timeout_s``,
like httpx's separate ``pool`` timeout), and from the moment the call has
its connection the answer has ``timeout_s``. A call that never got one was
never sent: ``give_up`` says so, and the adapter reports ``Cancelled`` (the
registry refunds its quota) instead of ``TimedOut``.

``connected`` may be called from the event loop or from a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class CallTiming:
    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._lock = threading.Lock()
        self._deadline: asyncio.Timeout | None = None
        self._inside = False
        self._connected_at: float | None = None
        self._given_up = False

    @asynccontextmanager
    async def deadline(self) -> AsyncIterator[None]:
        """Raises ``TimeoutError`` when the connection or the answer is late."""
        async with asyncio.timeout(self.timeout_s) as deadline:
            self._deadline, self._inside = deadline, True
            try:
                yield
            finally:
                self._inside = False

    def connected(self) -> bool:
        """The call has its connection now; its deadline restarts. False when
        the call was already given up: the caller must not send it."""
        with self._lock:
            if self._given_up:
                return False
            if self._connected_at is not None:
                return True
            self._connected_at = time.monotonic()
        if threading.get_ident() == self._loop_thread:
            self._restart()
        else:
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits
                self._loop.call_soon_threadsafe(self._restart)
        return True

    def give_up(self) -> float | None:
        """Stop the call: seconds since it got its connection, or None when it
        never got one (it was not sent, and now never will be)."""
        with self._lock:
            self._given_up = True
            connected_at = self._connected_at
        return None if connected_at is None else time.monotonic() - connected_at

    def _restart(self) -> None:
        deadline = self._deadline
        if deadline is not None and self._inside and not deadline.expired():
            deadline.reschedule(self._loop.time() + self.timeout_s)

"""Each client's calls in the order the client made them.

Ray starts the calls of an async actor in any order ("asynchronous or
threaded actors do not guarantee the task execution order"), even calls
from one submitter. The registry's correctness depends on a daemon's order:
a ``Report`` of a 429 that cools a model must reach the registry before the
``Acquire`` the daemon sent after it, or that request is granted the model
the 429 just cooled. So every call a client makes carries a sequence number,
and the actor runs a call's registry-facing part only when the client's
previous calls have run theirs.

A restarted actor learns where a client's order resumes from the client's
hand-over (``skip_to``): the calls Ray retries then carry old numbers, and
those its predecessor ran never come again. A gap that never fills
otherwise must not stall the client for good: after ``gap_timeout_s`` the
lowest waiting call goes ahead and the gap is skipped, with a warning.
"""

from __future__ import annotations

import asyncio

import structlog

_log = structlog.get_logger(__name__)

GAP_TIMEOUT_S = 10.0


class ClientOrder:
    """The turn of one client's calls, on the actor's event loop."""

    def __init__(self, client: str, first: int, *, gap_timeout_s: float = GAP_TIMEOUT_S) -> None:
        self._client = client
        self._next = first
        self._turns: dict[int, asyncio.Future[None]] = {}
        self._gap_timeout_s = gap_timeout_s

    @property
    def next(self) -> int:
        return self._next

    async def turn(self, seq: int) -> None:
        """Return when every call before ``seq`` has had its turn (a call
        older than the turn, retried or late after a skipped gap, goes at
        once)."""
        if seq <= self._next:
            return
        future = asyncio.get_running_loop().create_future()
        self._turns[seq] = future
        try:
            while not future.done():
                try:
                    await asyncio.wait_for(asyncio.shield(future), self._gap_timeout_s)
                except TimeoutError:
                    self._skip_gap()
        finally:
            self._turns.pop(seq, None)

    def _skip_gap(self) -> None:
        """The missing call is given up: the lowest waiting call goes next."""
        lowest = min(self._turns)
        if lowest > self._next:
            _log.warning(
                "a registry client's earlier call never arrived; going on without it",
                client=self._client,
                expected=self._next,
                got=lowest,
            )
            self._next = lowest
            self._wake()

    def skip_to(self, seq: int) -> None:
        """Every call before ``seq`` is old (made before a restart of the
        actor: retried, or run by its predecessor): such calls go at once,
        and the client's order resumes at ``seq``."""
        if seq > self._next:
            self._next = seq
            self._wake()

    def done(self, seq: int) -> None:
        """``seq`` had its turn: let the next call go."""
        self._next = max(self._next, seq + 1)
        self._wake()

    def _wake(self) -> None:
        for seq, waiting in self._turns.items():
            if seq <= self._next and not waiting.done():
                waiting.set_result(None)


__all__ = ["GAP_TIMEOUT_S", "ClientOrder"]

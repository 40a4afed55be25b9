"""The registry's one timer.

It only wakes the registry: every decision compares deadlines with ``now``,
so a timer that fires late, early or twice changes nothing but when the
registry looks again. Re-arming replaces the previous deadline.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from tierbatch.actors.clock import Clock


class Waker:
    """A thread that calls ``wake(generation)`` once the armed clock time
    has come. ``arm`` is cheap: it only moves the deadline."""

    def __init__(self, clock: Clock, wake: Callable[[int], None], name: str) -> None:
        self._clock = clock
        self._wake = wake
        self._cond = threading.Condition()
        self._deadline: float | None = None
        self._generation = 0
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def arm(self, deadline: float | None) -> None:
        """Wake at ``deadline`` (clock time), or never when None."""
        with self._cond:
            if deadline == self._deadline:
                return
            self._deadline = deadline
            self._generation += 1
            self._cond.notify()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join()

    def _run(self) -> None:
        with self._cond:
            while not self._stopped:
                if self._deadline is None:
                    self._cond.wait()
                    continue
                delay = self._clock.to_real(self._deadline - self._clock.now())
                if delay > 0:
                    self._cond.wait(delay)
                    continue
                generation = self._generation
                self._deadline = None
                self._cond.release()
                try:
                    self._wake(generation)
                finally:
                    self._cond.acquire()

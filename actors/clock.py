"""Clocks: where the runtime reads the time, and how long a clock interval
lasts in real seconds.

Every policy decision takes ``now`` from a ``Clock``. Production uses
``SystemClock`` (wall-clock epoch seconds, so per-day quota and snapshots
line up with Gemini's Pacific-midnight reset). Tests and rehearsals use
``ScaledClock``, which runs ``speed`` times faster than real time, so a 60 s
rate-limit window passes in a fraction of a second while every component --
registry, timers, simulated provider, timeouts -- stays consistent.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the Unix epoch, on this clock."""
        ...

    def to_real(self, seconds: float) -> float:
        """How many real seconds an interval of ``seconds`` on this clock lasts."""
        ...


class SystemClock:
    """The wall clock."""

    def now(self) -> float:
        return time.time()

    def to_real(self, seconds: float) -> float:
        return seconds


class ScaledClock:
    """A clock that starts at ``start`` (default: now) and runs ``speed`` times
    faster than real time. Monotonic underneath, so it never jumps back."""

    def __init__(self, speed: float, start: float | None = None) -> None:
        if speed <= 0:
            raise ValueError(f"speed must be > 0, got {speed}")
        self.speed = speed
        self._start = time.time() if start is None else start
        self._origin = time.monotonic()

    def now(self) -> float:
        return self._start + (time.monotonic() - self._origin) * self.speed

    def to_real(self, seconds: float) -> float:
        return seconds / self.speed

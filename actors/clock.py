"""Clocks: where the runtime reads the time, on two timelines.

``now()`` is *steady* time: seconds on a timeline that never jumps (its
origin is arbitrary). Every duration and deadline of the runtime lives on
it -- rate windows, cooldowns, backoffs, timeouts, waits, latencies --
because the wall clock does step: an NTP correction, a resumed VM or an
operator's ``date -s`` can move it by an hour at once, and a window kept on
it would then free every model at once (a burst of 429s) or stay full for an
hour.

``wall()`` is the wall clock (Unix epoch seconds) at this moment. It is read
only for what is calendar time: the Pacific day that Gemini's per-day quota
counts in, article publication times (cluster hotness), and what is saved
to disk. Their difference, ``wall() - now()``, is the clock's *wall offset*;
a step of the wall clock shows as a change of it.

Production uses ``SystemClock`` (``time.monotonic`` and ``time.time``).
Tests and rehearsals use ``ScaledClock``, which runs ``speed`` times faster
than real time on both timelines, so a 60 s rate-limit window passes in a
fraction of a second while every component -- registry, timers, simulated
provider, timeouts -- stays consistent.
"""

from __future__ import annotations

import time
from typing import Protocol

__all__ = ["Clock", "ScaledClock", "SystemClock", "WallStepWatch", "wall_offset"]


class Clock(Protocol):
    def now(self) -> float:
        """Steady seconds: never jumps; the origin is arbitrary."""
        ...

    def wall(self) -> float:
        """Wall-clock seconds since the Unix epoch, at this moment."""
        ...

    def to_real(self, seconds: float) -> float:
        """How many real seconds an interval of ``seconds`` on this clock lasts."""
        ...


def wall_offset(clock: Clock) -> float:
    """``clock.wall() - clock.now()``: what turns a steady time into a wall
    time at this moment (steady ``t`` is wall ``t + offset``)."""
    return clock.wall() - clock.now()


class SystemClock:
    """The machine's monotonic clock, and its wall clock for calendar time."""

    def now(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()

    def to_real(self, seconds: float) -> float:
        return seconds


class ScaledClock:
    """A clock that starts at ``start`` (default: the wall clock now) and runs
    ``speed`` times faster than real time. Monotonic underneath, so its steady
    time never jumps back; its steady and wall readings agree until
    ``step_wall`` moves the wall reading alone, as an NTP step would."""

    def __init__(self, speed: float, start: float | None = None) -> None:
        if speed <= 0:
            raise ValueError(f"speed must be > 0, got {speed}")
        self.speed = speed
        self._start = time.time() if start is None else start
        self._origin = time.monotonic()
        self._wall_step = 0.0

    def now(self) -> float:
        return self._start + (time.monotonic() - self._origin) * self.speed

    def wall(self) -> float:
        return self.now() + self._wall_step

    def to_real(self, seconds: float) -> float:
        return seconds / self.speed

    def step_wall(self, seconds: float) -> None:
        """Step the wall reading by ``seconds`` (either way); steady time goes on."""
        self._wall_step += seconds


class WallStepWatch:
    """Notices the wall clock stepping: its offset from steady time changes
    by more than ``tolerance_s`` between two looks. (NTP slewing moves it by
    well under a millisecond per second, so looking every few seconds never
    mistakes a slew for a step.)"""

    def __init__(self, clock: Clock, tolerance_s: float = 1.0) -> None:
        self._clock = clock
        self._tolerance = tolerance_s
        self._offset = wall_offset(clock)

    def step(self) -> float | None:
        """How far the wall clock stepped since the last look, or None."""
        offset = wall_offset(self._clock)
        stepped = offset - self._offset
        self._offset = offset
        return stepped if abs(stepped) > self._tolerance else None

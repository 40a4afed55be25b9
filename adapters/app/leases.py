"""The daemon's lease keeper: its rows stay its own while it works on them.

Every leased row carries a wall-clock deadline (other processes read it).
The keeper renews them every third of the lease time, timed on the
monotonic clock, and at once when it sees the wall clock step -- a forward
step would otherwise make live leases look expired to another daemon. The
daemon's loop calls ``keep`` on every turn, working or draining; it costs a
clock reading until a renewal is due.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog

from tierbatch.actors.clock import Clock, WallStepWatch

_log = structlog.get_logger(__name__)


class LeaseKeeper:
    """Calls ``renew`` (the store's renewal, guarded by the caller) when due."""

    def __init__(
        self,
        renew: Callable[[], object],
        lease_s: float,
        clock: Clock,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._renew = renew
        self._every = lease_s / 3
        self._monotonic = monotonic
        self._next = monotonic() + self._every
        self._wall_steps = WallStepWatch(clock)

    def keep(self) -> bool:
        """Renew the leases if a third of the lease time has passed since
        the last renewal, or the wall clock stepped since the last look;
        returns whether it stepped."""
        stepped = self._wall_steps.step()
        if stepped is not None:
            _log.warning("wall clock stepped; renewing leases now", step_s=round(stepped, 3))
        now = self._monotonic()
        if stepped is not None or now >= self._next:
            self._renew()
            self._next = now + self._every
        return stepped is not None

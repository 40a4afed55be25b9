"""What a restarted registry actor learns back from its daemons.

Ray restarts a registry actor whose process died, from the state it saved
last (every couple of seconds while granting). Whatever it granted after
that save is unknown to the restarted one: on its own it would see the
window that many requests emptier than the provider does and grant them
again at once -- a burst of 429s, which the estimator then reads as a lower
limit (measured: 99 of 499 requests refused and the learnt rpm halved after
a ``kill -9`` of the actor's process mid-drain). The daemons know what they
hold, so they tell it, as followers do for a new owner of a database-shared
quota:

* every daemon keeps a ``GrantLedger``: its grants not reported yet, and
  those finished within the last window (with their reports);
* every answer of the actor names its ``Incarnation``; a daemon that sees a
  new one hands its ledger over (``RegistryActor.hand_over``): grants in
  flight, and those it reported since the restored state was saved, are
  adopted in flight and their reports sent again; older ones only keep
  their window places (the saved state counted them);
* a restarted actor holds back every daemon's calls (``HandOverGate``)
  until the daemons it knew at its last save have handed over, or for
  ``HAND_OVER_WAIT_S`` at most (a daemon that died with it never will);
  the hand-over also says where the daemon's call order resumes (Ray
  retries the calls that were out with their old numbers, and those the
  predecessor ran never come again: waiting for them stalled a daemon's
  calls, its progress report and so its lease renewals for 20 s).

Times here are wall-clock times: the actor may restart on another machine.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from tierbatch.actors.messages import Report
from tierbatch.policies.outcomes import Cancelled
from tierbatch.policies.quota import OutstandingGrant

__all__ = ["HAND_OVER_WAIT_S", "GrantLedger", "HandOver", "HandOverGate", "Incarnation"]

# How long a restarted actor holds calls back for daemons that do not hand over.
HAND_OVER_WAIT_S = 5.0
# A report sent this long before the restored state was saved may still
# have reached the dead actor after the save: it is sent again.
REPORT_SLACK_S = 0.25


@dataclass(frozen=True, slots=True)
class Incarnation:
    """One life of the registry actor: ``token`` new at every (re)start;
    ``saved_at``: when the state it restored was saved (wall time; None:
    it started fresh)."""

    token: str
    restored_from: str = "fresh"
    saved_at: float | None = None


@dataclass(frozen=True, slots=True)
class HandOver:
    """A daemon's ledger, for the incarnation ``token``: per holder (wire
    ids) its grants to adopt, the reports to account again, and the number
    of its next call (every call numbered below was made before it saw
    the restart: retried by Ray, or run by the predecessor)."""

    token: str
    grants: tuple[tuple[int, tuple[OutstandingGrant, ...]], ...]
    reports: tuple[Report, ...]
    next_seq: int = 0


@dataclass(slots=True)
class _Held:
    holder: int
    grant: OutstandingGrant
    report: Report | None = None


class GrantLedger:
    """A daemon's grants from the registry actor, not thread-safe (the
    caller holds its lock). ``keep_s``: how long a finished grant is kept
    (the quota's window with its margin, and the actor's save interval)."""

    def __init__(self, keep_s: float) -> None:
        self._keep_s = keep_s
        self._out: dict[int, _Held] = {}
        self._recent: deque[tuple[float, int, _Held]] = deque()

    def granted(self, holder: int, grant: OutstandingGrant) -> None:
        self._out[grant.grant_id] = _Held(holder, grant)

    def sent(self, grant_id: int, at: float) -> None:
        held = self._out.get(grant_id)
        if held is not None:
            held.grant = dataclasses.replace(held.grant, sent_at=at)

    def reported(self, report: Report, at: float) -> None:
        held = self._out.pop(report.grant_id, None)
        if held is None or isinstance(report.outcome, Cancelled):
            return  # a cancelled grant was never sent: it holds no place
        held.report = report
        self._finish(at, report.grant_id, held)

    def released(self, holder: int, at: float) -> None:
        """The holder's grants are spent as far as anyone knows."""
        for grant_id in [g for g, held in self._out.items() if held.holder == holder]:
            self._finish(at, grant_id, self._out.pop(grant_id))

    def __len__(self) -> int:
        return len(self._out)

    def hand_over(self, incarnation: Incarnation, now: float, next_seq: int) -> HandOver:
        """What ``incarnation`` needs from this daemon at ``now``, whose
        next call is numbered ``next_seq``."""
        self._prune(now)
        since = None if incarnation.saved_at is None else incarnation.saved_at - REPORT_SLACK_S
        by_holder: dict[int, list[OutstandingGrant]] = {}
        reports: list[Report] = []
        for held in self._out.values():
            by_holder.setdefault(held.holder, []).append(held.grant)
        for finished, _, held in self._recent:
            report = held.report
            again = report is not None and (since is None or finished >= since)
            if again and report is not None:  # (for mypy: again implies a report)
                reports.append(report)
            grant = dataclasses.replace(held.grant, in_flight=again)
            by_holder.setdefault(held.holder, []).append(grant)
        grants = tuple((holder, tuple(g)) for holder, g in by_holder.items())
        return HandOver(incarnation.token, grants, tuple(reports), next_seq)

    def _finish(self, at: float, grant_id: int, held: _Held) -> None:
        held.grant = dataclasses.replace(held.grant, in_flight=False)
        self._recent.append((at, grant_id, held))
        self._prune(at)

    def _prune(self, now: float) -> None:
        horizon = now - self._keep_s
        while self._recent and self._recent[0][0] < horizon:
            self._recent.popleft()


class HandOverGate:
    """A restarted actor's gate, on its event loop: calls wait at it until
    every daemon in ``awaited`` has handed over, or ``wait_s`` has passed.
    Calls resume in the order they came (an ``asyncio.Event``'s waiters
    wake in order)."""

    def __init__(self, awaited: Iterable[str], wait_s: float = HAND_OVER_WAIT_S) -> None:
        self._awaited = set(awaited)
        self._until = time.monotonic() + wait_s
        self._open: asyncio.Event | None = None
        self._timer: asyncio.TimerHandle | None = None

    @property
    def is_open(self) -> bool:
        return not self._awaited or time.monotonic() >= self._until

    async def passed(self) -> None:
        """Return once the gate is open."""
        if self.is_open:
            return
        if self._open is None:
            loop = asyncio.get_running_loop()
            self._open = asyncio.Event()
            self._timer = loop.call_at(
                loop.time() + max(0.0, self._until - time.monotonic()), self._open.set
            )
        await self._open.wait()

    def arrived(self, client: str) -> None:
        """``client`` handed over."""
        self._awaited.discard(client)
        if not self._awaited and self._open is not None:
            self._open.set()
            if self._timer is not None:
                self._timer.cancel()

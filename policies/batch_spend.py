"""The Batch API's share of the daily budget: each job's cost, committed
when it is submitted and settled when its results arrive.

A batch job's real cost is known only when its results are read, up to a
day after it was sent. Were it counted only then, every interactive call
and every other job of that day would be granted against a spend that
leaves the job out, and the day would be overspent by whatever the jobs in
flight cost. So a job's *estimate* is committed before the job is created
(``policies.budget.DailyBudget.commit_batch`` decides how many of its
requests the day can still pay for), and the job's real cost replaces it
when it settles -- 0 for a job whose articles were given back (failed,
cancelled, expired, never created).

A job belongs to the quota day it was submitted on: settled after the
next midnight, it settles into the day before (which is over), as the
calls of that day do. Settling is idempotent by job id, so a settle that
arrives twice, or for a job this process never committed (another
process submitted it, or a restart lost the commitment), counts once.

Pure: days are the quota calendar's day numbers, passed in.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["BatchSpend", "fitting"]


def fitting(costs: Sequence[float], room: float) -> tuple[int, float]:
    """How many of ``costs``, from the first, fit in ``room`` together, and
    what they add up to."""
    total, n = 0.0, 0
    for cost in costs:
        if total + cost > room:
            break
        total += cost
        n += 1
    return n, total


@dataclass(slots=True)
class _Job:
    tier: str
    day: int
    usd: float  # the estimate while in flight, the real cost once settled
    requests: int
    settled: bool = False


class BatchSpend:
    """Every batch job of the budget's day (and those of earlier days still
    in flight), with running sums per tier so a budget check costs
    O(tiers), not O(jobs)."""

    def __init__(self) -> None:
        self._jobs: dict[str, _Job] = {}
        self._day = 0
        self._pending: dict[str, float] = {}
        self._spent: dict[str, float] = {}

    # ---- what the day holds ---------------------------------------------------

    def pending(self) -> Mapping[str, float]:
        """Today's jobs in flight at their estimate, per tier."""
        return self._pending

    def spent(self) -> Mapping[str, float]:
        """Today's settled jobs at their real cost, per tier."""
        return self._spent

    def approved(self, job_id: str) -> int | None:
        """How many requests of ``job_id`` were committed (None: unknown)."""
        job = self._jobs.get(job_id)
        return None if job is None else job.requests

    # ---- the life of a job -------------------------------------------------------

    def commit(self, job_id: str, tier: str, day: int, usd: float, requests: int) -> None:
        """``requests`` of a job are about to be submitted on ``day``."""
        self.roll(day)
        self._jobs[job_id] = _Job(tier, day, usd, requests)
        if day == self._day:
            self._pending[tier] = self._pending.get(tier, 0.0) + usd

    def settle(self, job_id: str, tier: str, usd: float, submitted_day: int, today: int) -> float:
        """The job is over and cost ``usd`` (0: its articles went back);
        returns what that adds to today's settled spend (0 for another day's
        job, or one settled already)."""
        self.roll(today)
        job = self._jobs.get(job_id)
        if job is not None and job.settled:
            return 0.0
        if job is None:
            if usd <= 0:
                return 0.0  # nothing committed, nothing spent: nothing to remember
            job = self._jobs[job_id] = _Job(tier, submitted_day, 0.0, 0)
        elif job.day == self._day:
            self._pending[job.tier] = max(0.0, self._pending.get(job.tier, 0.0) - job.usd)
        job.settled = True
        job.usd = max(0.0, usd)
        if job.day != self._day:
            del self._jobs[job_id]  # another day's books: nothing to count today
            return 0.0
        self._spent[job.tier] = self._spent.get(job.tier, 0.0) + job.usd
        return job.usd

    def roll(self, today: int) -> None:
        """A new quota day: earlier days' settled jobs are forgotten, those
        still in flight are kept (their settle is recognised, and ignored)."""
        if today == self._day:
            return
        self._day = today
        self._jobs = {k: j for k, j in self._jobs.items() if not j.settled or j.day == today}
        self._recount()

    def _recount(self) -> None:
        self._pending, self._spent = {}, {}
        for job in self._jobs.values():
            if job.day != self._day:
                continue
            sums = self._spent if job.settled else self._pending
            sums[job.tier] = sums.get(job.tier, 0.0) + job.usd

    # ---- persistence ----------------------------------------------------------------

    def snapshot(self) -> list[list[Any]]:
        """Plain data: ``[job id, tier, day, usd, requests, settled]`` per job."""
        return [
            [job_id, j.tier, j.day, j.usd, j.requests, j.settled]
            for job_id, j in sorted(self._jobs.items())
        ]

    def restore(self, rows: list[list[Any]], today: int) -> None:
        """Loads a ``snapshot`` (raises ``TypeError``/``ValueError`` for a
        malformed one; the budget turns that into its snapshot error)."""
        jobs: dict[str, _Job] = {}
        for row in rows:
            job_id, tier, day, usd, requests, settled = row
            if isinstance(day, bool) or not isinstance(day, int):
                raise TypeError(f"batch job {job_id!r}: day {day!r} is not a day number")
            if isinstance(usd, bool) or not isinstance(usd, int | float) or not usd >= 0:
                raise ValueError(f"batch job {job_id!r}: cost {usd!r} is not a number >= 0")
            jobs[str(job_id)] = _Job(str(tier), day, float(usd), int(requests), bool(settled))
        self._jobs = jobs
        self._day = today
        self._recount()

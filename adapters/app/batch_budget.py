"""The daily budget as the batch dispatcher meets it: a job's estimate is
committed before the job is created, a tier whose next job the day cannot
pay for is *held* (asked again after ``retry_s``), and every job's cost
settles it -- 0 when its articles went back.

The decisions are the budget's (``policies.budget.DailyBudget``, in the
registry, reached through ``Runtime.commit_batch`` and ``settle_batch``);
this only asks, off the dispatcher's event loop, and remembers the holds.

Whether the budget still holds a tier after money was freed (a job or a
call settled below its estimate) is only known by asking again:
``retry_held`` has every held tier asked at the dispatcher's next turn and
returns a number that ``refused_since`` later tells was answered "no" --
what ``tierbatch run`` waits for before it ends on a budget that holds the
rest.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Protocol

import structlog

from tierbatch.policies.articles import Article
from tierbatch.policies.batch_jobs import JobRequest
from tierbatch.policies.packing import article_tokens, request_overhead
from tierbatch.policies.tokens import TokenEstimator

__all__ = ["BatchBudget", "JobBudget"]

_log = structlog.get_logger(__name__)


class BatchBudget(Protocol):
    """What the dispatcher needs of the daily budget (``Runtime``'s
    ``commit_batch`` and ``settle_batch``)."""

    def commit_batch(
        self, job_id: str, tier: str, model: str, request_tokens: Sequence[int]
    ) -> int:
        """How many of the job's requests, the first ones, are committed."""
        ...

    def settle_batch(self, job_id: str, tier: str, usd: float, submitted_at: float) -> None: ...


class JobBudget:
    """See the module docstring; ``budget`` None: no daily budget (every
    job is paid for, nothing is held)."""

    def __init__(self, budget: BatchBudget | None, retry_s: float) -> None:
        self._budget = budget
        self._retry_s = retry_s
        self._estimator = TokenEstimator()
        self._lock = threading.Lock()
        self._held: dict[str, float] = {}  # tier -> monotonic time to ask again
        self._asked = 0  # retries requested (``retry_held``)
        self._refused = 0  # the latest such request a refusal answered

    def held(self) -> frozenset[str]:
        """The tiers the budget holds now."""
        with self._lock:
            return frozenset(self._held)

    def waits(self, tier: str, now: float) -> bool:
        """Whether ``tier`` is held and not due to be asked again at ``now``
        (monotonic)."""
        with self._lock:
            return now < self._held.get(tier, -math.inf)

    def retry_held(self) -> int:
        """Ask again for every held tier at the next turn; the number that
        ``refused_since`` takes."""
        with self._lock:
            self._asked += 1
            self._held = dict.fromkeys(self._held, -math.inf)
            return self._asked

    def refused_since(self, asked: int) -> bool:
        """Whether an ask made after ``retry_held`` returned ``asked`` was refused."""
        with self._lock:
            return self._refused >= asked

    async def commit(
        self,
        job_id: str,
        tier: str,
        model: str,
        requests: Sequence[JobRequest],
        articles: Mapping[str, Article],
    ) -> int:
        """How many of ``requests``, the first ones, the budget committed
        (all without a budget); fewer holds the tier."""
        budget = self._budget
        if budget is None:
            return len(requests)
        with self._lock:
            asked = self._asked
        overhead = request_overhead(self._estimator)
        tokens = [
            overhead + sum(article_tokens(self._estimator, articles[i]) for i in r.article_ids)
            for r in requests
        ]
        try:
            approved = await asyncio.to_thread(budget.commit_batch, job_id, tier, model, tokens)
        except Exception as exc:  # any failure to ask: nothing is committed, the job waits
            _log.warning(
                "the daily budget could not be asked; the job waits",
                error=f"{type(exc).__name__}: {exc}",
            )
            approved = 0
        approved = max(0, min(approved, len(requests)))
        if approved == len(requests):
            with self._lock:
                self._held.pop(tier, None)
            return approved
        if approved == 0:
            # Nothing committed (or an answer lost on the way): release it.
            self.settle(job_id, tier, 0.0, time.time())
        with self._lock:
            first = tier not in self._held
            self._held[tier] = time.monotonic() + self._retry_s
            self._refused = max(self._refused, asked)
        if first:
            _log.info(
                "batch job waits for the daily budget",
                tier=tier,
                requests=len(requests) - approved,
                committed_requests=approved,
            )
        return approved

    def settle(self, job_id: str, tier: str, usd: float, submitted_at: float) -> None:
        """Tell the budget what a job cost (0: nothing); best effort."""
        if self._budget is None:
            return
        try:
            self._budget.settle_batch(job_id, tier, usd, submitted_at)
        except Exception as exc:  # best effort: the job is over whatever the budget heard
            _log.warning(
                "the daily budget was not told of a batch job",
                job_id=job_id,
                error=f"{type(exc).__name__}: {exc}",
            )

"""The contract between the harness and a system under test.

A system is handed the workload's articles with their arrival times, the
server's base URL and key, a start time ``t0`` and a ``deadline``. It must
hand each article to its own machinery no earlier than its arrival time,
report every terminal result to the ``Recorder``, stop by itself at the
deadline (or when every article is terminal), and say which articles it
still held when it stopped -- from its own data structures, so the harness
can check that nothing was lost: every article is terminal exactly once or
still held.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from bench.corpus import BenchArticle
from bench.measure import Recorder
from bench.settings import API_KEY, BenchSettings
from bench.workloads import Workload
from tierbatch.policies.articles import Article


@dataclass
class RunContext:
    settings: BenchSettings
    workload: Workload
    base_url: str
    t0: float
    deadline: float
    recorder: Recorder
    api_key: str = API_KEY

    @property
    def articles(self) -> list[BenchArticle]:
        return self.workload.articles

    def tier_of(self) -> dict[str, int]:
        return {a.article.id: a.tier for a in self.workload.articles}

    def arrival_groups(self) -> Iterator[tuple[float, list[BenchArticle]]]:
        """(absolute time, articles arriving then), in time order."""
        group: list[BenchArticle] = []
        at = None
        for item, offset in zip(self.workload.articles, self.workload.arrivals, strict=True):
            if at is not None and offset != at:
                yield self.t0 + at, group
                group = []
            at = offset
            group.append(item)
        if group and at is not None:
            yield self.t0 + at, group

    def remaining(self) -> float:
        return self.deadline - time.time()


@dataclass
class SystemResult:
    """``unfinished``: ids the system still held (queued, in flight, waiting
    for a retry) when it stopped; ``fed``: ids it was handed."""

    fed: set[str]
    unfinished: set[str]
    stats: dict[str, Any] = field(default_factory=dict)
    cpu_by_thread: dict[str, float] = field(default_factory=dict)


class System(Protocol):
    def run(self, ctx: RunContext) -> SystemResult: ...


async def feed_async(ctx: RunContext, put: Callable[[Sequence[Article]], None]) -> None:
    """Hand articles to ``put`` at their arrival times (on the running loop)."""
    for at, group in ctx.arrival_groups():
        delay = at - time.time()
        if delay > 0:
            if at >= ctx.deadline:
                return
            await asyncio.sleep(delay)
        put([g.article for g in group])

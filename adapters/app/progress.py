"""Progress reporting while a run or the daemon works.

At a terminal a person wants to watch: ``LiveProgress`` redraws a small rich
display per tier (queued, done, failed, throughput) and per model (requests
in the rate window against the per-minute limit, today's requests against
the daily one, cooldowns). Anywhere else -- CI, tests, a daemon under
systemd -- a redrawn display would be noise in a log file, so
``LogProgress`` writes one structured log line every ``interval_s`` instead.

The daemon loop calls ``update`` as often as it likes; each reporter decides
itself whether it is time to draw, so the loop needs no timers of its own.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TextIO

import structlog
from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from tierbatch.adapters.app.budget_view import budget_line
from tierbatch.policies.config import ModelSpec

if TYPE_CHECKING:
    from tierbatch.actors.runtime import RuntimeStats

_log = structlog.get_logger("tierbatch.progress")


@dataclass(frozen=True, slots=True)
class ProgressView:
    """One moment of a run, as the reporters show it.

    ``finished`` counts articles this process brought to a terminal result;
    ``db_counts`` is the queue table per state (None when not read this time).
    """

    elapsed_s: float
    now: float
    stats: RuntimeStats
    finished: int
    rate_per_s: float
    db_counts: Mapping[str, int] | None
    models: Mapping[str, ModelSpec]
    draining: bool = False
    # Wall-clock time at ``now`` (for the daily budget's reset); None: unknown.
    wall_now: float | None = None


class ProgressReporter(Protocol):
    def start(self) -> None: ...

    def update(self, view: ProgressView) -> None: ...

    def stop(self) -> None: ...


class RateMeter:
    """Throughput over the last ``window_s`` seconds of (monotonic) readings."""

    def __init__(self, window_s: float = 10.0) -> None:
        self._window = window_s
        self._points: deque[tuple[float, int]] = deque()

    def add(self, at: float, total: int) -> float:
        """Record the running ``total`` at ``at``; returns the current rate."""
        points = self._points
        points.append((at, total))
        while len(points) > 2 and points[1][0] <= at - self._window:
            points.popleft()
        first_at, first_total = points[0]
        span = at - first_at
        return (total - first_total) / span if span > 0 else 0.0


class NoProgress:
    """Reports nothing (``--no-progress``)."""

    def start(self) -> None:
        pass

    def update(self, view: ProgressView) -> None:
        pass

    def stop(self) -> None:
        pass


class LogProgress:
    """A structured ``progress`` log line every ``interval_s`` seconds."""

    def __init__(self, interval_s: float = 10.0) -> None:
        self._interval = interval_s
        self._next = 0.0
        self._last: ProgressView | None = None

    def start(self) -> None:
        self._next = time.monotonic() + self._interval

    def update(self, view: ProgressView) -> None:
        self._last = view
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + self._interval
        self._emit(view)

    def stop(self) -> None:
        if self._last is not None:
            self._emit(self._last)

    @staticmethod
    def _emit(view: ProgressView) -> None:
        stats = view.stats
        _log.info(
            "progress",
            elapsed_s=round(view.elapsed_s, 1),
            finished=view.finished,
            per_s=round(view.rate_per_s, 2),
            done_by_tier=dict(stats.done_by_tier),
            failed_by_tier=dict(stats.failed_by_tier),
            queued_by_tier=dict(stats.queued_by_tier),
            in_extractors=stats.in_extractors,
            in_flight_requests=stats.in_flight_requests,
            requests_today={m.model: m.requests_today for m in stats.models},
            cooling_down=sorted(stats.cooldowns),
            db=dict(view.db_counts) if view.db_counts is not None else None,
            draining=view.draining,
            **_budget_fields(view),
        )


def _budget_fields(view: ProgressView) -> dict[str, object]:
    budget = view.stats.budget
    if budget is None:
        return {}
    return {
        "budget_spent_usd": round(budget.spent_usd, 6),
        "budget_usd_per_day": budget.usd_per_day,
        "budget_stopped": list(budget.stopped_tiers),
    }


class LiveProgress:
    """A live rich display on a terminal, redrawn at most ``refresh_s`` apart."""

    def __init__(self, file: TextIO, *, title: str = "", refresh_s: float = 0.5) -> None:
        self._console = Console(file=file, highlight=False)
        self._title = title
        self._refresh = refresh_s
        self._next = 0.0
        self._db: Mapping[str, int] | None = None
        self._live = Live(
            Text("starting ..."),
            console=self._console,
            auto_refresh=False,
            transient=False,
            redirect_stderr=True,
            redirect_stdout=False,
        )

    def start(self) -> None:
        self._live.start()

    def update(self, view: ProgressView) -> None:
        now = time.monotonic()
        if view.db_counts is not None:
            self._db = view.db_counts
        if now < self._next:
            return
        self._next = now + self._refresh
        self._live.update(render_view(view, self._title, self._db), refresh=True)

    def stop(self) -> None:
        self._live.stop()


def render_view(view: ProgressView, title: str = "", db: Mapping[str, int] | None = None) -> Group:
    """The live display's content for ``view`` (separate for testing)."""
    stats = view.stats
    db = view.db_counts if view.db_counts is not None else db
    head = Text(
        f"{title}  " if title else "",
        style="bold",
    )
    head.append(
        f"{view.finished} finished, {view.rate_per_s:.1f}/s, {view.elapsed_s:.0f} s elapsed; "
        f"{stats.in_extractors} in extractors, {stats.in_flight_requests} request(s) in flight"
    )
    if db is not None:
        head.append(
            f"; database: {db.get('queued', 0)} queued, {db.get('leased', 0)} leased, "
            f"{db.get('done', 0)} done, {db.get('failed', 0)} failed"
        )
    if view.draining:
        head.append("  [draining: finishing in-flight work]", style="yellow")
    tiers = Table(box=box.SIMPLE_HEAD, show_edge=False)
    for name in ("tier", "queued", "done", "failed"):
        tiers.add_column(name, justify="left" if name == "tier" else "right")
    names = list(stats.queued_by_tier) or sorted(
        set(stats.done_by_tier) | set(stats.failed_by_tier)
    )
    for tier in names:
        tiers.add_row(
            tier,
            str(stats.queued_by_tier.get(tier, 0)),
            str(stats.done_by_tier.get(tier, 0)),
            str(stats.failed_by_tier.get(tier, 0)),
        )
    models = Table(box=box.SIMPLE_HEAD, show_edge=False)
    for name in ("model", "in flight", "window req / rpm", "today / rpd", "cooldown"):
        models.add_column(name, justify="left" if name == "model" else "right")
    for status in stats.models:
        spec = view.models.get(status.model)
        rpm = f"{spec.rpm}" if spec and spec.rpm else "∞"
        rpd = f"{spec.rpd}" if spec and spec.rpd else "∞"
        until = stats.cooldowns.get(status.model)
        cooling = f"{until - view.now:.0f} s" if until and until > view.now else "-"
        models.add_row(
            status.model,
            str(status.in_flight),
            f"{status.requests_in_window} / {rpm}",
            f"{status.requests_today} / {rpd}",
            cooling,
        )
    if stats.budget is None:
        return Group(head, tiers, models)
    wall = view.wall_now if view.wall_now is not None else time.time()
    style = "yellow" if stats.budget.stopped_tiers else ""
    return Group(head, Text(budget_line(stats.budget, wall), style=style), tiers, models)

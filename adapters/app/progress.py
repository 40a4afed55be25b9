"""Progress reporting while a run or the daemon works.

At a terminal a person wants to watch: ``LiveProgress`` redraws a small rich
display per tier (queued, done, failed, throughput), per model (requests
in the rate window against the per-minute limit -- "configured 240, learnt
120" once the provider showed it admits less --, the burst it may send at
once and the limiter's shape, today's requests against the daily one,
cooldowns) and the dispatch plan in force (requests per tier and model).
Anywhere else -- CI, tests, a daemon under systemd -- a redrawn display
would be noise in a log file, so ``LogProgress`` writes one structured log
line every ``interval_s`` instead.

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
from tierbatch.adapters.app.learnt_limits import LearntLimits
from tierbatch.adapters.storage.store import BatchReport
from tierbatch.policies.config import ModelSpec

if TYPE_CHECKING:
    from tierbatch.actors.runtime import RuntimeStats
    from tierbatch.policies.planner import Plan

_log = structlog.get_logger(__name__)


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
    plan: Plan | None = None
    # Wall-clock time at ``now`` (for the daily budget's reset); None: unknown.
    wall_now: float | None = None
    # The database's batch jobs as last read (None: no Batch API, or not read yet).
    batch: BatchReport | None = None
    # Whether this process has the Batch API (the budget line's words).
    batch_api: bool = False
    # Articles waiting for a batch job the daily budget cannot pay for now, by tier.
    batch_held: tuple[tuple[str, int], ...] = ()


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
            limits={m.model: LearntLimits.of(m).to_json() for m in stats.models},
            cooling_down=sorted(stats.cooldowns),
            db=dict(view.db_counts) if view.db_counts is not None else None,
            draining=view.draining,
            **_budget_fields(view),
            **_batch_fields(view),
        )


def _budget_fields(view: ProgressView) -> dict[str, object]:
    budget = view.stats.budget
    if budget is None:
        return {}
    return {
        "budget_spent_usd": round(budget.spent_usd, 6),
        "budget_usd_per_day": budget.usd_per_day,
        "budget_stopped": list(budget.stopped_tiers),
        "budget_batch_usd": round(budget.batch_usd, 6),
        "budget_moved_to_batch": list(budget.moved_tiers) if view.batch_api else [],
    }


def _batch_fields(view: ProgressView) -> dict[str, object]:
    if view.batch is None and not view.batch_held:
        return {}
    out: dict[str, object] = {"batch_held": dict(view.batch_held)}
    if view.batch is not None:
        out["batch_jobs_in_flight"] = view.batch.in_flight
        out["batch_articles_in_flight"] = view.batch.articles_in_flight
    return out


def batch_text(view: ProgressView) -> str | None:
    """The batch jobs in flight, and what waits for the budget, in one line."""
    batch = view.batch
    if batch is None and not view.batch_held:
        return None
    parts = []
    if batch is not None:
        parts.append(
            f"batch jobs: {batch.in_flight} in flight ({batch.articles_in_flight} articles), "
            f"{batch.settled} settled, {batch.returned} returned"
        )
    if view.batch_held:
        held = ", ".join(f"{tier} {n}" for tier, n in view.batch_held)
        parts.append(f"waiting for the daily budget: {held} article(s)")
    return "; ".join(parts)


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
    columns = ("model", "in flight", "window req / rpm", "burst", "today / rpd", "cooldown")
    for name in columns:
        models.add_column(name, justify="left" if name == "model" else "right")
    for status in stats.models:
        spec = view.models.get(status.model)
        learnt = LearntLimits.of(status)
        rpm = (
            learnt.rpm_text
            if status.configured_rpm
            else (f"{spec.rpm}" if spec and spec.rpm else "∞")
        )
        rpd = f"{spec.rpd}" if spec and spec.rpd else "∞"
        until = stats.cooldowns.get(status.model)
        cooling = f"{until - view.now:.0f} s" if until and until > view.now else "-"
        models.add_row(
            status.model,
            str(status.in_flight),
            f"{status.requests_in_window} / {rpm}",
            learnt.burst_text,
            f"{status.requests_today} / {rpd}",
            cooling,
        )
    parts: list[Text | Table] = [head, tiers, models]
    if stats.budget is not None:
        wall = view.wall_now if view.wall_now is not None else time.time()
        style = "yellow" if stats.budget.stopped_tiers or stats.budget.moved_tiers else ""
        line = budget_line(stats.budget, wall, batch_api=view.batch_api)
        parts.insert(1, Text(line, style=style))
    batch_line = batch_text(view)
    if batch_line is not None:
        parts.insert(2 if stats.budget is not None else 1, Text(batch_line))
    if view.plan is not None:
        parts.append(plan_text(view.plan))
    return Group(*parts)


def plan_text(plan: Plan) -> Text:
    """The dispatch plan in force, one line per tier: its requests per model
    and when it should be done ("hot: pro 12, flash 3; done in 40 s")."""
    text = Text("plan", style="bold")
    if plan.makespan_s is not None:
        text.append(f" (backlog done in {plan.makespan_s:.0f} s)")
    else:
        text.append(" (arrivals outrun the quota: the lowest tiers queue)")
    for tier in plan.tiers:
        if tier.demand <= 0:
            continue
        shares = ", ".join(f"{model} {n:.0f}" for model, n in tier.requests.items() if n >= 0.5)
        done = "-" if tier.finish_s is None else f"{tier.finish_s:.0f} s"
        text.append(f"\n  {tier.tier}: {shares or 'nothing yet'}; done in {done}")
    return text

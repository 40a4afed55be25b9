"""``tierbatch plan``: what the quotas allow for a backlog, before running it.

For a config and a backlog -- a JSONL file, the shipped sample, or what a
queue database still holds (queued and leased rows, read-only) -- it prints
the tier split (scored by the composer's own priority code, ``policies.
sizing``), the plan (which tier on which model, how many requests, how many
per window), when each tier will be done, which limits decide that, and the
bound: when the backlog's last request can go at the earliest. A sizing
tool as much as a preview: "with these quotas your backlog takes 3 h 40
min; gemini-2.5-pro requests are the bottleneck for hot".

Capacity is a fresh quota state, or the one restored from the quota
snapshot file when there is one (today's usage, cooldowns and the limits
learnt from the provider included). The same sizing gives ``run`` its
bound (``plan_backlog``); the Batch API's routes are ``plan_routes``'.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, TextIO

from rich import box
from rich.console import Console
from rich.table import Table

from tierbatch.actors.runtime import tier_shapes
from tierbatch.adapters.app.budget_view import budget_line
from tierbatch.adapters.app.plan_routes import (
    budget_for,
    format_duration,
    jobs_lines,
    plan_routes,
    route_lines,
    routes_json,
    saved_state,
)
from tierbatch.adapters.app.tier_split import split_lines
from tierbatch.adapters.storage.snapshot_file import decode
from tierbatch.adapters.storage.store import BatchReport
from tierbatch.policies.articles import Article
from tierbatch.policies.batch_routing import Routing
from tierbatch.policies.budget import BudgetState
from tierbatch.policies.config import Config, LimiterMode
from tierbatch.policies.errors import SnapshotError
from tierbatch.policies.planner import Binding, ModelCapacity
from tierbatch.policies.quota import QuotaPolicy
from tierbatch.policies.sizing import Sizing, size_backlog, tier_split_of
from tierbatch.policies.tier_assignment import TierSplit
from tierbatch.policies.tiers import TierLadder

__all__ = [
    "CapacitySource",
    "PlanReport",
    "format_duration",
    "plan_backlog",
    "plan_for",
    "plan_lines",
    "quota_capacity",
    "render_plan",
]

_KINDS = {
    "requests": "requests per minute",
    "tokens": "input tokens per minute",
    "daily": "requests per day",
}


@dataclass(frozen=True, slots=True)
class CapacitySource:
    """Where the capacity came from: ``snapshot`` None for fresh quotas;
    ``problem`` says why a snapshot could not be used (fresh quotas then)."""

    snapshot: str | None = None
    age_s: float | None = None
    problem: str | None = None

    def describe(self) -> str:
        if self.snapshot is None:
            why = f" (the snapshot is unusable: {self.problem})" if self.problem else ""
            return f"fresh quotas: nothing used yet, the configured limits{why}"
        age = "" if self.age_s is None else f", saved {format_duration(self.age_s)} ago"
        return (
            f"the quota snapshot {self.snapshot}{age}: today's usage, cooldowns "
            "and the limits learnt from the provider"
        )


def quota_capacity(
    config: Config,
    snapshot: Path | None,
    now: float,
    *,
    unavailable: Mapping[str, str] | None = None,
    whole_windows: bool = False,
) -> tuple[QuotaPolicy, dict[str, ModelCapacity], CapacitySource]:
    """A quota policy as a run would start with it at wall-clock ``now``
    (restored from ``snapshot`` when that file exists and can be used,
    else fresh), its capacity for the planner, and where it came from.
    ``unavailable`` models are routed around, as after the models check.
    ``whole_windows``: each model's whole window may go at once (as with
    ``quota.limiter = "window"``) -- the most the quotas allow, whatever
    the pacing: the bound."""
    if whole_windows:
        config = replace(config, quota=replace(config.quota, limiter=LimiterMode.WINDOW))
    policy: QuotaPolicy | None = None
    source = CapacitySource()
    if snapshot is not None:
        try:
            data = snapshot.read_bytes()
            age = max(0.0, now - snapshot.stat().st_mtime)
        except FileNotFoundError:
            pass
        except OSError as exc:
            source = CapacitySource(problem=f"cannot read {snapshot}: {exc}")
        else:
            try:
                policy = QuotaPolicy.restore(config.models, config.quota, decode(data))
                source = CapacitySource(str(snapshot), age)
            except SnapshotError as exc:
                source = CapacitySource(problem=str(exc))
    if policy is None:
        policy = QuotaPolicy(config.models, config.quota)
    for model, reason in (unavailable or {}).items():
        policy.mark_unavailable(model, reason)
    return policy, policy.capacity(now), source


@dataclass(frozen=True, slots=True)
class PlanReport:
    """A sized backlog and what it was sized from, ready to print."""

    source: str
    sizing: Sizing
    capacity: Mapping[str, ModelCapacity]
    capacity_source: CapacitySource
    per_request: Mapping[str, int]
    chains: Mapping[str, tuple[str, ...]]
    unusable: int = 0
    # The same backlog on whole windows at once: the most the quotas allow.
    best: Sizing | None = None
    # How the backlog splits into the tiers, as ``run`` prints it.
    split: TierSplit | None = None
    # Which way each tier goes (only for a config that may use the Batch API).
    routes: tuple[Routing, ...] = ()
    # The daily budget as a run would start with it (None: no [budget]).
    budget: BudgetState | None = None
    # The database's batch jobs (``--db``; None: not a database, or none read).
    batch: BatchReport | None = None
    # The [batch] discount, for the budget's words on a moved tier.
    discount: float = 0.5
    # Wall-clock time the plan was made at (the budget's reset is counted from it).
    wall: float = 0.0

    @property
    def bound_s(self) -> float | None:
        """When the last request can go at the earliest: the makespan on
        whole windows, never later than the plan's own."""
        plan = self.sizing.makespan_s
        best = None if self.best is None else self.best.makespan_s
        if best is None:
            return plan
        return best if plan is None else min(best, plan)

    @property
    def warnings(self) -> tuple[str, ...]:
        out = []
        for tier in self.sizing.empty_tiers:
            out.append(
                f"tier {tier!r} is empty: no article's priority falls in it "
                "(check its min_priority and the [priority] weights)"
            )
        if self.unusable:
            out.append(f"{self.unusable} input line(s) or row(s) are not usable articles (skipped)")
        if self.sizing.articles and self.sizing.makespan_s is None:
            out.append(
                "the quotas cannot finish this backlog (a daily limit or an unavailable "
                f"model): the plan covers the next {format_duration(self.sizing.plan.horizon_s)}"
            )
        return tuple(out)

    def headline(self) -> str:
        """The sizing in one sentence."""
        sizing = self.sizing
        if not sizing.articles:
            return "nothing to plan: the backlog is empty"
        makespan = sizing.makespan_s
        if makespan is None:
            return "with these quotas the backlog cannot be finished (see the warnings)"
        line = f"with these quotas this backlog takes {format_duration(makespan)}"
        bound = self.bound_s
        if bound is not None and bound < makespan - 0.5:
            line += (
                f" (the bound, with each model's whole window at once: {format_duration(bound)})"
            )
        last = [t for t in sizing.tiers if t.plan is not None and t.plan.binding]
        if last:
            latest = max(last, key=lambda t: t.finish_s or 0.0)
            assert latest.plan is not None
            limits = " and ".join(_binding(b) for b in latest.plan.binding)
            line += f"; {limits} {'are' if len(latest.plan.binding) > 1 else 'is'} "
            line += f"the bottleneck for {latest.load.tier}"
        return line

    def to_json(self) -> dict[str, Any]:
        sizing = self.sizing
        window = sizing.window_s
        return {
            "source": self.source,
            "articles": sizing.articles,
            "requests": sizing.requests,
            "unusable": self.unusable,
            "capacity_source": {
                "snapshot": self.capacity_source.snapshot,
                "age_s": self.capacity_source.age_s,
                "problem": self.capacity_source.problem,
            },
            "window_s": window,
            "makespan_s": sizing.makespan_s,
            "bound_s": self.bound_s,
            "horizon_s": sizing.plan.horizon_s,
            "headline": self.headline(),
            "warnings": list(self.warnings),
            "empty_tiers": list(sizing.empty_tiers),
            "split": None if self.split is None else asdict(self.split),
            "routes": routes_json(self.routes, self.budget, self.discount),
            "budget": None if self.budget is None else asdict(self.budget),
            "batch_jobs": None if self.batch is None else asdict(self.batch),
            "tiers": [
                {
                    "tier": t.load.tier,
                    "rank": t.load.rank,
                    "articles": t.load.articles,
                    "tokens_per_article": t.load.tokens_per_article,
                    "requests": t.demand.requests,
                    "tokens_per_request": t.demand.tokens_per_request,
                    "max_articles_per_request": self.per_request.get(t.load.tier, 1),
                    "chain": list(self.chains.get(t.load.tier, ())),
                    "finish_s": t.finish_s,
                    "models": {
                        model: {"requests": n, "per_window": t.per_window(window)[model]}
                        for model, n in (t.plan.requests.items() if t.plan else ())
                        if n > 1e-6
                    },
                    "binding": [
                        {"model": b.model, "kind": b.kind}
                        for b in (t.plan.binding if t.plan else ())
                    ],
                }
                for t in sizing.tiers
            ],
            "models": {
                name: {
                    "ready_requests": _finite(cap.ready_requests),
                    "requests_per_window": _finite(cap.requests_per_s * window),
                    "ready_tokens": _finite(cap.ready_tokens),
                    "tokens_per_window": _finite(cap.tokens_per_s * window),
                    "left_today": _finite(cap.left_today),
                    "delay_s": cap.delay_s,
                    "spare": _finite(sizing.plan.spare.get(name, math.inf)),
                }
                for name, cap in self.capacity.items()
            },
        }


def plan_backlog(
    config: Config,
    articles: Sequence[Article],
    capacity: Mapping[str, ModelCapacity],
    capacity_source: CapacitySource,
    *,
    source: str,
    wall: float | None = None,
    unusable: int = 0,
    best_capacity: Mapping[str, ModelCapacity] | None = None,
    quota_state: Mapping[str, Any] | None = None,
    batch: BatchReport | None = None,
) -> PlanReport:
    """Size ``articles`` for ``config`` on ``capacity`` at wall-clock time
    ``wall`` (default: now; priorities decay with the articles' age), and on
    ``best_capacity`` (whole windows at once) for the bound. ``quota_state``
    (the snapshot's) holds the day's budget spend; ``batch`` a database's
    batch jobs."""
    wall = time.time() if wall is None else wall
    ladder = TierLadder(config.tiers, config.global_fallback)
    shapes = tier_shapes(config, ladder)
    loads, split = tier_split_of(articles, config, wall)
    window = config.quota.window_s
    sizing = size_backlog(loads, shapes, capacity, window_s=window)
    best = (
        None
        if best_capacity is None
        else size_backlog(loads, shapes, best_capacity, window_s=window)
    )
    budget = budget_for(config, quota_state, loads, wall)
    routes = (
        plan_routes(config, loads, shapes, capacity, budget, window) if config.uses_batch else ()
    )
    return PlanReport(
        source=source,
        sizing=sizing,
        capacity=capacity,
        capacity_source=capacity_source,
        per_request={s.tier: s.per_request for s in shapes},
        chains={s.tier: s.chain for s in shapes},
        unusable=unusable,
        best=best,
        split=split,
        routes=routes,
        budget=budget,
        batch=batch,
        discount=config.batch.discount,
        wall=wall,
    )


def plan_for(
    config: Config,
    articles: Sequence[Article],
    snapshot: Path | None,
    wall: float,
    *,
    source: str,
    unusable: int = 0,
    unavailable: Mapping[str, str] | None = None,
    batch: BatchReport | None = None,
) -> PlanReport:
    """The plan for ``articles`` with the quotas a run would start with at
    wall-clock ``wall`` (``snapshot`` restored when usable, else fresh),
    and its bound (the same quotas, whole windows at once); ``batch``: a
    database's batch jobs."""
    _, capacity, capacity_source = quota_capacity(config, snapshot, wall, unavailable=unavailable)
    _, best, _ = quota_capacity(config, snapshot, wall, unavailable=unavailable, whole_windows=True)
    return plan_backlog(
        config,
        articles,
        capacity,
        capacity_source,
        source=source,
        wall=wall,
        unusable=unusable,
        best_capacity=best,
        quota_state=saved_state(snapshot) if capacity_source.snapshot is not None else None,
        batch=batch,
    )


def render_plan(report: PlanReport, file: TextIO) -> None:
    console = Console(
        file=file,
        width=None if file.isatty() else 160,
        no_color=not file.isatty(),
        highlight=False,
        soft_wrap=False,
        markup=False,  # file names and model names are shown as they are
    )
    sizing = report.sizing
    window = sizing.window_s
    console.print(f"backlog: {sizing.articles} article(s) from {report.source}")
    for text in jobs_lines(report.batch):
        console.print(text, soft_wrap=True)
    console.print(f"capacity: {report.capacity_source.describe()}", soft_wrap=True)
    if report.split is not None:
        for text in split_lines(report.split, of="the backlog"):
            console.print(text, soft_wrap=True)
    requests = ", ".join(
        f"{t.load.tier} {t.demand.requests:.0f} of up to "
        f"{report.per_request.get(t.load.tier, 1)} article(s)"
        for t in sizing.tiers
    )
    console.print(f"requests: {requests}", soft_wrap=True)
    if report.budget is not None:
        console.print(budget_line(report.budget, report.wall), soft_wrap=True)
    for text in route_lines(report.routes, report.budget, report.discount):
        console.print(text, soft_wrap=True)
    for warning in report.warnings:
        console.print(f"warning: {warning}", soft_wrap=True)
    bound = report.bound_s
    if sizing.articles and bound is not None:
        console.print(
            f"bound: the last request can go after {format_duration(bound)} at the earliest "
            "(each model's whole window at once)",
            soft_wrap=True,
        )
    if sizing.articles:
        table = Table(
            title=f"plan (requests per model; per window = per {window:g} s quota window)",
            box=box.SIMPLE_HEAD,
            title_justify="left",
            pad_edge=False,
        )
        for name in ("tier", "articles", "requests", "models: requests (per window)"):
            table.add_column(name, justify="right" if name in ("articles", "requests") else "left")
        table.add_column("done after", justify="right")
        table.add_column("bound by")
        for t in sizing.tiers:
            per_window = t.per_window(window)
            models = ", ".join(
                f"{model} {n:.0f} ({per_window[model]:.1f})"
                for model, n in (t.plan.requests.items() if t.plan else ())
                if n > 1e-6
            )
            finish = t.finish_s
            table.add_row(
                t.load.tier,
                str(t.load.articles),
                f"{t.demand.requests:.0f}",
                models or "-",
                "not within the horizon" if finish is None else format_duration(finish),
                ", ".join(_binding(b) for b in t.plan.binding)
                if t.plan and t.plan.binding
                else "-",
            )
        console.print(table)
    console.print(report.headline(), soft_wrap=True)


def plan_lines(report: PlanReport) -> list[str]:
    """The plan in a few lines, as ``run`` prints it before it starts: one
    per tier with work, then the headline."""
    lines = []
    for t in report.sizing.tiers:
        if t.plan is None:
            continue
        models = ", ".join(f"{m} {n:.0f}" for m, n in t.plan.requests.items() if n > 1e-6)
        done = "-" if t.finish_s is None else format_duration(t.finish_s)
        lines.append(
            f"plan: {t.load.tier}: {t.load.articles} article(s) in {t.demand.requests:.0f} "
            f"request(s) on {models or '-'}; last one after {done}"
        )
    for warning in report.warnings:
        lines.append(f"plan: warning: {warning}")
    lines.append(f"plan: {report.headline()}")
    return lines


def _binding(binding: Binding) -> str:
    return f"{binding.model} {_KINDS.get(binding.kind, binding.kind)}"


def _finite(value: float) -> float | None:
    """JSON has no infinity: ``None`` stands for "no limit"."""
    return value if math.isfinite(value) else None

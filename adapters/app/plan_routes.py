"""What ``tierbatch plan`` says of the Batch API: which way each tier would
go and why (``policies.batch_routing``), with the daily budget a run would
start with (the day's spend as the quota snapshot has it, against this
backlog's cost); and durations in words, for the plan and the routes."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from tierbatch.actors.runtime import make_budget
from tierbatch.adapters.app.budget_view import usd
from tierbatch.adapters.storage.snapshot_file import decode
from tierbatch.adapters.storage.store import BatchReport
from tierbatch.policies.batch_routing import Route, RouteReason, Routing, routing
from tierbatch.policies.budget import BudgetState
from tierbatch.policies.config import Config
from tierbatch.policies.errors import SnapshotError
from tierbatch.policies.planner import ModelCapacity, TierShape
from tierbatch.policies.sizing import TierLoad, size_backlog

__all__ = [
    "budget_for",
    "format_duration",
    "jobs_lines",
    "plan_routes",
    "route_lines",
    "route_text",
    "routes_json",
    "saved_state",
]


def budget_for(
    config: Config, quota_state: Mapping[str, Any] | None, loads: Sequence[TierLoad], wall: float
) -> BudgetState | None:
    """The daily budget a run would start with at wall-clock ``wall``: the
    day's spend of ``quota_state``, this backlog (every tier with work
    counted as busy, as it will be), and the tiers it would move to batch."""
    budget = make_budget(config, quota_state)
    if budget is None:
        return None
    budget.set_backlog({t.tier: (t.articles, t.tokens_per_article) for t in loads})
    return budget.state(wall, {t.tier: t.articles for t in loads if t.articles})


def plan_routes(
    config: Config,
    loads: Sequence[TierLoad],
    shapes: Sequence[TierShape],
    capacity: Mapping[str, ModelCapacity],
    budget: BudgetState | None,
    window_s: float,
) -> tuple[Routing, ...]:
    """Each tier's way, as a daemon would route it: an ``auto`` tier by the
    plan of the interactive work alone (the tiers going to batch by their
    mode or the budget take no interactive quota, as in the daemon). None
    for a config whose tiers never use the Batch API."""
    if not config.uses_batch:
        return ()
    first = [routing(tier, None, budget) for tier in config.tiers]
    elsewhere = {
        r.tier for r in first if r.route is Route.BATCH and r.reason is not RouteReason.LATENCY
    }
    interactive = [replace(t, articles=0) if t.tier in elsewhere else t for t in loads]
    plan = size_backlog(interactive, shapes, capacity, window_s=window_s).plan
    return tuple(routing(tier, plan, budget) for tier in config.tiers)


def jobs_lines(batch: BatchReport | None) -> list[str]:
    """A database's batch jobs in flight, whose articles the plan leaves out."""
    if batch is None or not batch.in_flight:
        return []
    return [
        f"batch jobs: {batch.in_flight} in flight ({batch.articles_in_flight} article(s), "
        "not in the backlog: the Batch API has them)"
    ]


def route_lines(
    routes: Sequence[Routing], budget: BudgetState | None, discount: float
) -> list[str]:
    """``route: cold batch (mode = batch)``: a line per tier."""
    return [f"route: {r.tier} {r.route} ({route_text(r, budget, discount)})" for r in routes]


def routes_json(
    routes: Sequence[Routing], budget: BudgetState | None, discount: float
) -> list[dict[str, Any]]:
    return [
        {
            "tier": r.tier,
            "route": str(r.route),
            "reason": str(r.reason),
            "finish_s": r.finish_s,
            "max_latency_s": r.max_latency_s,
            "why": route_text(r, budget, discount),
        }
        for r in routes
    ]


def route_text(route: Routing, budget: BudgetState | None, discount: float) -> str:
    """Why a tier goes its way, in words."""
    if route.reason is RouteReason.MODE:
        return f"mode = {route.route}"
    if route.reason is RouteReason.BUDGET:
        row = None if budget is None else next(t for t in budget.tiers if t.tier == route.tier)
        if row is None or row.backlog_usd <= 0:
            return "moved by the daily budget: the day cannot pay for more of it interactively"
        return (
            f"moved by the daily budget: its backlog, ~{usd(row.backlog_usd)} at interactive "
            f"prices, is more than the day has left for it; ~{usd(row.backlog_usd * discount)} "
            "in batch"
        )
    latency = "-" if route.max_latency_s is None else format_duration(route.max_latency_s)
    if route.reason is RouteReason.NO_PLAN:
        return f"auto: nothing to plan, interactive (max_latency_s {latency})"
    done = "not within the horizon" if route.finish_s is None else format_duration(route.finish_s)
    if route.reason is RouteReason.LATENCY:
        return f"auto: the plan finishes it after {done}, over its max_latency_s of {latency}"
    return f"auto: the plan finishes it after {done}, within its max_latency_s of {latency}"


def saved_state(snapshot: Path | None) -> Mapping[str, Any] | None:
    """The quota snapshot's data (for its budget), None when unreadable
    (``quota_capacity`` said why already)."""
    if snapshot is None:
        return None
    try:
        data = decode(snapshot.read_bytes())
    except (OSError, SnapshotError):
        return None
    return data if isinstance(data, Mapping) else None


def format_duration(seconds: float) -> str:
    """``42 s``, ``3 min 20 s``, ``3 h 40 min``, ``2 d 5 h``."""
    if not math.isfinite(seconds):
        return "never"
    s = max(0.0, seconds)
    if s < 60:
        return f"{s:.0f} s" if s >= 10 or s == int(s) else f"{s:.1f} s"
    minutes, sec = divmod(round(s), 60)
    if minutes < 60:
        return f"{minutes} min {sec} s" if sec else f"{minutes} min"
    hours, minutes = divmod(round(s / 60), 60)
    if hours < 24:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(round(s / 3600), 24)
    return f"{days} d {hours} h" if hours else f"{days} d"

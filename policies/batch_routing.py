"""Which way a tier's articles go: interactive calls or the Batch API.

``batch`` tiers always go to the Batch API. Any other tier goes there too
while the daily budget has *moved* it (``on_exhausted = "batch"``: what the
day has left for the tier no longer pays for its backlog at interactive
prices; ``BudgetState.moved_tiers``, until the quota day's midnight). An
``auto`` tier also goes to the Batch API when the interactive quota cannot
meet its deadline: when the dispatch plan (``policies.planner.plan_dispatch``,
the registry's plan over the backlog it knows, the store's included) does
not finish the tier within its ``max_latency_s`` -- or not at all within the
planning horizon (arrivals outrun the quota). Without a plan yet (nothing
planned so far) an ``auto`` tier stays interactive: there is no evidence
that the quota cannot serve it.

The rule is re-evaluated for every chunk of leased articles, so an ``auto``
tier sends only its overflow to batch: what goes to batch shrinks the
interactive backlog, and once the plan meets the deadline again the tier's
next articles are called interactively.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from tierbatch.policies.budget_state import BudgetState
from tierbatch.policies.config import TierMode, TierSpec
from tierbatch.policies.planner import Plan

__all__ = ["Route", "RouteReason", "Routing", "route_for", "routes", "routing"]


class Route(StrEnum):
    INTERACTIVE = "interactive"
    BATCH = "batch"


class RouteReason(StrEnum):
    """Why a tier goes the way it goes."""

    MODE = "mode"  # its mode says so (interactive, or batch)
    BUDGET = "budget"  # the daily budget moved it to the Batch API
    LATENCY = "latency"  # auto: the interactive quota misses its max_latency_s
    ON_TIME = "on_time"  # auto: the interactive quota meets its max_latency_s
    NO_PLAN = "no_plan"  # auto: no plan yet, so no evidence against interactive


@dataclass(frozen=True, slots=True)
class Routing:
    """A tier's way and why; for ``auto``, when the plan finishes it
    (``finish_s``, None: not within the horizon) against its deadline."""

    tier: str
    route: Route
    reason: RouteReason
    finish_s: float | None = None
    max_latency_s: float | None = None


def routing(tier: TierSpec, plan: Plan | None, budget: BudgetState | None = None) -> Routing:
    """The way ``tier``'s next articles go, given the plan and the budget in force."""
    name = tier.name
    if tier.mode is TierMode.BATCH:
        return Routing(name, Route.BATCH, RouteReason.MODE)
    if budget is not None and name in budget.moved_tiers:
        return Routing(name, Route.BATCH, RouteReason.BUDGET)
    if tier.mode is TierMode.INTERACTIVE:
        return Routing(name, Route.INTERACTIVE, RouteReason.MODE)
    latency = tier.max_latency_s
    planned = None if plan is None or latency is None else plan.tier(name)
    if planned is None:
        return Routing(name, Route.INTERACTIVE, RouteReason.NO_PLAN, max_latency_s=latency)
    late = planned.finish_s is None or latency is None or planned.finish_s > latency
    return Routing(
        name,
        Route.BATCH if late else Route.INTERACTIVE,
        RouteReason.LATENCY if late else RouteReason.ON_TIME,
        planned.finish_s,
        latency,
    )


def route_for(tier: TierSpec, plan: Plan | None, budget: BudgetState | None = None) -> Route:
    """``routing``'s way alone."""
    return routing(tier, plan, budget).route


def routes(
    tiers: Sequence[TierSpec], plan: Plan | None, budget: BudgetState | None = None
) -> dict[str, Route]:
    """``route_for`` of every tier, by name."""
    return {tier.name: route_for(tier, plan, budget) for tier in tiers}

"""Which way a tier's articles go: interactive calls or the Batch API.

``batch`` tiers always go to the Batch API and ``interactive`` ones never.
An ``auto`` tier goes to the Batch API when the interactive quota cannot
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
from enum import StrEnum

from tierbatch.policies.config import TierMode, TierSpec
from tierbatch.policies.planner import Plan

__all__ = ["Route", "route_for", "routes"]


class Route(StrEnum):
    INTERACTIVE = "interactive"
    BATCH = "batch"


def route_for(tier: TierSpec, plan: Plan | None) -> Route:
    """The way ``tier``'s next articles go, given the plan in force."""
    if tier.mode is TierMode.INTERACTIVE:
        return Route.INTERACTIVE
    if tier.mode is TierMode.BATCH:
        return Route.BATCH
    if plan is None or tier.max_latency_s is None:
        return Route.INTERACTIVE
    planned = plan.tier(tier.name)
    if planned is None:
        return Route.INTERACTIVE
    if planned.finish_s is None or planned.finish_s > tier.max_latency_s:
        return Route.BATCH
    return Route.INTERACTIVE


def routes(tiers: Sequence[TierSpec], plan: Plan | None) -> dict[str, Route]:
    """``route_for`` of every tier, by name."""
    return {tier.name: route_for(tier, plan) for tier in tiers}

"""The daily budget end to end on the simulated provider: the day's budget
stops interactive calls (articles stay queued, none fails), the spend
survives a restart through the quota snapshot, and the next quota-day
midnight lets the rest through. The clock is a manual one the test moves:
no sleeping, no timing."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field, replace
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
from runtime_helpers import RecordingObserver, make_articles, small_config

from tierbatch.actors.runtime import Runtime
from tierbatch.actors.sinks import CollectingSink
from tierbatch.adapters.simulation.simulated import SimulatedProvider
from tierbatch.policies.budget import BudgetState
from tierbatch.policies.budget_config import BudgetConfig
from tierbatch.policies.costs import usage_cost
from tierbatch.policies.outcomes import Succeeded
from tierbatch.policies.results import Done

LA = ZoneInfo("America/Los_Angeles")
LATE = datetime(2026, 11, 27, 23, 0, tzinfo=LA).timestamp()
MIDNIGHT = datetime(2026, 11, 28, 0, 0, tzinfo=LA).timestamp()
USD_PER_DAY = 0.01


class ManualClock:
    """Steady and wall time the test moves by hand (one float, replaced whole)."""

    def __init__(self, start: float) -> None:
        self.t = start

    def now(self) -> float:
        return self.t

    def wall(self) -> float:
        return self.t

    def to_real(self, seconds: float) -> float:
        return seconds

    def advance(self, seconds: float) -> None:
        self.t += seconds


@dataclass
class BudgetWatch(RecordingObserver):
    """Sets ``held`` once the calls settled cost the whole budget (nothing
    more can be granted today) and no call is out."""

    states: list[BudgetState] = field(default_factory=list)
    held: threading.Event = field(default_factory=threading.Event)
    spent: float = 0.0

    def on_budget(self, state: BudgetState, at: float) -> None:
        self.states.append(state)
        self._check()

    def on_outcome(self, model, outcome, at) -> None:  # type: ignore[no-untyped-def]
        super().on_outcome(model, outcome, at)
        if isinstance(outcome, Succeeded):
            self.spent += usage_cost(CONFIG.models[model], outcome.usage)
        self._check()

    def _check(self) -> None:
        if self.spent >= USD_PER_DAY and len(self.outcomes) == len(self.grants):
            self.held.set()


CONFIG = replace(
    small_config(extractors=2, max_packs=8),
    budget=BudgetConfig(usd_per_day=USD_PER_DAY, output_ratio=3.0),
)


def test_the_budget_stops_calls_until_midnight_and_survives_a_restart() -> None:
    config = CONFIG
    articles = make_articles(200, seed=11)
    clock = ManualClock(LATE)
    provider = SimulatedProvider(config.models, clock, seed=5, latency_s=0.0)
    provider_usd = 0.0
    watch = BudgetWatch()
    sink = CollectingSink()
    runtime = Runtime(config, provider, sink, clock=clock, observer=watch).start()
    try:
        runtime.submit(articles)
        assert watch.held.wait(30), "the budget never stopped the run"
        stats = runtime.stats()
        snapshot = runtime.quota_snapshot()
    finally:
        unfinished = runtime.stop(drain=False)
    assert stats.budget is not None and stats.budget.exhausted
    assert stats.failed == 0 and stats.in_flight_requests == 0
    done_before = [r for r in sink.results if isinstance(r, Done)]
    assert 0 < len(done_before) < len(articles)
    assert len(unfinished) == len(articles) - len(done_before)  # queued, not failed
    # The day's spend is what the calls cost, at most one call over the budget.
    costs = [
        usage_cost(config.models[m], o.usage)
        for m, o, _ in watch.outcomes
        if isinstance(o, Succeeded)
    ]
    provider_usd = sum(costs)
    assert stats.budget.spent_usd == pytest.approx(provider_usd)
    assert USD_PER_DAY <= provider_usd <= USD_PER_DAY + max(costs)
    assert snapshot["budget"]["spent"]

    # A restart the same evening: the spend is restored, nothing is granted.
    watch2 = BudgetWatch()
    sink2 = CollectingSink()
    clock.advance(60)
    provider2 = SimulatedProvider(config.models, clock, seed=6, latency_s=0.0)
    runtime2 = Runtime(
        config, provider2, sink2, clock=clock, observer=watch2, quota_state=snapshot
    ).start()
    try:
        runtime2.submit(unfinished)
        first = runtime2.stats()
        assert first.budget is not None
        assert first.budget.spent_usd == pytest.approx(stats.budget.spent_usd)
        assert first.budget.exhausted
        runtime2.recheck_quota()
        # The registry serves its inbox in order: once it has answered this
        # ask it has served the recheck, and granted nothing.
        assert runtime2.stats().budget.exhausted  # type: ignore[union-attr]
        assert watch2.grants == [] and sink2.results == []
        # Midnight in the quota's zone: a new day, a new budget.
        clock.advance(MIDNIGHT - clock.now() + 1)
        runtime2.recheck_quota()
        assert watch2.held.wait(30), "the new day's budget never ran out"
        after = runtime2.stats()
    finally:
        runtime2.stop(drain=False)
    assert after.budget is not None and after.budget.day == first.budget.day + 1
    assert len(sink2.results) > 0 and after.failed == 0
    assert after.budget.spent_usd <= USD_PER_DAY + max(costs) * 2

"""One count of terminal results and one lease keeper (issue 10, point 5)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from tierbatch.actors.clock import ScaledClock
from tierbatch.actors.sinks import CollectingSink, CountingSink
from tierbatch.adapters.app.leases import LeaseKeeper
from tierbatch.policies.results import Done, Failed, FailureReason, TerminalResult

RESULTS: tuple[TerminalResult, ...] = (
    Done("a", (), "m-pro", "hot", 1, 250, 40, 1.5, cost_usd=0.25),
    Done("b", (), "m-lite", "hot", 2, 100, 10, 0.5, fallback=True),
    Failed("c", FailureReason.TIMEOUT, "slow", "cold", 3),
)


class FailingSink(CollectingSink):
    def write(self, results: Sequence[TerminalResult]) -> None:
        super().write(results)
        raise OSError("disk full")


def test_counting_sink_counts_each_result_once_and_hands_it_on() -> None:
    inner = CollectingSink()
    counted = CountingSink(inner)
    assert counted.counts().terminal == 0  # readable before anything was written
    counted.write(RESULTS[:2])
    counted.write(RESULTS[2:])
    counts = counted.counts()
    assert [r.article_id for r in inner.results] == ["a", "b", "c"]
    assert (counts.done_total, counts.failed_total, counts.fallbacks) == (2, 1, 1)
    assert counts.done_by_model == {"m-pro": 1, "m-lite": 1}
    assert counts.failed_by_reason == {"timeout": 1}
    assert counts.done[("hot", "m-pro")].cost_usd == pytest.approx(0.25)


def test_counting_sink_counts_a_result_whose_write_raised_once() -> None:
    counted = CountingSink(FailingSink())
    with pytest.raises(OSError):
        counted.write(RESULTS)
    assert counted.counts().terminal == 3


def test_a_snapshot_of_the_counts_does_not_move() -> None:
    counted = CountingSink(CollectingSink())
    counted.write(RESULTS[:1])
    before = counted.counts()
    counted.write(RESULTS[:1])
    assert before.done_total == 1 and counted.counts().done_total == 2


class Ticks:
    """A monotonic clock moved by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_lease_keeper_renews_every_third_of_the_lease() -> None:
    ticks, renewals = Ticks(), []
    keeper = LeaseKeeper(
        lambda: renewals.append(ticks.now), 30.0, ScaledClock(1.0), monotonic=ticks
    )
    for t in (1.0, 9.9, 10.0, 15.0, 19.9, 20.0):
        ticks.now = t
        keeper.keep()
    assert renewals == [10.0, 20.0]


def test_lease_keeper_renews_at_once_after_a_wall_step() -> None:
    ticks, renewals = Ticks(), []
    clock = ScaledClock(1.0)
    keeper = LeaseKeeper(lambda: renewals.append(ticks.now), 30.0, clock, monotonic=ticks)
    ticks.now = 1.0
    keeper.keep()
    clock.step_wall(3600.0)
    ticks.now = 2.0
    keeper.keep()
    assert renewals == [2.0]
    ticks.now = 11.0  # the next renewal is a third of the lease after that one
    keeper.keep()
    assert renewals == [2.0]
    ticks.now = 12.0
    keeper.keep()
    assert renewals == [2.0, 12.0]

"""bench.shared's own pieces that need no daemons: the setups it accepts
(a bad one is a usage error naming it), its per-window breakdown and the
targets a row is held to."""

from __future__ import annotations

import argparse

import pytest

from bench.shared import Row, Setup, missed_targets, rounds, stall_after


def test_setups_name_a_queue_and_a_daemon_count() -> None:
    assert Setup.parse("sqlite:1") == Setup("sqlite", 1)
    assert Setup.parse("ray:3").label == "PostgreSQL + Ray"
    for bad in ("mysql:3", "sqlite", "sqlite:x", "postgresql:0"):
        with pytest.raises(argparse.ArgumentTypeError, match=bad):
            Setup.parse(bad)


def test_rounds_say_when_each_window_of_requests_went() -> None:
    row = Row(
        Setup("sqlite", 1),
        requests=5,
        refused=0,
        span_s=10.5,
        bound_s=10.0,
        wall_s=12.0,
        shares=(1.0,),
        exactly_once=True,
        admitted=(100.0, 100.1, 110.2, 110.5, 120.3),
    )
    assert rounds(row, 2) == [
        (0.0, pytest.approx(0.1)),
        (pytest.approx(10.2), pytest.approx(0.3)),
        (pytest.approx(20.3), 0.0),
    ]
    assert row.of_bound == pytest.approx(10.0 / 10.5)


def _row(**kw: object) -> Row:
    base: dict[str, object] = dict(
        setup=Setup("sqlite", 3),
        requests=400,
        refused=0,
        span_s=31.0,
        bound_s=30.0,
        wall_s=33.0,
        shares=(0.5, 0.5),
        exactly_once=True,
    )
    base.update(kw)
    return Row(**base)  # type: ignore[arg-type]


def test_a_kill_may_idle_the_quota_one_lease_but_cost_no_429s_and_no_article() -> None:
    # Without a kill: the share of the bound, and no article answered twice.
    assert not missed_targets(_row(), 10.0)
    assert missed_targets(_row(span_s=40.0), 10.0)
    assert missed_targets(_row(resent=1), 10.0)
    # With one: the calls in flight die with it (re-sent), the quota idles a lease at most.
    killed = {"killed": "daemon", "killed_at_s": 15.0, "lease_s": 10.0, "resent": 24}
    assert not missed_targets(_row(span_s=42.0, stall_s=9.0, **killed), 10.0)
    assert missed_targets(_row(stall_s=11.5, **killed), 10.0)
    assert missed_targets(_row(refused=3, **killed), 10.0)  # 0.75% refused
    assert missed_targets(_row(exactly_once=False, **killed), 10.0)


def test_the_stall_is_how_long_a_place_stood_free_past_its_window_after_the_kill() -> None:
    # Two places per 10 s window; full use, then the place of 10.1 was taken back at 23.0.
    admitted = [0.0, 0.1, 10.0, 10.1, 20.0, 23.0, 30.0, 33.0]
    assert stall_after(admitted, 15.0, 2, 10.0) == pytest.approx(2.9)
    assert stall_after(admitted, 25.0, 2, 10.0) == pytest.approx(0.0)
    assert stall_after(admitted[:4], 0.0, 2, 10.0) == pytest.approx(0.0)

"""bench.shared's own pieces that need no daemons: the setups it accepts
(a bad one is a usage error naming it) and its per-window breakdown."""

from __future__ import annotations

import argparse

import pytest

from bench.shared import Row, Setup, rounds


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

"""Quota timing across wall-clock steps (NTP corrections, a VM resumed, an
operator's ``date -s``): windows, cooldowns and leases must follow a steady
clock; only the Pacific day and what is saved follow the wall clock.

These tests run the real ``SystemClock`` over a fake ``time`` module whose
wall clock can be stepped while its monotonic clock advances normally.
"""

from __future__ import annotations

import itertools
import queue
import sqlite3
import time as real_time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from cli_helpers import sample_lines, states, wait_until, write_config
from runtime_helpers import PRO, ScriptedProvider, small_config
from test_daemon import DaemonThread, HangingProvider, enqueue

import tierbatch.actors.clock as clock_module
from tierbatch.actors.clock import ScaledClock, SystemClock, WallStepWatch, wall_offset
from tierbatch.actors.messages import (
    Acquire,
    GetQuotaSnapshot,
    GetQuotaStatus,
    Granted,
    Report,
    Wake,
)
from tierbatch.actors.registry import ModelRegistry
from tierbatch.actors.runtime import Runtime
from tierbatch.adapters.app.daemon import Daemon, DaemonOptions
from tierbatch.adapters.app.quota_file import default_snapshot_path
from tierbatch.adapters.storage.config_file import load_config
from tierbatch.adapters.storage.snapshot_file import SnapshotFile
from tierbatch.adapters.storage.sqlite_store import SqliteStore, default_owner
from tierbatch.policies.articles import Article
from tierbatch.policies.config import LimiterMode, ModelSpec, QuotaConfig
from tierbatch.policies.outcomes import RateLimited, RateLimitScope
from tierbatch.policies.quota import ModelStatus, QuotaPolicy

LA = ZoneInfo("America/Los_Angeles")
NOON = datetime(2024, 6, 15, 12, tzinfo=LA).timestamp()
HOUR = 3600.0
W = 60.5  # window_s + margin_s


class FakeTime:
    """Stands in for the ``time`` module of ``tierbatch.actors.clock``: both
    clocks advance together; ``step_wall`` moves the wall clock alone."""

    def __init__(self, wall: float = NOON, mono: float = 1_000.0) -> None:
        self.wall = wall
        self.mono = mono

    def time(self) -> float:
        return self.wall

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds

    def step_wall(self, seconds: float) -> None:
        self.wall += seconds


class SteppedRealTime:
    """The real clocks, with the wall clock stepped by ``step`` seconds."""

    def __init__(self) -> None:
        self.step = 0.0

    def time(self) -> float:
        return real_time.time() + self.step

    def monotonic(self) -> float:
        return real_time.monotonic()


@pytest.fixture
def fake_time(monkeypatch: pytest.MonkeyPatch) -> FakeTime:
    fake = FakeTime()
    monkeypatch.setattr(clock_module, "time", fake)
    return fake


def test_system_clock_reads_monotonic_time_and_the_wall_clock(fake_time: FakeTime) -> None:
    clock = SystemClock()
    assert (clock.now(), clock.wall()) == (1_000.0, NOON)
    fake_time.step_wall(-HOUR)
    assert (clock.now(), clock.wall()) == (1_000.0, NOON - HOUR)
    assert wall_offset(clock) == NOON - HOUR - 1_000.0


def test_scaled_clock_scales_both_timelines_and_steps_the_wall_alone(
    fake_time: FakeTime,
) -> None:
    clock = ScaledClock(10.0, start=NOON)
    fake_time.advance(2.0)  # two real seconds
    assert (clock.now(), clock.wall()) == (NOON + 20.0, NOON + 20.0)
    clock.step_wall(-HOUR)
    assert (clock.now(), clock.wall()) == (NOON + 20.0, NOON + 20.0 - HOUR)
    fake_time.advance(1.0)
    assert (clock.now(), clock.wall()) == (NOON + 30.0, NOON + 30.0 - HOUR)
    assert clock.to_real(10.0) == 1.0


def test_wall_step_watch_sees_a_step_once_and_ignores_slewing(fake_time: FakeTime) -> None:
    watch = WallStepWatch(SystemClock(), tolerance_s=1.0)
    fake_time.advance(5.0)
    assert watch.step() is None
    fake_time.step_wall(0.0005)  # NTP slewing: a fraction of a millisecond
    assert watch.step() is None
    fake_time.step_wall(HOUR)
    assert watch.step() == HOUR
    assert watch.step() is None


class Registry:
    """A ModelRegistry on ``SystemClock``; replies collected in order."""

    def __init__(self, policy: QuotaPolicy) -> None:
        self.ref: Any = ModelRegistry.start(policy, SystemClock())
        self.replies: queue.Queue[Any] = queue.Queue()
        self._ids = itertools.count(1)

    def acquire(self) -> None:
        self.ref.tell(
            Acquire(
                request_id=next(self._ids),
                holder=1,
                chain=("m",),
                est_tokens=1,
                tier_rank=0,
                enqueued_at=0.0,
                reply=self.replies.put,
            )
        )

    def grant(self) -> Granted:
        self.acquire()
        reply = self.replies.get(timeout=10)
        assert isinstance(reply, Granted), reply
        return reply

    def status(self) -> ModelStatus:
        """The model's status once every earlier message was handled."""
        statuses: tuple[ModelStatus, ...] = self.ref.ask(GetQuotaStatus())
        return statuses[0]

    def wake(self) -> None:
        """What the registry's timer does: look at the waiters again."""
        self.ref.tell(Wake(0))


@pytest.fixture
def registry() -> Iterator[Any]:
    started: list[Registry] = []

    def start(**limits: int) -> Registry:
        spec = ModelSpec("m", tpm=0, **{"rpm": 0, "rpd": 0, **limits})
        quota = QuotaConfig(limiter=LimiterMode.WINDOW, learn_limits=False)
        reg = Registry(QuotaPolicy({"m": spec}, quota))
        started.append(reg)
        return reg

    yield start
    for reg in started:
        reg.ref.stop()


def test_backward_wall_step_does_not_stretch_the_window(fake_time: FakeTime, registry) -> None:
    """A full window frees a window after its grants, not an hour later."""
    reg = registry(rpm=2)
    reg.grant()
    reg.grant()
    fake_time.advance(15.0)
    fake_time.step_wall(-HOUR)
    reg.acquire()  # the window is full: it waits
    fake_time.advance(W - 15.0 - 1.0)  # one second before the window frees
    reg.wake()
    assert reg.status().requests_in_window == 2
    assert reg.replies.empty(), "granted before the window freed"
    fake_time.advance(1.0)
    reg.wake()
    assert isinstance(reg.replies.get(timeout=10), Granted)


def test_forward_wall_step_frees_no_window_early(fake_time: FakeTime, registry) -> None:
    """Neither the window nor a cooldown ends because the wall clock jumped."""
    reg = registry(rpm=2)
    reg.grant()
    limited = reg.grant()
    reg.ref.tell(Report(limited.grant.grant_id, RateLimited(RateLimitScope.UNKNOWN, 30.0)))
    reg.status()  # the report is handled before the clock moves on
    fake_time.advance(5.0)
    fake_time.step_wall(HOUR)
    reg.acquire()
    reg.wake()
    status = reg.status()
    assert status.requests_in_window == 2
    assert status.cooldown_until is not None
    assert reg.replies.empty(), "a forward wall step freed capacity early"


def test_snapshot_converts_deadlines_across_clock_origins(
    fake_time: FakeTime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Saved after a backward wall step, restored in a new process whose
    monotonic clock starts from a new origin: the cooldown keeps its
    remaining time and the day keeps its count."""
    config = small_config(pro=(30, 200_000, 100))
    reg = ModelRegistry.start(QuotaPolicy(config.models, config.quota), SystemClock())
    try:
        replies: queue.Queue[Any] = queue.Queue()
        for request_id in (1, 2):
            reg.tell(Acquire(request_id, 1, (PRO,), 1, 0, 0.0, replies.put))
        grants = [replies.get(timeout=10).grant for _ in range(2)]
        reg.tell(Report(grants[1].grant_id, RateLimited(RateLimitScope.UNKNOWN, 30.0)))
        reg.ask(GetQuotaStatus())  # the report is handled before the clock moves on
        fake_time.advance(5.0)
        fake_time.step_wall(-HOUR)
        saved = reg.ask(GetQuotaSnapshot())
    finally:
        reg.stop()
    fake_time.mono = 7.0  # a reboot: a new monotonic origin; the wall clock goes on
    fake_time.wall += 2.0
    provider = ScriptedProvider()
    runtime = Runtime(config, provider, _NullSink(), quota_state=saved).start()
    try:
        stats = runtime.stats()
        pro = next(m for m in stats.models if m.model == PRO)
        assert pro.requests_today == 2
        remaining = stats.cooldowns[PRO] - runtime.clock.now()
        assert remaining == pytest.approx(30.0 - 5.0 - 2.0)
    finally:
        runtime.stop(drain=False)


class _NullSink:
    def write(self, results: Any) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def test_forward_wall_step_does_not_expire_own_leases(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The daemon renews its leases as soon as it sees the wall clock jump,
    so no other process takes them over, and it never re-leases its own
    rows as if they had expired."""
    stepped = SteppedRealTime()
    monkeypatch.setattr(clock_module, "time", stepped)
    config = load_config(write_config(tmp_path / "c.toml", extractors=1, max_packs=2))
    db = tmp_path / "q.sqlite"
    enqueue(db, sample_lines(12))  # fewer than the daemon leases at once
    provider = HangingProvider()
    store = SqliteStore(db, owner=default_owner(), clock=stepped.time)
    daemon = Daemon(
        config,
        store,
        provider=provider,
        snapshot=SnapshotFile(default_snapshot_path(db)),
        options=DaemonOptions(poll_interval_s=0.02, lease_s=60.0),  # renews every 20 s
    )
    running = DaemonThread(daemon).start()
    try:
        assert provider.called.wait(10)
        wait_until(lambda: states(db) == {"leased": 12}, 10, "every row to be leased")
        stepped.step = HOUR
        wait_until(
            lambda: _soonest_lease(db) > stepped.time() + 30.0,
            10,
            "the leases to be renewed after the wall clock stepped",
        )
        attempts = {row[0] for row in _rows(db, "SELECT attempts FROM articles")}
        assert attempts == {1}, "the daemon re-leased its own rows"
        with SqliteStore(db, owner="another-daemon", clock=stepped.time) as other:
            assert other.lease(100, 60.0) == []
    finally:
        running.stop(immediate=True)
        store.close()


def test_lease_never_takes_over_this_owners_own_leases(tmp_path: Path) -> None:
    wall = [NOON]
    with SqliteStore(tmp_path / "q.sqlite", owner="me", clock=lambda: wall[0]) as store:
        store.enqueue(_articles(3))
        assert len(store.lease(3, 60.0)) == 3
        wall[0] += HOUR  # the wall clock stepped forward
        assert store.lease(3, 60.0) == []
        assert store.counts()["leased"] == 3


def _articles(n: int) -> list[Article]:
    return [Article(id=str(i), text=f"text {i}") for i in range(n)]


def _rows(db: Path, sql: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def _soonest_lease(db: Path) -> float:
    rows = _rows(db, "SELECT MIN(lease_expires) FROM articles WHERE state = 'leased'")
    return float(rows[0][0] or 0.0)

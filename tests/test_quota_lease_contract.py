"""The shared quota's election, snapshot and heartbeat rows, against both
stores (SQLite and PostgreSQL): one owner at a time, a dead owner's lease
claimable once it expired (and only then), the snapshot written only by
the owner of the current epoch, and the daemons ``status`` shows."""

from __future__ import annotations

import io
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest
from runtime_helpers import small_config
from store_backends import Backend, FakeClock, PostgresBackend, SqliteBackend

from tierbatch.adapters.app.status_report import read_status, render_status
from tierbatch.adapters.storage.open_store import read_report
from tierbatch.adapters.storage.quota_lease import (
    ROLE_FOLLOWER,
    ROLE_OWNER,
    ROLE_RAY,
    DaemonInfo,
    RayRegistryAddress,
)

LEASE_S = 10.0


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "sqlite":
        return SqliteBackend(tmp_path)
    return PostgresBackend(request.getfixturevalue("postgres_url"))


def test_first_claim_wins_and_the_others_see_its_address(backend: Backend) -> None:
    clock = FakeClock()
    a, b = backend.open("a", clock), backend.open("b", clock)
    try:
        won = a.claim_quota("127.0.0.1:1111", LEASE_S)
        seen = b.claim_quota("127.0.0.1:2222", LEASE_S)
        assert (won.owner, won.epoch, won.live) == ("a", 1, True)
        assert (seen.owner, seen.address, seen.epoch) == ("a", "127.0.0.1:1111", 1)
        owner = b.quota_owner()
        assert owner is not None and owner.owner == "a"
    finally:
        a.close()
        b.close()


def test_a_live_lease_is_never_taken_and_an_expired_one_is_once(backend: Backend) -> None:
    clock = FakeClock()
    a, b = backend.open("a", clock), backend.open("b", clock)
    try:
        a.claim_quota("a:1", LEASE_S)
        clock.now += LEASE_S  # not past the deadline yet
        assert b.claim_quota("b:1", LEASE_S).owner == "a"
        clock.now += 0.5
        taken = b.claim_quota("b:1", LEASE_S)
        assert (taken.owner, taken.epoch) == ("b", 2)
        # The old owner cannot renew, release or claim it back while b's lease lives.
        assert not a.renew_quota(1, LEASE_S)
        assert not a.release_quota(1)
        assert a.claim_quota("a:1", LEASE_S).owner == "b"
        assert b.renew_quota(2, LEASE_S)
    finally:
        a.close()
        b.close()


def test_a_dead_owners_live_lease_is_taken_over_once_and_only_in_its_epoch(
    backend: Backend,
) -> None:
    clock = FakeClock()
    dead, b, c = (backend.open(name, clock) for name in ("dead", "b", "c"))
    try:
        first = dead.claim_quota("dead:1", LEASE_S)
        taken = b.take_over_quota(first, "b:1", LEASE_S)
        assert (taken.owner, taken.address, taken.epoch, taken.live) == ("b", "b:1", 2, True)
        # A second daemon that read the same dead owner loses: the row moved on.
        assert c.take_over_quota(first, "c:1", LEASE_S).owner == "b"
        assert not dead.renew_quota(1, LEASE_S)
        assert b.renew_quota(2, LEASE_S)
    finally:
        for store in (dead, b, c):
            store.close()


def test_only_a_process_of_this_host_whose_pid_is_free_is_known_gone() -> None:
    import os
    import socket
    import subprocess
    import sys

    from tierbatch.adapters.storage.store import owner_process_gone

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # reaped: its pid is free (until the system reuses it)
    host = socket.gethostname()
    assert owner_process_gone(f"{host}:{child.pid}:abc")
    assert not owner_process_gone(f"{host}:{os.getpid()}:abc")  # this process
    assert not owner_process_gone(f"{host}:{os.getppid()}:abc")  # alive
    assert not owner_process_gone(f"another-host-{host}:{child.pid}:abc")
    assert not owner_process_gone("not-an-owner-id")


def test_concurrent_claims_of_an_expired_lease_elect_exactly_one(backend: Backend) -> None:
    clock = FakeClock()
    stores = [backend.open(f"d{i}", clock) for i in range(6)]
    try:
        stores[0].claim_quota("d0", LEASE_S)
        clock.now += LEASE_S + 1
        start = threading.Barrier(len(stores) - 1)

        def claim(i: int) -> tuple[str, int]:
            start.wait()
            row = stores[i].claim_quota(f"d{i}", LEASE_S)
            return row.owner, row.epoch

        with ThreadPoolExecutor(len(stores) - 1) as pool:
            seen = set(pool.map(claim, range(1, len(stores))))
        assert len(seen) == 1, seen
        ((owner, epoch),) = seen
        assert owner != "d0" and epoch == 2
    finally:
        for s in stores:
            s.close()


def test_release_lets_the_next_daemon_take_over_at_once(backend: Backend) -> None:
    clock = FakeClock()
    a, b = backend.open("a", clock), backend.open("b", clock)
    try:
        a.claim_quota("a:1", LEASE_S)
        assert a.release_quota(1)
        clock.now += 0.001
        assert b.claim_quota("b:1", LEASE_S).owner == "b"
    finally:
        a.close()
        b.close()


def test_a_former_owner_never_clobbers_the_snapshot_of_its_successor(backend: Backend) -> None:
    clock = FakeClock()
    a, b = backend.open("a", clock), backend.open("b", clock)
    try:
        a.claim_quota("a:1", LEASE_S)
        assert a.save_quota_state(1, b"state of a", clock.now)
        clock.now += LEASE_S + 1  # a stalls past its lease; b takes over
        b.claim_quota("b:1", LEASE_S)
        assert b.save_quota_state(2, b"state of b", clock.now)
        assert not a.save_quota_state(1, b"late state of a", clock.now)
        assert not b.save_quota_state(1, b"wrong epoch", clock.now)
        saved = a.load_quota_state()
        assert saved is not None
        assert (saved.owner, saved.epoch, saved.state) == ("b", 2, b"state of b")
    finally:
        a.close()
        b.close()


def test_nobody_saves_before_anyone_owns_the_quota(backend: Backend) -> None:
    with backend.open("a", FakeClock()) as a:  # type: ignore[attr-defined]
        assert not a.save_quota_state(1, b"x", 0.0)
        assert a.load_quota_state() is None
        assert a.quota_owner() is None


def test_status_shows_live_daemons_and_forgets_stopped_ones(backend: Backend) -> None:
    clock = FakeClock()
    a, b = backend.open("a", clock), backend.open("b", clock)
    try:
        a.claim_quota("127.0.0.1:1111", LEASE_S)
        owner = DaemonInfo("a", "h", 1, ROLE_OWNER, "127.0.0.1:1111", clock.now, grants=30)
        a.heartbeat(owner, LEASE_S)
        b.heartbeat(DaemonInfo("b", "h", 2, ROLE_FOLLOWER, None, clock.now, grants=10), LEASE_S)
        rows = {d.owner: d for d in a.daemons()}
        assert set(rows) == {"a", "b"}
        assert (rows["a"].role, rows["a"].address, rows["a"].grants) == (
            ROLE_OWNER,
            "127.0.0.1:1111",
            30,
        )
        assert rows["b"].expires_at == pytest.approx(clock.now + LEASE_S)
        report = read_report(backend.db, clock.now)
        assert report.quota_owner is not None and report.quota_owner.owner == "a"
        assert {d.owner for d in report.daemons} == {"a", "b"}
        b.forget_daemon()
        assert {d.owner for d in a.daemons()} == {"a"}
    finally:
        a.close()
        b.close()


def test_status_text_and_json_show_the_owner_and_each_daemons_share(
    backend: Backend, tmp_path: Path
) -> None:
    clock = FakeClock()
    a, b, c = (backend.open(name, clock) for name in "abc")
    try:
        a.claim_quota("127.0.0.1:1111", LEASE_S)
        owner = DaemonInfo("a", "h", 11, ROLE_OWNER, "127.0.0.1:1111", clock.now, grants=30)
        a.heartbeat(replace(owner, grant_rate=3.0), LEASE_S)
        follower = DaemonInfo("b", "h", 22, ROLE_FOLLOWER, None, clock.now, grants=10)
        b.heartbeat(replace(follower, grant_rate=1.0), LEASE_S)
        clock.now -= 2 * LEASE_S  # c's last heartbeat: its row expired since
        c.heartbeat(DaemonInfo("c", "h", 33, ROLE_FOLLOWER, None, clock.now, grants=5), LEASE_S)
        clock.now += 2 * LEASE_S
    finally:
        for s in (a, b, c):
            s.close()
    status = read_status(backend.db, tmp_path / "none.msgpack", small_config(), now=clock.now + 1)
    as_json = status.to_json()
    assert as_json["quota_owner"]["owner"] == "a"
    assert as_json["quota_owner"]["live"] is True
    shares = {d["pid"]: d["share"] for d in as_json["daemons"]}
    assert shares == {11: pytest.approx(0.75), 22: pytest.approx(0.25)}
    out = io.StringIO()
    render_status(status, out)
    text = out.getvalue()
    assert "shared quota: owned by a at 127.0.0.1:1111 (epoch 1" in text
    assert "h:11" in text and "owner (127.0.0.1:1111)" in text and "75%" in text
    assert "h:22" in text and "follower" in text and "25%" in text
    assert "h:33" not in text


def test_ray_daemons_show_the_registry_that_serves_them_and_not_a_stale_owner(
    backend: Backend, tmp_path: Path
) -> None:
    clock = FakeClock()
    where = str(RayRegistryAddress("10.0.0.1:6379", "tierbatch", "tierbatch-registry-news"))
    a, b, c = (backend.open(name, clock) for name in "abc")
    try:
        a.claim_quota("127.0.0.1:1111", LEASE_S)  # an earlier run without --ray ...
        clock.now += 2 * LEASE_S  # ... long over: its lease expired
        b.heartbeat(DaemonInfo("b", "h", 22, ROLE_RAY, where, clock.now, grants=30), LEASE_S)
        c.heartbeat(DaemonInfo("c", "h", 33, ROLE_RAY, where, clock.now, grants=10), LEASE_S)
    finally:
        for s in (a, b, c):
            s.close()
    status = read_status(backend.db, tmp_path / "none.msgpack", small_config(), now=clock.now + 1)
    as_json = status.to_json()
    assert as_json["quota_sources"] == 1
    (registry,) = as_json["ray_registries"]
    assert registry == {
        "address": "ray://10.0.0.1:6379/tierbatch/tierbatch-registry-news",
        "cluster": "10.0.0.1:6379",
        "namespace": "tierbatch",
        "actor": "tierbatch-registry-news",
        "daemons": 2,
    }
    assert {d["pid"]: d["share"] for d in as_json["daemons"]} == {
        22: pytest.approx(0.75),
        33: pytest.approx(0.25),
    }
    out = io.StringIO()
    render_status(status, out)
    text = out.getvalue()
    assert (
        "shared quota: on Ray, registry actor tierbatch-registry-news (namespace tierbatch) "
        "of the cluster at 10.0.0.1:6379, serving 2 daemon(s)"
    ) in text
    assert "owned by" not in text and "do not share" not in text
    assert text.count("ray (tierbatch-registry-news)") == 2


def test_status_warns_when_live_daemons_take_their_quota_from_several_registries(
    backend: Backend, tmp_path: Path
) -> None:
    """Daemons started with different --ray projects, or some without --ray,
    on one queue each spend a quota of their own: status says so."""
    clock = FakeClock()
    news = str(RayRegistryAddress("10.0.0.1:6379", "tierbatch", "tierbatch-registry-news"))
    other = str(RayRegistryAddress("10.0.0.1:6379", "tierbatch", "tierbatch-registry-other"))
    a, b, c = (backend.open(name, clock) for name in "abc")
    try:
        a.claim_quota("127.0.0.1:1111", LEASE_S)
        a.heartbeat(DaemonInfo("a", "h", 11, ROLE_OWNER, "127.0.0.1:1111", clock.now), LEASE_S)
        b.heartbeat(DaemonInfo("b", "h", 22, ROLE_RAY, news, clock.now), LEASE_S)
        c.heartbeat(DaemonInfo("c", "h", 33, ROLE_RAY, other, clock.now), LEASE_S)
    finally:
        for s in (a, b, c):
            s.close()
    status = read_status(backend.db, tmp_path / "none.msgpack", small_config(), now=clock.now + 1)
    assert status.quota_sources == 3
    assert [r.actor for r in status.ray_registries] == [
        "tierbatch-registry-news",
        "tierbatch-registry-other",
    ]
    out = io.StringIO()
    render_status(status, out)
    text = out.getvalue()
    assert "shared quota: owned by a at 127.0.0.1:1111" in text
    assert "take their quota from 3 registries, so they do not share one quota" in text

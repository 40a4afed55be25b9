"""The registry on Ray, with a real local Ray head (the session's
``ray_head``): two ``tierbatch daemon --ray`` processes on one queue share
one quota against a strict Gemini-compatible server, and the registry
actor, killed, comes back with its state from the cluster's store."""

from __future__ import annotations

import io
import signal
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import (
    DaemonProcess,
    called_ids,
    child_env,
    query,
    sample_ids,
    sample_lines,
    states,
    wait_until,
    write_config,
)
from ray_cluster import RayHead

from tierbatch.actors.clock import SystemClock
from tierbatch.actors.messages import (
    Acquire,
    AcquireFailed,
    Backlog,
    GetQuotaStatus,
    Granted,
    Report,
    Sent,
    StopGranting,
)
from tierbatch.adapters.ray.wire import merged_backlog, shift_status
from tierbatch.adapters.simulation.fake_gemini import FakeGeminiServer
from tierbatch.adapters.simulation.gemini_emulator import FakeGeminiConfig
from tierbatch.adapters.storage.config_file import load_config
from tierbatch.adapters.storage.ingest import ingest_jsonl
from tierbatch.adapters.storage.sqlite_store import SqliteStore
from tierbatch.policies.backlog import TierBacklog
from tierbatch.policies.outcomes import RateLimited, RateLimitScope, Succeeded, Usage
from tierbatch.policies.quota import ModelStatus

WINDOW_S = 2.0


def test_one_backlog_from_many_daemons_counts_the_shared_queue_once() -> None:
    merged = merged_backlog(
        {
            "a": (TierBacklog("hot", 100, 50.0), TierBacklog("cold", 10)),
            "b": (TierBacklog("hot", 90, 40.0), TierBacklog("cold", 30)),
        }
    )
    assert sorted(merged.tiers, key=lambda t: t.tier) == [
        TierBacklog("cold", 30),
        TierBacklog("hot", 100, 50.0),
    ]
    assert merged_backlog({}) == Backlog(())


def test_status_deadlines_move_between_clocks_and_none_stays_none() -> None:
    status = ModelStatus("m", 0, 0, 0, 0, 10.0, "429", None, None, {})
    (moved,) = shift_status((status,), 100.0)
    assert (moved.cooldown_until, moved.exhausted_until) == (110.0, None)


def acquire_message(request_id: int, chain: tuple[str, ...], reply: Any = None) -> Acquire:
    return Acquire(
        request_id=request_id,
        holder=1,
        chain=chain,
        est_tokens=100,
        tier_rank=0,
        enqueued_at=SystemClock().now(),
        reply=reply or (lambda _answer: None),
        tier="hot",
    )


def test_a_429_reported_before_an_acquire_cools_the_model_even_when_ray_starts_the_acquire_first(
    tmp_path: Path,
) -> None:
    """Ray starts an async actor's calls in any order, even one client's: the
    Acquire a daemon sent after reporting a 429 must not be granted the model
    that 429 cooled. The actor class runs here on a plain event loop, with
    the calls started in the wrong order on purpose."""
    import asyncio

    from tierbatch.adapters.ray.registry_actor import RegistryActor

    config = load_config(write_config(tmp_path / "c.toml", window_s=60.0))
    actor = RegistryActor("order", config, use_kv=False)

    async def scenario() -> tuple[Any, bool, int]:
        await actor.join("c")
        first = await actor.acquire("c", 0, acquire_message(1, ("m-pro",)))
        assert isinstance(first, Granted)
        cooled = RateLimited(RateLimitScope.REQUESTS_PER_MINUTE, 300.0)
        # Call 2 (an Acquire) starts before call 1 (the Report of the 429).
        later = asyncio.create_task(actor.acquire("c", 2, acquire_message(2, ("m-pro",))))
        await asyncio.sleep(0)  # one loop turn: the Acquire is started, and waits its turn
        await actor.tell_many("c", 1, [Report(first.grant.grant_id, cooled)])
        statuses = await actor.ask(GetQuotaStatus(), "c", 3)
        waiting = (await actor.info())["waiting"]
        done = later.done()
        later.cancel()
        pro = next(s for s in statuses if s.model == "m-pro")
        return pro, done, waiting

    try:
        pro, done, waiting = asyncio.run(scenario())
    finally:
        actor._registry.stop()
    assert pro.cooldown_until is not None
    assert pro.in_flight == 0 and not done and waiting == 1  # it waits for the cooldown


def test_a_call_that_never_comes_holds_the_next_ones_only_for_the_gap_timeout() -> None:
    import asyncio

    from tierbatch.adapters.ray.in_order import ClientOrder

    async def scenario() -> list[int]:
        order = ClientOrder("c", 0, gap_timeout_s=0.05)
        ran: list[int] = []

        async def call(seq: int) -> None:
            await order.turn(seq)
            ran.append(seq)
            order.done(seq)

        await asyncio.gather(call(2), call(1))  # call 0 is lost
        await call(0)  # ... or late: it goes at once
        return ran

    assert asyncio.run(scenario()) == [1, 2, 0]


def test_the_registry_is_named_per_project_never_by_the_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tierbatch.adapters.ray.cluster import project_name

    monkeypatch.delenv("TIERBATCH_RAY_PROJECT", raising=False)
    named = project_name("AIza-secret-key")
    assert named.startswith("key-") and "secret" not in named
    assert project_name("AIza-secret-key") == named != project_name("another-key")
    assert project_name(None) == "default"
    monkeypatch.setenv("TIERBATCH_RAY_PROJECT", "news-prod")
    assert project_name("AIza-secret-key") == "news-prod"


# ---- with a Ray cluster ---------------------------------------------------------------


@pytest.fixture
def ray_driver(ray_head: RayHead) -> Iterator[RayHead]:
    """This test process joined to the session's cluster."""
    from tierbatch.adapters.ray.cluster import connect

    connect(ray_head.address)
    yield ray_head


def acquire(handle: Any, request_id: int, chain: tuple[str, ...]) -> Any:
    answer: Future[Any] = Future()
    clock = SystemClock()
    handle.tell(
        Acquire(
            request_id=request_id,
            holder=1,
            chain=chain,
            est_tokens=100,
            tier_rank=0,
            enqueued_at=clock.now(),
            reply=answer.set_result,
            tier="hot",
        )
    )
    return answer.result(timeout=30)


def actor_of(project: str) -> Any:
    import ray

    return ray.get_actor(f"tierbatch-registry-{project}", namespace="tierbatch")


def status_of(handle: Any, model: str) -> ModelStatus:
    statuses: tuple[ModelStatus, ...] = handle.ask(GetQuotaStatus(), timeout=30)
    return next(s for s in statuses if s.model == model)


def test_registry_actor_restarted_restores_usage_and_cooldowns(
    ray_driver: RayHead, tmp_path: Path
) -> None:
    import msgpack
    import ray

    from tierbatch.adapters.ray.cluster import kill_registry, registry_for
    from tierbatch.adapters.ray.saved_state import kv_get as _kv_get
    from tierbatch.adapters.ray.wire import kv_key

    config = load_config(write_config(tmp_path / "c.toml", window_s=60.0))
    clock = SystemClock()
    project = f"restart-{uuid.uuid4().hex[:8]}"
    handle = registry_for(project, config, clock, snapshot_path=str(tmp_path / "q.msgpack"))
    assert handle.restored_from == "fresh"
    for request_id in range(1, 6):
        answer = acquire(handle, request_id, ("m-lite",))
        assert isinstance(answer, Granted) and answer.grant.model == "m-lite"
        handle.tell(Sent(answer.grant.grant_id, clock.now()))
        handle.tell(Report(answer.grant.grant_id, Succeeded(Usage(100, 10))))
    cooled = acquire(handle, 6, ("m-pro",))
    assert isinstance(cooled, Granted)
    handle.tell(
        Report(cooled.grant.grant_id, RateLimited(RateLimitScope.REQUESTS_PER_MINUTE, 300.0))
    )
    wait_until(lambda: status_of(handle, "m-pro").cooldown_until, 30, "the 429's cooldown")
    before = status_of(handle, "m-pro")
    assert before.cooldown_until is not None and before.cooldown_until > clock.now() + 200

    def saved_lite_requests() -> int:
        raw = _kv_get(kv_key(project))
        if not raw:
            return 0
        state = msgpack.unpackb(raw, raw=False)
        return int(state["models"]["m-lite"]["requests_today"])

    # The actor saves on its own (debounced): wait for it to have saved everything.
    wait_until(
        lambda: saved_lite_requests() == 5 and status_of(handle, "m-pro").cooldown_until,
        30,
        "the quota state saved to the cluster",
    )
    wait_until((tmp_path / "q.msgpack").is_file, 30, "the snapshot file")
    # A request waiting (for the cooling model, until its deadline) when the actor dies.
    waiting: Future[Any] = Future()
    handle.tell(
        Acquire(
            request_id=100,
            holder=2,
            chain=("m-pro",),
            est_tokens=100,
            tier_rank=0,
            enqueued_at=clock.now(),
            reply=waiting.set_result,
            deadline=clock.now() + 6.0,
            tier="hot",
        )
    )
    wait_until(lambda: ray.get(actor_of(project).info.remote())["waiting"] == 1, 30, "a waiter")
    assert kill_registry(project, no_restart=False)  # Ray restarts it: __init__ runs again

    # The same handle goes on working: its calls wait for the restarted actor.
    after_lite = status_of(handle, "m-lite")
    after_pro = status_of(handle, "m-pro")
    assert after_lite.requests_today == 5
    assert after_pro.requests_today == 1
    assert after_pro.cooldown_until is not None
    assert abs(after_pro.cooldown_until - before.cooldown_until) < 1.0
    info = ray.get(actor_of(project).info.remote(), timeout=30)
    assert info["restored_from"] == "cluster"
    # Its call was retried on the restarted actor, which still knows the
    # cooldown: the request waited there until its deadline.
    expired = waiting.result(timeout=60)
    assert isinstance(expired, AcquireFailed) and expired.reason == "expired", expired
    # A cooling model is skipped for the next grant; new grant ids start past the old ones.
    answer = acquire(handle, 7, ("m-pro", "m-lite"))
    assert isinstance(answer, Granted) and answer.grant.model == "m-lite"
    assert answer.grant.grant_id > 1_000_000_000
    handle.stop()
    kill_registry(project)


def test_a_restarted_registry_actor_counts_the_grants_it_made_after_its_last_save(
    ray_driver: RayHead, tmp_path: Path
) -> None:
    """kill -9 of the actor's process with a full window granted since its
    last save: the restarted actor learns the grants back from the daemon
    before it grants again (before: it restored an empty window and granted
    a second one at once -- a burst of 429s at the provider)."""
    import os

    import ray

    from tierbatch.adapters.ray.cluster import kill_registry, registry_for
    from tierbatch.adapters.ray.saved_state import kv_get as _kv_get
    from tierbatch.adapters.ray.wire import kv_key

    path = write_config(tmp_path / "c.toml", window_s=60.0, lite_rpm=10)
    path.write_text(path.read_text().replace("[quota]\n", '[quota]\nlimiter = "window"\n'))
    config = load_config(path)
    clock = SystemClock()
    project = f"hand-over-{uuid.uuid4().hex[:8]}"
    # One save at the start, then none for the rest of the test.
    handle = registry_for(project, config, clock, snapshot_interval_s=3600.0, heartbeat_s=0.2)
    wait_until(lambda: bool(_kv_get(kv_key(project))), 30, "the first save")
    grants = []
    for request_id in range(1, 11):
        answer = acquire(handle, request_id, ("m-lite",))
        assert isinstance(answer, Granted), answer
        handle.tell(Sent(answer.grant.grant_id, clock.now()))
        grants.append(answer.grant)
    for grant in grants[:4]:
        handle.tell(Report(grant.grant_id, Succeeded(Usage(100, 10))))
    wait_until(lambda: status_of(handle, "m-lite").in_flight == 6, 30, "four reports")
    pid = int(ray.get(actor_of(project).info.remote(), timeout=30)["pid"])
    os.kill(pid, signal.SIGKILL)  # Ray restarts it from the start's save

    wait_until(
        lambda: ray.get(actor_of(project).info.remote(), timeout=30)["pid"] != pid,
        60,
        "the restarted actor",
    )
    wait_until(
        lambda: status_of(handle, "m-lite").requests_in_window == 10, 30, "the grants handed over"
    )
    after = status_of(handle, "m-lite")
    assert (after.in_flight, after.requests_today) == (6, 10)
    # The window is full: a request waits (here until its deadline), nothing is granted over it.
    waited: Future[Any] = Future()
    handle.tell(
        Acquire(
            request_id=11,
            holder=1,
            chain=("m-lite",),
            est_tokens=100,
            tier_rank=0,
            enqueued_at=clock.now(),
            reply=waited.set_result,
            deadline=clock.now() + 1.0,
            tier="hot",
        )
    )
    expired = waited.result(timeout=30)
    assert isinstance(expired, AcquireFailed) and expired.reason == "expired", expired
    # The grants in flight are the restarted actor's to settle now.
    for grant in grants[4:]:
        handle.tell(Report(grant.grant_id, Succeeded(Usage(100, 10))))
    wait_until(lambda: status_of(handle, "m-lite").in_flight == 0, 30, "the last reports")
    assert status_of(handle, "m-lite").requests_in_window == 10
    handle.stop()
    kill_registry(project)


def test_stop_granting_stops_this_daemon_only(ray_driver: RayHead, tmp_path: Path) -> None:
    from tierbatch.adapters.ray.cluster import kill_registry, registry_for

    config = load_config(write_config(tmp_path / "c.toml", window_s=60.0))
    clock = SystemClock()
    project = f"stop-{uuid.uuid4().hex[:8]}"
    leaving = registry_for(project, config, clock)
    staying = registry_for(project, config, clock)
    leaving.tell(StopGranting())
    refused = acquire(leaving, 1, ("m-lite",))
    assert isinstance(refused, AcquireFailed) and refused.reason == "stopped"
    assert isinstance(acquire(staying, 1, ("m-lite",)), Granted)
    leaving.stop()
    staying.stop()
    kill_registry(project)


# ---- two daemon processes ----------------------------------------------------------------


def test_two_daemons_joined_through_ray_share_one_quota(ray_head: RayHead, tmp_path: Path) -> None:
    n = 240
    # Strict limits, the same on the server and in the config, per 2 s window:
    # either daemon alone could spend them all.
    config_path = write_config(
        tmp_path / "c.toml", window_s=WINDOW_S, pro_rpm=8, lite_rpm=16, max_packs=8
    )
    models = load_config(config_path).models
    server = FakeGeminiServer(FakeGeminiConfig(models=models, window_s=WINDOW_S, latency_s=0.05))
    server.start()
    config_path = write_config(
        tmp_path / "c.toml",
        base_url=server.base_url,
        window_s=WINDOW_S,
        pro_rpm=8,
        lite_rpm=16,
        max_packs=8,
        # The windows are 2 s: a loaded machine's scheduling jitter between
        # a request's send and the server's reading it (in this process) is
        # a visible share of that; the default margin is 0.5 s of 60 s.
        margin_s=0.3,
    )
    db = tmp_path / "q.sqlite"
    project = f"two-{uuid.uuid4().hex[:8]}"
    args = [
        "daemon",
        "--db",
        str(db),
        "--config",
        str(config_path),
        "--poll-interval",
        "0.05",
        "--ray",
        ray_head.address,
        "--ray-project",
        project,
    ]
    daemons = [
        DaemonProcess([*args, "--snapshot", str(tmp_path / f"{i}.msgpack")], child_env())
        for i in range(2)
    ]
    try:
        for daemon in daemons:
            daemon.wait_for_event("daemon ready", timeout=120)
        with SqliteStore(db, owner="producer") as store:
            report = ingest_jsonl(
                store, io.BytesIO("\n".join(sample_lines(n)).encode()), source_name="test"
            )
        assert report.inserted == n
        started = time.monotonic()
        wait_until(lambda: states(db).get("done", 0) == n, 120, "every article done")
        elapsed = time.monotonic() - started
        for daemon in daemons:
            daemon.signal(signal.SIGTERM)
        for daemon in daemons:
            assert daemon.wait(60) == 0, daemon.stderr()
    finally:
        for daemon in daemons:
            daemon.kill()
        server.stop()
    log = server.log
    calls = [e for e in log if e.method == "generateContent"]
    refused = [e for e in calls if e.status == 429]
    answered = Counter(called_ids([e for e in calls if e.status == 200]))
    print(
        f"\ntwo daemons on Ray, {n} articles in {elapsed:.1f} s: {len(calls)} requests, "
        f"{len(refused)} answered 429"
    )
    assert states(db) == {"done": n}
    assert query(db, "SELECT COUNT(DISTINCT article_id), COUNT(*) FROM results") == [(n, n)]
    assert set(answered) == set(sample_ids(n)) and max(answered.values()) == 1
    finished = [
        next(e["finished"] for e in d.events if e.get("event") == "daemon stopped") for d in daemons
    ]
    assert sum(finished) == n and all(finished), finished
    # One quota for both: a 429 only where the server's window and ours
    # disagree at an edge -- not the half of all requests two private
    # registries spend.
    assert len(refused) <= max(2, 0.02 * len(calls)), len(refused)


def test_a_silent_daemon_loses_its_waits_and_grants(ray_driver: RayHead, tmp_path: Path) -> None:
    """A daemon killed outright sends no ``leave``: when its heartbeat stops,
    the registry drops its waiting requests and abandons its grants."""
    import ray

    from tierbatch.adapters.ray.cluster import kill_registry, registry_for

    config = load_config(write_config(tmp_path / "c.toml", window_s=60.0))
    clock = SystemClock()
    project = f"silent-{uuid.uuid4().hex[:8]}"
    # 3 s of silence drops a client; both beat ten times as often.
    survivor = registry_for(project, config, clock, client_timeout_s=3.0, heartbeat_s=0.3)
    victim = registry_for(project, config, clock, heartbeat_s=0.3)
    held = acquire(victim, 1, ("m-lite",))
    assert isinstance(held, Granted)
    cooled = acquire(victim, 2, ("m-pro",))
    assert isinstance(cooled, Granted)
    victim.tell(
        Report(cooled.grant.grant_id, RateLimited(RateLimitScope.REQUESTS_PER_MINUTE, 300.0))
    )
    victim.tell(
        Acquire(
            request_id=3,
            holder=1,
            chain=("m-pro",),
            est_tokens=100,
            tier_rank=0,
            enqueued_at=clock.now(),
            reply=lambda _answer: None,
            tier="hot",
        )
    )
    wait_until(lambda: ray.get(actor_of(project).info.remote())["waiting"] == 1, 30, "a waiter")
    assert status_of(survivor, "m-lite").in_flight == 1
    victim._stopping.set()  # its heartbeat stops, as when its process is killed
    wait_until(
        lambda: victim.client not in ray.get(actor_of(project).info.remote())["clients"],
        30,
        "the silent client dropped",
    )
    assert ray.get(actor_of(project).info.remote())["waiting"] == 0
    assert status_of(survivor, "m-lite").in_flight == 0  # its grant abandoned, not leaked
    assert status_of(survivor, "m-lite").requests_today == 1  # ... and still spent
    survivor.stop()
    kill_registry(project)


def test_a_config_unlike_the_registrys_is_told_apart(tmp_path: Path) -> None:
    from tierbatch.adapters.ray.wire import config_fingerprint

    one = load_config(write_config(tmp_path / "a.toml", pro_rpm=10))
    same = load_config(write_config(tmp_path / "b.toml", pro_rpm=10))
    other = load_config(write_config(tmp_path / "c.toml", pro_rpm=20))
    assert config_fingerprint(one) == config_fingerprint(same) != config_fingerprint(other)


def test_daemon_with_a_ray_address_nobody_listens_on_is_a_usage_error(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    from bench.services import free_port
    from tierbatch.adapters.app.cli import main

    address = f"127.0.0.1:{free_port()}"
    out, err = io.StringIO(), io.StringIO()
    config = write_config(tmp_path / "c.toml")
    argv = ["daemon", "--db", str(tmp_path / "q.sqlite"), "--config", str(config)]
    code = main([*argv, "--no-check", "--ray", address], stdout=out, stderr=err)
    assert code == 2
    assert f"--ray {address}: no Ray head answers there" in err.getvalue()


def test_a_withdrawn_request_ends_its_call_without_an_answer(
    ray_driver: RayHead, tmp_path: Path
) -> None:
    import ray

    from tierbatch.actors.messages import Withdraw
    from tierbatch.adapters.ray.cluster import kill_registry, registry_for

    config = load_config(write_config(tmp_path / "c.toml", window_s=60.0))
    clock = SystemClock()
    project = f"withdraw-{uuid.uuid4().hex[:8]}"
    handle = registry_for(project, config, clock)
    cooled = acquire(handle, 1, ("m-pro",))
    assert isinstance(cooled, Granted)
    handle.tell(
        Report(cooled.grant.grant_id, RateLimited(RateLimitScope.REQUESTS_PER_MINUTE, 300.0))
    )
    answers: list[Any] = []
    handle.tell(
        Acquire(
            request_id=2,
            holder=1,
            chain=("m-pro",),
            est_tokens=100,
            tier_rank=0,
            enqueued_at=clock.now(),
            reply=answers.append,
            tier="hot",
        )
    )
    wait_until(lambda: ray.get(actor_of(project).info.remote())["waiting"] == 1, 30, "a waiter")
    handle.tell(Withdraw(2, 1))
    wait_until(lambda: ray.get(actor_of(project).info.remote())["waiting"] == 0, 30, "withdrawn")
    # The registry is still answering, and the withdrawn request got no answer.
    assert isinstance(acquire(handle, 3, ("m-lite",)), Granted)
    assert answers == []
    handle.stop()
    kill_registry(project)


# ---- tierbatch status in Ray mode ---------------------------------------------------------


def test_status_lists_ray_daemons_their_shares_and_their_registry(
    ray_driver: RayHead, tmp_path: Path
) -> None:
    """With ``--ray`` the quota lives in the registry actor, not in an elected
    owner: ``tierbatch status`` still shows every live daemon of the queue,
    its share of the grants and the registry actor that serves it, and
    forgets a daemon that stopped."""
    import json as json_module
    import threading

    from tierbatch.adapters.app.cli import main
    from tierbatch.adapters.app.daemon import Daemon, DaemonOptions
    from tierbatch.adapters.ray.cluster import kill_registry, registry_for
    from tierbatch.adapters.simulation.simulated import SimulatedProvider
    from tierbatch.adapters.storage.snapshot_file import SnapshotFile

    config = load_config(write_config(tmp_path / "c.toml", window_s=60.0))
    db = tmp_path / "q.sqlite"
    project = f"status-{uuid.uuid4().hex[:8]}"
    clock = SystemClock()

    def status() -> dict[str, Any]:
        out, err = io.StringIO(), io.StringIO()
        assert main(["status", "--db", str(db), "--json"], stdout=out, stderr=err) == 0, err
        answer: dict[str, Any] = json_module.loads(out.getvalue())
        return answer

    def text_status() -> str:
        out, err = io.StringIO(), io.StringIO()
        assert main(["status", "--db", str(db)], stdout=out, stderr=err) == 0, err
        return out.getvalue()

    daemons: list[Daemon] = []
    threads: list[threading.Thread] = []
    for i in range(2):
        store = SqliteStore(db, owner=f"daemon-{i}")
        daemons.append(
            Daemon(
                config,
                store,
                provider=SimulatedProvider(config.models, clock, seed=i, latency_s=0.01),
                snapshot=SnapshotFile(tmp_path / f"{i}.msgpack"),
                options=DaemonOptions(poll_interval_s=0.05, quota_lease_s=1.5),
                clock=clock,
                ray_registry=lambda: registry_for(project, config, clock),
            )
        )
        threads.append(threading.Thread(target=daemons[-1].run, daemon=True))
    registry = registry_for(project, config, clock)  # to read the registry's own count
    try:
        for thread in threads:
            thread.start()
        wait_until(lambda: len(status()["daemons"]) == 2, 60, "both daemons in status")
        with SqliteStore(db, owner="producer") as producer:
            ingest_jsonl(
                producer, io.BytesIO("\n".join(sample_lines(60)).encode()), source_name="test"
            )
        wait_until(lambda: states(db).get("done", 0) == 60, 60, "every article done")
        granted = sum(s.requests_today for s in registry.ask(GetQuotaStatus(), timeout=30))
        assert granted > 0
        # The rows catch up within a beat (lease / 3): every grant of the
        # registry is some daemon's.
        wait_until(
            lambda: sum(d["grants"] for d in status()["daemons"]) == granted,
            30,
            "the daemons' grants in status",
        )
        seen = status()
        # The cluster as Ray names its head (the node's address, which may
        # not be the loopback address the head was started on).
        (registry_row,) = seen["ray_registries"]
        cluster = registry_row["cluster"]
        assert cluster.endswith(f":{ray_driver.port}")
        where = f"ray://{cluster}/tierbatch/tierbatch-registry-{project}"
        assert [d["role"] for d in seen["daemons"]] == ["ray", "ray"]
        assert {d["address"] for d in seen["daemons"]} == {where}
        assert abs(sum(d["share"] for d in seen["daemons"]) - 1.0) < 1e-9
        assert registry_row == {
            "address": where,
            "cluster": cluster,
            "namespace": "tierbatch",
            "actor": f"tierbatch-registry-{project}",
            "daemons": 2,
        }
        assert seen["quota_sources"] == 1 and seen["quota_owner"] is None
        text = text_status()
        assert f"registry actor tierbatch-registry-{project}" in text
        assert "do not share one quota" not in text
        assert text.count(f"ray (tierbatch-registry-{project})") == 2
    finally:
        for daemon in daemons:
            daemon.request_stop(immediate=True)
        for thread in threads:
            thread.join(30)
        registry.stop()
        kill_registry(project)
    assert not any(thread.is_alive() for thread in threads)
    assert status()["daemons"] == []  # a daemon that stopped is forgotten

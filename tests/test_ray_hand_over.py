"""A restarted registry actor learns back what it granted after its last
save, from the daemons (``adapters.ray.hand_over``). The actor class runs
here on a plain event loop, its restart played by a second actor restored
from the first one's snapshot file; the Ray cluster's own restart is in
``test_ray_registry``."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import write_config

from tierbatch.actors.clock import SystemClock
from tierbatch.actors.messages import Acquire, GetQuotaStatus, Granted, Report, Sent
from tierbatch.adapters.ray.hand_over import GrantLedger, HandOverGate, Incarnation
from tierbatch.adapters.ray.in_order import ClientOrder
from tierbatch.adapters.storage.config_file import load_config
from tierbatch.policies.config import Config
from tierbatch.policies.outcomes import (
    Cancelled,
    RateLimited,
    RateLimitScope,
    Succeeded,
    Usage,
)
from tierbatch.policies.quota import ModelStatus, OutstandingGrant


def window_config(tmp_path: Path, rpm: int) -> Config:
    path = write_config(tmp_path / "c.toml", window_s=60.0, lite_rpm=rpm)
    path.write_text(path.read_text().replace("[quota]\n", '[quota]\nlimiter = "window"\n'))
    return load_config(path)


def ask_for(request_id: int) -> Acquire:
    return Acquire(
        request_id=request_id,
        holder=1,
        chain=("m-lite",),
        est_tokens=100,
        tier_rank=0,
        enqueued_at=SystemClock().wall(),
        reply=lambda _answer: None,
        tier="cold",
    )


def lite(statuses: Any) -> ModelStatus:
    return next(s for s in statuses if s.model == "m-lite")


def grant(grant_id: int, at: float) -> OutstandingGrant:
    return OutstandingGrant(grant_id, "m-lite", 100, at, at)


def test_the_ledger_hands_over_grants_out_and_reports_since_the_save() -> None:
    ledger = GrantLedger(keep_s=60.0)
    for grant_id in (1, 2, 3, 4):
        ledger.granted(7, grant(grant_id, 100.0))
    ledger.reported(Report(1, Succeeded(Usage(10, 1))), 101.0)  # before the save
    ledger.reported(Report(2, RateLimited(RateLimitScope.REQUESTS_PER_MINUTE, 5.0)), 103.0)
    ledger.reported(Report(3, Cancelled()), 103.0)  # never sent: no place to keep
    handed = ledger.hand_over(Incarnation("new", "cluster", saved_at=102.0), 104.0, next_seq=9)
    assert handed.token == "new" and handed.next_seq == 9
    ((holder, grants),) = handed.grants
    assert holder == 7
    in_flight = {g.grant_id: g.in_flight for g in grants}
    # 4 is out, 2 was reported after the save (its 429 is accounted again), 1 before.
    assert in_flight == {4: True, 2: True, 1: False}
    assert [r.grant_id for r in handed.reports] == [2]


def test_the_ledger_forgets_what_finished_more_than_its_keep_ago() -> None:
    ledger = GrantLedger(keep_s=10.0)
    ledger.granted(1, grant(1, 0.0))
    ledger.reported(Report(1, Succeeded(Usage(10, 1))), 1.0)
    ledger.granted(1, grant(2, 0.0))
    ledger.released(1, 2.0)  # its holder gone: spent
    assert len(ledger) == 0
    released = dataclasses.replace(grant(2, 0.0), in_flight=False)  # spent, no report
    assert ledger.hand_over(Incarnation("x"), 11.5, 0).grants == ((1, (released,)),)
    assert ledger.hand_over(Incarnation("x"), 13.0, 0).grants == ()


def test_the_gate_opens_when_every_awaited_daemon_handed_over_or_at_its_time() -> None:
    async def scenario() -> tuple[bool, bool, bool]:
        gate = HandOverGate(["a", "b"], wait_s=3600)
        passing = asyncio.ensure_future(gate.passed())
        gate.arrived("a")
        await asyncio.sleep(0)
        after_one = passing.done()
        gate.arrived("b")
        await asyncio.wait_for(passing, 5)
        timed = HandOverGate(["gone"], wait_s=0.01)
        await asyncio.wait_for(timed.passed(), 5)
        return after_one, gate.is_open, timed.is_open

    assert asyncio.run(scenario()) == (False, True, True)


def test_skip_to_lets_the_older_calls_go_and_resumes_the_order_there() -> None:
    async def scenario() -> list[int]:
        order = ClientOrder("c", 5, gap_timeout_s=3600)
        ran: list[int] = []

        async def call(seq: int) -> None:
            await order.turn(seq)
            ran.append(seq)
            order.done(seq)

        waiting = [asyncio.ensure_future(call(s)) for s in (9, 8)]
        await asyncio.sleep(0)
        order.skip_to(8)  # 5..7 ran at the predecessor: 8 is next
        await asyncio.wait_for(asyncio.gather(*waiting), 5)
        await call(6)  # a retried old call goes at once
        return ran

    assert asyncio.run(scenario()) == [8, 9, 6]


def test_a_restarted_actor_counts_the_handed_over_window_and_resumes_the_clients_order(
    tmp_path: Path,
) -> None:
    """The predecessor granted five requests of six after its last save and
    ran the client's calls up to 6; Ray retries call 3 (an Acquire still
    waiting then) and the client's next call is 7. Restored alone, the actor
    saw an empty window and granted all it was asked; and the retried call
    3 set the client's order there, so call 7 waited for calls 4-6 that
    never came (the gap timeout: a daemon's progress report, and with it its
    lease renewals, stalled for 20 s)."""
    from tierbatch.adapters.ray.registry_actor import RegistryActor

    config = window_config(tmp_path, rpm=6)
    snapshot = str(tmp_path / "q.msgpack")
    first = RegistryActor("restart", config, snapshot, use_kv=False)
    clock = SystemClock()

    async def before() -> list[OutstandingGrant]:
        await first.join("c")
        await first.save_now()  # the last save: nothing granted yet
        grants = []
        for seq in range(5):
            answer = await first.acquire("c", seq, ask_for(seq + 1))
            assert isinstance(answer, Granted)
            g = answer.grant
            grants.append(OutstandingGrant(g.grant_id, g.model, g.est_tokens, g.granted_at))
        await first.tell_many("c", 5, [Sent(g.grant_id, clock.wall()) for g in grants])
        await first.tell_many("c", 6, [Report(grants[0].grant_id, Succeeded(Usage(90, 9)))])
        return grants

    try:
        grants = asyncio.run(before())
    finally:
        first._registry.stop()
    ledger = GrantLedger(keep_s=120.0)
    for g in grants:
        ledger.granted(1, g)
    ledger.reported(Report(grants[0].grant_id, Succeeded(Usage(90, 9))), clock.wall())

    second = RegistryActor("restart", config, snapshot, use_kv=False)
    assert second.restored_from == "file"

    async def after() -> tuple[Any, Any, ModelStatus]:
        retried = asyncio.ensure_future(second.acquire("c", 3, ask_for(100)))
        question = asyncio.ensure_future(second.ask(GetQuotaStatus(), "c", 7))
        await asyncio.sleep(0.05)
        assert not retried.done() and not question.done()  # held for the hand-over
        incarnation = await second.heartbeat("c")
        assert await second.hand_over("c", ledger.hand_over(incarnation, clock.wall(), 7))
        status = await asyncio.wait_for(question, 10)
        answer = await asyncio.wait_for(retried, 10)  # the window's sixth place
        more = asyncio.ensure_future(second.acquire("c", 8, ask_for(101)))
        await asyncio.sleep(0.05)
        assert not more.done()  # the window is full: it waits
        full = lite(await second.ask(GetQuotaStatus()))
        await asyncio.to_thread(second._registry.stop)  # (it answers the waiter "stopped")
        await asyncio.wait_for(more, 10)
        return answer, status, full

    try:
        answer, status, full = asyncio.run(after())
    finally:
        second._registry.stop()
    # The retried (older) call went first, then the question, in the client's order.
    assert isinstance(answer, Granted)
    assert (lite(status).requests_in_window, lite(status).in_flight) == (6, 5)
    assert (full.requests_in_window, full.requests_today) == (6, 6)


@pytest.mark.parametrize("saved_at", [None, 50.0])
def test_every_report_goes_again_when_the_save_time_is_unknown_or_older(
    saved_at: float | None,
) -> None:
    ledger = GrantLedger(keep_s=600.0)
    ledger.granted(1, grant(1, 10.0))
    ledger.reported(Report(1, Succeeded(Usage(1, 1))), 100.0)
    handed = ledger.hand_over(Incarnation("x", saved_at=saved_at), 101.0, 0)
    assert [r.grant_id for r in handed.reports] == [1]

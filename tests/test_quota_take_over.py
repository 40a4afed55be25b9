"""Worked examples for a new owner of a shared quota: ``QuotaPolicy.take_over``
from a dead owner's snapshot, and ``adopt`` of the grants the followers
still hold or finished lately. What must hold: the day's count and the
window survive the change of owner, every grant is counted once (whether
the snapshot saw it or not), grant ids never repeat, and an adopted grant
in flight keeps its place until it is reported."""

from __future__ import annotations

from typing import Any

from tierbatch.policies.config import LimiterMode, ModelSpec, QuotaConfig
from tierbatch.policies.outcomes import Succeeded, Usage
from tierbatch.policies.quota import Grant, OutstandingGrant, QuotaPolicy, Wait

FIXED: dict[str, Any] = {"limiter": LimiterMode.WINDOW, "learn_limits": False, "margin_s": 0.0}
QUOTA = QuotaConfig(window_s=60.0, **FIXED)
MODELS = {"m": ModelSpec(name="m", rpm=3, tpm=0, rpd=100)}
T0 = 1_000.0


def requests_today(policy: QuotaPolicy, now: float) -> int:
    return next(s.requests_today for s in policy.status(now) if s.model == "m")


def granted(policy: QuotaPolicy, now: float) -> Grant:
    result = policy.acquire(["m"], 10, now)
    assert isinstance(result, Grant), result
    return result


def successor(owner: QuotaPolicy, saved_at: float, first_grant_id: int = 1 << 32) -> QuotaPolicy:
    policy = QuotaPolicy.restore(MODELS, QUOTA, owner.snapshot())
    policy.take_over(saved_at=saved_at, first_grant_id=first_grant_id)
    return policy


def outstanding(grant: Grant, *, sent_at: float | None, in_flight: bool) -> OutstandingGrant:
    return OutstandingGrant(grant.grant_id, "m", 10, grant.granted_at, sent_at, in_flight)


def test_the_day_and_the_window_survive_a_take_over() -> None:
    owner = QuotaPolicy(MODELS, QUOTA)
    done = [granted(owner, T0 + i) for i in range(3)]
    for g in done:
        owner.report(g.grant_id, Succeeded(Usage(10, 5)), T0 + 5)
    new = successor(owner, saved_at=T0 + 5)
    assert requests_today(new, T0 + 6) == 3
    assert isinstance(new.acquire(["m"], 10, T0 + 6), Wait)  # the window is full
    assert isinstance(new.acquire(["m"], 10, T0 + 60.5), Grant)  # the first place freed


def test_new_grant_ids_start_above_the_predecessors() -> None:
    owner = QuotaPolicy(MODELS, QUOTA)
    granted(owner, T0)
    new = successor(owner, saved_at=T0, first_grant_id=(2 << 32))
    assert granted(new, T0 + 61).grant_id == 2 << 32


def test_a_grant_the_snapshot_holds_in_flight_is_adopted_and_counted_once() -> None:
    owner = QuotaPolicy(MODELS, QUOTA)
    g = granted(owner, T0)
    new = successor(owner, saved_at=T0 + 1)
    adopted = new.adopt([outstanding(g, sent_at=T0 + 0.5, in_flight=True)], T0 + 2)
    assert [a.grant_id for a in adopted] == [g.grant_id]
    assert requests_today(new, T0 + 2) == 1
    # Its report is accounted (a second one is refused), and its place stays.
    assert new.report(g.grant_id, Succeeded(Usage(10, 5)), T0 + 3)
    assert not new.report(g.grant_id, Succeeded(Usage(10, 5)), T0 + 3)
    granted(new, T0 + 3)
    granted(new, T0 + 3)
    assert isinstance(new.acquire(["m"], 10, T0 + 3), Wait)


def test_a_grant_made_after_the_last_snapshot_is_counted_and_holds_its_place() -> None:
    owner = QuotaPolicy(MODELS, QUOTA)
    snapshot_owner = successor(owner, saved_at=T0)  # the state as saved, before the grants
    late = [granted(owner, T0 + 1), granted(owner, T0 + 2)]
    held = [outstanding(late[0], sent_at=T0 + 1.1, in_flight=True)]
    finished = [outstanding(late[1], sent_at=T0 + 2.1, in_flight=False)]
    snapshot_owner.adopt(held + finished, T0 + 3)
    assert requests_today(snapshot_owner, T0 + 3) == 2
    granted(snapshot_owner, T0 + 3)
    assert isinstance(snapshot_owner.acquire(["m"], 10, T0 + 3), Wait)
    # The places end one window after each request left, not after the take-over.
    assert isinstance(snapshot_owner.acquire(["m"], 10, T0 + 61.2), Grant)


def test_a_finished_grant_the_snapshot_counted_is_not_counted_again() -> None:
    owner = QuotaPolicy(MODELS, QUOTA)
    g = granted(owner, T0)
    owner.report(g.grant_id, Succeeded(Usage(10, 5)), T0 + 1)
    new = successor(owner, saved_at=T0 + 2)
    new.adopt([outstanding(g, sent_at=T0 + 0.1, in_flight=False)], T0 + 3)
    assert requests_today(new, T0 + 3) == 1
    granted(new, T0 + 3)
    granted(new, T0 + 3)
    assert isinstance(new.acquire(["m"], 10, T0 + 3), Wait)


def test_grants_of_unknown_models_are_skipped() -> None:
    new = successor(QuotaPolicy(MODELS, QUOTA), saved_at=T0)
    stray = OutstandingGrant(7, "gone", 10, T0, None, True)
    assert new.adopt([stray], T0 + 1) == ()
    assert requests_today(new, T0 + 1) == 0

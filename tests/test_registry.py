"""The ModelRegistry actor on its own: waiting inside the registry, order of
service, a model's own tier first, patience, deadlines. Replies are awaited
from a queue; time runs on a fast clock."""

from __future__ import annotations

import itertools
import queue
from typing import Any

import pytest

from tierbatch.actors.clock import ScaledClock
from tierbatch.actors.messages import Acquire, AcquireFailed, Granted, Report
from tierbatch.actors.registry import ModelRegistry
from tierbatch.policies.config import LimiterMode, ModelSpec, QuotaConfig
from tierbatch.policies.outcomes import RateLimited, RateLimitScope, Succeeded, Usage
from tierbatch.policies.quota import QuotaPolicy

SPEED = 100.0  # a 60.5 s window lasts about 0.6 s
W = 60.5


class Caller:
    """Sends acquires and collects the registry's replies in order."""

    def __init__(self, registry: Any, clock: ScaledClock) -> None:
        self.registry = registry
        self.clock = clock
        self.replies: queue.Queue[Any] = queue.Queue()
        self._ids = itertools.count(1)

    def acquire(
        self, chain: list[str], rank: int, *, patience_s: float = 0.0, deadline: float | None = None
    ) -> int:
        request_id = next(self._ids)
        self.registry.tell(
            Acquire(
                request_id=request_id,
                holder=1,
                chain=tuple(chain),
                est_tokens=10,
                tier_rank=rank,
                enqueued_at=self.clock.now(),
                reply=self.replies.put,
                deadline=deadline,
                patience_s=patience_s,
            )
        )
        return request_id

    def next(self, timeout: float = 10.0) -> Any:
        return self.replies.get(timeout=timeout)

    def grant(self, chain: list[str], rank: int = 0) -> Granted:
        self.acquire(chain, rank)
        reply = self.next()
        assert isinstance(reply, Granted), reply
        return reply


@pytest.fixture
def registry():
    refs = []

    def start(**models: int) -> Caller:
        clock = ScaledClock(SPEED)
        specs = {name: ModelSpec(name, rpm=rpm, tpm=0, rpd=0) for name, rpm in models.items()}
        # The order of service, not what a 429 teaches: a lone 429 inside the
        # configured limit would otherwise cut the learnt limit, and whether
        # it reads as a bucket's or a window's depends on real-time jitter at
        # this clock speed.
        config = QuotaConfig(limiter=LimiterMode.WINDOW, learn_limits=False)
        ref = ModelRegistry.start(QuotaPolicy(specs, config), clock)
        refs.append(ref)
        return Caller(ref, clock)

    yield start
    for ref in refs:
        ref.stop()


def test_waiters_are_served_by_tier_then_age(registry):
    caller = registry(m=1)
    first = caller.grant(["m"])
    cold = caller.acquire(["m"], rank=2)
    hot = caller.acquire(["m"], rank=0)
    reply = caller.next()
    assert isinstance(reply, Granted) and reply.request_id == hot
    assert reply.grant.granted_at >= first.grant.granted_at + W
    later = caller.next()
    assert isinstance(later, Granted) and later.request_id == cold
    assert later.grant.granted_at >= reply.grant.granted_at + W


def test_a_model_serves_its_own_tier_before_other_tiers_overflow(registry):
    """lite comes back from a cooldown while pro is still full: the cold pack
    (lite is its primary) gets lite although the hot pack ranks higher; the
    hot pack, whose primary frees within its patience, waits for pro."""
    caller = registry(pro=1, lite=3)  # the 429ed request keeps one lite slot
    pro = caller.grant(["pro"])
    cooling = caller.grant(["lite"])
    caller.registry.tell(
        Report(cooling.grant.grant_id, RateLimited(RateLimitScope.REQUESTS_PER_MINUTE, 5.0))
    )
    hot = caller.acquire(["pro", "lite"], rank=0, patience_s=100.0)
    cold = caller.acquire(["lite"], rank=2)
    first, second = caller.next(), caller.next()
    assert isinstance(first, Granted) and first.request_id == cold
    assert first.grant.model == "lite"
    assert isinstance(second, Granted) and second.request_id == hot
    assert second.grant.model == "pro"
    assert second.grant.granted_at >= pro.grant.granted_at + W


def test_without_patience_the_higher_tier_overflows_first(registry):
    caller = registry(pro=1, lite=3)
    caller.grant(["pro"])
    cooling = caller.grant(["lite"])
    caller.registry.tell(
        Report(cooling.grant.grant_id, RateLimited(RateLimitScope.REQUESTS_PER_MINUTE, 5.0))
    )
    hot = caller.acquire(["pro", "lite"], rank=0)
    cold = caller.acquire(["lite"], rank=2)
    first, second = caller.next(), caller.next()
    assert isinstance(first, Granted) and first.request_id == hot
    assert first.grant.model == "lite"
    assert isinstance(second, Granted) and second.request_id == cold


def test_patience_ends_and_then_any_model_of_the_chain_will_do(registry):
    caller = registry(pro=1, lite=1)
    caller.grant(["pro"])
    lite = caller.grant(["lite"])
    caller.registry.tell(Report(lite.grant.grant_id, Succeeded(Usage(10, 1))))
    start = caller.clock.now()
    hot = caller.acquire(["pro", "lite"], rank=0, patience_s=10.0)
    cold = caller.acquire(["lite"], rank=2)
    replies = [caller.next(), caller.next()]
    by_id = {r.request_id: r for r in replies}
    assert all(isinstance(r, Granted) for r in replies)
    # lite's one slot went to its own tier first; the hot pack then waited
    # for whichever frees first: pro (its window ends before lite's).
    assert by_id[cold].grant.model == "lite"
    assert by_id[hot].grant.model == "pro"
    assert by_id[hot].grant.granted_at >= start


def test_a_deadline_expires_a_wait(registry):
    caller = registry(m=1)
    caller.grant(["m"])
    request_id = caller.acquire(["m"], rank=0, deadline=caller.clock.now() + 5.0)
    reply = caller.next()
    assert isinstance(reply, AcquireFailed)
    assert (reply.request_id, reply.reason) == (request_id, "expired")

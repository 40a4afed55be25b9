"""``Withdraw``: an extractor that merged a waiting pack into another takes
its request back; the registry drops it without an answer and serves the
next waiter in its place."""

from __future__ import annotations

import queue

from tierbatch.actors.clock import ScaledClock
from tierbatch.actors.messages import Acquire, Granted, Withdraw
from tierbatch.actors.registry import ModelRegistry
from tierbatch.policies.config import ModelSpec, QuotaConfig
from tierbatch.policies.quota import QuotaPolicy


def test_a_withdrawn_waiter_is_never_answered_and_the_next_one_is_served():
    clock = ScaledClock(100.0)  # a 60 s window lasts about 0.6 s
    policy = QuotaPolicy({"m": ModelSpec("m", rpm=1, tpm=0, rpd=0)}, QuotaConfig())
    ref = ModelRegistry.start(policy, clock)
    replies: queue.Queue[object] = queue.Queue()
    try:

        def acquire(request_id: int, holder: int = 1) -> None:
            ref.tell(Acquire(request_id, holder, ("m",), 10, 0, clock.now(), replies.put, tier="t"))

        acquire(1)
        first = replies.get(timeout=10)
        assert isinstance(first, Granted) and first.request_id == 1
        acquire(2)  # waits for the window
        acquire(3)
        ref.tell(Withdraw(2, holder=9))  # another holder's id: not this one
        ref.tell(Withdraw(2, holder=1))
        ref.tell(Withdraw(99, holder=1))  # unknown: ignored
        reply = replies.get(timeout=10)
        assert isinstance(reply, Granted) and reply.request_id == 3
        # Nothing ever answers the withdrawn request; the registry lives on.
        assert replies.empty()
        assert ref.is_alive()
    finally:
        ref.stop()

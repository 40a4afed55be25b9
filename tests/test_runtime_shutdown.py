"""``begin_shutdown``: stop dispatching at once, hand back everything that is
not in a provider call, and let only the calls in flight finish -- keeping
what succeeded, giving back (not retrying) the rest. Waits are on events
and futures with bounds, never sleeps."""

from __future__ import annotations

import threading
from collections import Counter

import pytest
from runtime_helpers import LITE, Gate, ScriptedProvider, answer_all, make_articles, small_config

from tierbatch.actors.clock import ScaledClock
from tierbatch.actors.ports import ExtractionRequest, PackAnswer
from tierbatch.actors.runtime import Runtime
from tierbatch.actors.sinks import CollectingSink
from tierbatch.policies.errors import ShuttingDownError
from tierbatch.policies.outcomes import RateLimited, RateLimitScope
from tierbatch.policies.results import Done

BOUND_S = 20.0


@pytest.fixture
def threads_before():
    before = set(threading.enumerate())
    yield before
    leaked = {t for t in set(threading.enumerate()) - before if t.is_alive()}
    assert not leaked, f"threads left after stop: {leaked}"


class GatedProvider(ScriptedProvider):
    """Every call waits for the gate; ``wait_calls(n)`` waits until n calls
    are in the provider. Calls to ``limited_model`` then answer 429. A call
    that arrives once ``shutdown_returned`` is set is recorded as late."""

    def __init__(self, gate: Gate, limited_model: str | None = None) -> None:
        super().__init__(self._answer)
        self._gate = gate
        self._limited = limited_model
        self._cond = threading.Condition()
        self.shutdown_returned = threading.Event()
        self.late: list[ExtractionRequest] = []

    async def extract(self, request: ExtractionRequest) -> PackAnswer:
        with self._cond:
            self.requests.append(request)
            if self.shutdown_returned.is_set():
                self.late.append(request)
            self._cond.notify_all()
        return await self._answer(request)

    async def _answer(self, request: ExtractionRequest) -> PackAnswer:
        await self._gate.wait()
        if request.model == self._limited:
            return PackAnswer(RateLimited(RateLimitScope.REQUESTS_PER_MINUTE, 1.0))
        return answer_all(request)

    def wait_calls(self, n: int) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.requests) >= n, BOUND_S)

    def called_ids(self) -> list[str]:
        with self._cond:
            return [a.id for r in self.requests for a in r.articles]


# Two calls per model and window; the window passes in 0.1 s, so quota is
# never what stops a call after the shutdown -- only the shutdown is. Each
# extractor holds at most two packs: some in calls, some waiting for quota.
def tight_config():
    return small_config(
        pro=(2, 10**7, 0), flash=(2, 10**7, 0), lite=(2, 10**7, 0), extractors=2, max_packs=2
    )


CLOCK_SPEED = 600.0


@pytest.mark.timeout(60)
def test_begin_shutdown_hands_back_work_not_in_flight_at_once(threads_before):
    gate = Gate()
    provider = GatedProvider(gate)
    articles = make_articles(200)
    sink = CollectingSink()
    runtime = Runtime(tight_config(), provider, sink, clock=ScaledClock(CLOCK_SPEED)).start()
    try:
        runtime.submit(articles)
        provider.wait_calls(2)
        returned = runtime.begin_shutdown()
        provider.shutdown_returned.set()
        with pytest.raises(ShuttingDownError):
            runtime.submit(make_articles(1, prefix="late"))
        assert runtime.drain(timeout=0) is False  # the calls in flight still hold theirs
        gate.open()
        assert runtime.drain(timeout=BOUND_S)
    finally:
        gate.open()
        unfinished = runtime.stop(drain=False)
    assert not provider.late, "a call started after begin_shutdown"
    in_flight = provider.called_ids()
    # Everything not in a call came back at once, while the calls hung.
    assert sorted(a.id for a in returned) == sorted(
        a.id for a in articles if a.id not in set(in_flight)
    )
    assert unfinished == []
    ids = [r.article_id for r in sink.results]
    assert sorted(ids) == sorted(in_flight)
    assert all(isinstance(r, Done) for r in sink.results)


@pytest.mark.timeout(60)
def test_calls_in_flight_at_shutdown_give_back_what_failed_instead_of_retrying(threads_before):
    gate = Gate()
    provider = GatedProvider(gate, limited_model=LITE)
    articles = make_articles(200)
    sink = CollectingSink()
    runtime = Runtime(tight_config(), provider, sink, clock=ScaledClock(CLOCK_SPEED)).start()
    try:
        runtime.submit(articles)
        provider.wait_calls(4)
        returned = runtime.begin_shutdown()
        provider.shutdown_returned.set()
        gate.open()
        assert runtime.drain(timeout=BOUND_S)
    finally:
        gate.open()
        unfinished = runtime.stop(drain=False)
    assert not provider.late, "a rate-limited pack was retried during shutdown"
    limited = [a.id for r in provider.requests if r.model == LITE for a in r.articles]
    succeeded = [a.id for r in provider.requests if r.model != LITE for a in r.articles]
    assert limited and succeeded
    assert sorted(r.article_id for r in sink.results) == sorted(succeeded)
    assert sorted(a.id for a in unfinished) == sorted(limited)
    everything = [r.article_id for r in sink.results] + [a.id for a in returned + unfinished]
    assert Counter(everything) == Counter(a.id for a in articles)

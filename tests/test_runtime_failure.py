"""The runtime's own failures: an actor dying of an unhandled exception, the
supervisor giving up, a provider raising a stray ``CancelledError``, the
event-loop thread refusing to stop, and a blocked ``submit`` after a fatal
error. Each must end in a clear error -- never a hang -- with every waiter
answered, nothing lost, and no thread left behind.

Faults are injected by monkeypatching an actor's handler to raise; every
wait is bounded (joins and futures with timeouts), so a regression fails
instead of hanging the suite."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from dataclasses import replace
from typing import Any

import pytest
from runtime_helpers import PRO, ScriptedProvider, answer_all, make_articles, small_config

from tierbatch.actors.clock import ScaledClock
from tierbatch.actors.composer import BatchComposer
from tierbatch.actors.event_loop import LoopThread
from tierbatch.actors.extractor import Extractor
from tierbatch.actors.ports import ExtractionRequest, PackAnswer
from tierbatch.actors.registry import ModelRegistry
from tierbatch.actors.runtime import Runtime
from tierbatch.actors.sinks import CollectingSink
from tierbatch.actors.supervisor import Supervisor
from tierbatch.policies.config import RetryConfig, RuntimeConfig
from tierbatch.policies.errors import FatalProviderError, RuntimeFailureError
from tierbatch.policies.outcomes import AuthFailed
from tierbatch.policies.results import Done, Failed

BOUND_S = 20.0  # every wait below: long enough on a loaded machine, never forever


@pytest.fixture
def threads_before():
    before = set(threading.enumerate())
    yield before
    leaked = {t for t in set(threading.enumerate()) - before if t.is_alive()}
    assert not leaked, f"threads left after stop: {leaked}"


def inject_fault(monkeypatch: pytest.MonkeyPatch, cls: type, method: str) -> threading.Event:
    """Make ``cls.method`` raise on every call; the event tells it fired."""
    fired = threading.Event()

    def boom(self: Any, *args: Any, **kwargs: Any) -> Any:
        fired.set()
        raise RuntimeError(f"injected fault in {cls.__name__}.{method}")

    monkeypatch.setattr(cls, method, boom)
    return fired


class Background:
    """Runs a call on a thread; ``result`` waits a bounded time for it."""

    def __init__(self, call: Any) -> None:
        self.value: Any = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(call,), daemon=True)
        self._thread.start()

    def _run(self, call: Any) -> None:
        try:
            self.value = call()
        except BaseException as exc:
            self.error = exc

    def finished(self, timeout: float = BOUND_S) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()


def check_actor_death(
    actor: str,
    *,
    crash_hook: Any = None,
    expect_results: bool = True,
) -> None:
    """Submit more than the queue holds (so a submit is blocked on space)
    and drain, with ``actor`` made to die on its first fault: the drain
    and the blocked submit end in ``RuntimeFailureError`` naming it, stats
    cannot hang, ``stop`` returns in time, and every accepted article is
    either finished (once) or handed back."""
    articles = make_articles(300)
    sink = CollectingSink()
    config = small_config(max_queued=40, extractors=2, max_packs=4)
    runtime = Runtime(
        config, ScriptedProvider(), sink, clock=ScaledClock(20), crash_hook=crash_hook
    ).start()
    stopped: Background | None = None
    try:
        assert runtime.submit(articles[:40], block=False).accepted == 40
        submit = Background(lambda: runtime.submit(articles[40:], block=True, timeout=None))
        with pytest.raises(RuntimeFailureError) as failure:
            runtime.drain(timeout=BOUND_S)
        assert failure.value.actor == actor, failure.value
        assert submit.finished(), "a blocked submit was never answered"
        assert isinstance(submit.error, RuntimeFailureError), submit.error
        assert isinstance(runtime.fatal_error, RuntimeFailureError)
        assert runtime.fatal_error.actor == actor
        if actor in ("registry", "composer"):
            with pytest.raises(RuntimeFailureError):
                runtime.stats()
        else:
            assert runtime.stats().submitted >= 40  # the others still answer
        with pytest.raises(RuntimeFailureError):
            runtime.submit(articles[:1], block=False)
    finally:
        stopped = Background(lambda: runtime.stop(drain=False))
        assert stopped.finished(), "stop did not return"
    assert stopped.error is None, stopped.error
    unfinished = stopped.value
    finished = [r.article_id for r in sink.results]
    returned = [a.id for a in unfinished]
    assert len(finished) == len(set(finished)), Counter(finished).most_common(3)
    assert len(returned) == len(set(returned))
    assert not set(finished) & set(returned)
    # Nothing accepted is lost (the blocked submit may have placed more).
    assert {a.id for a in articles[:40]} <= set(finished) | set(returned)
    assert set(finished) | set(returned) <= {a.id for a in articles}
    if not expect_results:
        assert not finished


@pytest.mark.timeout(120)
def test_registry_death_turns_runtime_fatal_not_hang(threads_before, monkeypatch):
    fired = inject_fault(monkeypatch, ModelRegistry, "_on_report")
    check_actor_death("registry")
    assert fired.is_set()


@pytest.mark.timeout(120)
def test_composer_death_turns_runtime_fatal_not_hang(threads_before, monkeypatch):
    fired = inject_fault(monkeypatch, BatchComposer, "_on_finished")
    check_actor_death("composer", expect_results=False)
    assert fired.is_set()


@pytest.mark.timeout(120)
def test_supervisor_death_turns_runtime_fatal_not_hang(threads_before, monkeypatch):
    fired = inject_fault(monkeypatch, Supervisor, "_on_crash")
    crashed = threading.Event()

    def crash_once(items):
        if not crashed.is_set():
            crashed.set()
            raise RuntimeError("an extractor crash, for the supervisor to handle")

    check_actor_death("supervisor", crash_hook=crash_once)
    assert fired.is_set()


@pytest.mark.timeout(120)
def test_extractors_that_keep_crashing_turn_runtime_fatal_not_hang(threads_before, monkeypatch):
    fired = inject_fault(monkeypatch, Extractor, "_on_granted")
    check_actor_death("extractors")
    assert fired.is_set()


@pytest.mark.timeout(60)
def test_submit_blocking_returns_after_fatal_pause(threads_before):
    """The provider refuses the key, so the composer pauses with a full
    queue: a ``submit(block=True, timeout=None)`` waiting for room must
    end with the fatal error, not wait forever."""

    async def refuse(request: ExtractionRequest) -> PackAnswer:
        return PackAnswer(AuthFailed(403, "API key not valid"))

    config = replace(
        small_config(max_queued=20), runtime=RuntimeConfig(extractors=1, max_packs_in_flight=1)
    )
    articles = make_articles(200)
    runtime = Runtime(config, ScriptedProvider(refuse), CollectingSink(), clock=ScaledClock(20))
    runtime.start()
    try:
        submit = Background(lambda: runtime.submit(articles, block=True, timeout=None))
        assert submit.finished(), "submit(block=True) still waiting after the fatal pause"
        assert isinstance(submit.error, FatalProviderError), submit.error
        # A later blocking submit does not wait either.
        with pytest.raises(FatalProviderError):
            runtime.submit(articles[-5:], block=True, timeout=None)
    finally:
        unfinished = runtime.stop()
    assert runtime.fatal_error is not None
    assert len(unfinished) == len({a.id for a in unfinished}) >= 20


@pytest.mark.timeout(60)
def test_stray_cancelled_error_from_provider_fails_over_not_hangs(threads_before):
    """A provider raising ``CancelledError`` that the runtime did not cause
    is a failed call like any other: the pack moves on (or ends failed),
    it does not hang with its lease renewed forever."""

    async def pro_cancels(request: ExtractionRequest) -> PackAnswer:
        if request.model == PRO:
            raise asyncio.CancelledError("an SDK cancelled its own task")
        return answer_all(request)

    config = small_config(retry=RetryConfig(max_failures=3, request_timeout_s=60.0))
    articles = make_articles(120)
    sink = CollectingSink()
    provider = ScriptedProvider(pro_cancels)
    with Runtime(config, provider, sink, clock=ScaledClock(20)) as runtime:
        runtime.submit(articles)
        assert runtime.drain(timeout=BOUND_S), "packs hang after a stray CancelledError"
    ids = [r.article_id for r in sink.results]
    assert sorted(ids) == sorted(a.id for a in articles)
    hot = [r for r in sink.results if r.tier == "hot"]
    assert hot and any(r.model == PRO for r in provider.requests)
    for result in hot:
        if isinstance(result, Failed):
            assert "CancelledError" in result.detail
        else:
            assert isinstance(result, Done) and result.model != PRO


@pytest.mark.timeout(60)
def test_loop_thread_stop_is_bounded(monkeypatch):
    """A task that swallows its cancellation keeps the loop thread busy:
    ``stop`` returns after its bound, saying what is left, instead of
    joining forever."""
    monkeypatch.setattr(LoopThread, "STOP_TIMEOUT_S", 0.2, raising=False)
    loop = LoopThread()
    loop.start()
    started = threading.Event()
    release: list[asyncio.Event] = []

    async def stubborn() -> None:
        event = asyncio.Event()
        release.append(event)
        started.set()
        while not event.is_set():
            try:
                await event.wait()
            except asyncio.CancelledError:
                continue  # refuses to be cancelled

    loop.submit(stubborn())
    assert started.wait(BOUND_S)
    stop = Background(loop.stop)
    try:
        assert stop.finished(), "LoopThread.stop joined without a bound"
        assert stop.error is None and stop.value is False
    finally:
        loop.loop.call_soon_threadsafe(release[0].set)
        assert stop.finished()
    # Once the task lets go, the thread ends and a second stop says so.
    assert loop.stop(timeout=BOUND_S) is True

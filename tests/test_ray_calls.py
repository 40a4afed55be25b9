"""The model calls on caller actors on Ray (``daemon --ray-extractors``):
the actor tells when its request left before it answers, a runtime whose
provider is the pool answers every article once, and a caller actor killed
mid-call costs a retry, never an article."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import threading
from collections import Counter
from collections.abc import Iterator
from functools import partial
from typing import Any

import pytest
from ray_cluster import RayHead
from runtime_helpers import (
    RecordingObserver,
    ScriptedProvider,
    answer_all,
    make_articles,
    small_config,
)

from tierbatch.actors.clock import SystemClock
from tierbatch.actors.ports import ExtractionRequest, PackAnswer, mark_request_sent
from tierbatch.actors.runtime import Runtime
from tierbatch.actors.sinks import CollectingSink
from tierbatch.adapters.app.cli import main
from tierbatch.adapters.app.provider_factory import provider_on_this_node
from tierbatch.policies.config import Config, ProviderKind
from tierbatch.policies.outcomes import ServerError
from tierbatch.policies.results import Done

REQUEST = ExtractionRequest("m", tuple(make_articles(2)), timeout_s=5.0, est_input_tokens=100)


def events_of(provider: Any) -> list[tuple[str, Any]]:
    from tierbatch.adapters.ray.remote_calls import CallerActor

    async def collect() -> list[tuple[str, Any]]:
        return [
            event async for event in CallerActor(lambda: (provider, "scripted")).extract(REQUEST)
        ]

    return asyncio.run(collect())


def test_a_caller_actor_tells_when_its_request_left_then_answers() -> None:
    async def marks(request: ExtractionRequest) -> PackAnswer:
        mark_request_sent()
        await asyncio.sleep(0.01)
        return answer_all(request)

    events = events_of(ScriptedProvider(marks))
    assert [kind for kind, _ in events] == ["sent", "answer"]
    assert isinstance(events[1][1], PackAnswer) and set(events[1][1].answers) == {
        a.id for a in REQUEST.articles
    }


def test_a_caller_actor_whose_provider_marks_nothing_only_answers() -> None:
    events = events_of(ScriptedProvider())
    assert [kind for kind, _ in events] == ["answer"]


class _FakeCalls:
    """What ``actor.extract.options(...).remote(request)`` gives: refs to
    await, one per event the actor yields (or an error in their place)."""

    def __init__(self, events: list[Any], seen: list[str]) -> None:
        self._events = iter(events)
        self._seen = seen

    def __aiter__(self) -> _FakeCalls:
        return self

    async def __anext__(self) -> Any:
        event = next(self._events, None)
        if event is None:
            raise StopAsyncIteration
        if isinstance(event, BaseException):
            raise event
        self._seen.append(f"ref {event[0]}")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        future.set_result(event)
        return future


class _FakeActor:
    def __init__(self, events: list[Any], seen: list[str]) -> None:
        calls = _FakeCalls(events, seen)
        remote = type("Remote", (), {"remote": staticmethod(lambda _request: calls)})
        self.extract = type("Method", (), {"options": staticmethod(lambda **_kw: remote)})


def relayed(events: list[Any]) -> tuple[PackAnswer, list[str]]:
    from tierbatch.actors.ports import bind_request_sent
    from tierbatch.adapters.ray.remote_calls import RayProvider

    seen: list[str] = []

    async def call() -> PackAnswer:
        bind_request_sent(lambda: seen.append("marked sent"))
        return await RayProvider([_FakeActor(events, seen)]).extract(REQUEST)

    return asyncio.run(call()), seen


def test_the_actors_send_mark_is_the_runtimes_before_the_answer() -> None:
    answer, seen = relayed([("sent", None), ("answer", answer_all(REQUEST))])
    assert seen == ["ref sent", "marked sent", "ref answer"]
    assert set(answer.answers) == {a.id for a in REQUEST.articles}


def test_a_call_whose_actor_died_is_a_server_error_to_retry() -> None:
    answer, seen = relayed([("sent", None), RuntimeError("the actor died")])
    assert isinstance(answer.outcome, ServerError) and "RuntimeError" in answer.outcome.message
    assert seen == ["ref sent", "marked sent"]


def test_ray_extractors_without_ray_is_a_usage_error(tmp_path: Any) -> None:
    out, err = io.StringIO(), io.StringIO()
    argv = ["daemon", "--db", str(tmp_path / "q.sqlite"), "--no-check", "--ray-extractors", "2"]
    assert main(argv, stdout=out, stderr=err) == 2
    assert "--ray-extractors needs --ray" in err.getvalue()


# ---- with the session's Ray head -----------------------------------------------------


@pytest.fixture
def ray_driver(ray_head: RayHead) -> Iterator[RayHead]:
    from tierbatch.adapters.ray.cluster import connect

    connect(ray_head.address)
    yield ray_head


def simulated(config: Config) -> Config:
    return dataclasses.replace(
        config, provider=dataclasses.replace(config.provider, kind=ProviderKind.SIMULATED)
    )


def run_on_callers(callers: Any, n: int, during: Any = None) -> tuple[list[Any], Any]:
    config = small_config(extractors=2, max_packs=8)
    observer = RecordingObserver()
    sink = CollectingSink()
    with Runtime(config, callers, sink, clock=SystemClock(), observer=observer) as runtime:
        runtime.submit(make_articles(n))
        if during is not None:
            during(observer)
        assert runtime.drain(timeout=120)
    return list(sink.results), observer


def test_a_runtime_on_caller_actors_answers_every_article_once(ray_driver: RayHead) -> None:
    from tierbatch.adapters.ray.remote_calls import start_callers

    callers = start_callers(2, partial(provider_on_this_node, simulated(small_config())))
    assert callers.description.startswith("2 caller actors on Ray (simulated")
    results, observer = run_on_callers(callers, 30)
    ids = Counter(r.article_id for r in results)
    assert set(ids) == {a.id for a in make_articles(30)} and max(ids.values()) == 1
    assert all(isinstance(r, Done) for r in results)
    assert set(observer.sent) == {g.grant_id for g, _ in observer.grants}  # one Sent per grant


def test_a_caller_actor_killed_mid_call_costs_a_retry_never_an_article(
    ray_driver: RayHead,
) -> None:
    import ray

    from tierbatch.adapters.ray.remote_calls import start_callers

    callers = start_callers(2, partial(provider_on_this_node, simulated(small_config())))
    victim = callers._actors[0]

    def kill_once_calls_are_out(observer: RecordingObserver) -> None:
        # Calls take the simulation's ~0.8 s: the first grants are in flight.
        started = threading.Event()
        while not observer.sent:
            started.wait(0.01)
        ray.kill(victim, no_restart=False)  # Ray restarts it; its calls in flight fail

    results, observer = run_on_callers(callers, 30, kill_once_calls_are_out)
    ids = Counter(r.article_id for r in results)
    assert set(ids) == {a.id for a in make_articles(30)} and max(ids.values()) == 1
    assert all(isinstance(r, Done) for r in results), [
        r for r in results if not isinstance(r, Done)
    ]
    assert any(isinstance(outcome, ServerError) for _, outcome, _ in observer.outcomes)

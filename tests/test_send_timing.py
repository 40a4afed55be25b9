"""The runtime's own timeout is a backstop behind the provider's: time a
call spends queueing for a connection before it is sent is not the
server's, so it must not turn into a false timeout (which would count
against the model's health and could cool it down)."""

from __future__ import annotations

import asyncio

from runtime_helpers import (
    RecordingObserver,
    ScriptedProvider,
    answer_all,
    make_articles,
    small_config,
)

from tierbatch.actors.ports import ExtractionRequest, PackAnswer, mark_request_sent
from tierbatch.actors.runtime import Runtime
from tierbatch.actors.sinks import CollectingSink
from tierbatch.policies.config import RetryConfig
from tierbatch.policies.outcomes import Cancelled
from tierbatch.policies.results import Done

TIMEOUT_S = 1.0


def test_runtime_timeout_does_not_count_the_wait_for_a_connection() -> None:
    async def queues_then_answers(request: ExtractionRequest) -> PackAnswer:
        await asyncio.sleep(0.6 * TIMEOUT_S)  # queued for a connection of its pool
        mark_request_sent()
        await asyncio.sleep(0.6 * TIMEOUT_S)  # on the wire
        return answer_all(request)

    provider = ScriptedProvider(queues_then_answers)
    config = small_config(retry=RetryConfig(request_timeout_s=TIMEOUT_S), extractors=1)
    articles = make_articles(1)
    sink = CollectingSink()
    with Runtime(config, provider, sink) as runtime:
        runtime.submit(articles)
        assert runtime.drain(timeout=30)
    assert [type(r) for r in sink.results] == [Done]
    assert len(provider.requests) == 1


def test_call_never_sent_is_retried_without_counting_a_failure() -> None:
    """``Cancelled``: the provider gave up before the request had a
    connection. Not the articles' fault: with a failure budget of one, the
    article still gets its second attempt."""

    async def first_never_sent(request: ExtractionRequest) -> PackAnswer:
        if request.attempt == 1:
            return PackAnswer(Cancelled())
        return answer_all(request)

    provider = ScriptedProvider(first_never_sent)
    config = small_config(retry=RetryConfig(max_failures=1), extractors=1)
    sink = CollectingSink()
    with Runtime(config, provider, sink) as runtime:
        runtime.submit(make_articles(1))
        assert runtime.drain(timeout=30)
    assert [type(r) for r in sink.results] == [Done]
    assert [r.attempt for r in provider.requests] == [1, 2]


def _sends_per_grant(observer: RecordingObserver) -> dict[int, int]:
    counts = {grant.grant_id: 0 for grant, _ in observer.grants}
    for kind, grant_id, _at in observer.events:
        if kind == "sent":
            assert isinstance(grant_id, int)
            counts[grant_id] += 1
    return counts


def _assert_one_sent_per_request(provider: ScriptedProvider, observer: RecordingObserver) -> None:
    """Run 12 articles through one extractor: every request was told Sent once."""
    with Runtime(small_config(extractors=1), provider, CollectingSink(), observer=observer) as rt:
        rt.submit(make_articles(12))
        assert rt.drain(timeout=30)
    counts = _sends_per_grant(observer)
    assert len(counts) == len(provider.requests) > 1
    assert set(counts.values()) == {1}


def test_the_registry_hears_one_sent_per_request_from_a_provider_that_marks() -> None:
    """The adapter's mark is the one: the runtime no longer adds its own at
    the start of the call (it used to, so every request was told twice)."""

    async def marks_twice(request: ExtractionRequest) -> PackAnswer:
        await asyncio.sleep(0.01)
        mark_request_sent()
        mark_request_sent()  # safe to call more than once: still one Sent
        return answer_all(request)

    _assert_one_sent_per_request(ScriptedProvider(marks_twice), RecordingObserver())


def test_the_registry_hears_one_sent_per_request_from_a_provider_that_does_not_mark() -> None:
    """Without a mark of the adapter's, the runtime's own counts: the start
    of the call, told once."""
    observer = RecordingObserver()
    _assert_one_sent_per_request(ScriptedProvider(), observer)
    for grant, _ in observer.grants:
        assert observer.sent[grant.grant_id] >= grant.granted_at

"""Runtime semantics with scripted providers: crashes, stop and drain,
backpressure, configuration errors, retired models, timeouts, invalid
answers and rate limits. Waits are on futures and events, never sleeps."""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import replace

import pytest
from runtime_helpers import (
    FLASH,
    LITE,
    PRO,
    Gate,
    RecordingObserver,
    ScriptedProvider,
    answer_all,
    make_articles,
    small_config,
)

from tierbatch.actors.clock import ScaledClock
from tierbatch.actors.ports import ExtractionRequest, PackAnswer
from tierbatch.actors.runtime import Runtime
from tierbatch.actors.sinks import CollectingSink
from tierbatch.policies.config import RetryConfig, RuntimeConfig
from tierbatch.policies.errors import FatalProviderError, QueueFullError, RuntimeNotRunningError
from tierbatch.policies.outcomes import (
    AuthFailed,
    ModelNotFound,
    RateLimited,
    RateLimitScope,
    Succeeded,
    Usage,
)
from tierbatch.policies.results import (
    AnswerProblem,
    Done,
    Failed,
    FailureReason,
    ProblemKind,
)


def assert_exactly_once(results, articles):
    ids = [r.article_id for r in results]
    assert len(ids) == len(set(ids)), Counter(ids).most_common(3)
    assert set(ids) == {a.id for a in articles}


@pytest.fixture
def threads_before():
    before = set(threading.enumerate())
    yield before
    leaked = {t for t in set(threading.enumerate()) - before if t.is_alive()}
    assert not leaked, f"threads left after stop: {leaked}"


def test_crashing_extractors_lose_nothing_and_poison_is_isolated(threads_before):
    articles = make_articles(600)
    poison_id = articles[123].id
    crashed_once: set[int] = set()
    lock = threading.Lock()

    def crash_hook(items):
        ids = {item.article.id for item in items}
        if poison_id in ids:
            raise RuntimeError("poison article")
        with lock:  # crash the first time each of a few batches shows up
            key = min(item.seq for item in items)
            # At most four random crashes, well inside the supervisor's
            # restart budget however the batches happen to be composed.
            eligible = len(items) > 1 and key % 5 == 0 and len(crashed_once) < 4
            if eligible and key not in crashed_once:
                crashed_once.add(key)
                raise RuntimeError("random crash")

    sink = CollectingSink()
    config = small_config(pro=(600, 10**7, 0), flash=(600, 10**7, 0), lite=(600, 10**7, 0))
    with Runtime(
        config, ScriptedProvider(), sink, clock=ScaledClock(20), crash_hook=crash_hook
    ) as runtime:
        runtime.submit(articles)
        assert runtime.drain(timeout=60)
        stats = runtime.stats()
    assert_exactly_once(sink.results, articles)
    by_id = sink.by_id()
    poison = by_id[poison_id]
    assert isinstance(poison, Failed) and poison.reason is FailureReason.POISON
    others = [r for r in sink.results if r.article_id != poison_id]
    assert all(isinstance(r, Done) for r in others), [r for r in others if not r.ok][:3]
    assert stats.requeued_after_crash > 0
    assert crashed_once


def test_stop_without_drain_hands_back_what_is_unfinished(threads_before):
    gate = Gate()
    started = threading.Event()

    async def hang(request: ExtractionRequest) -> PackAnswer:
        started.set()
        await gate.wait()
        return answer_all(request)

    articles = make_articles(300)
    sink = CollectingSink()
    provider = ScriptedProvider(hang)
    runtime = Runtime(small_config(), provider, sink, clock=ScaledClock(20)).start()
    runtime.submit(articles)
    assert started.wait(10)
    unfinished = runtime.stop(drain=False)
    assert provider.closed
    finished = {r.article_id for r in sink.results}
    returned = {a.id for a in unfinished}
    assert not finished & returned
    assert finished | returned == {a.id for a in articles}
    assert len(unfinished) == len(returned)
    with pytest.raises(RuntimeNotRunningError):
        runtime.submit(articles[:1])


def test_drain_times_out_then_completes(threads_before):
    gate = Gate()

    async def wait_for_gate(request: ExtractionRequest) -> PackAnswer:
        await gate.wait()
        return answer_all(request)

    articles = make_articles(50)
    sink = CollectingSink()
    with Runtime(
        small_config(), ScriptedProvider(wait_for_gate), sink, clock=ScaledClock(20)
    ) as runtime:
        runtime.submit(articles)
        assert runtime.drain(timeout=0.05) is False
        gate.open()
        assert runtime.drain(timeout=30) is True
    assert_exactly_once(sink.results, articles)


def test_backpressure_queue_full_and_blocking_submit(threads_before):
    gate = Gate()

    async def wait_for_gate(request: ExtractionRequest) -> PackAnswer:
        await gate.wait()
        return answer_all(request)

    config = replace(
        small_config(max_queued=50),
        runtime=RuntimeConfig(extractors=1, max_packs_in_flight=1),
    )
    articles = make_articles(200)
    sink = CollectingSink()
    with Runtime(config, ScriptedProvider(wait_for_gate), sink, clock=ScaledClock(20)) as rt:
        with pytest.raises(QueueFullError) as full:
            rt.submit(articles, block=False)
        accepted = full.value.accepted
        assert 50 <= accepted < 200
        assert full.value.remaining == 200 - accepted
        with pytest.raises(QueueFullError) as full_again:
            rt.submit(articles[accepted:], block=True, timeout=0.05)
        accepted += full_again.value.accepted
        gate.open()
        receipt = rt.submit(articles[accepted:], block=True, timeout=60)
        assert receipt.accepted == 200 - accepted
        assert rt.drain(timeout=60)
    assert_exactly_once(sink.results, articles)


def test_duplicate_ids_are_refused(threads_before):
    articles = make_articles(20)
    sink = CollectingSink()
    with Runtime(small_config(), ScriptedProvider(), sink, clock=ScaledClock(20)) as rt:
        first = rt.submit(articles)
        second = rt.submit(articles[:5])
        assert rt.drain(timeout=30)
        third = rt.submit(articles[5:8])
    assert first.accepted == 20 and not first.duplicates
    assert second.accepted == 0 and set(second.duplicates) == {a.id for a in articles[:5]}
    assert third.accepted == 0 and len(third.duplicates) == 3
    assert_exactly_once(sink.results, articles)


def test_auth_failure_stops_dispatch_and_keeps_articles(threads_before):
    async def refuse(request: ExtractionRequest) -> PackAnswer:
        return PackAnswer(AuthFailed(403, "API key not valid. Set GEMINI_API_KEY."))

    articles = make_articles(120)
    sink = CollectingSink()
    runtime = Runtime(small_config(), ScriptedProvider(refuse), sink, clock=ScaledClock(20))
    runtime.start()
    runtime.submit(articles)
    with pytest.raises(FatalProviderError, match="GEMINI_API_KEY"):
        runtime.drain(timeout=30)
    unfinished = runtime.stop()
    assert not sink.results
    assert {a.id for a in unfinished} == {a.id for a in articles}
    assert isinstance(runtime.fatal_error, Exception)


def test_retired_model_is_routed_around(threads_before):
    async def pro_is_gone(request: ExtractionRequest) -> PackAnswer:
        if request.model == PRO:
            return PackAnswer(ModelNotFound("models/pro is not found for API version v1beta"))
        return answer_all(request)

    articles = make_articles(200)
    provider = ScriptedProvider(pro_is_gone)
    sink = CollectingSink()
    with Runtime(small_config(), provider, sink, clock=ScaledClock(20)) as runtime:
        runtime.submit(articles)
        assert runtime.drain(timeout=30)
        status = {m.model: m for m in runtime.stats().models}
    assert status[PRO].unavailable
    assert all(isinstance(r, Done) for r in sink.results)
    hot = [r for r in sink.results if r.tier == "hot"]
    # Around pro, onto the rest of the chain (flash, or lite while flash's
    # pacing holds it back).
    assert hot and all(r.model in (FLASH, LITE) and r.fallback for r in hot)
    pro_calls = [r for r in provider.requests if r.model == PRO]
    # Only the calls already launched before the first 404 came back.
    assert len(pro_calls) <= len({r.grant_id for r in pro_calls})
    assert_exactly_once(sink.results, articles)


def test_timeouts_end_as_typed_failures(threads_before):
    gate = Gate()  # never opened: lite hangs

    async def lite_hangs(request: ExtractionRequest) -> PackAnswer:
        if request.model == LITE:
            await gate.wait()
        return answer_all(request)

    config = small_config(retry=RetryConfig(max_failures=2, request_timeout_s=2.0))
    articles = make_articles(60)
    sink = CollectingSink()
    with Runtime(config, ScriptedProvider(lite_hangs), sink, clock=ScaledClock(20)) as rt:
        rt.submit(articles)
        assert rt.drain(timeout=30)
    cold = [r for r in sink.results if r.tier == "cold"]
    assert cold
    for result in cold:
        assert isinstance(result, Failed)
        assert result.reason is FailureReason.TIMEOUT
        assert result.attempts == 2
        assert result.last_model == LITE
    assert all(isinstance(r, Done) for r in sink.results if r.tier != "cold")
    assert_exactly_once(sink.results, articles)


def test_invalid_answers_retry_on_the_next_model(threads_before):
    async def flash_babbles(request: ExtractionRequest) -> PackAnswer:
        if request.model == FLASH:
            return PackAnswer(
                Succeeded(Usage(100, 10)),
                {a.id: AnswerProblem(ProblemKind.MALFORMED, "not JSON") for a in request.articles},
            )
        return answer_all(request)

    articles = make_articles(100)
    sink = CollectingSink()
    with Runtime(
        small_config(), ScriptedProvider(flash_babbles), sink, clock=ScaledClock(20)
    ) as rt:
        rt.submit(articles)
        assert rt.drain(timeout=30)
    warm = [r for r in sink.results if r.tier == "warm"]
    assert warm
    for result in warm:
        assert isinstance(result, Done)
        assert result.model == LITE and result.attempts == 2
    assert_exactly_once(sink.results, articles)


def test_truncated_answers_are_split_until_they_fit(threads_before):
    async def one_at_a_time(request: ExtractionRequest) -> PackAnswer:
        if len(request.articles) > 1:
            return PackAnswer(
                Succeeded(Usage(100, 8192)),
                {a.id: AnswerProblem(ProblemKind.TRUNCATED) for a in request.articles},
            )
        return answer_all(request)

    config = small_config(retry=RetryConfig(max_attempts=10, max_failures=5))
    articles = make_articles(40)
    sink = CollectingSink()
    with Runtime(config, ScriptedProvider(one_at_a_time), sink, clock=ScaledClock(20)) as rt:
        rt.submit(articles)
        assert rt.drain(timeout=30)
    assert all(isinstance(r, Done) for r in sink.results)
    assert_exactly_once(sink.results, articles)


def test_rate_limits_move_on_then_wait_for_the_cooldown(threads_before):
    """A 429 on the primary sends the pack to the next model at once; when
    every model is cooling, the pack waits and succeeds after the delay."""
    limited: set[str] = set()
    lock = threading.Lock()

    async def first_call_limited(request: ExtractionRequest) -> PackAnswer:
        with lock:
            first = request.model not in limited
            limited.add(request.model)
        if first:
            return PackAnswer(RateLimited(RateLimitScope.REQUESTS_PER_MINUTE, 5.0))
        return answer_all(request)

    observer = RecordingObserver()
    config = small_config(extractors=1, max_packs=1)
    articles = make_articles(30)
    sink = CollectingSink()
    with Runtime(
        config,
        ScriptedProvider(first_call_limited),
        sink,
        clock=ScaledClock(20),
        observer=observer,
    ) as rt:
        rt.submit(articles)
        assert rt.drain(timeout=30)
    assert all(isinstance(r, Done) for r in sink.results)
    assert {m for m, *_ in observer.cooldowns} == limited
    for model, start, until, _ in observer.cooldowns:
        assert until - start == pytest.approx(5.0, abs=0.01)
        assert not [
            g for g, _ in observer.grants if g.model == model and start <= g.granted_at < until
        ]
    assert_exactly_once(sink.results, articles)


def test_launch_stagger_spaces_first_requests(threads_before):
    """The i-th launch happens no earlier than i staggers after the start
    (a lower bound, so scheduling noise cannot make it flaky)."""
    import asyncio
    import time

    launches: list[float] = []

    async def record(request: ExtractionRequest) -> PackAnswer:
        launches.append(asyncio.get_running_loop().time())  # time.monotonic() on Linux
        return answer_all(request)

    base = small_config()
    stagger = 0.02
    config = replace(base, runtime=replace(base.runtime, launch_stagger_s=stagger))
    sink = CollectingSink()
    with Runtime(config, ScriptedProvider(record), sink) as rt:
        start = time.monotonic()
        rt.submit(make_articles(60))
        assert rt.drain(timeout=30)
    assert len(launches) >= 5
    for i, at in enumerate(sorted(launches)):
        assert at >= start + i * stagger - 1e-6


def test_observed_clusters_raise_priority(threads_before):
    base = small_config()
    config = replace(base, priority=replace(base.priority, hotness_weight=1.0, goodness_weight=0.0))
    clock = ScaledClock(1.0)
    big, small = make_articles(2, prefix="x")
    big = replace(big, cluster_id="big", published_at=None)
    small = replace(small, cluster_id="small", published_at=None)
    sink = CollectingSink()
    with Runtime(config, ScriptedProvider(), sink, clock=clock) as rt:
        rt.observe_clusters([("big", clock.wall())] * 50 + [("small", clock.wall())])
        rt.submit([big, small], clusters_observed=True)
        assert rt.drain(timeout=30)
    tiers = {r.article_id: r.tier for r in sink.results}
    assert tiers == {big.id: "hot", small.id: "cold"}


def test_patient_hot_packs_wait_for_their_primary_without_blocking_others(threads_before):
    """With patience, the first hot pack in line waits for pro (which frees
    within its patience) instead of taking flash; the hot packs behind it,
    whose turn on pro would come later, take fallbacks; warm and cold packs
    keep using their models meanwhile."""
    base = small_config(pro=(1, 10**7, 0), per_request=(1, 6, 10))
    hot, warm, cold = base.tiers
    config = replace(base, tiers=(replace(hot, fallback_patience_s=120.0), warm, cold))
    articles = make_articles(60)
    sink = CollectingSink()
    observer = RecordingObserver()
    clock = ScaledClock(200)  # pro's 60.5 s window passes in 0.3 s
    with Runtime(config, ScriptedProvider(), sink, clock=clock, observer=observer) as rt:
        rt.submit(articles)
        assert rt.drain(timeout=60)
    hot_results = [r for r in sink.results if r.tier == "hot"]
    assert len(hot_results) >= 3
    pro_grants = sorted(g.granted_at for g, _ in observer.grants if g.model == PRO)
    assert len(pro_grants) == 2  # one at once, one after waiting a window
    assert pro_grants[1] - pro_grants[0] >= 60.5
    assert sum(r.model == PRO for r in hot_results) == 2
    others = [g.granted_at for g, rank in observer.grants if rank > 0]
    assert max(others) < pro_grants[1]  # nobody else was held up by the wait
    assert_exactly_once(sink.results, articles)


def test_a_tier_waiting_for_its_saturated_model_does_not_take_the_room_other_tiers_need(
    threads_before,
):
    """Hot waits for pro (two requests a window, unbounded patience); warm
    and cold have quota to spare. The mix kept feeding hot packs, which
    waited, until they filled every extractor's room: warm and cold then
    went at pro's pace, a window per two hot articles. Held at its mark,
    hot keeps a few packs out and the others are served at once."""
    base = small_config(
        pro=(2, 10**7, 0), per_request=(1, 1, 1), extractors=1, max_packs=8, aging_s=10**9
    )
    hot, warm, cold = base.tiers
    config = replace(base, tiers=(replace(hot, fallback_patience_s=10**9), warm, cold))
    articles = make_articles(120)
    sink = CollectingSink()
    observer = RecordingObserver()
    clock = ScaledClock(400)  # a 60 s window in 0.15 s
    with Runtime(config, ScriptedProvider(), sink, clock=clock, observer=observer) as rt:
        rt.submit(articles)
        assert rt.drain(timeout=120)
    assert_exactly_once(sink.results, articles)
    pro_grants = sorted(g.granted_at for g, _ in observer.grants if g.model == PRO)
    others = sorted(g.granted_at for g, rank in observer.grants if rank > 0)
    hot_articles = sum(r.tier == "hot" for r in sink.results)
    assert len(pro_grants) == hot_articles > 4  # hot waited for pro, every one
    # Warm and cold were all served within pro's first two windows.
    assert others[-1] < pro_grants[4], (len(others), others[-1] - pro_grants[0])

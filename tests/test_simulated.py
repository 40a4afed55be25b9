"""SimulatedProvider: Gemini in-process, with quotas, latency and faults."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from tierbatch.actors.clock import ScaledClock
from tierbatch.actors.ports import ExtractionRequest, PackAnswer, Provider, bind_request_sent
from tierbatch.adapters.gemini.prompt import SYSTEM_INSTRUCTION, build_user_text
from tierbatch.adapters.simulation.fake_entities import (
    article_text,
    extract_entities,
    fake_token_count,
)
from tierbatch.adapters.simulation.simulated import (
    SimulatedCall,
    SimulatedFaults,
    SimulatedProvider,
)
from tierbatch.policies.articles import Article
from tierbatch.policies.config import ModelSpec, ProviderLimiter
from tierbatch.policies.outcomes import (
    BadRequest,
    ModelNotFound,
    RateLimited,
    RateLimitScope,
    ServerError,
    Succeeded,
    TimedOut,
)
from tierbatch.policies.results import AnswerProblem, Extraction, ProblemKind

PACIFIC = ZoneInfo("America/Los_Angeles")
MODEL = "gemini-2.5-flash"
START = datetime(2026, 6, 10, 12, 0, tzinfo=PACIFIC).timestamp()
FAST = 10_000.0  # clock speed for tests without quota: 0.8 s of latency take 80 µs
SPEED = 100.0  # with quota: a 60 s window lasts 0.6 s real, well above scheduling noise

ARTICLES = (
    Article("a1", "President Joe Biden met Chancellor Olaf Scholz in Berlin.", "Biden visit"),
    Article("a2", "Apple Inc unveiled a new iPhone in California on Tuesday."),
    Article("a3", "The World Cup final in Qatar drew a record audience, FIFA said."),
)


def provider(
    *,
    rpm: int = 0,
    tpm: int = 0,
    rpd: int = 0,
    speed: float = SPEED,
    start: float = START,
    **kwargs: object,
) -> SimulatedProvider:
    models = {MODEL: ModelSpec(MODEL, rpm=rpm, tpm=tpm, rpd=rpd)}
    return SimulatedProvider(models, ScaledClock(speed, start=start), **kwargs)  # type: ignore[arg-type]


def request(
    articles: Sequence[Article] = ARTICLES, *, model: str = MODEL, timeout_s: float = 5.0
) -> ExtractionRequest:
    return ExtractionRequest(
        model=model,
        articles=tuple(articles),
        timeout_s=timeout_s,
        est_input_tokens=100,
        grant_id=7,
        granted_at=START + 1.5,
        attempt=2,
    )


def run(p: SimulatedProvider, *requests: ExtractionRequest) -> list[PackAnswer]:
    async def go() -> list[PackAnswer]:
        return [await p.extract(r) for r in requests]

    return asyncio.run(go())


def test_is_a_provider() -> None:
    assert isinstance(provider(), Provider)


def test_success_shape_and_token_counts() -> None:
    p = provider()
    (answer,) = run(p, request())
    assert isinstance(answer.outcome, Succeeded)
    expected_input = fake_token_count(SYSTEM_INSTRUCTION) + fake_token_count(
        build_user_text(ARTICLES)
    )
    assert answer.outcome.usage.input_tokens == expected_input
    assert answer.outcome.usage.output_tokens > 0
    assert set(answer.answers) == {"a1", "a2", "a3"}
    for article in ARTICLES:
        extraction = answer.answers[article.id]
        assert isinstance(extraction, Extraction)
        assert extraction.entities == extract_entities(
            article_text(article.title, article.text), MODEL
        )
    names = {e.name for e in answer.answers["a1"].entities}  # type: ignore[union-attr]
    assert {"Joe Biden", "Olaf Scholz", "Berlin"} <= names


def test_call_log_records_what_the_runtime_did() -> None:
    p = provider(rpm=1)
    run(p, request(), request(ARTICLES[:1]))
    first, second = p.calls
    assert isinstance(first, SimulatedCall)
    assert first.outcome == "succeeded"
    assert first.article_ids == ("a1", "a2", "a3")
    assert (first.grant_id, first.granted_at, first.attempt) == (7, START + 1.5, 2)
    assert first.model == MODEL
    assert first.started_at < first.finished_at
    assert first.input_tokens == fake_token_count(SYSTEM_INSTRUCTION) + fake_token_count(
        build_user_text(ARTICLES)
    )
    assert first.output_tokens > 0 and first.retry_delay_s is None
    assert second.outcome == "rate_limited"
    assert second.scope == RateLimitScope.REQUESTS_PER_MINUTE.value
    assert second.article_ids == ("a1",)
    assert second.retry_delay_s is not None and second.retry_delay_s > 0
    assert [c.call_index for c in p.calls] == [0, 1]


def test_requests_per_minute_answer_rate_limited_promptly_with_the_delay() -> None:
    p = provider(rpm=2, speed=1.0, latency_s=0.01, latency_per_article_s=0.0)
    ok1, ok2 = run(p, request(), request())
    assert isinstance(ok1.outcome, Succeeded) and isinstance(ok2.outcome, Succeeded)
    began = time.monotonic()
    (limited,) = run(p, request())
    assert time.monotonic() - began < 0.5
    assert isinstance(limited.outcome, RateLimited)
    assert limited.outcome.scope is RateLimitScope.REQUESTS_PER_MINUTE
    assert limited.outcome.retry_delay_s is not None
    assert 59.0 < limited.outcome.retry_delay_s <= 60.0
    assert limited.answers == {}


def test_the_window_rolls_on_the_scaled_clock() -> None:
    clock = ScaledClock(200.0, start=START)
    models = {MODEL: ModelSpec(MODEL, rpm=1, tpm=0, rpd=0)}
    p = SimulatedProvider(models, clock, window_s=60.0)
    ok, limited = run(p, request(), request())
    assert isinstance(ok.outcome, Succeeded)
    assert isinstance(limited.outcome, RateLimited)
    delay = limited.outcome.retry_delay_s
    assert delay is not None

    async def retry_after_delay() -> PackAnswer:
        await asyncio.sleep(clock.to_real(delay) + 0.01)
        return await p.extract(request())

    again = asyncio.run(retry_after_delay())
    assert isinstance(again.outcome, Succeeded)


def test_token_bucket_refuses_a_burst_beyond_its_size_with_a_short_delay() -> None:
    # 60 a minute, the bucket holds 5 s of it: five at once, then one a second.
    p = provider(
        rpm=60,
        limiter=ProviderLimiter.BUCKET,
        bucket_s=5.0,
        latency_s=0.001,
        latency_per_article_s=0.0,
        speed=1.0,
    )
    answers = run(p, *[request() for _ in range(6)])
    assert [type(a.outcome) for a in answers] == [Succeeded] * 5 + [RateLimited]
    limited = answers[-1].outcome
    assert isinstance(limited, RateLimited)
    assert limited.scope is RateLimitScope.REQUESTS_PER_MINUTE
    assert limited.retry_delay_s is not None and 0 < limited.retry_delay_s <= 1.0
    assert p.quota.limiter is ProviderLimiter.BUCKET and p.quota.bucket_s == 5.0


def test_tokens_per_minute_count_the_real_prompt() -> None:
    one_pack = fake_token_count(SYSTEM_INSTRUCTION) + fake_token_count(build_user_text(ARTICLES))
    p = provider(tpm=one_pack + 10)
    ok, limited = run(p, request(), request())
    assert isinstance(ok.outcome, Succeeded)
    assert isinstance(limited.outcome, RateLimited)
    assert limited.outcome.scope is RateLimitScope.TOKENS_PER_MINUTE


def test_requests_per_day_wait_until_pacific_midnight() -> None:
    evening = datetime(2026, 6, 10, 23, 0, tzinfo=PACIFIC).timestamp()
    p = provider(rpd=1, start=evening, speed=1.0)
    ok, limited = run(p, request(), request())
    assert isinstance(ok.outcome, Succeeded)
    assert isinstance(limited.outcome, RateLimited)
    assert limited.outcome.scope is RateLimitScope.REQUESTS_PER_DAY
    assert limited.outcome.retry_delay_s == pytest.approx(3600.0, abs=5.0)


def test_other_clients_spending_the_same_quota() -> None:
    p = provider(rpm=3)
    p.spend(MODEL, requests=3, tokens=0)
    (limited,) = run(p, request())
    assert isinstance(limited.outcome, RateLimited)


def test_server_error_fault() -> None:
    (answer,) = run(provider(faults=SimulatedFaults(server_error=1.0)), request())
    assert answer.outcome == ServerError(503, "The model is overloaded.")
    assert answer.answers == {}


def test_timeout_fault_hangs_past_the_timeout_then_times_out() -> None:
    p = provider(faults=SimulatedFaults(timeout=1.0))
    began = time.monotonic()
    (answer,) = run(p, request(timeout_s=0.05))
    assert time.monotonic() - began >= 0.05
    assert answer.outcome == TimedOut(0.05)
    assert p.calls[0].outcome == "timed_out" and p.calls[0].fault == "timeout"


def test_timeout_fault_lets_the_runtimes_timeout_fire_and_logs_the_cancel() -> None:
    p = provider(faults=SimulatedFaults(timeout=1.0))

    async def go() -> None:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(p.extract(request(timeout_s=0.2)), timeout=0.02)

    asyncio.run(go())
    (call,) = p.calls
    assert call.outcome == "cancelled" and call.fault == "timeout"


def test_malformed_fault_spoils_one_article() -> None:
    (answer,) = run(provider(faults=SimulatedFaults(malformed=1.0)), request())
    assert isinstance(answer.outcome, Succeeded)
    problems = [a for a in answer.answers.values() if isinstance(a, AnswerProblem)]
    assert [p.kind for p in problems] == [ProblemKind.MALFORMED]
    assert len(answer.answers) == 3


def test_truncated_fault_loses_the_tail() -> None:
    (answer,) = run(provider(faults=SimulatedFaults(truncated=1.0), seed=3), request())
    assert isinstance(answer.outcome, Succeeded)
    kinds = [
        isinstance(answer.answers[a.id], AnswerProblem)
        and answer.answers[a.id].kind is ProblemKind.TRUNCATED  # type: ignore[union-attr]
        for a in ARTICLES
    ]
    assert kinds[-1] and kinds == sorted(kinds)  # ok, ..., ok, truncated, ..., truncated


def test_safety_fault_blocks_the_whole_answer() -> None:
    (answer,) = run(provider(faults=SimulatedFaults(safety=1.0)), request())
    assert isinstance(answer.outcome, Succeeded)
    assert answer.outcome.usage.output_tokens == 0
    assert all(
        isinstance(a, AnswerProblem) and a.kind is ProblemKind.SAFETY
        for a in answer.answers.values()
    )


def test_missing_fault_leaves_one_article_out() -> None:
    (answer,) = run(provider(faults=SimulatedFaults(missing=1.0)), request())
    assert isinstance(answer.outcome, Succeeded)
    assert len(answer.answers) == 2
    assert all(isinstance(a, Extraction) for a in answer.answers.values())


def test_outage_answers_503_inside_its_window_only() -> None:
    faults = SimulatedFaults(outages={MODEL: (START - 10, START + 3600)})
    (down,) = run(provider(faults=faults), request())
    assert down.outcome == ServerError(503, "The model is overloaded.")
    later = SimulatedFaults(outages={MODEL: (START + 3600, START + 7200)})
    (up,) = run(provider(faults=later), request())
    assert isinstance(up.outcome, Succeeded)


def test_retired_model_is_not_found() -> None:
    (answer,) = run(provider(retired={"gemini-1.5-pro"}), request(model="gemini-1.5-pro"))
    assert isinstance(answer.outcome, ModelNotFound)
    assert "gemini-1.5-pro" in answer.outcome.message


def test_too_many_input_tokens_is_a_bad_request() -> None:
    models = {MODEL: ModelSpec(MODEL, 0, 0, 0, max_input_tokens=50)}
    p = SimulatedProvider(models, ScaledClock(FAST, start=START))
    (answer,) = run(p, request())
    assert isinstance(answer.outcome, BadRequest)


def test_reproducible_with_a_seed() -> None:
    faults = SimulatedFaults(server_error=0.2, malformed=0.2, missing=0.2, truncated=0.1)

    def outcomes(seed: int) -> list[tuple[str, str, float]]:
        p = provider(faults=faults, seed=seed, speed=FAST)
        run(p, *[request() for _ in range(30)])
        return [(c.outcome, c.fault, c.latency_s) for c in p.calls]

    assert outcomes(1) == outcomes(1)
    assert [o[:2] for o in outcomes(1)] != [o[:2] for o in outcomes(2)]
    assert len({o[1] for o in outcomes(1)}) >= 3  # the rates really mix faults


def test_scaled_clock_speeds_latency_up() -> None:
    p = provider(speed=500.0, latency_s=2.0, latency_per_article_s=0.5)
    began = time.monotonic()
    run(p, request())
    real = time.monotonic() - began
    (call,) = p.calls
    clock_latency = call.finished_at - call.started_at
    assert clock_latency > 1.5  # 2 s median (lognormal) + 1.5 s for 3 articles
    assert real < clock_latency / 10


def test_concurrent_calls_overlap() -> None:
    p = provider(speed=100.0, latency_s=1.0)

    async def go() -> list[PackAnswer]:
        return await asyncio.gather(*(p.extract(request()) for _ in range(20)))

    answers = asyncio.run(go())
    assert all(isinstance(a.outcome, Succeeded) for a in answers)
    assert p.max_in_flight_seen > 1
    assert len(p.calls) == 20


def test_closed_provider_answers_server_error() -> None:
    p = provider()

    async def go() -> PackAnswer:
        await p.aclose()
        return await p.extract(request())

    answer = asyncio.run(go())
    assert isinstance(answer.outcome, ServerError)
    assert p.calls[0].outcome == "closed"


def test_fault_rates_are_validated() -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        SimulatedFaults(timeout=1.5)
    with pytest.raises(ValueError, match="sum"):
        SimulatedFaults(server_error=0.6, timeout=0.6)
    with pytest.raises(ValueError, match="ends before"):
        SimulatedFaults(outages={MODEL: (10.0, 5.0)})


def test_marks_when_the_request_arrives() -> None:
    """The runtime hears the moment the simulation counts the request."""
    p = provider(speed=FAST)
    marks: list[int] = []

    async def go() -> PackAnswer:
        bind_request_sent(lambda: marks.append(len(p.calls)))
        return await p.extract(request())

    answer = asyncio.run(go())
    assert isinstance(answer.outcome, Succeeded)
    assert marks == [0]  # once, before the call finished

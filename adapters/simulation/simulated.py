"""The embedded default provider: Gemini simulated in-process.

It lets the runtime run, be tested and be rehearsed without a network or an
API key, with the same quota behaviour as Gemini (``QuotaEmulator``), a
latency distribution, and every kind of fault the runtime must survive. Under
a ``ScaledClock`` a minute of quota passes in a fraction of a second, so
rate-limit behaviour is testable quickly and consistently with the runtime's
own clock.

The provider keeps its own time, as Gemini's servers do: the clock's steady
time, set to the wall clock once at construction. Its windows and Pacific
days therefore do not step when this machine's wall clock does. Every time
it records or is given (``outages``, ``SimulatedCall``) is on that timeline.

Reproducibility: each call draws its latency and faults from a
``random.Random`` seeded by (seed, call index), so a run that makes its calls
in the same order sees the same faults, whatever the timing.

Longer than the house's ~450 lines on purpose: one provider with its quota,
faults, latency and answers; the quota emulator and the entity fakes are
modules of their own.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

import structlog

from tierbatch.actors.clock import Clock, wall_offset
from tierbatch.actors.ports import (
    BATCH_METHOD,
    ExtractionRequest,
    ModelInfo,
    PackAnswer,
    mark_request_sent,
)
from tierbatch.adapters.gemini.prompt import build_user_text, task_prompt
from tierbatch.adapters.simulation.fake_entities import (
    AnswerQuality,
    answer_text,
    article_text,
    degrade,
    entity_json,
    extract_entities,
    fake_token_count,
    for_task,
)
from tierbatch.adapters.simulation.faults import check_rates, draw_fault
from tierbatch.adapters.simulation.quota_emulator import DEFAULT_BUCKET_S, QuotaEmulator
from tierbatch.policies.config import ModelSpec, ProviderLimiter
from tierbatch.policies.outcomes import (
    BadRequest,
    CallOutcome,
    ModelNotFound,
    RateLimited,
    ServerError,
    Succeeded,
    TimedOut,
    Usage,
)
from tierbatch.policies.results import AnswerProblem, ArticleAnswer, Extraction, ProblemKind
from tierbatch.policies.task import TaskConfig

_log = structlog.get_logger(__name__)

DEFAULT_LATENCY_S = 0.8
LATENCY_SIGMA = 0.35
"""Spread of the lognormal latency around its median (clock seconds)."""
REJECTION_LATENCY_S = 0.05
"""How long a 429, 404 or outage 503 takes: they come back promptly."""
SIMULATED_METHODS = ("generateContent", "countTokens", BATCH_METHOD)
"""What the simulated provider says every model supports."""
HANG_FACTOR = 1.1
"""A hung call sleeps this much longer than the request's timeout, so the
runtime's own timeout fires first."""
PERFECT = AnswerQuality()


class Fault(StrEnum):
    """A fault injected into one call (at most one per call)."""

    NONE = ""
    SERVER_ERROR = "server_error"
    TIMEOUT = "timeout"
    SAFETY = "safety"
    TRUNCATED = "truncated"
    MALFORMED = "malformed"
    MISSING = "missing"
    OUTAGE = "outage"


_DRAWN_FAULTS = (
    Fault.SERVER_ERROR,
    Fault.TIMEOUT,
    Fault.SAFETY,
    Fault.TRUNCATED,
    Fault.MALFORMED,
    Fault.MISSING,
)


@dataclass(frozen=True, slots=True)
class SimulatedFaults:
    """Per-call fault probabilities (exclusive: their sum must be <= 1).

    ``server_error``: 503. ``timeout``: the call hangs past its timeout.
    ``malformed``: one article's answer is malformed. ``truncated``: the
    answer is cut (finishReason MAX_TOKENS), losing the articles from a
    random one on. ``safety``: the whole answer is blocked, every article
    gets a SAFETY problem. ``missing``: one article is absent from the
    answer. ``outages``: model -> [start, end) provider times answering 503.
    """

    server_error: float = 0.0
    timeout: float = 0.0
    malformed: float = 0.0
    truncated: float = 0.0
    safety: float = 0.0
    missing: float = 0.0
    outages: Mapping[str, tuple[float, float]] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        check_rates(_DRAWN_FAULTS, self.rate, lambda fault: fault.value)
        for model, (start, end) in self.outages.items():
            if end < start:
                raise ValueError(f"outage of {model} ends before it starts")

    def rate(self, fault: Fault) -> float:
        rate: float = getattr(self, fault.value)
        return rate

    def in_outage(self, model: str, now: float) -> bool:
        window = self.outages.get(model)
        return window is not None and window[0] <= now < window[1]

    def draw(self, rng: random.Random) -> Fault:
        return draw_fault(rng, _DRAWN_FAULTS, self.rate, Fault.NONE)


@dataclass(frozen=True, slots=True)
class SimulatedCall:
    """One call as the provider saw it; times are the provider's.

    ``outcome`` is one of succeeded, rate_limited, server_error, timed_out,
    model_not_found, bad_request, cancelled (the caller cancelled it) or
    closed (called after ``aclose``). ``latency_s`` is the latency drawn
    for the call (clock seconds; spent only by admitted calls), ``fault``
    the injected fault ("" for none).
    """

    started_at: float
    finished_at: float
    model: str
    article_ids: tuple[str, ...]
    outcome: str
    grant_id: int
    granted_at: float
    retry_delay_s: float | None
    input_tokens: int
    output_tokens: int = 0
    attempt: int = 1
    scope: str = ""
    fault: str = ""
    call_index: int = 0
    latency_s: float = 0.0


def prompt_input_tokens(request: ExtractionRequest, task: TaskConfig | None = None) -> int:
    """What Gemini would count for the prompt the SDK adapters send: the
    system instruction of ``task`` and the user turn built by ``adapters.prompt``."""
    return fake_token_count(task_prompt(task).system_instruction) + fake_token_count(
        build_user_text(request.articles)
    )


class SimulatedProvider:
    """A ``Provider`` that simulates Gemini in-process (see module doc).

    ``latency_s``: median clock seconds per call (per model, or one for all),
    plus ``latency_per_article_s`` for each article of the pack.
    ``models`` are the limits it enforces, per minute as a rolling window of
    ``window_s`` or as token buckets holding ``bucket_s`` seconds' worth
    (``limiter``; see ``quota_emulator``).
    ``quality``: how well the model keeps a pack's articles apart (one for
    every model, or per model; see ``AnswerQuality``): its cross-article and
    invented entities are drawn from their own seeded stream, so they never
    change which faults a run sees.
    Not thread-safe: drive it from one event loop. ``calls`` may be read from
    any thread once the run is over.
    """

    def __init__(
        self,
        models: Mapping[str, ModelSpec],
        clock: Clock,
        *,
        seed: int = 0,
        window_s: float = 60.0,
        timezone: str = "America/Los_Angeles",
        latency_s: Mapping[str, float] | float = DEFAULT_LATENCY_S,
        latency_per_article_s: float = 0.05,
        faults: SimulatedFaults = SimulatedFaults(),
        retired: Collection[str] = (),
        key: str = "simulated",
        limiter: ProviderLimiter | str = ProviderLimiter.WINDOW,
        bucket_s: float = DEFAULT_BUCKET_S,
        quality: AnswerQuality | Mapping[str, AnswerQuality] = PERFECT,
        task: TaskConfig | None = None,
    ) -> None:
        self._task = task
        self._models = dict(models)
        self._clock = clock
        self._wall_offset = wall_offset(clock)  # the provider's time = steady + this
        self._seed = seed
        self._latency = latency_s if isinstance(latency_s, float | int) else dict(latency_s)
        self._latency_per_article_s = latency_per_article_s
        self._faults = faults
        self._quality = quality
        self._retired = frozenset(retired)
        self._key = key
        self.quota = QuotaEmulator(models, window_s, timezone, limiter=limiter, bucket_s=bucket_s)
        self._calls: list[SimulatedCall] = []
        self._next_index = 0
        self._in_flight = 0
        self._max_in_flight = 0
        self._closed = False

    @property
    def calls(self) -> list[SimulatedCall]:
        """Finished calls, in the order they finished (a copy)."""
        return list(self._calls)

    @property
    def max_in_flight_seen(self) -> int:
        """The most calls that were ever in progress at once."""
        return self._max_in_flight

    def now(self) -> float:
        """The provider's time (see the module docstring)."""
        return self._clock.now() + self._wall_offset

    def spend(self, model: str, requests: int, tokens: int) -> None:
        """Another client spends this key's quota now (call from the loop's
        thread or while no call is in progress)."""
        self.quota.spend(self._key, model, requests, tokens, self.now())

    async def aclose(self) -> None:
        self._closed = True

    async def describe_model(self, name: str, *, timeout_s: float = 10.0) -> ModelInfo | None:
        """The ``ModelCatalog`` port, answered from the configuration: a
        configured model exists (its input limit is the configured one)
        unless it is retired; any other name does not."""
        spec = self._models.get(name)
        if spec is None or name in self._retired:
            return None
        return ModelInfo(
            name=name,
            display_name=name,
            input_token_limit=spec.max_input_tokens or None,
            methods=SIMULATED_METHODS,
        )

    async def extract(self, request: ExtractionRequest) -> PackAnswer:
        index = self._next_index
        self._next_index += 1
        rng = random.Random(f"{self._seed}:{index}")
        started = self.now()
        mark_request_sent()  # it "arrives" now: the quota check below uses this time
        input_tokens = prompt_input_tokens(request, self._task)
        log = _log.bind(
            model=request.model,
            article_ids=[a.id for a in request.articles],
            call_index=index,
            grant_id=request.grant_id,
        )
        self._in_flight += 1
        self._max_in_flight = max(self._max_in_flight, self._in_flight)
        record = _Recorder(request, index, started, input_tokens)
        try:
            answer = await self._answer(request, rng, started, input_tokens, record)
        except asyncio.CancelledError:
            record.finish(self.now(), "cancelled")
            self._calls.append(record.call)
            log.debug("simulated call cancelled", fault=record.fault)
            raise
        finally:
            self._in_flight -= 1
        self._calls.append(record.call)
        log.debug(
            "simulated call finished",
            outcome=record.call.outcome,
            fault=record.fault,
            input_tokens=input_tokens,
        )
        return answer

    async def _answer(
        self,
        request: ExtractionRequest,
        rng: random.Random,
        now: float,
        input_tokens: int,
        record: _Recorder,
    ) -> PackAnswer:
        model = request.model
        latency = self._latency_for(model, len(request.articles), rng)
        record.latency_s = latency
        fault = self._faults.draw(rng)
        if self._closed:
            return await self._reply(record, ServerError(None, "provider closed"), "closed")
        if model in self._retired:
            message = f"models/{model} is not found for API version v1beta"
            return await self._reply(
                record, ModelNotFound(message), "model_not_found", wait=REJECTION_LATENCY_S
            )
        if self._faults.in_outage(model, now):
            record.fault = Fault.OUTAGE
            return await self._reply(
                record,
                ServerError(503, "The model is overloaded."),
                "server_error",
                wait=REJECTION_LATENCY_S,
            )
        spec = self._models.get(model)
        if spec is not None and 0 < spec.max_input_tokens < input_tokens:
            message = (
                f"The input token count ({input_tokens}) exceeds the maximum number of "
                f"tokens allowed ({spec.max_input_tokens})."
            )
            return await self._reply(
                record, BadRequest(message), "bad_request", wait=REJECTION_LATENCY_S
            )
        violation = self.quota.check(self._key, model, input_tokens, now)
        if violation is not None:
            record.retry_delay_s = violation.retry_delay_s
            record.scope = violation.scope.value
            outcome = RateLimited(
                violation.scope, violation.retry_delay_s, "You exceeded your current quota"
            )
            return await self._reply(record, outcome, "rate_limited", wait=REJECTION_LATENCY_S)

        record.fault = fault
        if fault is Fault.TIMEOUT:
            await asyncio.sleep(request.timeout_s * HANG_FACTOR + 0.01)
            return await self._reply(record, TimedOut(request.timeout_s), "timed_out")
        await asyncio.sleep(self._clock.to_real(latency))
        if fault is Fault.SERVER_ERROR:
            return await self._reply(
                record, ServerError(503, "The model is overloaded."), "server_error"
            )
        quality = self._quality_for(model)
        quality_rng = random.Random(f"{self._seed}:{record.index}:quality")
        answers, output_tokens = _answers(request, fault, rng, quality, quality_rng, self._task)
        record.output_tokens = output_tokens
        usage = Succeeded(Usage(input_tokens, output_tokens))
        return await self._reply(record, usage, "succeeded", answers=answers)

    async def _reply(
        self,
        record: _Recorder,
        outcome: CallOutcome,
        label: str,
        *,
        wait: float = 0.0,
        answers: Mapping[str, ArticleAnswer] | None = None,
    ) -> PackAnswer:
        """Finish the record and answer, after ``wait`` clock seconds."""
        if wait > 0:
            await asyncio.sleep(self._clock.to_real(wait))
        record.finish(self.now(), label)
        return PackAnswer(outcome, dict(answers or {}))

    def _quality_for(self, model: str) -> AnswerQuality:
        if isinstance(self._quality, AnswerQuality):
            return self._quality
        return self._quality.get(model, PERFECT)

    def _latency_for(self, model: str, articles: int, rng: random.Random) -> float:
        if isinstance(self._latency, dict):
            median = self._latency.get(model, DEFAULT_LATENCY_S)
        else:
            median = float(self._latency)
        spread = math.exp(rng.gauss(0.0, LATENCY_SIGMA))
        return median * spread + self._latency_per_article_s * articles


class _Recorder:
    """Collects what one call did, then freezes it into a SimulatedCall."""

    def __init__(
        self, request: ExtractionRequest, index: int, started: float, input_tokens: int
    ) -> None:
        self.request = request
        self.index = index
        self.started = started
        self.input_tokens = input_tokens
        self.output_tokens = 0
        self.latency_s = 0.0
        self.retry_delay_s: float | None = None
        self.scope = ""
        self.fault: Fault = Fault.NONE
        self._call: SimulatedCall | None = None

    def finish(self, now: float, outcome: str) -> None:
        r = self.request
        self._call = SimulatedCall(
            started_at=self.started,
            finished_at=now,
            model=r.model,
            article_ids=tuple(a.id for a in r.articles),
            outcome=outcome,
            grant_id=r.grant_id,
            granted_at=r.granted_at,
            retry_delay_s=self.retry_delay_s,
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            attempt=r.attempt,
            scope=self.scope,
            fault=self.fault.value,
            call_index=self.index,
            latency_s=self.latency_s,
        )

    @property
    def call(self) -> SimulatedCall:
        if self._call is None:
            raise RuntimeError("call record read before the call finished")
        return self._call


def _answers(
    request: ExtractionRequest,
    fault: Fault,
    rng: random.Random,
    quality: AnswerQuality = PERFECT,
    quality_rng: random.Random | None = None,
    task: TaskConfig | None = None,
) -> tuple[dict[str, ArticleAnswer], int]:
    """Per-article answers of a model of ``quality`` with the drawn answer
    fault applied, and the output tokens of the JSON it would have returned."""
    articles = request.articles
    texts = {a.id: article_text(a.title, a.text) for a in articles}
    found = {i: for_task(extract_entities(text, request.model), task) for i, text in texts.items()}
    if not quality.perfect:
        found = degrade(found, texts, quality, quality_rng or random.Random(0))
    answers: dict[str, ArticleAnswer] = {i: Extraction(e) for i, e in found.items()}
    returned = list(found)
    if fault is Fault.SAFETY and articles:
        problem = AnswerProblem(ProblemKind.SAFETY, "finishReason SAFETY")
        return dict.fromkeys(answers, problem), 0
    if fault is Fault.MALFORMED and articles:
        victim = rng.choice(articles).id
        answers[victim] = AnswerProblem(ProblemKind.MALFORMED, "entities is not a list")
    elif fault is Fault.MISSING and articles:
        victim = rng.choice(articles).id
        del answers[victim]
        returned.remove(victim)
    elif fault is Fault.TRUNCATED and articles:
        cut = rng.randrange(len(articles))
        for a in articles[cut:]:
            answers[a.id] = AnswerProblem(ProblemKind.TRUNCATED, "finishReason MAX_TOKENS")
        returned = returned[: cut + 1]  # the cut article was half written
    document = {
        "articles": [{"id": i, "entities": [entity_json(e) for e in found[i]]} for i in returned]
    }
    return answers, fake_token_count(answer_text(document))

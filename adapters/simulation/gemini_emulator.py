"""The Gemini emulator behind the local Gemini-compatible server: it decides
every request (route, key, quota, faults) and writes Gemini's answer JSON.
The socket server around it is ``fake_gemini``; reading a request's route,
query and prompt is ``gemini_requests``'.

It speaks the two routes the runtime uses, ``POST /{v1,v1beta}/models/
{model}:generateContent`` and ``:countTokens``, the way Gemini does: the same
request JSON (camelCase, or the legacy SDK's protobuf JSON with integer
enums), the same answer JSON, quota enforced per (API key, model) by
``QuotaEmulator`` with Gemini's real 429 body (``QuotaFailure``, ``Help``,
``RetryInfo``; no ``Retry-After`` header), and Gemini's other error bodies.
Faults (5xx, hangs, malformed answers, truncation, safety blocks, missing
articles, outages, retired models) are injected at configurable rates, so a
client's handling of each can be tested against real HTTP.

How requests are decided, in order (a refused request does not count against
quota, except faults drawn after admission, as Gemini counts a request that
failed after it was accepted):

1. route: anything but POST ``/{v1,v1beta,v1alpha}/models/X:{generateContent,
   countTokens}`` (or one of the catalogue, batch and file routes below)
   -> 404 ``NOT_FOUND``;
2. API key, from the ``x-goog-api-key`` header (what both google-genai and
   google-generativeai send) or the ``?key=`` query parameter: missing -> 403
   ``PERMISSION_DENIED`` ("unregistered callers", as Gemini); not
   syntactically a key (characters outside ``[A-Za-z0-9._~-]``) -> 400
   ``INVALID_ARGUMENT`` with ``ErrorInfo.reason = API_KEY_INVALID`` (Gemini's
   answer for a bad key); well-formed but not in ``valid_keys`` (when set)
   -> 403 ``PERMISSION_DENIED``;
3. body not JSON -> 400 ``INVALID_ARGUMENT``; no contents -> 400;
4. retired model (or, with an explicit ``catalog``, one not in it) -> 404
   with Gemini's "models/X is not found" body;
5. outage of the model -> 503 ``UNAVAILABLE``;
6. input over the model's ``max_input_tokens`` -> 400;
7. quota -> 429 (countTokens has its own, unlimited, quota);
8. a fault drawn at the model's rates, then the answer after the latency.

It also answers the model catalogue (``GET /{v1,v1beta}/models`` and
``.../models/{model}``, ``model_catalog``), batch jobs and the files they
read and write (``:batchGenerateContent``, ``/batches``, ``/upload/.../files``,
``/files``, ``batch_emulator``), with the same key checks (step 2) and no
faults or quota.

The server runs its own asyncio loop in a background thread; all its state
(quota, random draws, the log) lives in that thread, so it needs no locks.
The HTTP plumbing is in ``http_transport``, Gemini's error bodies in
``error_bodies``.

Longer than the house's ~450 lines on purpose: one decision per route of the
emulated API (generate, models, batches, files), in the order Gemini checks
them.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import math
import random
import re
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any
from urllib.parse import parse_qs, urlsplit

import structlog

from tierbatch.actors.clock import Clock, wall_offset
from tierbatch.adapters.simulation.batch_emulator import (
    BatchEmulator,
    BatchFaultRates,
    BatchSettings,
    BatchState,
)
from tierbatch.adapters.simulation.error_bodies import (
    BAD_GATEWAY_HTML,
    SERVER_ERRORS,
    RetryDelayFormat,
    error_body,
    forbidden_key_body,
    format_retry_delay,
    invalid_key_body,
    missing_key_body,
    not_found_model_body,
    quota_error_body,
)
from tierbatch.adapters.simulation.fake_entities import (
    AnswerQuality,
    answer_document,
    answer_text,
    fake_prompt_token_count,
    fake_token_count,
)
from tierbatch.adapters.simulation.faults import check_rates, draw_fault
from tierbatch.adapters.simulation.gemini_requests import (
    BadRequestBodyError,
    Prompt,
    Route,
    int_query,
    json_body,
    parse_prompt,
    parse_resource,
    parse_route,
    query_key,
    wants_int_enums,
)
from tierbatch.adapters.simulation.http_transport import (
    HttpRequest,
    HttpResponse,
)
from tierbatch.adapters.simulation.model_catalog import BadPageTokenError, ModelCatalog
from tierbatch.adapters.simulation.quota_emulator import DEFAULT_BUCKET_S, QuotaEmulator
from tierbatch.policies.config import ModelSpec, ProviderLimiter
from tierbatch.policies.task import TaskConfig

__all__ = [
    "AnswerQuality",
    "BatchFaultRates",
    "BatchSettings",
    "BatchState",
    "FakeGeminiConfig",
    "FaultRates",
    "GeminiEmulator",
    "ProviderLimiter",
    "RetryDelayFormat",
    "ServedRequest",
    "ServerFault",
    "format_retry_delay",
    "key_fingerprint",
    "parse_route",
    "summarize",
]

_log = structlog.get_logger(__name__)

_KEY_SYNTAX = re.compile(r"[A-Za-z0-9._~-]{1,256}")

_FINISH_REASON_INT = {"STOP": 1, "MAX_TOKENS": 2, "SAFETY": 3}
_BLOCK_REASON_INT = {"SAFETY": 1}
_HARM_CATEGORY_INT = {"HARM_CATEGORY_DANGEROUS_CONTENT": 10}
_HARM_PROBABILITY_INT = {"HIGH": 4}


class ServerFault(StrEnum):
    """A fault injected into one generateContent request."""

    NONE = ""
    SERVER_ERROR = "server_error"
    HANG = "hang"
    MALFORMED_JSON_TEXT = "malformed_json_text"
    MALFORMED_BODY = "malformed_body"
    MAX_TOKENS = "max_tokens"
    SAFETY = "safety"
    PROMPT_BLOCKED = "prompt_blocked"
    MISSING_ARTICLE = "missing_article"
    OUTAGE = "outage"


_DRAWN_FAULTS = (
    ServerFault.SERVER_ERROR,
    ServerFault.HANG,
    ServerFault.MALFORMED_JSON_TEXT,
    ServerFault.MALFORMED_BODY,
    ServerFault.MAX_TOKENS,
    ServerFault.SAFETY,
    ServerFault.PROMPT_BLOCKED,
    ServerFault.MISSING_ARTICLE,
)


@dataclass(frozen=True, slots=True)
class FaultRates:
    """Per-request fault probabilities (exclusive: their sum must be <= 1).

    ``server_error``: 500/502/503/504 (502 with Google's HTML page, the
    others with Gemini's JSON error body). ``hang``: sleep ``hang_s`` before
    answering, so the client's timeout must fire. ``malformed_json_text``:
    200 whose candidate text is not JSON. ``malformed_body``: 200 whose body
    is not JSON at all. ``max_tokens``: the JSON text cut short, finishReason
    MAX_TOKENS. ``safety``: a candidate with finishReason SAFETY and no text.
    ``prompt_blocked``: no candidates, ``promptFeedback.blockReason`` SAFETY.
    ``missing_article``: one article left out of the answer.
    """

    server_error: float = 0.0
    hang: float = 0.0
    malformed_json_text: float = 0.0
    malformed_body: float = 0.0
    max_tokens: float = 0.0
    safety: float = 0.0
    prompt_blocked: float = 0.0
    missing_article: float = 0.0

    def __post_init__(self) -> None:
        check_rates(_DRAWN_FAULTS, self.rate, lambda fault: fault.value)

    def rate(self, fault: ServerFault) -> float:
        rate: float = getattr(self, fault.value)
        return rate

    def draw(self, rng: random.Random) -> ServerFault:
        return draw_fault(rng, _DRAWN_FAULTS, self.rate, ServerFault.NONE)


@dataclass(frozen=True, slots=True)
class FakeGeminiConfig:
    """What the fake server emulates.

    ``models``: quotas per API key (a model not listed is unlimited).
    ``latency_s``: real seconds before an admitted request is answered (one
    for all models or per model). ``faults``: one ``FaultRates`` for every
    model, or a mapping model -> rates (models not in it get none).
    ``retired``: models answering 404. ``outages``: model -> [start, end)
    seconds since the server started, answering 503. ``valid_keys``: when
    set, other well-formed keys get 403. ``include_retry_info``: False sends
    429s without ``RetryInfo``, to test a client's fallback backoff.
    ``free_tier``: quota ids carry the ``-FreeTier`` suffix. ``seed`` seeds
    the fault draws (reproducible for a given request order).
    ``catalog``: the models that exist (``model_catalog``); None: every
    name that is not retired. ``without_batch``: models whose
    ``supportedGenerationMethods`` lack ``batchGenerateContent`` (and that
    refuse batch jobs). ``batch``: batch jobs' turnaround and faults
    (``batch_emulator``). ``limiter``: how the per-minute limits are
    enforced, a rolling window of ``window_s`` or a token bucket holding
    ``bucket_s`` seconds' worth (``quota_emulator``). ``quality``: how
    well the model keeps a request's articles apart (``AnswerQuality``: the
    rates of cross-article and invented entities), one for every model or a
    mapping model -> quality (models not in it never err); drawn from their
    own seeded stream, so they never change the faults drawn.
    """

    models: Mapping[str, ModelSpec] = field(default_factory=dict, hash=False)
    window_s: float = 60.0
    timezone: str = "America/Los_Angeles"
    latency_s: float | Mapping[str, float] = field(default=0.0, hash=False)
    faults: FaultRates | Mapping[str, FaultRates] = field(default_factory=FaultRates, hash=False)
    hang_s: float = 120.0
    retired: AbstractSet[str] = field(default=frozenset(), hash=False)
    outages: Mapping[str, tuple[float, float]] = field(default_factory=dict, hash=False)
    valid_keys: AbstractSet[str] | None = field(default=None, hash=False)
    retry_delay_format: RetryDelayFormat = RetryDelayFormat.FRACTIONAL
    include_retry_info: bool = True
    free_tier: bool = False
    seed: int = 0
    catalog: AbstractSet[str] | None = field(default=None, hash=False)
    without_batch: AbstractSet[str] = field(default=frozenset(), hash=False)
    batch: BatchSettings = field(default_factory=BatchSettings)
    limiter: ProviderLimiter = ProviderLimiter.WINDOW
    bucket_s: float = DEFAULT_BUCKET_S
    quality: AnswerQuality | Mapping[str, AnswerQuality] = field(
        default_factory=AnswerQuality, hash=False
    )
    # Usage metadata as Gemini 2.5 reports it: ``implicit_cache`` reports
    # the system instruction as cached (``cachedContentTokenCount``) from the
    # second request with the same one per key and model; ``thinking_tokens``
    # are reported per answer as ``thoughtsTokenCount``.
    implicit_cache: bool = False
    thinking_tokens: int = 0

    def __post_init__(self) -> None:
        if self.window_s <= 0:
            raise ValueError(f"window_s must be > 0, got {self.window_s}")
        if not (self.bucket_s > 0 and math.isfinite(self.bucket_s)):
            raise ValueError(f"bucket_s must be a number of seconds > 0, got {self.bucket_s}")
        try:
            object.__setattr__(self, "limiter", ProviderLimiter(self.limiter))
        except ValueError:
            choices = ", ".join(m.value for m in ProviderLimiter)
            raise ValueError(f"limiter must be one of {choices}, got {self.limiter!r}") from None
        if self.hang_s < 0:
            raise ValueError(f"hang_s must be >= 0, got {self.hang_s}")
        for model, (start, end) in self.outages.items():
            if end < start:
                raise ValueError(f"outage of {model} ends before it starts")

    def faults_for(self, model: str) -> FaultRates:
        if isinstance(self.faults, FaultRates):
            return self.faults
        return self.faults.get(model, _NO_FAULTS)

    def quality_for(self, model: str) -> AnswerQuality:
        if isinstance(self.quality, AnswerQuality):
            return self.quality
        return self.quality.get(model, _PERFECT)

    def latency_for(self, model: str) -> float:
        if isinstance(self.latency_s, Mapping):
            return float(self.latency_s.get(model, 0.0))
        return float(self.latency_s)


_NO_FAULTS = FaultRates()
_PERFECT = AnswerQuality()


@dataclass(frozen=True, slots=True)
class ServedRequest:
    """One request as the server decided it (logged before any latency).

    ``at`` is the arrival time on the server's clock; ``article_ids`` the
    articles the prompt carried (also when the answer left one out);
    ``key_fingerprint`` a short hash of the API key (never the key);
    ``fault`` the injected fault ("" for none); ``finish_reason`` the
    candidate's, when one was sent.
    """

    at: float
    key_fingerprint: str
    model: str
    api_version: str
    method: str
    status: int
    article_ids: tuple[str, ...] = ()
    input_tokens: int = 0
    output_tokens: int = 0
    retry_delay_s: float | None = None
    quota_id: str = ""
    fault: str = ""
    finish_reason: str = ""


def key_fingerprint(key: str) -> str:
    """A short, stable, non-reversible name for an API key, for logs."""
    return hashlib.sha256(key.encode()).hexdigest()[:10] if key else ""


# ---------------------------------------------------------------------------
# The Gemini side


class GeminiEmulator:
    """Decides and answers requests (routes, keys, quota, faults). Lives in
    the server's loop thread; also usable directly in tests."""

    def __init__(self, config: FakeGeminiConfig, clock: Clock) -> None:
        self.config = config
        self._clock = clock
        # The server keeps its own time, as Gemini's does: steady time set to
        # the wall clock once, so a step of this machine's clock moves nothing.
        self._wall_offset = wall_offset(clock)
        self.quota = QuotaEmulator(
            config.models,
            config.window_s,
            config.timezone,
            free_tier=config.free_tier,
            limiter=config.limiter,
            bucket_s=config.bucket_s,
        )
        self._rng = random.Random(config.seed)
        # The answers' quality draws have a stream of their own.
        self._quality_rng = random.Random(f"{config.seed}:quality")
        self._started = time.monotonic()
        self._served = 0
        self._cached: set[tuple[str, str, str]] = set()  # (key, model, system instruction)
        self.log: list[ServedRequest] = []
        self.catalog = ModelCatalog(
            config.models,
            catalog=config.catalog,
            retired=config.retired,
            without_batch=config.without_batch,
        )
        self.batches = BatchEmulator(
            config.batch, self.catalog, self._batch_answer, self.now, config.seed
        )

    def now(self) -> float:
        """The server's time: wall-clock epoch seconds that never step."""
        return self._clock.now() + self._wall_offset

    def restart_clock(self) -> None:
        """Outages count from here (the server calls it when it starts)."""
        self._started = time.monotonic()

    async def handle(self, request: HttpRequest) -> HttpResponse:
        now = self.now()
        route = parse_route(request.method, request.target)
        if route is None:
            resource = parse_resource(request.method, request.target)
            if resource is not None:
                return self._resource(now, request, *resource)
            return self._refuse(
                now, "", None, 404, error_body(404, "NOT_FOUND", "Requested entity was not found.")
            )
        key = request.headers.get("x-goog-api-key") or query_key(request.target)
        auth = self._auth_error(key)
        if auth is not None:
            return self._refuse(now, key, route, auth[0], auth[1])
        try:
            body = json_body(request.body)
        except BadRequestBodyError as exc:
            return self._refuse(now, key, route, 400, error_body(400, "INVALID_ARGUMENT", str(exc)))
        prompt = parse_prompt(body)
        if not prompt.user:
            message = "* GenerateContentRequest.contents: contents is not specified\n"
            return self._refuse(now, key, route, 400, error_body(400, "INVALID_ARGUMENT", message))
        if not self.catalog.exists(route.model):
            document = not_found_model_body(route.model, route.version, route.method)
            return self._refuse(now, key, route, 404, document)
        if route.method == "countTokens":
            tokens = prompt.input_tokens
            self._record(now, key, route, 200, input_tokens=tokens)
            return HttpResponse.of_json(200, {"totalTokens": tokens})
        return await self._generate(now, key, route, prompt, wants_int_enums(request.target))

    def _resource(
        self, now: float, request: HttpRequest, route: Route, ids: Mapping[str, str]
    ) -> HttpResponse:
        """The model catalogue, batch jobs and files (see the module docstring)."""
        query = parse_qs(urlsplit(request.target).query)
        base_url = f"http://{request.headers.get('host', '127.0.0.1')}"
        batches = self.batches
        if route.method == "files.upload" and "upload_id" in query:
            # The upload URL stands for the key that started the upload.
            upload_id = query["upload_id"][0]
            response, owner = batches.upload_chunk(
                upload_id, request.headers, request.body, base_url
            )
            self._record(now, "", route, response.status, fingerprint=owner)
            return response
        key = request.headers.get("x-goog-api-key") or query_key(request.target)
        auth = self._auth_error(key)
        if auth is not None:
            return self._refuse(now, key, route, auth[0], auth[1])
        owner = key_fingerprint(key)
        body: dict[str, Any] = {}
        if request.method == "POST":
            try:
                body = json_body(request.body)
            except BadRequestBodyError as exc:
                document = error_body(400, "INVALID_ARGUMENT", str(exc))
                return self._refuse(now, key, route, 400, document)
        response = self._dispatch(route, ids, query, body, owner, request, base_url)
        self._record(now, key, route, response.status)
        return response

    def _dispatch(
        self,
        route: Route,
        ids: Mapping[str, str],
        query: Mapping[str, list[str]],
        body: Mapping[str, Any],
        owner: str,
        request: HttpRequest,
        base_url: str,
    ) -> HttpResponse:
        batches = self.batches
        page_size = int_query(query, "pageSize")
        page_token = query.get("pageToken", [None])[0]
        match route.method:
            case "models.get":
                if not self.catalog.exists(route.model):
                    document = not_found_model_body(route.model, route.version, "get")
                    return HttpResponse.of_json(404, document)
                return HttpResponse.of_json(200, self.catalog.document(route.model))
            case "models.list":
                try:
                    return HttpResponse.of_json(200, self.catalog.page(page_size, page_token))
                except BadPageTokenError:
                    document = error_body(400, "INVALID_ARGUMENT", "Invalid page token.")
                    return HttpResponse.of_json(400, document)
            case "batches.create":
                size = len(request.body)
                return batches.create(owner, route.model, route.version, body, size)
            case "batches.get":
                return batches.get(owner, ids["id"])
            case "batches.list":
                return batches.list_jobs(owner, page_size, page_token)
            case "batches.cancel":
                return batches.cancel(owner, ids["id"])
            case "batches.delete":
                return batches.delete(owner, ids["id"])
            case "files.upload":
                return batches.start_upload(owner, request.headers, body, base_url)
            case "files.get":
                return batches.get_file(owner, ids["id"], base_url)
            case "files.download":
                return batches.download(owner, ids["id"])
            case "files.delete":
                return batches.delete_file(owner, ids["id"])
        raise AssertionError(f"unrouted {route.method}")  # pragma: no cover

    def _batch_answer(self, model: str, request: Mapping[str, Any]) -> dict[str, Any]:
        """One request of a batch job: the response generateContent would
        give without faults, or a google.rpc.Status error object."""
        prompt = parse_prompt(request)
        if not prompt.user:
            message = "* GenerateContentRequest.contents: contents is not specified"
            return {"error": {"code": 3, "message": message}}
        spec = self.config.models.get(model)
        input_tokens = prompt.input_tokens
        if spec is not None and 0 < spec.max_input_tokens < input_tokens:
            message = (
                f"The input token count ({input_tokens}) exceeds the maximum number of "
                f"tokens allowed ({spec.max_input_tokens})."
            )
            return {"error": {"code": 3, "message": message}}
        document, _, _ = self._document(
            model,
            prompt.articles(),
            input_tokens,
            prompt.max_output_tokens,
            ServerFault.NONE,
            int_enums=False,
            task=prompt.task,
        )
        return {"response": document}

    def _auth_error(self, key: str) -> tuple[int, dict[str, Any]] | None:
        if not key:
            return 403, missing_key_body()
        if not _KEY_SYNTAX.fullmatch(key):
            return 400, invalid_key_body()
        valid = self.config.valid_keys
        if valid is not None and key not in valid:
            return 403, forbidden_key_body()
        return None

    async def _generate(
        self, now: float, key: str, route: Route, prompt: Prompt, int_enums: bool
    ) -> HttpResponse:
        model = route.model
        input_tokens = prompt.input_tokens
        articles = prompt.articles()
        asked = tuple(a["id"] for a in articles)
        outage = self.config.outages.get(model)
        since_start = time.monotonic() - self._started
        if outage is not None and outage[0] <= since_start < outage[1]:
            code, message = SERVER_ERRORS[503]
            self._record(now, key, route, 503, asked, input_tokens, fault="outage")
            return HttpResponse.of_json(503, error_body(503, code, message))
        spec = self.config.models.get(model)
        if spec is not None and 0 < spec.max_input_tokens < input_tokens:
            message = (
                f"The input token count ({input_tokens}) exceeds the maximum number of "
                f"tokens allowed ({spec.max_input_tokens})."
            )
            self._record(now, key, route, 400, asked, input_tokens)
            return HttpResponse.of_json(400, error_body(400, "INVALID_ARGUMENT", message))
        violation = self.quota.check(key, model, input_tokens, now)
        if violation is not None:
            self._record(
                now,
                key,
                route,
                429,
                asked,
                input_tokens,
                retry_delay_s=violation.retry_delay_s,
                quota_id=violation.quota_id,
            )
            document = quota_error_body(
                violation,
                model,
                fmt=self.config.retry_delay_format,
                include_retry_info=self.config.include_retry_info,
            )
            return HttpResponse.of_json(429, document)

        fault = self.config.faults_for(model).draw(self._rng)
        if fault is ServerFault.MISSING_ARTICLE and articles:
            articles.pop(self._rng.randrange(len(articles)))
        if fault is ServerFault.SERVER_ERROR:
            status = self._rng.choice((500, 502, 503, 504))
            self._record(now, key, route, status, asked, input_tokens, fault=fault)
            await self._latency(model)
            if status == 502:
                return HttpResponse(502, BAD_GATEWAY_HTML, "text/html; charset=UTF-8")
            code, message = SERVER_ERRORS[status]
            return HttpResponse.of_json(status, error_body(status, code, message))

        response, output_tokens, finish = self._answer(
            model,
            articles,
            input_tokens,
            prompt.max_output_tokens,
            fault,
            int_enums,
            prompt.task,
            self._cached_tokens(key, model, prompt),
        )
        self._record(
            now,
            key,
            route,
            200,
            asked,
            input_tokens,
            output_tokens=output_tokens,
            fault=fault,
            finish_reason=finish,
        )
        if fault is ServerFault.HANG:
            await asyncio.sleep(self.config.hang_s)
        await self._latency(model)
        return response

    def _answer(
        self,
        model: str,
        articles: list[dict[str, str]],
        input_tokens: int,
        max_output_tokens: int | None,
        fault: ServerFault,
        int_enums: bool,
        task: TaskConfig | None = None,
        cached_tokens: int = 0,
    ) -> tuple[HttpResponse, int, str]:
        """A 200 answer for the drawn fault: (response, output tokens,
        finish reason)."""
        document, output_tokens, finish = self._document(
            model, articles, input_tokens, max_output_tokens, fault, int_enums, task, cached_tokens
        )
        if fault is ServerFault.MALFORMED_BODY:
            body = json.dumps(document, ensure_ascii=False).encode()
            return HttpResponse(200, body[: len(body) // 2]), output_tokens, finish
        return HttpResponse.of_json(200, document), output_tokens, finish

    def _document(
        self,
        model: str,
        articles: list[dict[str, str]],
        input_tokens: int,
        max_output_tokens: int | None,
        fault: ServerFault,
        int_enums: bool,
        task: TaskConfig | None = None,
        cached_tokens: int = 0,
    ) -> tuple[dict[str, Any], int, str]:
        """The GenerateContentResponse JSON for the drawn fault: (document,
        output tokens, finish reason)."""

        def enum(table: Mapping[str, int], name: str) -> str | int:
            return table[name] if int_enums else name

        self._served += 1
        trailer = {
            "modelVersion": model,
            "responseId": _response_id(self.config.seed, self._served),
        }
        blocked_usage: dict[str, Any] = {
            "promptTokenCount": input_tokens,
            "totalTokenCount": input_tokens,
        }
        safety_ratings = [
            {
                "category": enum(_HARM_CATEGORY_INT, "HARM_CATEGORY_DANGEROUS_CONTENT"),
                "probability": enum(_HARM_PROBABILITY_INT, "HIGH"),
                "blocked": True,
            }
        ]
        if fault is ServerFault.PROMPT_BLOCKED:
            feedback = {
                "blockReason": enum(_BLOCK_REASON_INT, "SAFETY"),
                "safetyRatings": safety_ratings,
            }
            blocked = {"promptFeedback": feedback, "usageMetadata": blocked_usage, **trailer}
            return blocked, 0, ""
        if fault is ServerFault.SAFETY:
            candidate: dict[str, Any] = {
                "finishReason": enum(_FINISH_REASON_INT, "SAFETY"),
                "index": 0,
                "safetyRatings": safety_ratings,
            }
            unsafe = {"candidates": [candidate], "usageMetadata": blocked_usage, **trailer}
            return unsafe, 0, "SAFETY"

        quality = self.config.quality_for(model)
        text = answer_text(answer_document(articles, model, quality, self._quality_rng, task))
        finish = "STOP"
        if fault is ServerFault.MAX_TOKENS:
            text = text[: max(1, len(text) // 2)]
            finish = "MAX_TOKENS"
        elif fault is ServerFault.MALFORMED_JSON_TEXT:
            text = "Sure! Here are the entities you asked for:\n" + text.replace('"', "'")
        if max_output_tokens is not None and fake_token_count(text) > max_output_tokens:
            text = text[: max_output_tokens * 4]
            finish = "MAX_TOKENS"
        output_tokens = fake_token_count(text)
        candidate = {
            "content": {"parts": [{"text": text}], "role": "model"},
            "finishReason": enum(_FINISH_REASON_INT, finish),
            "index": 0,
        }
        thinking = self.config.thinking_tokens
        usage: dict[str, Any] = {
            "promptTokenCount": input_tokens,
            "candidatesTokenCount": output_tokens,
            "totalTokenCount": input_tokens + output_tokens + thinking,
        }
        if thinking:
            usage["thoughtsTokenCount"] = thinking
        if cached_tokens:
            usage["cachedContentTokenCount"] = min(cached_tokens, input_tokens)
        document: dict[str, Any] = {"candidates": [candidate], "usageMetadata": usage, **trailer}
        return document, output_tokens, finish

    def _cached_tokens(self, key: str, model: str, prompt: Prompt) -> int:
        """With ``implicit_cache``: the system instruction's tokens when this
        key already sent it to this model (Gemini caches a repeated prefix)."""
        if not self.config.implicit_cache or not prompt.system:
            return 0
        system = "\n".join(prompt.system)
        seen = (key, model, system)
        if seen not in self._cached:
            self._cached.add(seen)
            return 0
        return fake_prompt_token_count(prompt.system)

    async def _latency(self, model: str) -> None:
        latency = self.config.latency_for(model)
        if latency > 0:
            await asyncio.sleep(latency)

    def _refuse(
        self,
        now: float,
        key: str,
        route: Route | None,
        status: int,
        document: Mapping[str, Any],
    ) -> HttpResponse:
        self._record(now, key, route, status)
        return HttpResponse.of_json(status, document)

    def _record(
        self,
        now: float,
        key: str,
        route: Route | None,
        status: int,
        article_ids: tuple[str, ...] = (),
        input_tokens: int = 0,
        *,
        output_tokens: int = 0,
        retry_delay_s: float | None = None,
        quota_id: str = "",
        fault: str = "",
        finish_reason: str = "",
        fingerprint: str | None = None,
    ) -> None:
        entry = ServedRequest(
            at=now,
            key_fingerprint=key_fingerprint(key) if fingerprint is None else fingerprint,
            model=route.model if route else "",
            api_version=route.version if route else "",
            method=route.method if route else "",
            status=status,
            article_ids=article_ids,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            retry_delay_s=retry_delay_s,
            quota_id=quota_id,
            fault=str(fault),
            finish_reason=finish_reason,
        )
        self.log.append(entry)
        _log.debug(
            "fake gemini request",
            model=entry.model,
            method=entry.method,
            status=status,
            fault=entry.fault,
            article_ids=list(article_ids),
        )


def _response_id(seed: int, n: int) -> str:
    digest = hashlib.sha256(f"{seed}:{n}".encode()).digest()
    return base64.urlsafe_b64encode(digest[:16]).decode().rstrip("=")


def summarize(log: Sequence[ServedRequest]) -> dict[str, Any]:
    """Counts over a request log: per model, status, method, fault, quota id,
    429s per model, tokens per model (answered requests), distinct keys."""
    answered = [r for r in log if r.status == 200 and r.method == "generateContent"]
    input_tokens: Counter[str] = Counter()
    output_tokens: Counter[str] = Counter()
    for r in answered:
        input_tokens[r.model] += r.input_tokens
        output_tokens[r.model] += r.output_tokens
    return {
        "requests": len(log),
        "by_model": dict(Counter(r.model for r in log)),
        "by_status": dict(Counter(r.status for r in log)),
        "by_method": dict(Counter(r.method for r in log)),
        "rate_limited_by_model": dict(Counter(r.model for r in log if r.status == 429)),
        "rate_limited_by_quota_id": dict(Counter(r.quota_id for r in log if r.status == 429)),
        "faults": dict(Counter(r.fault for r in log if r.fault)),
        "articles_in_answered_requests": sum(len(r.article_ids) for r in answered),
        "input_tokens_by_model": dict(input_tokens),
        "output_tokens_by_model": dict(output_tokens),
        "keys": len({r.key_fingerprint for r in log if r.key_fingerprint}),
    }

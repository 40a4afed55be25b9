"""The default provider: Gemini through the maintained google-genai SDK.

The runtime owns retries, so the SDK's must stay off. google-genai retries
only when ``HttpRetryOptions`` are given (without them its tenacity policy is
``stop_after_attempt(1)``), and we never pass any. Its other, implicit retry
(sleep 1-10 s, then resend on an aiohttp connection error) only exists on
its aiohttp path; we hand the SDK our own httpx2 client, which keeps it off
that path even where aiohttp is installed. Pooled connections belong to the
event loop that opened them, so each running loop has SDK clients of its own.

What ``extract`` decides, beyond the status mapping of ``adapters.errors``:

* a 200 whose body is not JSON (or not a response's shape) is a
  ``ServerError(None)``: the transfer was broken, the model's answer never
  arrived, and the registry should count it against the endpoint's health
  rather than against the articles;
* a call's deadline counts from when it has a connection (``CallTiming``):
  any timeout after that -- httpx2's per-step ones, or the total deadline of
  ``request.timeout_s`` -- is ``TimedOut``; a call that timed out waiting
  for a connection of the pool was never sent and is ``Cancelled``;
* a redirect is never followed (``http_client``): it is ``AuthFailed``
  naming where it pointed -- a wrong base URL, which stops the run rather
  than sending the key elsewhere or retrying;
* ``output_tokens`` includes thinking tokens, which are billed as output;
  without ``usageMetadata`` the input tokens are the request's estimate.

A loop's connections are split over SDK clients of at most
``POOL_SHARD_CONNECTIONS`` each (a call goes to the least busy; the next
opens only when the others are full): an HTTP pool re-examines every idle
connection (two system calls each) on every request and response, which
with one pool of hundreds was a third of a call's CPU.

Nothing escapes ``extract`` except cancellation; unexpected exceptions become
``ServerError(None)`` with a redacted message.

``describe_model`` (the ``ModelCatalog`` port, for the models check) is
``client.models.get``: None for a 404, ``ModelLookupError`` with the same
mapping for anything else. ``read_response`` and ``outcome_for_exception``
are shared with the batch client (``batch_client``).
"""

from __future__ import annotations

import asyncio
import importlib
import math
import os
import threading
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import Any

import structlog
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from tierbatch.actors.ports import ExtractionRequest, ModelInfo, ModelLookupError, PackAnswer
from tierbatch.adapters.gemini.answers import ParsedAnswer, analyse_answer, normalise_reason
from tierbatch.adapters.gemini.api_key import require_api_key
from tierbatch.adapters.gemini.call_log import log_answer, log_failure
from tierbatch.adapters.gemini.call_timing import CallTiming
from tierbatch.adapters.gemini.error_mapping import (
    foreign_origin_refused,
    outcome_for_status,
    redirect_refused,
    safe_message,
)
from tierbatch.adapters.gemini.http_client import new_async_client, timing_of_this_call
from tierbatch.adapters.gemini.origin import ForeignOriginError, base_origin
from tierbatch.adapters.gemini.prompt import build_user_text, task_prompt
from tierbatch.policies.config import ProviderConfig
from tierbatch.policies.outcomes import (
    CallOutcome,
    Cancelled,
    ServerError,
    Succeeded,
    TimedOut,
    Usage,
)
from tierbatch.policies.task import TaskConfig

DEFAULT_GEMINI_BASE_URL = "https://generativelanguage.googleapis.com"
DEFAULT_MAX_CONNECTIONS = 256
"""Without a figure from the provider factory: the default config's calls in flight."""
POOL_SHARD_CONNECTIONS = 8
"""The most connections one SDK client's pool holds (see the module's docstring)."""

_log = structlog.get_logger(__name__)


def _httpx_module() -> Any:
    """httpx2, which google-genai 3 sends through; httpx for older releases."""
    try:
        return importlib.import_module("httpx2")
    except ImportError:  # pragma: no cover - google-genai 3 depends on httpx2
        return importlib.import_module("httpx")


_HTTPX: Any = _httpx_module()
HTTPX: Any = _HTTPX
"""The httpx module google-genai sends through (for ``http_client.new_async_client``)."""
_TIMEOUT_ERRORS: tuple[type[BaseException], ...] = (TimeoutError, _HTTPX.TimeoutException)
_TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (ConnectionError, _HTTPX.TransportError)


def gemini_base_url(config: ProviderConfig) -> str:
    """The endpoint google-genai will call, for descriptions and logs."""
    return config.base_url or os.environ.get("GOOGLE_GEMINI_BASE_URL") or DEFAULT_GEMINI_BASE_URL


@dataclass(slots=True)
class _LoopClient:
    """One SDK client over its own pool; ``calls``: its calls out now
    (changed on its loop's thread only)."""

    sdk: genai.Client
    http: Any
    calls: int = 0


class GenaiProvider:
    """``Provider`` over google-genai's async client.

    The key is the explicit ``api_key``, else the first set variable of
    ``config.api_key_env``; ``MissingApiKeyError`` names them when none is.
    ``default_timeout_s`` is the client-wide HTTP timeout; every call also
    gets ``request.timeout_s`` as its own, and as a total deadline from when
    it has a connection. ``max_connections`` should be at least the calls
    in flight (the provider factory passes the runtime's limit).
    """

    def __init__(
        self,
        config: ProviderConfig,
        *,
        api_key: str | None = None,
        default_timeout_s: float = 60.0,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        task: TaskConfig | None = None,
    ) -> None:
        if max_connections < 1:
            raise ValueError(f"max_connections must be >= 1, got {max_connections}")
        self._config = config
        self._key = require_api_key(config.api_key_env, api_key)
        self._default_timeout_s = default_timeout_s
        self.max_connections = max_connections
        self.prompt = task_prompt(task)
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, list[_LoopClient]] = (
            weakref.WeakKeyDictionary()
        )
        self._max_shards = math.ceil(max_connections / POOL_SHARD_CONNECTIONS)
        self._ssl_context: Any = None  # built once, shared by the shards
        self._lock = threading.Lock()
        # One request config per model and timeout, built at its first call
        # (the SDK reads it and changes nothing in it).
        self._generation_configs: dict[tuple[str, float], types.GenerateContentConfig] = {}
        self._closed = False
        self.base_url = gemini_base_url(config)
        self._origin = base_origin(self.base_url)
        self.description = f"google-genai at {self.base_url} ({config.api_version})"

    async def extract(self, request: ExtractionRequest) -> PackAnswer:
        ids = [a.id for a in request.articles]
        log = _log.bind(
            provider="genai",
            model=request.model,
            article_ids=ids,
            grant_id=request.grant_id,
            attempt=request.attempt,
        )
        started = time.monotonic()
        timing = CallTiming(request.timeout_s)
        try:
            shard = self._client_for_running_loop()
            shard.calls += 1
            try:
                with timing_of_this_call(timing):
                    async with timing.deadline():
                        response = await shard.sdk.aio.models.generate_content(
                            model=request.model,
                            contents=build_user_text(request.articles),
                            config=self._generation_config(request.model, request.timeout_s),
                        )
            finally:
                shard.calls -= 1
            elapsed = time.monotonic() - started
            return _answer(response, request, ids, log, elapsed, self.prompt.task)
        except Exception as exc:
            elapsed = time.monotonic() - started
            outcome = self._outcome_for_exception(exc, timing)
            log_failure(log, outcome, exc, elapsed)
            return PackAnswer(outcome)

    async def describe_model(self, name: str, *, timeout_s: float = 10.0) -> ModelInfo | None:
        """``models.get`` (the ``ModelCatalog`` port): None for a 404. It
        runs on a client of its own, closed before it returns, so a check
        run on a short-lived event loop (the CLI's, before the runtime
        starts) leaves no pooled connection behind."""
        timing = CallTiming(timeout_s)
        entry = self._new_client(max_connections=1, timeout_s=timeout_s)
        try:
            with timing_of_this_call(timing):
                async with timing.deadline():
                    model = await entry.sdk.aio.models.get(model=name)
        except genai_errors.APIError as exc:
            if exc.code == 404:
                return None
            raise ModelLookupError(name, self._outcome_for_exception(exc, timing)) from None
        except Exception as exc:
            raise ModelLookupError(name, self._outcome_for_exception(exc, timing)) from None
        finally:
            await _close(entry)
        return model_info(name, model)

    async def aclose(self) -> None:
        """Close the current loop's clients; other live loops' are scheduled
        to close there, dead loops' are left to the garbage collector."""
        with self._lock:
            self._closed = True
            entries = list(self._clients.items())
            self._clients.clear()
        current = asyncio.get_running_loop()
        for loop, shards in entries:
            for entry in shards:
                if loop is current:
                    await _close(entry)
                elif loop.is_running():
                    asyncio.run_coroutine_threadsafe(_close(entry), loop)

    def _client_for_running_loop(self) -> _LoopClient:
        """The running loop's least busy client; a new one when every one
        is full and the connection budget allows."""
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._closed:
                raise RuntimeError("provider is closed")
            shards = self._clients.get(loop)
            if shards is None:
                shards = self._clients[loop] = []
            best = min(shards, key=attrgetter("calls"), default=None)
            if best is None or (
                best.calls >= POOL_SHARD_CONNECTIONS and len(shards) < self._max_shards
            ):
                size = min(POOL_SHARD_CONNECTIONS, self.max_connections)
                best = self._new_client(max_connections=size)
                shards.append(best)
            return best

    def _new_client(
        self, *, max_connections: int | None = None, timeout_s: float | None = None
    ) -> _LoopClient:
        if self._ssl_context is None:
            self._ssl_context = _HTTPX.create_ssl_context()
        http = new_async_client(
            _HTTPX, self._origin, max_connections or self.max_connections, self._ssl_context
        )
        sdk = new_sdk_client(
            self._config,
            self._key,
            http,
            timeout_s or self._default_timeout_s,
            ssl_context=self._ssl_context,
        )
        return _LoopClient(sdk, http)

    def _generation_config(self, model: str, timeout_s: float) -> types.GenerateContentConfig:
        key = (model, timeout_s)
        config = self._generation_configs.get(key)
        if config is None:
            config = types.GenerateContentConfig(
                system_instruction=self.prompt.system_instruction,
                response_mime_type="application/json",
                response_schema=self.prompt.response_schema,
                max_output_tokens=self._config.max_output_tokens,
                temperature=self._config.temperature,
                http_options=types.HttpOptions(timeout=_millis(timeout_s)),
            )
            self._generation_configs[key] = config
        return config

    def _outcome_for_exception(self, exc: Exception, timing: CallTiming) -> CallOutcome:
        return outcome_for_exception(exc, self._key, self.base_url, self._config, timing)


def outcome_for_exception(
    exc: Exception,
    key: str,
    base_url: str,
    config: ProviderConfig,
    timing: CallTiming | None = None,
    timeout_s: float = 0.0,
) -> CallOutcome:
    """What an exception of a google-genai call means, in the runtime's
    terms (see the module docstring). Without ``timing`` a timeout is
    ``TimedOut(timeout_s)``."""
    secrets = (key,)
    if isinstance(exc, genai_errors.APIError):
        if exc.code is not None and 300 <= exc.code < 400:
            return redirect_refused(exc.code, base_url, _location(exc))
        detail = safe_message(exc.message or exc.status or exc, secrets)
        return outcome_for_status(exc.code, exc.details, detail, key_env=config.api_key_env)
    if isinstance(exc, ForeignOriginError):
        return foreign_origin_refused(exc)
    if isinstance(exc, _TIMEOUT_ERRORS):
        if timing is None:
            return TimedOut(after_s=timeout_s)
        since_connected = timing.give_up()
        if since_connected is None:
            return Cancelled()  # it waited for a connection and never left
        return TimedOut(after_s=since_connected)
    message = safe_message(exc, secrets)
    if isinstance(exc, _TRANSPORT_ERRORS):
        return ServerError(None, f"connection failed: {type(exc).__name__}: {message}")
    if isinstance(exc, ValueError):
        # json.JSONDecodeError, pydantic.ValidationError and the SDK's
        # UnknownApiResponseError: a 200 whose body is not a response.
        return ServerError(None, f"unreadable response body: {message}")
    return ServerError(None, f"unexpected {type(exc).__name__}: {message}")


def new_sdk_client(
    config: ProviderConfig, key: str, http: Any, timeout_s: float, *, ssl_context: Any = None
) -> genai.Client:
    """A google-genai client over ``http`` (from ``new_async_client``): the
    configured endpoint and API version, no retries of its own. With an
    ``ssl_context`` the SDK builds none of its own (it builds three, ~13 ms
    of CPU each: for its unused sync client, for its websockets, and a
    default) -- a provider opens a client per pool shard."""
    shared: dict[str, Any] = {}
    if ssl_context is not None:
        client = _HTTPX.Client(verify=ssl_context, follow_redirects=False)
        shared = {"httpx_client": client, "async_client_args": {"ssl": ssl_context}}
    options = types.HttpOptions(
        base_url=config.base_url,
        api_version=config.api_version,
        timeout=_millis(timeout_s),
        httpx_async_client=http,
        **shared,
    )
    return genai.Client(vertexai=False, api_key=key, http_options=options)


def model_info(name: str, model: types.Model) -> ModelInfo:
    """Our description of a google-genai ``Model``."""
    full = model.name or name
    return ModelInfo(
        name=full.removeprefix("models/"),
        display_name=model.display_name or "",
        input_token_limit=model.input_token_limit,
        output_token_limit=model.output_token_limit,
        methods=tuple(model.supported_actions or ()),
    )


def _location(exc: genai_errors.APIError) -> str | None:
    headers = getattr(getattr(exc, "response", None), "headers", None)
    try:
        location = headers.get("location") if headers is not None else None
    except Exception:  # an unexpected response type: say nothing about where
        return None
    return location if isinstance(location, str) else None


async def _close(entry: _LoopClient) -> None:
    await entry.sdk.aio.aclose()
    entry.sdk.close()
    await entry.http.aclose()


@dataclass(frozen=True, slots=True)
class ResponseReading:
    """A google-genai response read for one pack: the per-article answers
    (``answers.analyse_answer``), the reasons it finished, the tokens."""

    parsed: ParsedAnswer
    finish: str | None
    block: str | None
    usage: Usage

    @property
    def pack_answer(self) -> PackAnswer:
        return PackAnswer(Succeeded(self.usage), self.parsed.answers)


def read_response(
    response: types.GenerateContentResponse,
    ids: Sequence[str],
    est_input_tokens: int,
    task: TaskConfig | None = None,
) -> ResponseReading:
    """What the interactive adapter and the batch client make of an answer:
    one validation policy whatever the way the answer came."""
    candidate = response.candidates[0] if response.candidates else None
    finish = normalise_reason(candidate.finish_reason) if candidate else None
    feedback = response.prompt_feedback
    block = normalise_reason(feedback.block_reason) if feedback else None
    parsed = analyse_answer(_candidate_text(candidate), finish, block, ids, task)
    usage = _usage(response.usage_metadata, est_input_tokens)
    return ResponseReading(parsed, finish, block, usage)


def _answer(
    response: types.GenerateContentResponse,
    request: ExtractionRequest,
    ids: list[str],
    log: Any,
    elapsed_s: float,
    task: TaskConfig | None = None,
) -> PackAnswer:
    reading = read_response(response, ids, request.est_input_tokens, task)
    log_answer(
        log,
        reading.parsed,
        finish=reading.finish,
        block=reading.block,
        usage=reading.usage,
        elapsed_s=elapsed_s,
    )
    return reading.pack_answer


def _candidate_text(candidate: types.Candidate | None) -> str | None:
    if candidate is None or candidate.content is None or not candidate.content.parts:
        return None
    texts = [p.text for p in candidate.content.parts if p.text is not None and not p.thought]
    return "".join(texts) if texts else None


def _usage(metadata: types.GenerateContentResponseUsageMetadata | None, estimate: int) -> Usage:
    if metadata is None or metadata.prompt_token_count is None:
        return Usage(input_tokens=estimate, output_tokens=0)
    thinking = metadata.thoughts_token_count or 0
    output = (metadata.candidates_token_count or 0) + thinking
    return Usage(
        input_tokens=metadata.prompt_token_count,
        output_tokens=output,
        thinking_tokens=thinking,
        cached_tokens=metadata.cached_content_token_count or 0,
    )


def _millis(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1000))

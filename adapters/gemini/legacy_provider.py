"""Gemini through the legacy google-generativeai SDK (extra ``tierbatch[legacy]``).

google-generativeai reached END OF LIFE on 2025-11-30: it gets no fixes and
no new models' features. It is here only for pipelines pinned to it; new
deployments should use the default ``GenaiProvider``. Constructing a
``LegacyProvider`` logs that once per process.

How it is used, and why:

* No ``genai.configure``: that sets one process-wide key and endpoint, so two
  providers with different keys would clash. Each provider builds its own
  ``GenerativeServiceClient`` exactly as ``configure(api_key=...,
  transport="rest", client_options={"api_endpoint": base_url})`` would, and
  hands it to its ``GenerativeModel`` through the model's ``_client``
  attribute -- private, but the SDK is frozen at end of life, so it will not
  move. The SDK is then used through its public ``generate_content``.
* ``request_options={"retry": None, "timeout": s}``: the SDK would otherwise
  retry 503 for up to 600 s on its own; the runtime owns retries.
* ``generate_content_async`` does not work over REST, so the blocking call
  runs on a dedicated thread pool sized by ``max_workers`` (one thread per
  call in flight; the provider factory passes the runtime's limit). A call
  that waits for a thread has not been sent: its deadline of
  ``request.timeout_s`` counts from when a thread takes it up
  (``CallTiming``), and one that never got a thread is ``Cancelled``.
* Redirects are never followed (``max_redirects = 0``: requests would carry
  the ``x-goog-api-key`` header to another host -- it strips only
  ``Authorization``), and the session's adapter refuses any request to an
  origin other than the base URL's. A redirect is ``AuthFailed`` naming
  where it pointed: a wrong base URL.
* The response schema travels as the SDK's ``protos.Schema`` (its enums go
  over the wire as integers, which Gemini accepts); the SDK converts the
  shared ``RESPONSE_SCHEMA`` dict itself.
* The SDK speaks ``v1beta`` only; ``ProviderConfig.api_version`` is ignored
  (with a warning when it says otherwise). The endpoint is
  ``config.base_url``, else ``GOOGLE_GEMINI_BASE_URL`` (as google-genai
  reads it), else Google's.

``describe_model`` (the ``ModelCatalog`` port) is the public
``genai.get_model(name, client=...)`` on a ``ModelServiceClient`` this
provider builds and guards like the generation client (no ``configure``).

Answers and errors are mapped exactly as in ``GenaiProvider``: the same
``answers`` validation, the same ``errors`` status mapping (google.api_core
hands over the bare ``details`` list, which ``errors`` reads too), a 200 with
an unreadable body is ``ServerError(None)``.

Longer than the house's ~450 lines on purpose: a whole adapter for a second
SDK, whose errors and answers differ from google-genai's.
"""

from __future__ import annotations

import asyncio
import contextvars
import copy
import importlib
import re
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import structlog

from tierbatch.actors.ports import (
    ExtractionRequest,
    ModelInfo,
    ModelLookupError,
    PackAnswer,
    mark_request_sent,
)
from tierbatch.adapters.gemini.answers import analyse_answer, normalise_reason
from tierbatch.adapters.gemini.api_key import require_api_key
from tierbatch.adapters.gemini.call_log import log_answer, log_failure
from tierbatch.adapters.gemini.call_timing import CallTiming
from tierbatch.adapters.gemini.error_mapping import (
    foreign_origin_refused,
    outcome_for_status,
    redirect_refused,
    safe_message,
)
from tierbatch.adapters.gemini.genai_provider import DEFAULT_MAX_CONNECTIONS, gemini_base_url
from tierbatch.adapters.gemini.origin import ForeignOriginError, Origin, base_origin, require_origin
from tierbatch.adapters.gemini.prompt import build_user_text, task_prompt
from tierbatch.policies.config import ProviderConfig
from tierbatch.policies.errors import ProviderError
from tierbatch.policies.outcomes import (
    CallOutcome,
    Cancelled,
    ServerError,
    Succeeded,
    TimedOut,
    Usage,
)
from tierbatch.policies.task import TaskConfig

END_OF_LIFE = "2025-11-30"
LEGACY_API_VERSION = "v1beta"
INSTALL_HINT = "pip install 'tierbatch[legacy]'"

_REQUEST_PREFIX = re.compile(r"^[A-Z]+ \S+: ")
"""api_core prefixes REST error messages with the method and URL: noise."""

_log = structlog.get_logger(__name__)
_notice_lock = threading.Lock()
_notice_logged = False


class _NotSentError(Exception):
    """The call was given up before a worker thread took it: it never left."""


class _RedirectedError(Exception):
    """The endpoint answered a redirect (3xx), which is not followed."""

    def __init__(self, status: int, location: str | None) -> None:
        super().__init__(f"HTTP {status} redirect, not followed")
        self.status = status
        self.location = location


class LegacyExtraMissingError(ProviderError, ImportError):
    """google-generativeai is not installed."""

    def __init__(self) -> None:
        super().__init__(
            f"the legacy Gemini provider needs google-generativeai: {INSTALL_HINT} "
            "(or switch provider.kind to 'genai', the maintained SDK)"
        )


@dataclass(frozen=True, slots=True)
class _Sdk:
    """The legacy SDK's modules, imported on first use."""

    genai: Any
    glm: Any
    client_options: Any
    api_exceptions: Any
    json_format: Any
    requests_exceptions: Any


def load_legacy_sdk() -> _Sdk:
    """Import google-generativeai, or raise ``LegacyExtraMissingError``.

    Its import-time FutureWarning is silenced: ``LegacyProvider`` logs the end
    of life itself, once, through structlog.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return _Sdk(
                genai=importlib.import_module("google.generativeai"),
                glm=importlib.import_module("google.ai.generativelanguage"),
                client_options=importlib.import_module("google.api_core.client_options"),
                api_exceptions=importlib.import_module("google.api_core.exceptions"),
                json_format=importlib.import_module("google.protobuf.json_format"),
                requests_exceptions=importlib.import_module("requests.exceptions"),
            )
    except ImportError as exc:
        raise LegacyExtraMissingError() from exc


def _log_end_of_life_once() -> None:
    global _notice_logged
    with _notice_lock:
        if _notice_logged:
            return
        _notice_logged = True
    _log.warning(
        "google-generativeai reached end of life; set provider.kind = 'genai'",
        end_of_life=END_OF_LIFE,
    )


class LegacyProvider:
    """``Provider`` over google-generativeai's REST transport.

    The key is the explicit ``api_key``, else the first set variable of
    ``config.api_key_env``; ``MissingApiKeyError`` names them when none is.
    ``max_workers`` bounds the calls in flight (each holds a thread).
    """

    def __init__(
        self,
        config: ProviderConfig,
        *,
        api_key: str | None = None,
        max_workers: int = DEFAULT_MAX_CONNECTIONS,
        task: TaskConfig | None = None,
    ) -> None:
        if max_workers < 1:
            raise ValueError(f"max_workers must be >= 1, got {max_workers}")
        self._sdk = load_legacy_sdk()
        self._config = config
        self.prompt = task_prompt(task)
        self._key = require_api_key(config.api_key_env, api_key)
        _log_end_of_life_once()
        if config.api_version != LEGACY_API_VERSION:
            _log.warning(
                "google-generativeai only speaks v1beta; ignoring provider.api_version",
                api_version=config.api_version,
            )
        self.base_url = gemini_base_url(config)
        origin = base_origin(self.base_url)
        self.max_workers = max_workers
        self.description = f"google-generativeai (end of life {END_OF_LIFE}) at {self.base_url}"
        self._client = self._sdk.glm.GenerativeServiceClient(
            transport="rest",
            client_options=self._sdk.client_options.ClientOptions(
                api_endpoint=self.base_url, api_key=self._key
            ),
        )
        _guard_session(self._client, origin, max_workers)
        self._origin = origin
        self._model_service: Any = None  # the ModelServiceClient, made on first use
        self._models: dict[str, Any] = {}
        self._models_lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers, thread_name_prefix="tierbatch-legacy")
        self._closed = False

    async def extract(self, request: ExtractionRequest) -> PackAnswer:
        ids = [a.id for a in request.articles]
        log = _log.bind(
            provider="legacy",
            model=request.model,
            article_ids=ids,
            grant_id=request.grant_id,
            attempt=request.attempt,
        )
        started = time.monotonic()
        timing = CallTiming(request.timeout_s)
        try:
            loop = asyncio.get_running_loop()
            async with timing.deadline():
                # The executor thread runs in a copy of this context, so the
                # SDK call can tell the runtime when the request really leaves.
                call = loop.run_in_executor(
                    self._executor, contextvars.copy_context().run, self._call, request, timing
                )
                response = await call
            return self._answer(response, request, ids, log, time.monotonic() - started)
        except Exception as exc:
            elapsed = time.monotonic() - started
            outcome = self._outcome_for_exception(exc, timing)
            log_failure(log, outcome, exc, elapsed)
            return PackAnswer(outcome)

    async def describe_model(self, name: str, *, timeout_s: float = 10.0) -> ModelInfo | None:
        """``genai.get_model`` (the ``ModelCatalog`` port) on a
        ``ModelServiceClient`` of this provider's own, guarded like the
        generation client; None for a 404."""
        timing = CallTiming(timeout_s)
        try:
            loop = asyncio.get_running_loop()
            async with timing.deadline():
                model = await loop.run_in_executor(
                    self._executor, self._get_model, name, timing, timeout_s
                )
        except Exception as exc:
            if isinstance(exc, self._sdk.api_exceptions.NotFound):
                return None
            raise ModelLookupError(name, self._outcome_for_exception(exc, timing)) from None
        return ModelInfo(
            name=str(model.name or name).removeprefix("models/"),
            display_name=str(model.display_name or ""),
            input_token_limit=int(model.input_token_limit) or None,
            output_token_limit=int(model.output_token_limit) or None,
            methods=tuple(str(m) for m in model.supported_generation_methods or ()),
        )

    async def aclose(self) -> None:
        """Stop taking calls; calls in flight end within their own timeout."""
        if self._closed:
            return
        self._closed = True
        self._executor.shutdown(wait=False, cancel_futures=True)
        await asyncio.to_thread(self._client.transport.close)
        with self._models_lock:
            service, self._model_service = self._model_service, None
        if service is not None:
            await asyncio.to_thread(service.transport.close)

    def _get_model(self, name: str, timing: CallTiming, timeout_s: float) -> Any:
        """The blocking ``get_model``, on an executor thread."""
        if not timing.connected():
            raise _NotSentError()
        return self._sdk.genai.get_model(
            name if name.startswith("models/") else f"models/{name}",
            client=self._model_client(),
            request_options={"retry": None, "timeout": timeout_s},
        )

    def _model_client(self) -> Any:
        with self._models_lock:
            if self._model_service is None:
                service = self._sdk.glm.ModelServiceClient(
                    transport="rest",
                    client_options=self._sdk.client_options.ClientOptions(
                        api_endpoint=self.base_url, api_key=self._key
                    ),
                )
                _guard_session(service, self._origin, self.max_workers)
                self._model_service = service
            return self._model_service

    def _call(self, request: ExtractionRequest, timing: CallTiming) -> Any:
        """The blocking SDK call, on an executor thread. The session's
        adapter marks the request sent when it hands it to urllib3."""
        if not timing.connected():
            raise _NotSentError()
        model = self._model(request.model)
        return model.generate_content(
            build_user_text(request.articles),
            request_options={"retry": None, "timeout": request.timeout_s},
        )

    def _model(self, name: str) -> Any:
        with self._models_lock:
            model = self._models.get(name)
            if model is None:
                model = self._sdk.genai.GenerativeModel(
                    name,
                    system_instruction=self.prompt.system_instruction,
                    generation_config=self._sdk.genai.GenerationConfig(
                        response_mime_type="application/json",
                        # the SDK rewrites the schema dict it is given
                        response_schema=copy.deepcopy(self.prompt.response_schema),
                        max_output_tokens=self._config.max_output_tokens,
                        temperature=self._config.temperature,
                    ),
                )
                if not hasattr(model, "_client"):
                    raise RuntimeError("this google-generativeai has no per-model client slot")
                model._client = self._client
                self._models[name] = model
            return model

    def _answer(
        self,
        response: Any,
        request: ExtractionRequest,
        ids: list[str],
        log: Any,
        elapsed_s: float,
    ) -> PackAnswer:
        protos = self._sdk.glm
        candidates = list(response.candidates)
        candidate = candidates[0] if candidates else None
        finish = (
            _enum_name(candidate.finish_reason, protos.Candidate.FinishReason)
            if candidate is not None
            else None
        )
        block = _enum_name(
            response.prompt_feedback.block_reason,
            protos.GenerateContentResponse.PromptFeedback.BlockReason,
        )
        parsed = analyse_answer(_candidate_text(candidate), finish, block, ids, self.prompt.task)
        usage = _usage(response.usage_metadata, request.est_input_tokens)
        log_answer(log, parsed, finish=finish, block=block, usage=usage, elapsed_s=elapsed_s)
        return PackAnswer(Succeeded(usage), parsed.answers)

    def _outcome_for_exception(self, exc: Exception, timing: CallTiming) -> CallOutcome:
        sdk = self._sdk
        secrets = (self._key,)
        if isinstance(exc, _RedirectedError):
            return redirect_refused(exc.status, self.base_url, exc.location)
        if isinstance(exc, sdk.requests_exceptions.TooManyRedirects):
            response = getattr(exc, "response", None)
            headers = getattr(response, "headers", None) or {}
            return redirect_refused(
                int(getattr(response, "status_code", 0) or 0),
                self.base_url,
                headers.get("location"),
            )
        if isinstance(exc, ForeignOriginError):
            return foreign_origin_refused(exc)
        if isinstance(exc, _NotSentError):
            return Cancelled()
        if isinstance(exc, sdk.api_exceptions.GoogleAPICallError):
            detail = safe_message(_REQUEST_PREFIX.sub("", str(exc.message or exc)), secrets)
            status = int(exc.code) if exc.code is not None else None
            if status is not None and 300 <= status < 400:  # a 3xx requests did not follow
                return redirect_refused(status, self.base_url, None)
            return outcome_for_status(
                status, _details_with_reason(exc), detail, key_env=self._config.api_key_env
            )
        if isinstance(exc, TimeoutError | sdk.requests_exceptions.Timeout):
            since_started = timing.give_up()
            if since_started is None:
                return Cancelled()  # no thread took it up in time: never sent
            return TimedOut(after_s=since_started)
        message = safe_message(exc, secrets)
        if isinstance(exc, ConnectionError | sdk.requests_exceptions.ConnectionError):
            return ServerError(None, f"connection failed: {type(exc).__name__}: {message}")
        if isinstance(exc, sdk.json_format.ParseError | ValueError):
            return ServerError(None, f"unreadable response body: {message}")
        return ServerError(None, f"unexpected {type(exc).__name__}: {message}")


def _guard_session(client: Any, origin: Origin, size: int) -> None:
    """Set up the REST transport's requests session: no redirects, requests
    to ``origin`` only (``_OneOriginAdapter``), one pooled connection per
    worker thread (requests' default pool holds 10 and drops, and logs, the
    connections of any call beyond that). The adapter retries nothing
    (``max_retries=0``), like the SDK call. Without a session to guard, the
    provider is not built: the key's safety depends on it."""
    session = getattr(client.transport, "_session", None)
    if session is None or not hasattr(session, "mount"):
        raise RuntimeError("this google-generativeai has no requests session to guard")
    session.max_redirects = 0
    adapter_type = _one_origin_adapter_type()
    for prefix in ("http://", "https://"):
        session.mount(prefix, adapter_type(origin, pool_maxsize=size, max_retries=0))


def _one_origin_adapter_type() -> Any:
    """A requests ``HTTPAdapter`` that sends only to one origin, marks the
    request sent as it hands it to urllib3 (its pool does not block: the
    connection is there at once), and turns any 3xx answer into an error."""
    http_adapter: Any = importlib.import_module("requests.adapters").HTTPAdapter

    class OneOriginAdapter(http_adapter):  # type: ignore[misc]
        def __init__(self, origin: Origin, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.origin = origin

        def send(self, request: Any, *args: Any, **kwargs: Any) -> Any:
            require_origin(str(request.url), self.origin)
            mark_request_sent()
            response = super().send(request, *args, **kwargs)
            if 300 <= response.status_code < 400:
                # The REST transport would read a 3xx as an answer.
                location = response.headers.get("location")
                response.close()
                raise _RedirectedError(response.status_code, location)
            return response

    return OneOriginAdapter


def _details_with_reason(exc: Any) -> list[Any]:
    """``e.details``, plus the ``ErrorInfo`` reason api_core parsed out of it."""
    details = list(getattr(exc, "details", None) or [])
    reason = getattr(exc, "reason", None)
    if isinstance(reason, str) and reason:
        details.append({"reason": reason})
    return details


def _enum_name(value: Any, enum_type: Any) -> str | None:
    """A proto enum's name whether the SDK hands over the enum or its integer."""
    if value is None:
        return None
    if isinstance(getattr(value, "name", None), str):
        name = normalise_reason(value)
    else:
        try:
            name = str(enum_type(int(value)).name)
        except (TypeError, ValueError):
            name = normalise_reason(value)
    return None if name.endswith("_UNSPECIFIED") else name


def _candidate_text(candidate: Any) -> str | None:
    if candidate is None:
        return None
    texts = [
        part.text
        for part in candidate.content.parts
        if part.text and not getattr(part, "thought", False)
    ]
    return "".join(texts) if texts else None


def _usage(metadata: Any, estimate: int) -> Usage:
    """Proto fields default to 0, so a missing ``usageMetadata`` reads as 0
    prompt tokens -- which no real prompt has -- and falls back to the estimate."""
    prompt = int(getattr(metadata, "prompt_token_count", 0) or 0)
    if prompt <= 0:
        return Usage(input_tokens=estimate, output_tokens=0)
    thinking = int(getattr(metadata, "thoughts_token_count", 0) or 0)
    output = int(getattr(metadata, "candidates_token_count", 0) or 0) + thinking
    cached = int(getattr(metadata, "cached_content_token_count", 0) or 0)
    return Usage(
        input_tokens=prompt, output_tokens=output, thinking_tokens=thinking, cached_tokens=cached
    )

"""Gemini's Batch API (half the price, up to 24 h turnaround) through
google-genai's ``client.aio.batches`` and ``client.aio.files``.

A small typed interface for whoever keeps the jobs' books (a durable store,
a planner that sends work either way): job names and request keys are
plain strings, so they can be saved and a later process can pick a job up.

* ``submit(model, items)`` sends one request per item (a key and the
  articles of one pack, in the same prompt the interactive adapter uses)
  and returns the job's name. Requests go inline while their JSON stays
  under ``inline_limit_bytes`` (Gemini takes 20 MB inline); above that they
  are written as a JSONL file (``{"key", "request"}`` lines), uploaded
  through the Files API, and the job reads the file.
* ``poll(job)`` is the job's ``JobState``; ``results(job)`` its per-key
  outcomes once it SUCCEEDED: a ``PackAnswer`` per key, parsed and
  validated by ``genai_provider.read_response`` (``answers``) like an
  interactive answer; a request that failed inside the job gets the outcome
  its error means (``BadRequest``, ``ServerError``, ...), and a key with no
  entry in the results a ``ServerError``.
* ``cancel(job)``; ``delete(job)`` forgets the job and the files this
  client made for it.

Every call runs on a google-genai client of its own, closed before the call
returns: batch calls are rare, and a client per call works from any event
loop (the CLI's short-lived ones included). Like the interactive adapter:
no SDK retries, redirects never followed, requests only to the base URL's
origin, the key never in a message. An API error raises ``BatchError``
with the outcome it means (``AuthFailed`` for a refused key, ...);
``BatchJobNotFoundError`` for a job the API does not know (deleted, or
another key's); ``BatchNotSucceededError`` when results are asked of a job that
did not succeed.

Longer than the house's ~450 lines on purpose: the Batch API's inline and
file sources, polling and results behind one small typed interface.
"""

from __future__ import annotations

import copy
import io
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import structlog
from google.genai import errors as genai_errors
from google.genai import types
from pydantic import ValidationError

from tierbatch.actors.ports import PackAnswer
from tierbatch.adapters.gemini.api_key import require_api_key
from tierbatch.adapters.gemini.error_mapping import outcome_for_status
from tierbatch.adapters.gemini.genai_provider import (
    HTTPX,
    gemini_base_url,
    new_sdk_client,
    outcome_for_exception,
    read_response,
)
from tierbatch.adapters.gemini.http_client import new_async_client
from tierbatch.adapters.gemini.origin import base_origin
from tierbatch.adapters.gemini.prompt import build_user_text, task_prompt
from tierbatch.policies.articles import Article
from tierbatch.policies.batch_costs import TokenCounts
from tierbatch.policies.config import ProviderConfig
from tierbatch.policies.errors import ProviderError
from tierbatch.policies.outcomes import (
    AuthFailed,
    BadRequest,
    CallOutcome,
    RateLimited,
    RateLimitScope,
    ServerError,
    Succeeded,
)
from tierbatch.policies.task import TaskConfig

__all__ = [
    "INLINE_LIMIT_BYTES",
    "BatchError",
    "BatchItem",
    "BatchJobNotFoundError",
    "BatchNotSucceededError",
    "GeminiBatchClient",
    "JobState",
]

INLINE_LIMIT_BYTES = 19 * 1024 * 1024
"""Requests go inline up to this much JSON: under Gemini's 20 MB inline
limit, with room for the envelope the SDK wraps around each request."""

JSONL_MIME_TYPE = "jsonl"
"""What Google's Batch API guide uploads its request files as."""

_log = structlog.get_logger(__name__)


class JobState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"

    @property
    def terminal(self) -> bool:
        return self not in (JobState.PENDING, JobState.RUNNING)


_STATES: Mapping[str, JobState] = {
    "JOB_STATE_UNSPECIFIED": JobState.PENDING,
    "JOB_STATE_QUEUED": JobState.PENDING,
    "JOB_STATE_PENDING": JobState.PENDING,
    "JOB_STATE_RUNNING": JobState.RUNNING,
    "JOB_STATE_PAUSED": JobState.RUNNING,
    "JOB_STATE_UPDATING": JobState.RUNNING,
    "JOB_STATE_CANCELLING": JobState.RUNNING,
    "JOB_STATE_SUCCEEDED": JobState.SUCCEEDED,
    "JOB_STATE_PARTIALLY_SUCCEEDED": JobState.SUCCEEDED,
    "JOB_STATE_FAILED": JobState.FAILED,
    "JOB_STATE_CANCELLED": JobState.CANCELLED,
    "JOB_STATE_EXPIRED": JobState.EXPIRED,
}


@dataclass(frozen=True, slots=True)
class BatchItem:
    """One request of a job: the articles of one pack under the caller's key."""

    key: str
    articles: tuple[Article, ...]


class BatchError(ProviderError):
    """A Batch API call failed; ``outcome`` says how, in the runtime's terms."""

    def __init__(self, what: str, outcome: CallOutcome) -> None:
        detail = getattr(outcome, "message", "") or type(outcome).__name__
        super().__init__(f"{what}: {detail}")
        self.outcome = outcome


class BatchJobNotFoundError(BatchError):
    """The API does not know the job (deleted, mistyped, or another key's)."""


class BatchNotSucceededError(BatchError):
    """Results were asked of a job that has not succeeded (``state``)."""

    def __init__(self, job: str, state: JobState) -> None:
        super().__init__(
            f"batch job {job} has no results: it is {state.value}",
            BadRequest(f"batch job {job} is {state.value}"),
        )
        self.state = state


@dataclass(frozen=True, slots=True)
class _Submitted:
    """What this client remembers of a job it submitted."""

    expected: Mapping[str, tuple[str, ...]]
    input_file: str | None


class GeminiBatchClient:
    """Batch jobs on Gemini (see the module docstring).

    The key is the explicit ``api_key``, else the first set variable of
    ``config.api_key_env`` (``MissingApiKeyError`` names them). ``timeout_s``
    bounds each HTTP request (an upload's chunks each).
    """

    def __init__(
        self,
        config: ProviderConfig,
        *,
        api_key: str | None = None,
        timeout_s: float = 60.0,
        inline_limit_bytes: int = INLINE_LIMIT_BYTES,
        task: TaskConfig | None = None,
    ) -> None:
        if inline_limit_bytes < 0:
            raise ValueError(f"inline_limit_bytes must be >= 0, got {inline_limit_bytes}")
        self._config = config
        self.prompt = task_prompt(task)  # the extraction task, as interactive calls send it
        self._key = require_api_key(config.api_key_env, api_key)
        self._timeout_s = timeout_s
        self.inline_limit_bytes = inline_limit_bytes
        self.base_url = gemini_base_url(config)
        self._origin = base_origin(self.base_url)
        self._submitted: dict[str, _Submitted] = {}

    # ---- the interface -----------------------------------------------------------

    async def submit(
        self, model: str, items: Sequence[BatchItem], *, display_name: str = ""
    ) -> str:
        """Create a job of one request per item; returns the job's name
        (``batches/...``). Raises ``ValueError`` for items it cannot send
        (none, an empty or repeated key, a key without articles)."""
        _check_items(items)
        lines = [
            json.dumps({"key": i.key, "request": self._request(i.articles)}, ensure_ascii=False)
            for i in items
        ]
        size = sum(len(line.encode()) + 1 for line in lines)
        expected = {i.key: tuple(dict.fromkeys(a.id for a in i.articles)) for i in items}
        config = types.CreateBatchJobConfig(display_name=display_name or None)
        input_file: str | None = None
        async with self._sdk() as sdk:
            if size <= self.inline_limit_bytes:
                src: Any = [self._inlined(item) for item in items]
            else:
                data = ("\n".join(lines) + "\n").encode()
                input_file = await self._call(
                    "upload the batch requests", self._upload(sdk, data, display_name)
                )
                src = input_file
            job = await self._call(
                f"create a batch job on {model}",
                sdk.aio.batches.create(model=model, src=src, config=config),
            )
        name = str(job.name)
        self._submitted[name] = _Submitted(expected, input_file)
        _log.info(
            "batch job submitted",
            job=name,
            model=model,
            requests=len(items),
            bytes=size,
            source="file" if input_file else "inline",
        )
        return name

    async def poll(self, job: str) -> JobState:
        """The job's state now."""
        async with self._sdk() as sdk:
            batch = await self._get(sdk, job)
        return _state(batch)

    async def results(
        self,
        job: str,
        expected: Mapping[str, Sequence[str]] | None = None,
        *,
        tokens_out: dict[str, TokenCounts] | None = None,
    ) -> dict[str, PackAnswer]:
        """One ``PackAnswer`` per key of a job that SUCCEEDED. ``expected``
        maps each key to its article ids (default: what this client
        submitted under ``job``); a key's answer covers exactly those ids."""
        wanted = self._expected(job, expected)
        async with self._sdk() as sdk:
            batch = await self._get(sdk, job)
            state = _state(batch)
            if state is not JobState.SUCCEEDED:
                raise BatchNotSucceededError(job, state)
            dest = batch.dest
            if dest is not None and dest.inlined_responses is not None:
                entries = _inline_entries(dest.inlined_responses, list(wanted))
            elif dest is not None and dest.file_name:
                data = await self._call(
                    f"download the results of {job}", sdk.aio.files.download(file=dest.file_name)
                )
                entries = _file_entries(data, job)
            else:
                entries = []
        return self._answers(job, entries, wanted, tokens_out)

    async def results_with_tokens(
        self, job: str, expected: Mapping[str, Sequence[str]] | None = None
    ) -> dict[str, tuple[PackAnswer, TokenCounts]]:
        """``results`` with each request's whole ``usage_metadata`` (prompt,
        output, thinking and cached tokens), for the batch price."""
        tokens: dict[str, TokenCounts] = {}
        answers = await self.results(job, expected, tokens_out=tokens)
        return {key: (answer, tokens.get(key, TokenCounts())) for key, answer in answers.items()}

    async def find(self, display_name: str) -> str | None:
        """The name of this key's job with ``display_name`` (the newest when
        there are several), None when there is none: how a job whose
        creation was never recorded is found again."""
        found: list[tuple[str, str]] = []
        async with self._sdk() as sdk:
            pager = await self._call(
                "list the batch jobs",
                sdk.aio.batches.list(config=types.ListBatchJobsConfig(page_size=100)),
            )
            try:
                async for batch in pager:
                    if batch.display_name == display_name and batch.name:
                        found.append((str(batch.create_time or ""), str(batch.name)))
            except Exception as exc:
                outcome = outcome_for_exception(
                    exc, self._key, self.base_url, self._config, timeout_s=self._timeout_s
                )
                raise BatchError("could not list the batch jobs", outcome) from None
        return max(found)[1] if found else None

    async def cancel(self, job: str) -> None:
        """Ask the API to stop the job; a job already over is left as it is."""
        async with self._sdk() as sdk:
            await self._call(f"cancel {job}", sdk.aio.batches.cancel(name=job), job=job)

    async def delete(self, job: str) -> None:
        """Forget the job at the API, with the request and responses files
        this client made for it (best effort for the files)."""
        submitted = self._submitted.pop(job, None)
        async with self._sdk() as sdk:
            batch = None
            with suppress(BatchJobNotFoundError):
                batch = await self._get(sdk, job)
            await self._call(f"delete {job}", sdk.aio.batches.delete(name=job), job=job)
            files = [submitted.input_file if submitted else None]
            files.append(batch.dest.file_name if batch is not None and batch.dest else None)
            for name in filter(None, files):
                try:
                    await sdk.aio.files.delete(name=name)
                except genai_errors.APIError as exc:
                    _log.info("batch file not deleted", job=job, file=name, status=exc.code)

    async def aclose(self) -> None:
        """Nothing to release: every call closes its own client."""

    # ---- helpers -------------------------------------------------------------------

    @asynccontextmanager
    async def _sdk(self) -> AsyncIterator[Any]:
        http = new_async_client(HTTPX, self._origin, 4)
        sdk = new_sdk_client(self._config, self._key, http, self._timeout_s)
        try:
            yield sdk
        finally:
            await sdk.aio.aclose()
            sdk.close()
            await http.aclose()

    async def _call(self, what: str, call: Any, *, job: str | None = None) -> Any:
        try:
            return await call
        except Exception as exc:
            outcome = outcome_for_exception(
                exc, self._key, self.base_url, self._config, timeout_s=self._timeout_s
            )
            if job is not None and isinstance(exc, genai_errors.APIError) and exc.code == 404:
                raise BatchJobNotFoundError(f"no batch job {job}", outcome) from None
            raise BatchError(f"could not {what}", outcome) from None

    async def _get(self, sdk: Any, job: str) -> types.BatchJob:
        batch: types.BatchJob = await self._call(
            f"read {job}", sdk.aio.batches.get(name=job), job=job
        )
        return batch

    async def _upload(self, sdk: Any, data: bytes, display_name: str) -> str:
        config = types.UploadFileConfig(
            mime_type=JSONL_MIME_TYPE, display_name=display_name or "tierbatch batch requests"
        )
        file = await sdk.aio.files.upload(file=io.BytesIO(data), config=config)
        return str(file.name)

    def _request(self, articles: Sequence[Article]) -> dict[str, Any]:
        """One GenerateContentRequest as REST JSON: the interactive prompt."""
        generation: dict[str, Any] = {
            "responseMimeType": "application/json",
            "responseSchema": self.prompt.response_schema,
            "maxOutputTokens": self._config.max_output_tokens,
            "temperature": self._config.temperature,
        }
        return {
            "contents": [{"role": "user", "parts": [{"text": build_user_text(articles)}]}],
            "systemInstruction": {"parts": [{"text": self.prompt.system_instruction}]},
            "generationConfig": generation,
        }

    def _inlined(self, item: BatchItem) -> types.InlinedRequest:
        return types.InlinedRequest(
            contents=build_user_text(item.articles),
            metadata={"key": item.key},
            config=types.GenerateContentConfig(
                system_instruction=self.prompt.system_instruction,
                response_mime_type="application/json",
                # a copy: the SDK's batch converter adds propertyOrdering to
                # the dict it is given, in place
                response_schema=copy.deepcopy(self.prompt.response_schema),
                max_output_tokens=self._config.max_output_tokens,
                temperature=self._config.temperature,
            ),
        )

    def _expected(
        self, job: str, expected: Mapping[str, Sequence[str]] | None
    ) -> dict[str, tuple[str, ...]]:
        if expected is not None:
            return {key: tuple(ids) for key, ids in expected.items()}
        submitted = self._submitted.get(job)
        if submitted is None:
            raise ValueError(
                f"results({job!r}): this client did not submit the job; pass expected= "
                "(each key's article ids)"
            )
        return dict(submitted.expected)

    def _answers(
        self,
        job: str,
        entries: Sequence[tuple[str | None, types.GenerateContentResponse | CallOutcome]],
        wanted: Mapping[str, tuple[str, ...]],
        tokens_out: dict[str, TokenCounts] | None = None,
    ) -> dict[str, PackAnswer]:
        log = _log.bind(job=job)
        answers: dict[str, PackAnswer] = {}
        stray = 0
        for key, entry in entries:
            if key is None or key not in wanted or key in answers:
                stray += 1
                continue
            if isinstance(entry, types.GenerateContentResponse):
                answers[key] = read_response(entry, wanted[key], 0, self.prompt.task).pack_answer
                if tokens_out is not None:
                    tokens_out[key] = token_counts(entry.usage_metadata)
            else:
                answers[key] = PackAnswer(entry)
        absent = [key for key in wanted if key not in answers]
        for key in absent:
            answers[key] = PackAnswer(ServerError(None, f"no result for key {key} in {job}"))
        log.info(
            "batch results read",
            keys=len(wanted),
            failed=sum(not _succeeded(a) for a in answers.values()),
            absent=len(absent),
            stray=stray,
        )
        return answers


def token_counts(metadata: types.GenerateContentResponseUsageMetadata | None) -> TokenCounts:
    """Prompt, output, thinking and cached tokens of an answer's ``usage_metadata``."""
    if metadata is None:
        return TokenCounts()
    return TokenCounts(
        prompt=metadata.prompt_token_count or 0,
        output=metadata.candidates_token_count or 0,
        thoughts=metadata.thoughts_token_count or 0,
        cached=metadata.cached_content_token_count or 0,
    )


def _check_items(items: Sequence[BatchItem]) -> None:
    if not items:
        raise ValueError("a batch job needs at least one item")
    seen: set[str] = set()
    for index, item in enumerate(items):
        if not isinstance(item.key, str) or not item.key:
            raise ValueError(f"items[{index}].key: expected a non-empty string")
        if item.key in seen:
            raise ValueError(f"items[{index}].key: {item.key!r} is used twice")
        if not item.articles:
            raise ValueError(f"items[{index}] ({item.key!r}).articles: expected at least one")
        seen.add(item.key)


def _state(batch: types.BatchJob) -> JobState:
    state = batch.state
    name = state.value if isinstance(state, types.JobState) else str(state or "")
    return _STATES.get(name, JobState.PENDING)


def _succeeded(answer: PackAnswer) -> bool:
    return isinstance(answer.outcome, Succeeded)


def _inline_entries(
    responses: Sequence[types.InlinedResponse], keys_in_order: Sequence[str]
) -> list[tuple[str | None, types.GenerateContentResponse | CallOutcome]]:
    """(key, response or outcome) per inline response. A response without
    a key in its metadata takes the key of its position (Gemini answers in
    request order)."""
    entries: list[tuple[str | None, types.GenerateContentResponse | CallOutcome]] = []
    for index, response in enumerate(responses):
        key = (response.metadata or {}).get("key")
        if key is None and index < len(keys_in_order):
            key = keys_in_order[index]
        if response.error is not None:
            error = response.error
            entries.append((key, rpc_outcome(error.code, error.message or "")))
        elif response.response is not None:
            entries.append((key, response.response))
        else:
            entries.append((key, ServerError(None, "an empty entry in the batch results")))
    return entries


def _file_entries(
    data: bytes, job: str
) -> list[tuple[str | None, types.GenerateContentResponse | CallOutcome]]:
    """(key, response or outcome) per line of a responses file; a line that
    cannot be read is logged and skipped (its key then has no result)."""
    entries: list[tuple[str | None, types.GenerateContentResponse | CallOutcome]] = []
    for number, raw in enumerate(data.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)
            if not isinstance(line, dict):
                raise ValueError("not an object")
            key = line.get("key")
            key = key if isinstance(key, str) else None
            if isinstance(line.get("error"), dict):
                error = line["error"]
                code = error.get("code")
                message = error.get("message")
                outcome = rpc_outcome(
                    code if isinstance(code, int) else None,
                    message if isinstance(message, str) else "",
                )
                entries.append((key, outcome))
            else:
                response = types.GenerateContentResponse.model_validate(line.get("response"))
                entries.append((key, response))
        except (ValueError, ValidationError) as exc:
            _log.warning(
                "unreadable line in batch results",
                job=job,
                line=number,
                error=type(exc).__name__,
            )
    return entries


# google.rpc.Code -> what it means for the request, as an outcome.
_RPC_BAD_REQUEST = frozenset({3, 5, 6, 9, 11, 12})  # invalid, not found, exists, precondition, ...
_RPC_HTTP = {1: 499, 2: 500, 4: 504, 10: 409, 13: 500, 14: 503, 15: 500}


def rpc_outcome(code: int | None, message: str) -> CallOutcome:
    """The outcome of a request that failed inside a batch job, from its
    ``google.rpc.Status`` (an HTTP status is read as one too)."""
    text = message or f"failed inside the batch job (code {code})"
    if code is None:
        return ServerError(None, text)
    if code >= 100:
        return outcome_for_status(code, {}, text)
    if code in _RPC_BAD_REQUEST:
        return BadRequest(text)
    if code == 7:
        return AuthFailed(403, text)
    if code == 16:
        return AuthFailed(401, text)
    if code == 8:
        return RateLimited(RateLimitScope.UNKNOWN, None, text)
    return ServerError(_RPC_HTTP.get(code), text)

"""The fake server's Batch API and the part of the Files API it needs, so a
batch client can be tested offline against Gemini's REST shapes.

Batch jobs (what google-genai's ``client.batches`` sends and reads):

* ``POST /v1beta/models/{model}:batchGenerateContent`` with
  ``{"batch": {"displayName", "inputConfig": {"requests": {"requests":
  [{"request": GenerateContentRequest, "metadata": {"key": ...}}]}}}}``
  (inline, at most ``inline_limit_bytes`` of request body: Gemini's 20 MB)
  or ``"inputConfig": {"fileName": "files/..."}`` naming an uploaded JSONL
  file of ``{"key": ..., "request": ...}`` lines. The answer is the job as
  a long-running operation: ``{"name": "batches/ID", "metadata": {"@type",
  "model", "displayName", "state", "createTime", "updateTime",
  "batchStats", ...}}``.
* ``GET /v1beta/batches/ID``: the job; once terminal ``done`` is true and,
  when it succeeded, ``metadata.output`` holds ``inlinedResponses``
  (``{"response"|"error", "metadata"}`` per request, in request order) for
  an inline job, or ``responsesFile`` (a generated file of ``{"key",
  "response"|"error"}`` lines) for a file job.
* ``GET /v1beta/batches`` (``pageSize``/``pageToken``), ``POST
  .../batches/ID:cancel`` (a job not yet terminal becomes CANCELLED; a
  terminal one stays as it is), ``DELETE .../batches/ID``.

States follow the server's clock: ``BATCH_STATE_PENDING`` for
``pending_s`` after creation, ``RUNNING`` until ``turnaround_s``, then the
job's fate, drawn at creation from ``BatchFaultRates`` with a random
generator seeded by (seed, job number): ``SUCCEEDED`` (each request failing
on its own at ``request_failure``: an error object for its key, the rest
answered), ``FAILED`` or ``EXPIRED`` (no output). Under a test clock that
the test moves, a job's whole life passes without waiting.

Files: the resumable upload protocol google-genai speaks -- ``POST
/upload/v1beta/files`` with ``X-Goog-Upload-Protocol: resumable`` and
``X-Goog-Upload-Command: start`` answers an ``X-Goog-Upload-URL``; chunks
go there with ``X-Goog-Upload-Command: upload`` (``upload, finalize`` for
the last) and ``X-Goog-Upload-Offset``; every answer carries
``X-Goog-Upload-Status`` (``active``, or ``final`` when done or refused).
``GET``/``DELETE /v1beta/files/ID`` and ``GET
[/download]/v1beta/files/ID:download?alt=media`` (the bytes).

Jobs and files belong to the API key that made them (its fingerprint is
kept, never the key): another key's request gets 404 (a job) or 403 (a
file), as Gemini answers for another project's resources. The upload URL's
``upload_id`` stands for the key that started the upload, as with Gemini.
Batch jobs spend no interactive quota (Gemini counts them separately).

Everything here runs on the server's loop thread: no locks.

Longer than the house's ~450 lines on purpose: batch jobs and the part of
the Files API they need, in Gemini's REST shapes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from tierbatch.adapters.simulation.error_bodies import error_body, not_found_model_body
from tierbatch.adapters.simulation.http_transport import HttpResponse
from tierbatch.adapters.simulation.model_catalog import (
    BadPageTokenError,
    ModelCatalog,
    decode_page_token,
    encode_page_token,
)

__all__ = [
    "DEFAULT_INLINE_LIMIT_BYTES",
    "BatchEmulator",
    "BatchFaultRates",
    "BatchSettings",
    "BatchState",
]

DEFAULT_INLINE_LIMIT_BYTES = 20 * 1024 * 1024
MAX_FILE_BYTES = 256 * 1024 * 1024
"""What one uploaded file may hold here (Gemini: 2 GB; this server keeps files in memory)."""
FILE_LIFETIME_S = 48 * 3600.0

_BATCH_TYPE = "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatch"
_OUTPUT_TYPE = "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatchOutput"
_ID_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789"

# google.rpc.Code numbers, as a batch's per-request errors carry them.
RPC_CANCELLED = 1
RPC_INVALID_ARGUMENT = 3
RPC_DEADLINE_EXCEEDED = 4
RPC_INTERNAL = 13

Answerer = Callable[[str, Mapping[str, Any]], dict[str, Any]]
"""(model, GenerateContentRequest JSON) -> ``{"response": ...}`` or ``{"error": Status}``."""


class BatchState(StrEnum):
    PENDING = "BATCH_STATE_PENDING"
    RUNNING = "BATCH_STATE_RUNNING"
    SUCCEEDED = "BATCH_STATE_SUCCEEDED"
    FAILED = "BATCH_STATE_FAILED"
    CANCELLED = "BATCH_STATE_CANCELLED"
    EXPIRED = "BATCH_STATE_EXPIRED"

    @property
    def terminal(self) -> bool:
        return self not in (BatchState.PENDING, BatchState.RUNNING)


@dataclass(frozen=True, slots=True)
class BatchFaultRates:
    """``request_failure``: the share of a succeeded job's requests that fail
    on their own (an error object for that key). ``job_failure`` and
    ``expiry``: the share of jobs that end FAILED or EXPIRED instead of
    SUCCEEDED (exclusive: their sum must be <= 1)."""

    request_failure: float = 0.0
    job_failure: float = 0.0
    expiry: float = 0.0

    def __post_init__(self) -> None:
        for name in ("request_failure", "job_failure", "expiry"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"batch fault rate {name} must be in [0, 1], got {value}")
        if self.job_failure + self.expiry > 1.0:
            raise ValueError(
                f"batch fault rates job_failure + expiry must be <= 1, got "
                f"{self.job_failure} + {self.expiry}"
            )


@dataclass(frozen=True, slots=True)
class BatchSettings:
    """``pending_s`` and ``turnaround_s`` are seconds of the server's clock
    from a job's creation to RUNNING and to its end."""

    pending_s: float = 1.0
    turnaround_s: float = 10.0
    faults: BatchFaultRates = field(default_factory=BatchFaultRates)
    inline_limit_bytes: int = DEFAULT_INLINE_LIMIT_BYTES

    def __post_init__(self) -> None:
        if not 0 <= self.pending_s <= self.turnaround_s:
            raise ValueError(
                f"batch pending_s ({self.pending_s}) must be in [0, turnaround_s "
                f"({self.turnaround_s})]"
            )
        if self.inline_limit_bytes < 1:
            limit = self.inline_limit_bytes
            raise ValueError(f"batch inline_limit_bytes must be >= 1, got {limit}")


@dataclass(slots=True)
class _File:
    name: str
    owner: str
    display_name: str
    mime_type: str
    data: bytes
    created: float
    source: str

    def document(self, base_url: str) -> dict[str, Any]:
        document: dict[str, Any] = {
            "name": self.name,
            "mimeType": self.mime_type,
            "sizeBytes": str(len(self.data)),
            "createTime": timestamp(self.created),
            "updateTime": timestamp(self.created),
            "expirationTime": timestamp(self.created + FILE_LIFETIME_S),
            "sha256Hash": base64.b64encode(hashlib.sha256(self.data).hexdigest().encode()).decode(),
            "uri": f"{base_url}/v1beta/{self.name}",
            "state": "ACTIVE",
            "source": self.source,
        }
        if self.display_name:
            document["displayName"] = self.display_name
        if self.source == "GENERATED":
            document["downloadUri"] = f"{base_url}/download/v1beta/{self.name}:download?alt=media"
        return document


@dataclass(slots=True)
class _Upload:
    owner: str
    size: int
    mime_type: str
    display_name: str
    name: str
    received: bytearray = field(default_factory=bytearray)


@dataclass(slots=True)
class _Job:
    name: str
    owner: str
    model: str
    display_name: str
    created: float
    inline: bool
    keys: list[str | None]
    outcomes: list[dict[str, Any]]
    fate: BatchState
    cancelled_at: float | None = None
    responses_file: str | None = None

    @property
    def failed_requests(self) -> int:
        return sum("error" in outcome for outcome in self.outcomes)


class BatchEmulator:
    """Batch jobs and files for the fake server (see the module docstring).

    ``now`` is the server's clock; ``answer`` produces one request's
    outcome, as generateContent would answer it.
    """

    def __init__(
        self,
        settings: BatchSettings,
        catalog: ModelCatalog,
        answer: Answerer,
        now: Callable[[], float],
        seed: int,
    ) -> None:
        self.settings = settings
        self._catalog = catalog
        self._answer = answer
        self._now = now
        self._seed = seed
        self._ids = random.Random(f"{seed}:ids")
        self._jobs: dict[str, _Job] = {}
        self._files: dict[str, _File] = {}
        self._uploads: dict[str, _Upload] = {}
        self._created = 0

    # ---- batches ---------------------------------------------------------------

    def create(
        self, owner: str, model: str, version: str, body: Mapping[str, Any], size: int
    ) -> HttpResponse:
        if not self._catalog.supports_batch(model):
            return _json(404, not_found_model_body(model, version, "batchGenerateContent"))
        batch = body.get("batch")
        if not isinstance(batch, dict):
            return _invalid("* BatchGenerateContentRequest.batch: batch is not specified")
        input_config = batch.get("inputConfig", batch.get("input_config"))
        if not isinstance(input_config, dict):
            return _invalid("* GenerateContentBatch.input_config: input_config is not specified")
        display_name = batch.get("displayName", batch.get("display_name"))
        display_name = display_name if isinstance(display_name, str) else ""
        file_name = input_config.get("fileName", input_config.get("file_name"))
        try:
            if isinstance(file_name, str):
                inline = False
                entries = self._file_entries(owner, file_name)
            else:
                inline = True
                limit = self.settings.inline_limit_bytes
                if size > limit:
                    return _invalid(f"Request payload size exceeds the limit: {limit} bytes.")
                entries = _inline_entries(input_config)
        except _RefusedError as refused:
            return refused.response
        self._created += 1
        rng = random.Random(f"{self._seed}:batch:{self._created}")
        faults = self.settings.faults
        draw = rng.random()
        if draw < faults.job_failure:
            fate = BatchState.FAILED
        elif draw < faults.job_failure + faults.expiry:
            fate = BatchState.EXPIRED
        else:
            fate = BatchState.SUCCEEDED
        outcomes = []
        for _, request in entries:
            failed = rng.random() < faults.request_failure
            if failed:
                outcomes.append({"error": {"code": RPC_INTERNAL, "message": "Internal error."}})
            else:
                outcomes.append(self._answer(model, request))
        job = _Job(
            name=f"batches/{self._new_id()}",
            owner=owner,
            model=model,
            display_name=display_name,
            created=self._now(),
            inline=inline,
            keys=[key for key, _ in entries],
            outcomes=outcomes,
            fate=fate,
        )
        self._jobs[job.name] = job
        return _json(200, self._operation(job))

    def get(self, owner: str, job_id: str) -> HttpResponse:
        job = self._job(owner, job_id)
        if job is None:
            return _not_found()
        self._settle(job)
        return _json(200, self._operation(job))

    def list_jobs(self, owner: str, page_size: int | None, page_token: str | None) -> HttpResponse:
        jobs = [job for job in self._jobs.values() if job.owner == owner]
        size = 50 if not page_size or page_size < 1 else min(page_size, 1000)
        try:
            start = decode_page_token(page_token) if page_token else 0
        except BadPageTokenError:
            return _invalid("Invalid page token.")
        page = jobs[start : start + size]
        for job in page:
            self._settle(job)
        document: dict[str, Any] = {"operations": [self._operation(job) for job in page]}
        if start + size < len(jobs):
            document["nextPageToken"] = encode_page_token(start + size)
        return _json(200, document)

    def cancel(self, owner: str, job_id: str) -> HttpResponse:
        job = self._job(owner, job_id)
        if job is None:
            return _not_found()
        if not self._state(job).terminal:
            job.cancelled_at = self._now()
        return _json(200, {})

    def delete(self, owner: str, job_id: str) -> HttpResponse:
        job = self._job(owner, job_id)
        if job is None:
            return _not_found()
        del self._jobs[job.name]
        return _json(200, {})

    def state_of(self, job_name: str) -> BatchState | None:
        """A job's state now, for tests; None when there is no such job."""
        job = self._jobs.get(job_name)
        return None if job is None else self._state(job)

    # ---- files -----------------------------------------------------------------

    def start_upload(
        self, owner: str, headers: Mapping[str, str], body: Mapping[str, Any], base_url: str
    ) -> HttpResponse:
        if headers.get("x-goog-upload-protocol", "").lower() != "resumable":
            return _upload_refused(400, "Only the resumable upload protocol is supported.")
        if headers.get("x-goog-upload-command", "").lower() != "start":
            return _upload_refused(400, "The first request of an upload must be 'start'.")
        try:
            size = int(headers.get("x-goog-upload-header-content-length", ""))
        except ValueError:
            return _upload_refused(400, "X-Goog-Upload-Header-Content-Length is missing.")
        if not 0 < size <= MAX_FILE_BYTES:
            return _upload_refused(400, f"The file size {size} is outside 1..{MAX_FILE_BYTES}.")
        file = body.get("file") if isinstance(body.get("file"), dict) else {}
        assert isinstance(file, dict)
        mime = headers.get("x-goog-upload-header-content-type") or file.get("mimeType") or ""
        name = file.get("name") if isinstance(file.get("name"), str) else ""
        assert isinstance(name, str)
        if name and not name.startswith("files/"):
            name = f"files/{name}"
        if name in self._files:
            return _upload_refused(409, f"File {name} already exists.", status="ALREADY_EXISTS")
        display = file.get("displayName")
        upload_id = self._new_id(32)
        self._uploads[upload_id] = _Upload(
            owner=owner,
            size=size,
            mime_type=str(mime),
            display_name=display if isinstance(display, str) else "",
            name=name or f"files/{self._new_id()}",
        )
        url = f"{base_url}/upload/v1beta/files?upload_id={upload_id}&upload_protocol=resumable"
        return HttpResponse(
            200,
            b"",
            headers=(
                ("X-Goog-Upload-Status", "active"),
                ("X-Goog-Upload-URL", url),
                ("X-Goog-Upload-Control-URL", url),
                ("X-Goog-Upload-Chunk-Granularity", "8388608"),
            ),
        )

    def upload_chunk(
        self, upload_id: str, headers: Mapping[str, str], chunk: bytes, base_url: str
    ) -> tuple[HttpResponse, str]:
        """The answer, and the owner of the upload ("" when unknown)."""
        upload = self._uploads.get(upload_id)
        if upload is None:
            return _upload_refused(404, "No such upload session.", status="NOT_FOUND"), ""
        commands = {c.strip() for c in headers.get("x-goog-upload-command", "").lower().split(",")}
        try:
            offset = int(headers.get("x-goog-upload-offset", ""))
        except ValueError:
            offset = -1
        if offset != len(upload.received):
            del self._uploads[upload_id]
            received = len(upload.received)
            message = f"Upload offset {offset} does not match the {received} bytes received."
            return _upload_refused(400, message), upload.owner
        if "upload" in commands:
            upload.received.extend(chunk)
        if len(upload.received) > upload.size:
            del self._uploads[upload_id]
            message = f"Received more than the declared {upload.size} bytes."
            return _upload_refused(400, message), upload.owner
        if "finalize" not in commands:
            active = HttpResponse(200, b"", headers=(("X-Goog-Upload-Status", "active"),))
            return active, upload.owner
        del self._uploads[upload_id]
        if len(upload.received) != upload.size:
            message = f"Received {len(upload.received)} bytes; {upload.size} were declared."
            return _upload_refused(400, message), upload.owner
        file = _File(
            name=upload.name,
            owner=upload.owner,
            display_name=upload.display_name,
            mime_type=upload.mime_type,
            data=bytes(upload.received),
            created=self._now(),
            source="UPLOADED",
        )
        self._files[file.name] = file
        response = HttpResponse.of_json(
            200, {"file": file.document(base_url)}, headers=(("X-Goog-Upload-Status", "final"),)
        )
        return response, upload.owner

    def get_file(self, owner: str, file_id: str, base_url: str) -> HttpResponse:
        file = self._file(owner, file_id)
        if file is None:
            return _file_refused(file_id)
        return _json(200, file.document(base_url))

    def download(self, owner: str, file_id: str) -> HttpResponse:
        file = self._file(owner, file_id)
        if file is None:
            return _file_refused(file_id)
        return HttpResponse(200, file.data, file.mime_type or "application/octet-stream")

    def delete_file(self, owner: str, file_id: str) -> HttpResponse:
        file = self._file(owner, file_id)
        if file is None:
            return _file_refused(file_id)
        del self._files[file.name]
        return _json(200, {})

    # ---- helpers -----------------------------------------------------------------

    def _new_id(self, length: int = 16) -> str:
        return "".join(self._ids.choice(_ID_CHARS) for _ in range(length))

    def _job(self, owner: str, job_id: str) -> _Job | None:
        job = self._jobs.get(f"batches/{job_id}")
        return job if job is not None and job.owner == owner else None

    def _file(self, owner: str, file_id: str) -> _File | None:
        file = self._files.get(f"files/{file_id}")
        return file if file is not None and file.owner == owner else None

    def _file_entries(self, owner: str, file_name: str) -> list[tuple[str | None, dict[str, Any]]]:
        file_id = file_name.removeprefix("files/")
        file = self._file(owner, file_id)
        if file is None:
            raise _RefusedError(_file_refused(file_id))
        entries: list[tuple[str | None, dict[str, Any]]] = []
        for number, raw in enumerate(file.data.splitlines(), start=1):
            if not raw.strip():
                continue
            try:
                line = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise _RefusedError(
                    _invalid(f"{file_name} line {number}: not JSON: {exc}")
                ) from None
            request = line.get("request") if isinstance(line, dict) else None
            if not isinstance(request, dict):
                raise _RefusedError(_invalid(f"{file_name} line {number}: no request object"))
            key = line.get("key")
            entries.append((key if isinstance(key, str) else None, request))
        if not entries:
            raise _RefusedError(_invalid(f"{file_name} holds no requests"))
        return entries

    def _state(self, job: _Job) -> BatchState:
        if job.cancelled_at is not None:
            return BatchState.CANCELLED
        age = self._now() - job.created
        if age < self.settings.pending_s:
            return BatchState.PENDING
        if age < self.settings.turnaround_s:
            return BatchState.RUNNING
        return job.fate

    def _ended_at(self, job: _Job) -> float:
        if job.cancelled_at is not None:
            return job.cancelled_at
        return job.created + self.settings.turnaround_s

    def _settle(self, job: _Job) -> None:
        """A file job that just succeeded gets its responses file."""
        if job.inline or job.responses_file is not None:
            return
        if self._state(job) is not BatchState.SUCCEEDED:
            return
        lines = []
        for key, outcome in zip(job.keys, job.outcomes, strict=True):
            line = {"key": key, **outcome} if key is not None else dict(outcome)
            lines.append(json.dumps(line, ensure_ascii=False))
        name = f"files/batch-{job.name.removeprefix('batches/')}"
        self._files[name] = _File(
            name=name,
            owner=job.owner,
            display_name=f"responses of {job.name}",
            mime_type="application/jsonl",
            data=("\n".join(lines) + "\n").encode(),
            created=self._ended_at(job),
            source="GENERATED",
        )
        job.responses_file = name

    def _operation(self, job: _Job) -> dict[str, Any]:
        state = self._state(job)
        count = len(job.outcomes)
        stats = {"requestCount": str(count)}
        if state is BatchState.SUCCEEDED:
            failed = job.failed_requests
            stats["successfulRequestCount"] = str(count - failed)
            if failed:
                stats["failedRequestCount"] = str(failed)
        elif not state.terminal:
            stats["pendingRequestCount"] = str(count)
        updated = self._ended_at(job) if state.terminal else self._now()
        metadata: dict[str, Any] = {
            "@type": _BATCH_TYPE,
            "model": f"models/{job.model}",
            "displayName": job.display_name,
            "createTime": timestamp(job.created),
            "updateTime": timestamp(updated),
            "batchStats": stats,
            "state": state.value,
            "name": job.name,
        }
        document: dict[str, Any] = {"name": job.name, "metadata": metadata}
        if not state.terminal:
            return document
        metadata["endTime"] = timestamp(self._ended_at(job))
        document["done"] = True
        if state is BatchState.SUCCEEDED:
            output = self._output(job)
            metadata["output"] = output
            document["response"] = {"@type": _OUTPUT_TYPE, **output}
        elif state is BatchState.FAILED:
            document["error"] = {"code": RPC_INTERNAL, "message": "The batch failed."}
        elif state is BatchState.EXPIRED:
            message = "The batch expired before it could be completed."
            document["error"] = {"code": RPC_DEADLINE_EXCEEDED, "message": message}
        else:
            document["error"] = {"code": RPC_CANCELLED, "message": "The batch was cancelled."}
        return document

    def _output(self, job: _Job) -> dict[str, Any]:
        if not job.inline:
            return {"responsesFile": job.responses_file}
        responses = []
        for key, outcome in zip(job.keys, job.outcomes, strict=True):
            entry = dict(outcome)
            if key is not None:
                entry["metadata"] = {"key": key}
            responses.append(entry)
        return {"inlinedResponses": {"inlinedResponses": responses}}


class _RefusedError(Exception):
    def __init__(self, response: HttpResponse) -> None:
        super().__init__(response.status)
        self.response = response


def _inline_entries(input_config: Mapping[str, Any]) -> list[tuple[str | None, dict[str, Any]]]:
    outer = input_config.get("requests")
    items = outer.get("requests") if isinstance(outer, dict) else None
    if not isinstance(items, list) or not items:
        raise _RefusedError(_invalid("* InlinedRequests.requests: requests is not specified"))
    entries: list[tuple[str | None, dict[str, Any]]] = []
    for index, item in enumerate(items):
        request = item.get("request") if isinstance(item, dict) else None
        if not isinstance(request, dict):
            raise _RefusedError(_invalid(f"* requests[{index}].request: request is not specified"))
        metadata = item.get("metadata")
        key = metadata.get("key") if isinstance(metadata, dict) else None
        entries.append((key if isinstance(key, str) else None, request))
    return entries


def timestamp(epoch_s: float) -> str:
    """A protobuf Timestamp as Gemini writes it (RFC 3339, UTC, microseconds)."""
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _json(status: int, document: Mapping[str, Any]) -> HttpResponse:
    return HttpResponse.of_json(status, document)


def _invalid(message: str) -> HttpResponse:
    return _json(400, error_body(400, "INVALID_ARGUMENT", message))


def _not_found() -> HttpResponse:
    return _json(404, error_body(404, "NOT_FOUND", "Requested entity was not found."))


def _file_refused(file_id: str) -> HttpResponse:
    message = f"You do not have permission to access the File {file_id} or it may not exist."
    return _json(403, error_body(403, "PERMISSION_DENIED", message))


def _upload_refused(code: int, message: str, *, status: str = "INVALID_ARGUMENT") -> HttpResponse:
    """Every upload answer carries ``X-Goog-Upload-Status``: without one
    google-genai retries the chunk, with sleeps, before it reads the error."""
    return HttpResponse.of_json(
        code, error_body(code, status, message), headers=(("X-Goog-Upload-Status", "final"),)
    )

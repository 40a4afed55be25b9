"""The fake server's Batch API and Files API over plain HTTP: Gemini's body
shapes, job states on the server's clock (a test clock, moved by hand),
faults, the resumable upload protocol, and the per-key checks."""

from __future__ import annotations

import http.client
import json
import re
import signal
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from cli_helpers import child_env, tierbatch_command, write_config
from test_fake_gemini import ARTICLES, KEY, Reply, generate_body

from tierbatch.adapters.simulation.batch_emulator import (
    BatchFaultRates,
    BatchSettings,
    BatchState,
)
from tierbatch.adapters.simulation.fake_gemini import FakeGeminiServer
from tierbatch.adapters.simulation.gemini_emulator import FakeGeminiConfig
from tierbatch.policies.config import ModelSpec

MODEL = "gemini-2.5-flash"
CREATE = f"/v1beta/models/{MODEL}:batchGenerateContent"


class ManualClock:
    """A clock that moves only when told to (the server reads it from its
    own thread: one float, replaced whole)."""

    def __init__(self, start: float = 1_750_000_000.0) -> None:
        self.t = start

    def now(self) -> float:
        return self.t

    def wall(self) -> float:
        return self.t

    def to_real(self, seconds: float) -> float:
        return seconds

    def advance(self, seconds: float) -> None:
        self.t += seconds


def request(
    base_url: str,
    method: str,
    path: str,
    body: Mapping[str, Any] | bytes | None = None,
    *,
    key: str | None = KEY,
    headers: Mapping[str, str] | None = None,
) -> Reply:
    url = urlsplit(base_url)
    conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=10)
    sent = dict(headers or {})
    if key is not None:
        sent["x-goog-api-key"] = key
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    try:
        conn.request(method, path, body=data, headers=sent)
        response = conn.getresponse()
        return Reply(response.status, dict(response.getheaders()), response.read())
    finally:
        conn.close()


def inline_body(
    keys: tuple[str, ...] = ("k1", "k2", "k3"), name: str = "nightly"
) -> dict[str, Any]:
    items = [
        {"request": generate_body((ARTICLES[i % len(ARTICLES)],)), "metadata": {"key": key}}
        for i, key in enumerate(keys)
    ]
    return {"batch": {"displayName": name, "inputConfig": {"requests": {"requests": items}}}}


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


def serve(clock: ManualClock, **config: Any) -> FakeGeminiServer:
    config.setdefault("batch", BatchSettings(pending_s=60.0, turnaround_s=600.0))
    server = FakeGeminiServer(FakeGeminiConfig(**config), clock=clock)
    server.start()
    return server


@pytest.fixture
def server(clock: ManualClock) -> Iterator[FakeGeminiServer]:
    s = serve(clock)
    yield s
    s.stop()


def create(base_url: str, body: Mapping[str, Any] | None = None, **kw: Any) -> Reply:
    return request(base_url, "POST", CREATE, inline_body() if body is None else body, **kw)


def job_id(reply: Reply) -> str:
    name = reply.json()["name"]
    assert name.startswith("batches/")
    return str(name.removeprefix("batches/"))


def upload(base_url: str, data: bytes, *, chunk: int | None = None, key: str = KEY) -> Reply:
    """The resumable protocol as google-genai speaks it: start, then chunks."""
    start = request(
        base_url,
        "POST",
        "/upload/v1beta/files",
        {"file": {"mimeType": "jsonl", "displayName": "requests"}},
        key=key,
        headers={
            "X-Goog-Upload-Protocol": "resumable",
            "X-Goog-Upload-Command": "start",
            "X-Goog-Upload-Header-Content-Length": str(len(data)),
            "X-Goog-Upload-Header-Content-Type": "jsonl",
        },
    )
    assert start.status == 200, start.body
    assert start.headers["X-Goog-Upload-Status"] == "active"
    target = urlsplit(start.headers["X-Goog-Upload-URL"])
    path = f"{target.path}?{target.query}"
    size = chunk or len(data)
    offset = 0
    while True:
        piece = data[offset : offset + size]
        last = offset + len(piece) >= len(data)
        command = "upload, finalize" if last else "upload"
        reply = request(
            base_url,
            "POST",
            path,
            piece,
            key=None,  # the upload URL stands for the key, as with Gemini
            headers={"X-Goog-Upload-Command": command, "X-Goog-Upload-Offset": str(offset)},
        )
        offset += len(piece)
        if last or reply.status != 200:
            return reply
        assert reply.headers["X-Goog-Upload-Status"] == "active"


def jsonl(keys: tuple[str, ...]) -> bytes:
    lines = [
        json.dumps({"key": key, "request": generate_body((ARTICLES[i % len(ARTICLES)],))})
        for i, key in enumerate(keys)
    ]
    return ("\n".join(lines) + "\n").encode()


# --------------------------------------------------------------------------
# Inline jobs


def test_an_inline_job_goes_pending_running_succeeded(
    server: FakeGeminiServer, clock: ManualClock
) -> None:
    base = server.base_url
    created = create(base)
    assert created.status == 200, created.body
    document = created.json()
    name = document["name"]
    metadata = document["metadata"]
    assert metadata["@type"].endswith("GenerateContentBatch")
    assert metadata["state"] == "BATCH_STATE_PENDING"
    assert metadata["model"] == f"models/{MODEL}"
    assert metadata["displayName"] == "nightly"
    assert metadata["createTime"].endswith("Z")
    assert metadata["batchStats"] == {"requestCount": "3", "pendingRequestCount": "3"}
    assert "done" not in document and "output" not in metadata

    path = f"/v1beta/{name}"
    clock.advance(59.0)
    assert request(base, "GET", path).json()["metadata"]["state"] == "BATCH_STATE_PENDING"
    clock.advance(1.0)
    assert request(base, "GET", path).json()["metadata"]["state"] == "BATCH_STATE_RUNNING"
    clock.advance(540.0)
    done = request(base, "GET", path).json()
    assert done["done"] is True
    assert done["metadata"]["state"] == "BATCH_STATE_SUCCEEDED"
    assert done["metadata"]["endTime"].endswith("Z")
    assert done["metadata"]["batchStats"] == {"requestCount": "3", "successfulRequestCount": "3"}
    responses = done["metadata"]["output"]["inlinedResponses"]["inlinedResponses"]
    assert done["response"]["inlinedResponses"]["inlinedResponses"] == responses
    assert [r["metadata"] for r in responses] == [{"key": "k1"}, {"key": "k2"}, {"key": "k3"}]
    # Each answer is what generateContent answers for the same request.
    for i, entry in enumerate(responses):
        text = entry["response"]["candidates"][0]["content"]["parts"][0]["text"]
        assert json.loads(text)["articles"][0]["id"] == ARTICLES[i].id
        assert entry["response"]["usageMetadata"]["promptTokenCount"] > 0
    methods = [(r.method, r.status) for r in server.log]
    assert methods == [("batches.create", 200)] + [("batches.get", 200)] * 3
    assert server.log[0].model == MODEL


def test_list_pages_through_the_keys_own_jobs(server: FakeGeminiServer) -> None:
    base = server.base_url
    names = [create(base).json()["name"] for _ in range(3)]
    create(base, key="another-key")
    seen: list[str] = []
    path = "/v1beta/batches?pageSize=2"
    while True:
        page = request(base, "GET", path).json()
        seen += [op["name"] for op in page["operations"]]
        token = page.get("nextPageToken")
        if not token:
            break
        path = f"/v1beta/batches?pageSize=2&pageToken={token}"
    assert seen == names
    assert request(base, "GET", "/v1beta/batches?pageToken=junk").status == 400


def test_cancel_and_delete(server: FakeGeminiServer, clock: ManualClock) -> None:
    base = server.base_url
    first = job_id(create(base))
    assert request(base, "POST", f"/v1beta/batches/{first}:cancel", {}).status == 200
    clock.advance(1000.0)
    cancelled = request(base, "GET", f"/v1beta/batches/{first}").json()
    assert cancelled["metadata"]["state"] == "BATCH_STATE_CANCELLED"
    assert cancelled["done"] is True and "output" not in cancelled["metadata"]
    # Cancelling a job that is over leaves it as it is.
    second = job_id(create(base))
    clock.advance(1000.0)
    assert request(base, "POST", f"/v1beta/batches/{second}:cancel", {}).status == 200
    state = request(base, "GET", f"/v1beta/batches/{second}").json()["metadata"]["state"]
    assert state == "BATCH_STATE_SUCCEEDED"
    assert request(base, "DELETE", f"/v1beta/batches/{second}").status == 200
    gone = request(base, "GET", f"/v1beta/batches/{second}")
    assert gone.status == 404 and gone.json()["error"]["status"] == "NOT_FOUND"
    assert request(base, "DELETE", f"/v1beta/batches/{second}").status == 404
    assert request(base, "POST", "/v1beta/batches/nope:cancel", {}).status == 404


def test_per_request_failures_whole_job_failures_and_expiry(clock: ManualClock) -> None:
    keys = tuple(f"k{i}" for i in range(40))
    faults = BatchFaultRates(request_failure=0.25)
    server = serve(clock, seed=7, batch=BatchSettings(pending_s=0, turnaround_s=10, faults=faults))
    try:
        name = create(server.base_url, inline_body(keys)).json()["name"]
        clock.advance(10.0)
        done = request(server.base_url, "GET", f"/v1beta/{name}").json()
    finally:
        server.stop()
    responses = done["metadata"]["output"]["inlinedResponses"]["inlinedResponses"]
    failed = [r["metadata"]["key"] for r in responses if "error" in r]
    assert 0 < len(failed) < len(keys)
    assert all(set(r) == {"error", "metadata"} for r in responses if "error" in r)
    assert all(r["error"]["code"] == 13 for r in responses if "error" in r)
    assert done["metadata"]["batchStats"]["failedRequestCount"] == str(len(failed))
    assert [r["metadata"]["key"] for r in responses] == list(keys)

    for rates, state, code in (
        (BatchFaultRates(job_failure=1.0), "BATCH_STATE_FAILED", 13),
        (BatchFaultRates(expiry=1.0), "BATCH_STATE_EXPIRED", 4),
    ):
        server = serve(clock, batch=BatchSettings(pending_s=0, turnaround_s=10, faults=rates))
        try:
            name = create(server.base_url).json()["name"]
            clock.advance(10.0)
            over = request(server.base_url, "GET", f"/v1beta/{name}").json()
        finally:
            server.stop()
        assert over["metadata"]["state"] == state
        assert over["done"] is True and over["error"]["code"] == code
        assert "output" not in over["metadata"]


def test_fault_draws_are_reproducible_with_a_seed(clock: ManualClock) -> None:
    keys = tuple(f"k{i}" for i in range(30))
    faults = BatchFaultRates(request_failure=0.3)
    failed: list[list[str]] = []
    for _ in range(2):
        server = serve(
            clock, seed=3, batch=BatchSettings(pending_s=0, turnaround_s=0, faults=faults)
        )
        try:
            done = create(server.base_url, inline_body(keys)).json()
        finally:
            server.stop()
        responses = done["metadata"]["output"]["inlinedResponses"]["inlinedResponses"]
        failed.append([r["metadata"]["key"] for r in responses if "error" in r])
    assert failed[0] == failed[1] and failed[0]


def test_inline_jobs_over_the_limit_and_bad_bodies_are_refused(clock: ManualClock) -> None:
    batch = BatchSettings(pending_s=0, turnaround_s=0, inline_limit_bytes=4_000)
    server = serve(clock, batch=batch, retired={"gemini-1.5-pro"}, without_batch={"no-batch"})
    base = server.base_url
    try:
        big = create(base, inline_body(tuple(f"k{i}" for i in range(10))))
        assert big.status == 400
        assert (
            big.json()["error"]["message"] == "Request payload size exceeds the limit: 4000 bytes."
        )
        for body in (
            {},
            {"batch": {}},
            {"batch": {"inputConfig": {"requests": {"requests": []}}}},
            {"batch": {"inputConfig": {"requests": {"requests": [{"metadata": {}}]}}}},
        ):
            refused = create(base, body)
            assert refused.status == 400, body
            assert refused.json()["error"]["status"] == "INVALID_ARGUMENT"
        assert create(base, b"{not json").status == 400
        for model in ("gemini-1.5-pro", "no-batch"):
            path = f"/v1beta/models/{model}:batchGenerateContent"
            missing = request(base, "POST", path, inline_body(("k",)))
            assert missing.status == 404
            assert "not supported for batchGenerateContent" in missing.json()["error"]["message"]
        # A request without contents fails on its own, not the job.
        odd = {"request": {"contents": []}, "metadata": {"key": "empty"}}
        body = inline_body(("ok",))
        body["batch"]["inputConfig"]["requests"]["requests"].append(odd)
        done = create(base, body).json()
        responses = done["metadata"]["output"]["inlinedResponses"]["inlinedResponses"]
        assert [("error" in r, r["metadata"]["key"]) for r in responses] == [
            (False, "ok"),
            (True, "empty"),
        ]
        assert responses[1]["error"]["code"] == 3
    finally:
        server.stop()


def test_a_prompt_over_the_models_input_limit_fails_on_its_own(clock: ManualClock) -> None:
    models = {MODEL: ModelSpec(MODEL, rpm=0, tpm=0, rpd=0, max_input_tokens=10)}
    server = serve(clock, models=models, batch=BatchSettings(pending_s=0, turnaround_s=0))
    try:
        done = create(server.base_url, inline_body(("k1",))).json()
    finally:
        server.stop()
    [entry] = done["metadata"]["output"]["inlinedResponses"]["inlinedResponses"]
    assert entry["error"]["code"] == 3 and "exceeds the maximum" in entry["error"]["message"]


def test_settings_and_rates_are_validated() -> None:
    with pytest.raises(ValueError, match="request_failure"):
        BatchFaultRates(request_failure=1.5)
    with pytest.raises(ValueError, match="job_failure \\+ expiry"):
        BatchFaultRates(job_failure=0.6, expiry=0.6)
    with pytest.raises(ValueError, match="pending_s"):
        BatchSettings(pending_s=20, turnaround_s=10)
    with pytest.raises(ValueError, match="inline_limit_bytes"):
        BatchSettings(inline_limit_bytes=0)
    assert BatchState.EXPIRED.terminal and not BatchState.RUNNING.terminal


# --------------------------------------------------------------------------
# Files and file jobs


def test_upload_in_chunks_then_a_file_job_with_a_responses_file(
    server: FakeGeminiServer, clock: ManualClock
) -> None:
    base = server.base_url
    data = jsonl(("r1", "r2", "r3"))
    finished = upload(base, data, chunk=100)
    assert finished.status == 200, finished.body
    assert finished.headers["X-Goog-Upload-Status"] == "final"
    file = finished.json()["file"]
    assert file["name"].startswith("files/") and file["sizeBytes"] == str(len(data))
    assert file["state"] == "ACTIVE" and file["source"] == "UPLOADED"
    file_id = file["name"].removeprefix("files/")
    assert request(base, "GET", f"/v1beta/files/{file_id}").json()["name"] == file["name"]

    body = {"batch": {"displayName": "from a file", "inputConfig": {"fileName": file["name"]}}}
    name = create(base, body).json()["name"]
    clock.advance(600.0)
    done = request(base, "GET", f"/v1beta/{name}").json()
    assert done["metadata"]["state"] == "BATCH_STATE_SUCCEEDED"
    responses_file = done["metadata"]["output"]["responsesFile"]
    assert responses_file.startswith("files/batch-")
    responses_id = responses_file.removeprefix("files/")
    described = request(base, "GET", f"/v1beta/files/{responses_id}").json()
    assert described["source"] == "GENERATED" and "downloadUri" in described
    for path in (
        f"/download/v1beta/files/{responses_id}:download?alt=media",
        f"/v1beta/files/{responses_id}:download?alt=media",
    ):
        downloaded = request(base, "GET", path)
        assert downloaded.status == 200
        lines = [json.loads(line) for line in downloaded.body.splitlines()]
        assert [line["key"] for line in lines] == ["r1", "r2", "r3"]
        assert all("response" in line for line in lines)
    assert request(base, "DELETE", f"/v1beta/files/{file_id}").status == 200
    assert request(base, "GET", f"/v1beta/files/{file_id}").status == 403


def test_the_upload_protocol_is_checked(server: FakeGeminiServer) -> None:
    base = server.base_url
    plain = request(base, "POST", "/upload/v1beta/files", {"file": {}})
    assert plain.status == 400 and plain.headers["X-Goog-Upload-Status"] == "final"
    unknown = request(
        base,
        "POST",
        "/upload/v1beta/files?upload_id=nope&upload_protocol=resumable",
        b"x",
        key=None,
        headers={"X-Goog-Upload-Command": "upload, finalize", "X-Goog-Upload-Offset": "0"},
    )
    assert unknown.status == 404 and unknown.headers["X-Goog-Upload-Status"] == "final"

    def started(size: int) -> str:
        reply = request(
            base,
            "POST",
            "/upload/v1beta/files",
            {"file": {}},
            headers={
                "X-Goog-Upload-Protocol": "resumable",
                "X-Goog-Upload-Command": "start",
                "X-Goog-Upload-Header-Content-Length": str(size),
                "X-Goog-Upload-Header-Content-Type": "jsonl",
            },
        )
        target = urlsplit(reply.headers["X-Goog-Upload-URL"])
        return f"{target.path}?{target.query}"

    def chunk(path: str, data: bytes, offset: int, command: str) -> Reply:
        headers = {"X-Goog-Upload-Command": command, "X-Goog-Upload-Offset": str(offset)}
        return request(base, "POST", path, data, key=None, headers=headers)

    wrong_offset = chunk(started(4), b"ab", 2, "upload")
    assert wrong_offset.status == 400 and wrong_offset.headers["X-Goog-Upload-Status"] == "final"
    short = chunk(started(4), b"ab", 0, "upload, finalize")
    assert short.status == 400 and "declared" in short.json()["error"]["message"]
    long = chunk(started(1), b"ab", 0, "upload")
    assert long.status == 400
    no_size = request(
        base,
        "POST",
        "/upload/v1beta/files",
        {},
        headers={"X-Goog-Upload-Protocol": "resumable", "X-Goog-Upload-Command": "start"},
    )
    assert no_size.status == 400


def test_a_file_job_refuses_a_bad_file(server: FakeGeminiServer) -> None:
    base = server.base_url
    bad = upload(base, b'{"key": "a", "request": {"contents": []}}\nnot json\n').json()["file"]
    refused = create(base, {"batch": {"inputConfig": {"fileName": bad["name"]}}})
    assert refused.status == 400
    assert "line 2: not JSON" in refused.json()["error"]["message"]
    no_request = upload(base, b'{"key": "a"}\n').json()["file"]
    refused = create(base, {"batch": {"inputConfig": {"fileName": no_request["name"]}}})
    assert refused.status == 400 and "no request object" in refused.json()["error"]["message"]
    missing = create(base, {"batch": {"inputConfig": {"fileName": "files/nope"}}})
    assert missing.status == 403


# --------------------------------------------------------------------------
# Keys


def test_jobs_and_files_belong_to_their_key(server: FakeGeminiServer) -> None:
    base = server.base_url
    mine = job_id(create(base))
    file = upload(base, jsonl(("a",))).json()["file"]
    file_id = file["name"].removeprefix("files/")
    other = "another-key-42"
    assert request(base, "GET", f"/v1beta/batches/{mine}", key=other).status == 404
    assert request(base, "POST", f"/v1beta/batches/{mine}:cancel", {}, key=other).status == 404
    assert request(base, "DELETE", f"/v1beta/batches/{mine}", key=other).status == 404
    assert request(base, "GET", "/v1beta/batches", key=other).json() == {"operations": []}
    forbidden = request(base, "GET", f"/v1beta/files/{file_id}", key=other)
    assert forbidden.status == 403
    assert "do not have permission to access the File" in forbidden.json()["error"]["message"]
    body = {"batch": {"inputConfig": {"fileName": file["name"]}}}
    assert create(base, body, key=other).status == 403
    assert request(base, "GET", f"/v1beta/batches/{mine}").status == 200


def test_the_same_key_checks_as_generate_content(clock: ManualClock) -> None:
    server = serve(clock, valid_keys=frozenset({KEY}))
    base = server.base_url
    try:
        assert create(base, key=None).status == 403
        bad = create(base, key="bad*key")
        assert bad.status == 400
        assert bad.json()["error"]["details"][0]["reason"] == "API_KEY_INVALID"
        assert create(base, key="well-formed-but-unknown").status == 403
        assert request(base, "GET", "/v1beta/batches", key="nope-nope").status == 403
        start = request(
            base,
            "POST",
            "/upload/v1beta/files",
            {"file": {}},
            key="nope-nope",
            headers={"X-Goog-Upload-Protocol": "resumable", "X-Goog-Upload-Command": "start"},
        )
        assert start.status == 403
        assert create(base).status == 200
    finally:
        server.stop()
    assert [r.status for r in server.log] == [403, 400, 403, 403, 403, 200]


# --------------------------------------------------------------------------
# tierbatch serve-fake-gemini


def test_the_cli_serves_retired_models_and_batch_settings() -> None:
    args = [
        "serve-fake-gemini",
        "--port",
        "0",
        "--retired",
        "gemini-1.5-pro",
        "--batch-pending-s",
        "0",
        "--batch-turnaround-s",
        "0",
        "--batch-job-failure-rate",
        "1",
    ]
    proc = subprocess.Popen(
        [*tierbatch_command(), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=child_env(None),
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        match = re.search(r"listening on (http://127\.0\.0\.1:\d+)", first)
        assert match, first
        base = match.group(1)
        assert request(base, "GET", "/v1beta/models/gemini-1.5-pro").status == 404
        assert request(base, "GET", f"/v1beta/models/{MODEL}").status == 200
        job = create(base).json()
        assert job["metadata"]["state"] == "BATCH_STATE_FAILED"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


def test_the_cli_serves_token_buckets(tmp_path: Path) -> None:
    config = write_config(tmp_path / "limits.toml")
    text = config.read_text(encoding="utf-8").replace("rpm = 6000", "rpm = 6", 1)
    config.write_text(text, encoding="utf-8")  # m-pro: one request every 10 s
    args = ["serve-fake-gemini", "--port", "0", "--config", str(config)]
    args += ["--limiter", "bucket", "--bucket-s", "20"]  # two at once
    proc = subprocess.Popen(
        [*tierbatch_command(), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=child_env(None),
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert "token buckets holding 20 s of each limit" in first
        match = re.search(r"listening on (http://127\.0\.0\.1:\d+)", first)
        assert match, first
        generate = "/v1beta/models/m-pro:generateContent"
        replies = [request(match.group(1), "POST", generate, generate_body()) for _ in range(3)]
        assert [r.status for r in replies] == [200, 200, 429]
        # The next request is admitted when one has refilled: within 10 s,
        # not a window's 60.
        delay = replies[2].json()["error"]["details"][2]["retryDelay"]
        assert 0 < float(delay[:-1]) <= 10.0
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0

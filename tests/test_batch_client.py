"""The Batch API client over google-genai against the local fake server:
submit/poll/results round trips inline and through an uploaded file,
per-request failures, failed, expired and cancelled jobs, deletion, and
refused keys. The server runs on a test clock, so a job's turnaround
passes when the test says so."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import pytest
from provider_contract import ARTICLES, expected_extraction
from test_fake_gemini_batch import ManualClock

from tierbatch.adapters.gemini.batch_client import (
    INLINE_LIMIT_BYTES,
    BatchError,
    BatchItem,
    BatchJobNotFound,
    BatchNotSucceeded,
    GeminiBatchClient,
    JobState,
    _file_entries,
    rpc_outcome,
)
from tierbatch.adapters.gemini.prompt import RESPONSE_SCHEMA
from tierbatch.adapters.simulation.batch_emulator import (
    DEFAULT_INLINE_LIMIT_BYTES,
    BatchFaultRates,
    BatchSettings,
)
from tierbatch.adapters.simulation.fake_gemini import FakeGeminiServer
from tierbatch.adapters.simulation.gemini_emulator import FakeGeminiConfig
from tierbatch.policies.articles import Article
from tierbatch.policies.config import ModelSpec, ProviderConfig
from tierbatch.policies.outcomes import (
    AuthFailed,
    BadRequest,
    ModelNotFound,
    RateLimited,
    ServerError,
    Succeeded,
)

KEY = "batch-test-KEY-0123456789"
MODEL = "gemini-2.5-flash"
PENDING_S = 60.0
TURNAROUND_S = 3600.0

T = TypeVar("T")

ITEMS = (
    BatchItem("pack-1", ARTICLES[:2]),
    BatchItem("pack-2", ARTICLES[2:]),
    BatchItem("pack-3", ARTICLES[:1]),
)


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


def serve(clock: ManualClock, **config: Any) -> FakeGeminiServer:
    faults = config.pop("faults", BatchFaultRates())
    config.setdefault(
        "batch", BatchSettings(pending_s=PENDING_S, turnaround_s=TURNAROUND_S, faults=faults)
    )
    server = FakeGeminiServer(FakeGeminiConfig(**config), clock=clock)
    server.start()
    return server


@pytest.fixture
def server(clock: ManualClock) -> Iterator[FakeGeminiServer]:
    s = serve(clock)
    yield s
    s.stop()


def client(server: FakeGeminiServer, key: str = KEY, **kw: Any) -> GeminiBatchClient:
    return GeminiBatchClient(ProviderConfig(base_url=server.base_url), api_key=key, **kw)


def methods(server: FakeGeminiServer) -> list[str]:
    return [r.method for r in server.log]


def expected_answers(item: BatchItem) -> dict[str, Any]:
    return {a.id: expected_extraction(a) for a in item.articles}


def test_inline_round_trip(server: FakeGeminiServer, clock: ManualClock) -> None:
    batch = client(server)
    job = run(batch.submit(MODEL, ITEMS, display_name="nightly"))
    assert job.startswith("batches/")
    assert run(batch.poll(job)) is JobState.PENDING
    clock.advance(PENDING_S)
    assert run(batch.poll(job)) is JobState.RUNNING
    with pytest.raises(BatchNotSucceeded) as early:
        run(batch.results(job))
    assert early.value.state is JobState.RUNNING
    clock.advance(TURNAROUND_S)
    assert run(batch.poll(job)) is JobState.SUCCEEDED
    results = run(batch.results(job))
    assert list(results) == ["pack-1", "pack-2", "pack-3"]
    for item in ITEMS:
        answer = results[item.key]
        assert isinstance(answer.outcome, Succeeded)
        assert answer.outcome.usage.input_tokens > 0 and answer.outcome.usage.output_tokens > 0
        # The same prompt and the same validation as an interactive call.
        assert answer.answers == expected_answers(item)
    assert "files.upload" not in methods(server)
    assert methods(server)[0] == "batches.create"


def test_file_round_trip_above_the_inline_limit(
    server: FakeGeminiServer, clock: ManualClock
) -> None:
    batch = client(server, inline_limit_bytes=100)
    job = run(batch.submit(MODEL, ITEMS))
    clock.advance(TURNAROUND_S)
    results = run(batch.results(job))
    assert {key: a.answers for key, a in results.items()} == {
        item.key: expected_answers(item) for item in ITEMS
    }
    assert all(isinstance(a.outcome, Succeeded) for a in results.values())
    calls = methods(server)
    assert calls[:3] == ["files.upload", "files.upload", "batches.create"]
    assert "files.download" in calls


def test_the_default_inline_limit_is_below_geminis(clock: ManualClock) -> None:
    """What the client sends inline the server takes; one byte of the
    client's limit more, and a forced-inline job is refused."""
    assert INLINE_LIMIT_BYTES < DEFAULT_INLINE_LIMIT_BYTES
    limit = 3_000
    server = serve(
        clock, batch=BatchSettings(pending_s=0, turnaround_s=0, inline_limit_bytes=limit)
    )
    try:
        chosen = run(client(server, inline_limit_bytes=limit).submit(MODEL, ITEMS))
        assert "files.upload" in methods(server)
        with pytest.raises(BatchError) as forced:
            run(client(server, inline_limit_bytes=10**9).submit(MODEL, ITEMS))
        assert isinstance(forced.value.outcome, BadRequest)
        assert "payload size exceeds" in str(forced.value)
        results = run(
            client(server).results(chosen, {i.key: [a.id for a in i.articles] for i in ITEMS})
        )
    finally:
        server.stop()
    assert all(isinstance(a.outcome, Succeeded) for a in results.values())


@pytest.mark.parametrize("inline_limit", [INLINE_LIMIT_BYTES, 0])
def test_per_request_failures_leave_the_rest_answered(
    clock: ManualClock, inline_limit: int
) -> None:
    items = [BatchItem(f"k{i}", (ARTICLES[i % 3],)) for i in range(30)]
    server = serve(clock, seed=11, faults=BatchFaultRates(request_failure=0.3))
    try:
        batch = client(server, inline_limit_bytes=inline_limit)
        job = run(batch.submit(MODEL, items))
        clock.advance(TURNAROUND_S)
        results = run(batch.results(job))
    finally:
        server.stop()
    failed = {k for k, a in results.items() if not isinstance(a.outcome, Succeeded)}
    assert 0 < len(failed) < len(items)
    for key in failed:
        outcome = results[key].outcome
        assert isinstance(outcome, ServerError) and outcome.status == 500
        assert results[key].answers == {}
    for item in items:
        if item.key not in failed:
            assert results[item.key].answers == expected_answers(item)


def test_a_request_over_the_input_limit_is_a_bad_request(clock: ManualClock) -> None:
    models = {MODEL: ModelSpec(MODEL, rpm=0, tpm=0, rpd=0, max_input_tokens=1_000)}
    server = serve(clock, models=models)
    try:
        batch = client(server)
        long = BatchItem("long", (Article("l", "Paris and Berlin. " * 500),))
        short = BatchItem("short", ARTICLES[:1])
        job = run(batch.submit(MODEL, [long, short]))
        clock.advance(TURNAROUND_S)
        results = run(batch.results(job))
    finally:
        server.stop()
    assert isinstance(results["long"].outcome, BadRequest)
    assert "exceeds the maximum" in results["long"].outcome.message
    assert isinstance(results["short"].outcome, Succeeded)


@pytest.mark.parametrize(
    ("faults", "state"),
    [
        (BatchFaultRates(job_failure=1.0), JobState.FAILED),
        (BatchFaultRates(expiry=1.0), JobState.EXPIRED),
    ],
)
def test_failed_and_expired_jobs_have_no_results(
    clock: ManualClock, faults: BatchFaultRates, state: JobState
) -> None:
    server = serve(clock, faults=faults)
    try:
        batch = client(server)
        job = run(batch.submit(MODEL, ITEMS))
        assert run(batch.poll(job)) is JobState.PENDING
        clock.advance(TURNAROUND_S)
        assert run(batch.poll(job)) is state
        assert state.terminal
        with pytest.raises(BatchNotSucceeded) as none:
            run(batch.results(job))
    finally:
        server.stop()
    assert none.value.state is state


def test_cancel(server: FakeGeminiServer, clock: ManualClock) -> None:
    batch = client(server)
    job = run(batch.submit(MODEL, ITEMS))
    clock.advance(PENDING_S)
    run(batch.cancel(job))
    assert run(batch.poll(job)) is JobState.CANCELLED
    clock.advance(TURNAROUND_S)
    assert run(batch.poll(job)) is JobState.CANCELLED
    with pytest.raises(BatchNotSucceeded):
        run(batch.results(job))
    with pytest.raises(BatchJobNotFound):
        run(batch.cancel("batches/no-such-job"))


def test_delete_forgets_the_job_and_its_files(server: FakeGeminiServer, clock: ManualClock) -> None:
    batch = client(server, inline_limit_bytes=0)
    job = run(batch.submit(MODEL, ITEMS))
    clock.advance(TURNAROUND_S)
    run(batch.results(job))
    run(batch.delete(job))
    with pytest.raises(BatchJobNotFound):
        run(batch.poll(job))
    deleted = [r.status for r in server.log if r.method == "files.delete"]
    assert deleted == [200, 200]  # the requests file and the responses file


def test_results_of_a_job_another_client_submitted(
    server: FakeGeminiServer, clock: ManualClock
) -> None:
    job = run(client(server).submit(MODEL, ITEMS))
    clock.advance(TURNAROUND_S)
    later = client(server)  # say, another process, from the job's saved name and keys
    with pytest.raises(ValueError, match="pass expected="):
        run(later.results(job))
    expected = {"pack-2": [a.id for a in ITEMS[1].articles], "pack-9": ["x"]}
    results = run(later.results(job, expected))
    assert results["pack-2"].answers == expected_answers(ITEMS[1])
    absent = results["pack-9"].outcome
    assert isinstance(absent, ServerError) and "no result for key pack-9" in absent.message
    assert set(results) == {"pack-2", "pack-9"}


def test_refused_keys_and_other_keys_jobs(clock: ManualClock) -> None:
    server = serve(clock, valid_keys=frozenset({KEY, "second-key-0000"}))
    try:
        job = run(client(server).submit(MODEL, ITEMS))
        with pytest.raises(BatchError) as refused:
            run(client(server, key="someone-elses-key-SECRET").submit(MODEL, ITEMS))
        with pytest.raises(BatchError) as invalid:
            run(client(server, key="not*a*key*SECRET").poll(job))
        with pytest.raises(BatchJobNotFound):
            run(client(server, key="second-key-0000").poll(job))
    finally:
        server.stop()
    assert isinstance(refused.value.outcome, AuthFailed) and refused.value.outcome.status == 403
    assert isinstance(invalid.value.outcome, AuthFailed) and invalid.value.outcome.status == 400
    assert "SECRET" not in str(refused.value) + str(invalid.value)


def test_a_model_without_batch_support(clock: ManualClock) -> None:
    server = serve(clock, retired={"gemini-1.5-pro"}, without_batch={"gemini-2.5-flash-lite"})
    try:
        for model in ("gemini-1.5-pro", "gemini-2.5-flash-lite"):
            with pytest.raises(BatchError) as missing:
                run(client(server).submit(model, ITEMS))
            assert isinstance(missing.value.outcome, ModelNotFound)
            assert model in str(missing.value)
    finally:
        server.stop()


def test_items_are_checked_before_anything_is_sent(server: FakeGeminiServer) -> None:
    batch = client(server)
    for items, message in (
        ([], "at least one item"),
        ([BatchItem("", ARTICLES[:1])], r"items\[0\]\.key"),
        ([ITEMS[0], BatchItem("pack-1", ARTICLES[:1])], "used twice"),
        ([BatchItem("empty", ())], r"items\[0\] \('empty'\)\.articles"),
    ):
        with pytest.raises(ValueError, match=message):
            run(batch.submit(MODEL, items))
    assert server.log == []


def test_rpc_codes_mean_outcomes() -> None:
    assert isinstance(rpc_outcome(3, "bad"), BadRequest)
    assert isinstance(rpc_outcome(7, "no"), AuthFailed)
    assert isinstance(rpc_outcome(8, "slow down"), RateLimited)
    internal = rpc_outcome(13, "")
    assert isinstance(internal, ServerError) and internal.status == 500
    assert "code 13" in internal.message
    unavailable = rpc_outcome(14, "busy")
    assert isinstance(unavailable, ServerError) and unavailable.status == 503
    assert isinstance(rpc_outcome(429, "quota"), RateLimited)  # an HTTP status, read as one
    assert isinstance(rpc_outcome(None, "?"), ServerError)


def test_a_responses_file_line_that_cannot_be_read_is_skipped() -> None:
    data = b"\n".join(
        [
            b'{"key": "ok", "response": {"candidates": []}}',
            b"not json",
            b'{"key": "bad", "response": {"candidates": "not a list"}}',
            b'{"key": "failed", "error": {"code": 3, "message": "no"}}',
            b"[1, 2]",
        ]
    )
    entries = _file_entries(data, "batches/x")
    assert [key for key, _ in entries] == ["ok", "failed"]
    assert isinstance(entries[1][1], BadRequest)


def test_submit_does_not_rewrite_the_shared_response_schema(
    server: FakeGeminiServer,
) -> None:
    """google-genai's batch converter adds ``propertyOrdering`` to the schema
    dict it is given, in place; on the shared RESPONSE_SCHEMA that broke
    every later google-generativeai call ("Unknown field for Schema")."""
    before = copy.deepcopy(RESPONSE_SCHEMA)
    run(client(server).submit(MODEL, ITEMS))
    assert before == RESPONSE_SCHEMA


@pytest.mark.parametrize("inline_limit", [None, 0], ids=["inline", "file"])
def test_a_batch_job_asks_for_the_configured_task(
    server: FakeGeminiServer, clock: ManualClock, inline_limit: int | None
) -> None:
    """Batch requests carry the task's system instruction and schema (the
    local server answers the types the schema names), and the answers are
    read against the task, as interactive calls are."""
    from tierbatch.adapters.gemini.prompt import task_prompt
    from tierbatch.policies.results import Extraction
    from tierbatch.policies.task import EntityTypeSpec, ExtraField, FieldType, TaskConfig

    task = TaskConfig(
        entity_types=(EntityTypeSpec("person", "a person"), EntityTypeSpec("body", "a group")),
        extra_fields=(ExtraField("nick", FieldType.STRING, "a nickname"),),
    )
    extra = {} if inline_limit is None else {"inline_limit_bytes": inline_limit}
    batch = client(server, task=task, **extra)
    assert batch.prompt == task_prompt(task)
    job = run(batch.submit(MODEL, ITEMS))
    clock.advance(PENDING_S + TURNAROUND_S)
    assert run(batch.poll(job)) is JobState.SUCCEEDED
    results = run(batch.results(job))
    entities = [
        e
        for answer in results.values()
        for extraction in answer.answers.values()
        if isinstance(extraction, Extraction)
        for e in extraction.entities
    ]
    assert entities and {e.type for e in entities} <= {"person", "body"}
    assert all(dict(e.fields).keys() == {"nick"} for e in entities)

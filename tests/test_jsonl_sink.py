"""The JSONL and callback sinks, and the JSON form of terminal results."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tierbatch.actors.ports import Sink
from tierbatch.adapters.storage.jsonl_sink import CallbackSink, JsonlSink
from tierbatch.adapters.storage.result_json import (
    InvalidResultRecord,
    result_from_json,
    result_to_json,
)
from tierbatch.policies.results import (
    Done,
    Entity,
    EntityType,
    Failed,
    FailureReason,
    TerminalResult,
)

DONE = Done(
    article_id="a1",
    entities=(
        Entity("Ada Lovelace", EntityType.PERSON, 0.9, 3),
        Entity("London", EntityType.LOCATION, 0.4),
    ),
    model="gemini-2.5-flash",
    tier="high",
    attempts=2,
    input_tokens=812,
    output_tokens=95,
    latency_s=3.25,
    cost_usd=0.00031,
    fallback=True,
    metadata={"lang": "en"},
)
FAILED = Failed(
    article_id="a2",
    reason=FailureReason.TIMEOUT,
    detail="gemini-2.5-flash: timed out after 60 s (x4)",
    tier="low",
    attempts=4,
    last_model="gemini-2.5-flash",
)
FIELDS = {
    "article_id",
    "status",
    "entities",
    "model",
    "tier",
    "attempts",
    "input_tokens",
    "output_tokens",
    "latency_s",
    "cost_usd",
    "fallback",
    "reason",
    "detail",
    "metadata",
    "finished_at",
    "grounding",
    "pack_size",
    "task_version",
}


def read_lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_sinks_implement_the_sink_protocol(tmp_path: Path) -> None:
    jsonl = JsonlSink(tmp_path / "out.jsonl")
    assert isinstance(jsonl, Sink)
    assert isinstance(CallbackSink(lambda r: None), Sink)
    jsonl.close()


def test_results_are_buffered_until_flush_then_written_one_per_line(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    sink = JsonlSink(path, clock=lambda: 1_800_000_000.5)
    sink.write([DONE, FAILED])
    assert path.read_text() == ""
    sink.flush()
    done, failed = read_lines(path)
    assert set(done) == set(failed) == FIELDS
    assert done["status"] == "done"
    assert done["entities"] == [
        {"name": "Ada Lovelace", "type": "person", "salience": 0.9, "mentions": 3},
        {"name": "London", "type": "location", "salience": 0.4, "mentions": 1},
    ]
    assert done["finished_at"] == 1_800_000_000.5
    assert done["reason"] is None
    assert failed["status"] == "failed"
    assert failed["reason"] == "timeout"
    assert failed["model"] == "gemini-2.5-flash"
    assert failed["entities"] == []
    assert failed["input_tokens"] is None
    assert [result_from_json(r) for r in (done, failed)] == [DONE, FAILED]
    sink.close()
    assert sink.written == 2


def test_a_full_buffer_is_written_without_waiting_for_flush(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    sink = JsonlSink(path, flush_every=2)
    sink.write([DONE])
    assert path.read_text() == ""
    sink.write([FAILED])
    assert len(read_lines(path)) == 2
    sink.close()


def test_close_flushes_and_a_restarted_sink_appends(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    first = JsonlSink(path)
    first.write([DONE])
    first.close()
    first.close()  # idempotent
    second = JsonlSink(path)
    second.write([FAILED])
    second.close()
    assert [r["article_id"] for r in read_lines(path)] == ["a1", "a2"]
    with pytest.raises(ValueError, match="closed"):
        second.write([DONE])


def test_an_open_file_is_flushed_but_left_open() -> None:
    out = io.StringIO()
    sink = JsonlSink(out)
    sink.write([DONE])
    sink.close()
    assert not out.closed
    assert json.loads(out.getvalue())["article_id"] == "a1"


def test_odd_metadata_values_do_not_lose_the_result(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    sink = JsonlSink(path)
    odd = Done("a3", (), "m", "t", 1, 1, 1, 0.1, metadata={"when": object(), "s": {1, 2}})
    sink.write([odd])
    sink.close()
    (line,) = read_lines(path)
    assert line["article_id"] == "a3"
    assert isinstance(line["metadata"], dict)
    assert set(line["metadata"]) == {"when", "s"}


def test_callback_sink_forwards_each_result_in_order() -> None:
    got: list[TerminalResult] = []
    calls: list[str] = []
    sink = CallbackSink(
        got.append, on_flush=lambda: calls.append("flush"), on_close=lambda: calls.append("close")
    )
    sink.write([DONE, FAILED])
    sink.write([])
    sink.flush()
    sink.close()
    assert got == [DONE, FAILED]
    assert calls == ["flush", "close"]


def test_callback_errors_reach_the_caller() -> None:
    def boom(result: TerminalResult) -> None:
        raise RuntimeError("downstream full")

    with pytest.raises(RuntimeError, match="downstream full"):
        CallbackSink(boom).write([DONE])


def test_a_bad_record_is_an_invalid_result_record() -> None:
    with pytest.raises(InvalidResultRecord):
        result_from_json({"status": "pending", "article_id": "x"})
    with pytest.raises(InvalidResultRecord):
        result_from_json({"status": "failed", "article_id": "x", "reason": "no such reason"})
    with pytest.raises(InvalidResultRecord, match="entities"):
        result_from_json({"status": "done", "article_id": "x", "model": "m", "entities": [{}]})


_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)
_entities = st.lists(
    st.builds(
        Entity,
        name=_text,
        type=st.sampled_from(EntityType),
        salience=st.floats(0, 1),
        mentions=st.integers(1, 50),
    ),
    max_size=4,
).map(tuple)
_results = st.one_of(
    st.builds(
        Done,
        article_id=_text,
        entities=_entities,
        model=_text,
        tier=_text,
        attempts=st.integers(0, 20),
        input_tokens=st.integers(0, 10**6),
        output_tokens=st.integers(0, 10**5),
        latency_s=st.floats(0, 1e4),
        cost_usd=st.floats(0, 10),
        fallback=st.booleans(),
    ),
    st.builds(
        Failed,
        article_id=_text,
        reason=st.sampled_from(FailureReason),
        detail=_text,
        tier=_text,
        attempts=st.integers(0, 20),
        last_model=st.none() | _text,
    ),
)


@given(st.lists(_results, max_size=5))
def test_any_result_survives_the_jsonl_round_trip(results: list[TerminalResult]) -> None:
    out = io.StringIO()
    sink = JsonlSink(out)
    sink.write(results)
    sink.flush()
    back = [result_from_json(json.loads(line)) for line in out.getvalue().splitlines()]
    assert back == results
    assert [result_to_json(r) for r in back] == [result_to_json(r) for r in results]


def test_unicode_line_separators_are_escaped_so_a_record_stays_one_line() -> None:
    out = io.StringIO()
    sink = JsonlSink(out)
    sink.write([Failed("a\u2028b", FailureReason.BAD_REQUEST, "x\x85y\u2029z", "t", 1)])
    sink.close()
    (line,) = out.getvalue().splitlines()
    assert json.loads(line)["detail"] == "x\x85y\u2029z"

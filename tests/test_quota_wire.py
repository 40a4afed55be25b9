"""The shared quota's wire: every message a follower sends reaches the owner
as the same registry message, with its times moved from the sender's
steady clock to the receiver's (each has its own origin); garbage is a
``FrameError``, never an exception of another kind; a bad ``--quota-address``
is refused naming the problem, before the daemon opens its database."""

from __future__ import annotations

import io
import struct
from dataclasses import replace
from pathlib import Path
from typing import Any

import msgpack
import pytest

from tierbatch.actors.messages import (
    Acquire,
    AcquireFailed,
    AdoptGrants,
    Backlog,
    GetBudgetState,
    Granted,
    ReleaseHolder,
    Report,
    Sent,
    Wake,
    Withdraw,
)
from tierbatch.adapters.app.cli import main
from tierbatch.adapters.app.quota_server import parse_address
from tierbatch.adapters.app.quota_wire import (
    FrameError,
    decode_answer,
    decode_from_follower,
    decode_grant,
    encode_answer,
    encode_ask,
    encode_reply,
    encode_to_owner,
    pack_frame,
    read_frame,
)
from tierbatch.policies.backlog import TierBacklog
from tierbatch.policies.budget import BudgetState, OnExhausted, TierBudget
from tierbatch.policies.outcomes import (
    Abandoned,
    AuthFailed,
    BadRequest,
    Cancelled,
    ModelNotFound,
    RateLimited,
    RateLimitScope,
    ServerError,
    Succeeded,
    TimedOut,
    Usage,
)
from tierbatch.policies.quota import Grant, OutstandingGrant

SENDER, RECEIVER = 1_000.0, 1_250.0  # wall offsets: wall = steady + offset
SHIFT = SENDER - RECEIVER  # a sender's steady time, as the receiver's


def through_the_wire(message: Any) -> Any:
    frame = read_frame(io.BytesIO(pack_frame(encode_to_owner(message, SENDER))))
    assert frame is not None
    return decode_from_follower(frame, RECEIVER)


def nobody(_answer: Any) -> None:
    pass


OUTCOMES = [
    Succeeded(Usage(120, 30)),
    RateLimited(RateLimitScope.REQUESTS_PER_MINUTE, 26.5, "quota"),
    RateLimited(RateLimitScope.REQUESTS_PER_DAY, None),
    ServerError(503, "busy"),
    ServerError(None),
    TimedOut(10.0),
    BadRequest("bad"),
    AuthFailed(403, "no"),
    ModelNotFound("gone"),
    Abandoned(),
    Cancelled(),
]


@pytest.mark.parametrize("outcome", OUTCOMES, ids=lambda o: type(o).__name__)
def test_every_outcome_crosses_unchanged(outcome: Any) -> None:
    assert through_the_wire(Report(7, outcome)) == Report(7, outcome)


def test_an_acquire_keeps_its_fields_and_moves_its_times() -> None:
    ask = Acquire(3, 9, ("m-pro", "m-lite"), 1200, 1, 50.0, nobody, 80.0, 2.5, "hot")
    got = through_the_wire(ask)
    assert isinstance(got, Acquire)
    assert replace(got, reply=nobody) == replace(
        ask, enqueued_at=50.0 + SHIFT, deadline=80.0 + SHIFT
    )
    no_deadline = through_the_wire(replace(ask, deadline=None))
    assert no_deadline.deadline is None


def test_the_other_messages_cross_with_their_times_moved() -> None:
    assert through_the_wire(Sent(5, 10.0)) == Sent(5, 10.0 + SHIFT)
    assert through_the_wire(Withdraw(4, 2)) == Withdraw(4, 2)
    assert through_the_wire(ReleaseHolder(2)) == ReleaseHolder(2)
    backlog = Backlog((TierBacklog("hot", 40, 900.0, 1.5), TierBacklog("cold", 0, 0.0, 0.0)))
    assert through_the_wire(backlog) == backlog
    grants = (
        OutstandingGrant(1 << 32, "m-lite", 500, 20.0, 20.5, True),
        OutstandingGrant((1 << 32) + 1, "m-lite", 500, 21.0, None, False),
    )
    assert through_the_wire(AdoptGrants(6, grants)) == AdoptGrants(
        6,
        (
            replace(grants[0], granted_at=20.0 + SHIFT, sent_at=20.5 + SHIFT),
            replace(grants[1], granted_at=21.0 + SHIFT),
        ),
    )


def test_grants_and_refusals_reach_the_follower_in_its_own_time() -> None:
    granted = Granted(3, Grant(77, "m-lite", 40.0, 300))
    assert decode_grant(encode_reply(9, granted, RECEIVER), SENDER) == Granted(
        3, Grant(77, "m-lite", 40.0 + RECEIVER - SENDER, 300)
    )
    failed = AcquireFailed(3, "no_route", "every model is gone")
    assert decode_grant(encode_reply(9, failed, RECEIVER), SENDER) == failed


def frame_of(payload: bytes) -> io.BytesIO:
    return io.BytesIO(struct.pack(">I", len(payload)) + payload)


@pytest.mark.parametrize(
    "stream",
    [
        io.BytesIO(b"\x00\x00"),  # a cut header
        io.BytesIO(struct.pack(">I", 10) + b"abc"),  # a cut frame
        io.BytesIO(struct.pack(">I", 1 << 31)),  # over the limit
        frame_of(b"\xc1"),  # not msgpack
        frame_of(msgpack.packb([1, 2, 3])),  # not a map
        frame_of(msgpack.packb({"k": 1})),  # no kind
    ],
    ids=["cut-header", "cut-frame", "too-long", "not-msgpack", "not-a-map", "no-kind"],
)
def test_garbage_is_a_frame_error(stream: io.BytesIO) -> None:
    with pytest.raises(FrameError):
        read_frame(stream)


@pytest.mark.parametrize(
    "frame",
    [
        {"k": "acquire", "request_id": 1},
        {"k": "report", "grant_id": "x", "outcome": {"t": "ok", "in": 1, "out": 1}},
        {"k": "sent", "grant_id": 1, "at": "now"},
        {"k": "adopt", "holder": 1, "grants": [[1, "m"]]},
        {"k": "what"},
    ],
    ids=["acquire-missing-fields", "report-bad-id", "sent-bad-time", "adopt-short", "unknown"],
)
def test_a_malformed_message_is_a_frame_error(frame: dict[str, Any]) -> None:
    with pytest.raises(FrameError):
        decode_from_follower(frame, RECEIVER)


def test_a_clean_end_of_stream_is_none() -> None:
    assert read_frame(io.BytesIO(b"")) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1", ("127.0.0.1", 0)),
        ("127.0.0.1:8123", ("127.0.0.1", 8123)),
        ("[::1]:9", ("::1", 9)),
    ],
)
def test_quota_addresses(text: str, expected: tuple[str, int]) -> None:
    assert parse_address(text) == expected


@pytest.mark.parametrize(
    ("text", "problem"),
    [(":80", "no host"), ("host:http", "is not a number"), ("host:70000", "outside 0..65535")],
)
def test_a_bad_quota_address_names_the_problem(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_address(text)


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--quota-address", "127.0.0.1:http"], "quota address '127.0.0.1:http'"),
        (["--quota-lease-s", "0"], "quota_lease_s must be > 0"),
    ],
)
def test_the_daemon_refuses_bad_sharing_flags_before_touching_the_database(
    tmp_path: Path, flags: list[str], named: str
) -> None:
    db = tmp_path / "queue.sqlite"
    out, err = io.StringIO(), io.StringIO()
    assert main(["daemon", "--db", str(db), *flags], stdout=out, stderr=err) == 2
    assert named in err.getvalue()
    assert not db.exists()


def test_a_wake_and_the_budget_question_cross_the_wire() -> None:
    """A follower's wall-clock step wakes the owner's registry, and a
    follower's runtime with a [budget] asks the owner for the day's budget."""
    assert through_the_wire(Wake(7)) == Wake(-1)
    frame = read_frame(io.BytesIO(pack_frame(encode_ask(3, GetBudgetState()))))
    assert frame is not None
    assert decode_from_follower(frame, RECEIVER) is GetBudgetState
    budget = BudgetState(
        usd_per_day=5.0,
        day=20_000,
        spent_usd=1.25,
        committed_usd=1.5,
        resets_at=1_800_000_000.0,
        on_exhausted=OnExhausted.STOP,
        tiers=(
            TierBudget("hot", 1.0, 1.2, None, 0.5, True),
            TierBudget("cold", 0.25, 0.3, 1.0, 0.0, False),
        ),
        waiting=(("cold", 4),),
    )
    answer = encode_answer(3, GetBudgetState, budget, RECEIVER)
    sent = read_frame(io.BytesIO(pack_frame(answer)))
    assert sent is not None
    assert decode_answer(GetBudgetState, sent["value"], SENDER) == budget
    assert decode_answer(GetBudgetState, None, SENDER) is None

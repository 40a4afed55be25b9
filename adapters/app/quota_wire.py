"""The shared quota's wire: the registry's messages between daemons.

One TCP connection per follower to the quota's owner. Every frame is a
4-byte big-endian length and a msgpack map; ``"k"`` names its kind. The
messages are the registry's own (``actors.messages``), written field by
field -- never pickled, so a peer can send nothing but data:

    follower -> owner                       owner -> follower
    hello     {daemon, version}             welcome  {owner, epoch}
    acquire   Acquire without its reply     granted  {request_id, holder, grant}
    report    {grant_id, outcome}           failed   {request_id, holder, reason, detail}
    sent      {grant_id, at}                answer   {id, value} or {id, error}
    withdraw  {request_id, holder}
    release   {holder}
    backlog   {tiers}
    adopt     {holder, grants}
    ask       {id, what: status | snapshot | plan}

Times cross the wire as wall-clock seconds: each side's steady clock has its
own origin, so the sender adds its wall offset and the receiver subtracts
its own (``wall``/``steady``). Holder and request ids are the follower's;
the owner namespaces holders per connection.

Longer than the house's ~450 lines on purpose: one encoder and decoder per
message and outcome type; the wire format is reviewed in one file.
"""

from __future__ import annotations

import math
import socket
import struct
from collections.abc import Mapping
from typing import Any

import msgpack

from tierbatch.actors.messages import (
    Acquire,
    AcquireFailed,
    AdoptGrants,
    Backlog,
    CommitBatch,
    GetBudgetState,
    GetPlan,
    GetQuotaSnapshot,
    GetQuotaStatus,
    Granted,
    ReleaseHolder,
    Report,
    Sent,
    SettleBatch,
    Wake,
    Withdraw,
)
from tierbatch.policies.backlog import TierBacklog
from tierbatch.policies.budget import BudgetState, OnExhausted, TierBudget
from tierbatch.policies.errors import TierbatchError
from tierbatch.policies.outcomes import (
    Abandoned,
    AuthFailed,
    BadRequest,
    CallOutcome,
    Cancelled,
    ModelNotFound,
    RateLimited,
    RateLimitScope,
    ServerError,
    Succeeded,
    TimedOut,
    Usage,
)
from tierbatch.policies.planner import Binding, Plan, TierPlan
from tierbatch.policies.quota import Grant, ModelStatus, OutstandingGrant

__all__ = [
    "PROTOCOL_VERSION",
    "FrameError",
    "decode_answer",
    "decode_from_follower",
    "decode_grant",
    "encode_answer",
    "encode_to_owner",
    "read_frame",
    "write_frame",
]

# 2: batch jobs commit to and settle in the owner's daily budget.
PROTOCOL_VERSION = 2
MAX_FRAME = 64 * 1024 * 1024  # a quota snapshot of a large window fits many times
_LENGTH = struct.Struct(">I")

ASKS: dict[str, type] = {
    "status": GetQuotaStatus,
    "snapshot": GetQuotaSnapshot,
    "plan": GetPlan,
    "budget": GetBudgetState,
    "commit_batch": CommitBatch,
}
ASK_NAMES = {kind: name for name, kind in ASKS.items()}


class FrameError(TierbatchError, ValueError):
    """A frame that is not one of ours: the connection is dropped."""


# ---- framing ---------------------------------------------------------------------


def pack_frame(message: Mapping[str, Any]) -> bytes:
    payload: bytes = msgpack.packb(dict(message), use_bin_type=True)
    return _LENGTH.pack(len(payload)) + payload


def write_frame(sock: socket.socket, message: Mapping[str, Any]) -> None:
    sock.sendall(pack_frame(message))


def read_frame(stream: Any) -> dict[str, Any] | None:
    """The next frame from a buffered reader (``sock.makefile("rb")``); None
    at a clean end of the stream. Raises ``FrameError`` for garbage."""
    header = stream.read(_LENGTH.size)
    if not header:
        return None
    if len(header) < _LENGTH.size:
        raise FrameError("connection ended inside a frame header")
    (length,) = _LENGTH.unpack(header)
    if length > MAX_FRAME:
        raise FrameError(f"frame of {length} bytes is over the limit of {MAX_FRAME}")
    payload = stream.read(length)
    if len(payload) < length:
        raise FrameError("connection ended inside a frame")
    try:
        message = msgpack.unpackb(payload, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types
        raise FrameError(f"frame is not msgpack: {exc}") from None
    if not isinstance(message, dict) or not isinstance(message.get("k"), str):
        raise FrameError("frame is not a message map")
    return message


# ---- times -------------------------------------------------------------------------


def wall(steady: float | None, offset: float) -> float | None:
    return None if steady is None else steady + offset


def steady(wall_time: float | None, offset: float) -> float | None:
    return None if wall_time is None else float(wall_time) - offset


# ---- follower -> owner ---------------------------------------------------------------


def encode_to_owner(message: Any, offset: float) -> dict[str, Any]:
    """A registry message (or an ask, with ``encode_ask``) as a frame;
    ``offset`` is the sender's wall offset now. Raises ``TypeError`` for a
    message that does not cross the wire."""
    match message:
        case Acquire():
            return {
                "k": "acquire",
                "request_id": message.request_id,
                "holder": message.holder,
                "chain": list(message.chain),
                "est_tokens": message.est_tokens,
                "tier_rank": message.tier_rank,
                "enqueued_at": wall(message.enqueued_at, offset),
                "deadline": wall(message.deadline, offset),
                "patience_s": message.patience_s,
                "tier": message.tier,
            }
        case Report(grant_id, outcome):
            return {"k": "report", "grant_id": grant_id, "outcome": encode_outcome(outcome)}
        case Sent(grant_id, at, tokens):
            return {"k": "sent", "grant_id": grant_id, "at": wall(at, offset), "tokens": tokens}
        case Withdraw(request_id, holder):
            return {"k": "withdraw", "request_id": request_id, "holder": holder}
        case ReleaseHolder(holder):
            return {"k": "release", "holder": holder}
        case Wake():  # the sender's clock stepped: the owner reads its own
            return {"k": "wake"}
        case SettleBatch(job_id, tier, usd, submitted_at):  # wall-clock time already
            return {
                "k": "settle_batch",
                "job": job_id,
                "tier": tier,
                "usd": usd,
                "submitted_at": submitted_at,
            }
        case Backlog(tiers):
            return {
                "k": "backlog",
                "tiers": [
                    [t.tier, t.articles, t.tokens_per_article, t.arrivals_per_s] for t in tiers
                ],
            }
        case AdoptGrants(holder, grants):
            return {
                "k": "adopt",
                "holder": holder,
                "grants": [
                    [
                        g.grant_id,
                        g.model,
                        g.est_tokens,
                        wall(g.granted_at, offset),
                        wall(g.sent_at, offset),
                        g.in_flight,
                    ]
                    for g in grants
                ],
            }
    raise TypeError(f"not a message for the quota's owner: {message!r}")


def encode_ask(ask_id: int, message: Any) -> dict[str, Any]:
    name = ASK_NAMES.get(type(message))
    if name is None:
        raise TypeError(f"not a question for the quota's owner: {message!r}")
    frame: dict[str, Any] = {"k": "ask", "id": ask_id, "what": name}
    if isinstance(message, CommitBatch):
        frame["job"] = message.job_id
        frame["tier"] = message.tier
        frame["model"] = message.model
        frame["tokens"] = list(message.request_tokens)
        frame["discount"] = message.discount
    return frame


def decode_from_follower(frame: Mapping[str, Any], offset: float) -> Any:
    """The registry message of a follower's frame (``Acquire`` with a reply
    that does nothing: the owner attaches its own), or the ask's message
    type for an ``ask`` (the message itself for one with fields:
    ``CommitBatch``); ``offset`` is the owner's wall offset now. Raises
    ``FrameError`` naming what is wrong."""
    try:
        return _decode_from_follower(frame, offset)
    except FrameError:
        raise
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise FrameError(f"bad {frame.get('k')!r} frame: {exc!r}") from None


def _decode_from_follower(f: Mapping[str, Any], offset: float) -> Any:
    kind = f["k"]
    if kind == "acquire":
        return Acquire(
            request_id=_int(f["request_id"]),
            holder=_int(f["holder"]),
            chain=tuple(str(m) for m in f["chain"]),
            est_tokens=_int(f["est_tokens"]),
            tier_rank=_int(f["tier_rank"]),
            enqueued_at=_num(steady(f["enqueued_at"], offset)),
            reply=_nobody,
            deadline=steady(f["deadline"], offset),
            patience_s=_num(f["patience_s"]),
            tier=str(f["tier"]),
        )
    if kind == "report":
        return Report(_int(f["grant_id"]), decode_outcome(f["outcome"]))
    if kind == "sent":
        # (a peer of an earlier version sends no tokens: what was granted)
        return Sent(_int(f["grant_id"]), _num(steady(f["at"], offset)), _int(f.get("tokens", 0)))
    if kind == "withdraw":
        return Withdraw(_int(f["request_id"]), _int(f["holder"]))
    if kind == "release":
        return ReleaseHolder(_int(f["holder"]))
    if kind == "wake":
        return Wake(-1)
    if kind == "settle_batch":
        return SettleBatch(str(f["job"]), str(f["tier"]), _num(f["usd"]), _num(f["submitted_at"]))
    if kind == "backlog":
        return Backlog(
            tuple(
                TierBacklog(str(tier), _int(articles), _num(tokens), _num(arrivals))
                for tier, articles, tokens, arrivals in f["tiers"]
            )
        )
    if kind == "adopt":
        return AdoptGrants(
            _int(f["holder"]),
            tuple(
                OutstandingGrant(
                    _int(grant_id),
                    str(model),
                    _int(est),
                    _num(steady(granted, offset)),
                    steady(sent, offset),
                    bool(in_flight),
                )
                for grant_id, model, est, granted, sent, in_flight in f["grants"]
            ),
        )
    if kind == "ask":
        what = ASKS.get(f["what"])
        if what is None:
            raise FrameError(f"unknown question {f['what']!r}")
        if what is CommitBatch:
            return CommitBatch(
                str(f["job"]),
                str(f["tier"]),
                str(f["model"]),
                tuple(_int(t) for t in f["tokens"]),
                _num(f["discount"]),
            )
        return what
    raise FrameError(f"unknown message kind {kind!r}")


def _nobody(_answer: Any) -> None:
    """The reply of a decoded Acquire until the owner attaches its own."""


# ---- owner -> follower -------------------------------------------------------------


def encode_reply(holder: int, answer: Granted | AcquireFailed, offset: float) -> dict[str, Any]:
    """The registry's answer to a follower's Acquire (``holder`` its own id)."""
    if isinstance(answer, Granted):
        g = answer.grant
        return {
            "k": "granted",
            "request_id": answer.request_id,
            "holder": holder,
            "grant": [g.grant_id, g.model, wall(g.granted_at, offset), g.est_tokens],
        }
    return {
        "k": "failed",
        "request_id": answer.request_id,
        "holder": holder,
        "reason": answer.reason,
        "detail": answer.detail,
    }


def decode_grant(frame: Mapping[str, Any], offset: float) -> Granted | AcquireFailed:
    """A ``granted`` or ``failed`` frame, in the follower's steady time."""
    try:
        if frame["k"] == "granted":
            grant_id, model, granted_at, est = frame["grant"]
            return Granted(
                _int(frame["request_id"]),
                Grant(_int(grant_id), str(model), _num(steady(granted_at, offset)), _int(est)),
            )
        return AcquireFailed(
            _int(frame["request_id"]), str(frame["reason"]), str(frame.get("detail", ""))
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise FrameError(f"bad {frame.get('k')!r} frame: {exc!r}") from None


def encode_answer(ask_id: int, what: type, value: Any, offset: float) -> dict[str, Any]:
    """The owner's answer to an ask; ``value`` is the registry's answer."""
    if what is GetQuotaStatus:
        encoded: Any = [_encode_status(s, offset) for s in value]
    elif what is GetPlan:
        encoded = None if value is None else _encode_plan(value)
    elif what is GetBudgetState:
        encoded = None if value is None else _encode_budget(value)
    else:  # a snapshot: plain data with wall-clock times already
        encoded = value
    return {"k": "answer", "id": ask_id, "value": encoded}


def decode_answer(what: type, value: Any, offset: float) -> Any:
    try:
        if what is GetQuotaStatus:
            return tuple(_decode_status(s, offset) for s in value)
        if what is GetPlan:
            return None if value is None else _decode_plan(value)
        if what is GetBudgetState:
            return None if value is None else _decode_budget(value)
        if what is CommitBatch:
            return _int(value)
        return value
    except (KeyError, TypeError, ValueError) as exc:
        raise FrameError(f"bad answer: {exc!r}") from None


# ---- outcomes, statuses, plans -------------------------------------------------------


def encode_outcome(outcome: CallOutcome) -> dict[str, Any]:
    match outcome:
        case Succeeded(usage):
            return {"t": "ok", "in": usage.input_tokens, "out": usage.output_tokens}
        case RateLimited(scope, delay, message):
            return {"t": "429", "scope": str(scope), "delay": delay, "msg": message}
        case ServerError(status, message):
            return {"t": "5xx", "status": status, "msg": message}
        case TimedOut(after_s):
            return {"t": "timeout", "after": after_s}
        case BadRequest(message):
            return {"t": "400", "msg": message}
        case AuthFailed(status, message):
            return {"t": "auth", "status": status, "msg": message}
        case ModelNotFound(message):
            return {"t": "404", "msg": message}
        case Abandoned():
            return {"t": "abandoned"}
        case Cancelled():
            return {"t": "cancelled"}
    raise TypeError(f"not a CallOutcome: {outcome!r}")


def decode_outcome(o: Mapping[str, Any]) -> CallOutcome:
    kind = o["t"]
    if kind == "ok":
        return Succeeded(Usage(_int(o["in"]), _int(o["out"])))
    if kind == "429":
        delay = o["delay"]
        return RateLimited(
            RateLimitScope(o["scope"]), None if delay is None else _num(delay), str(o["msg"])
        )
    if kind == "5xx":
        status = o["status"]
        return ServerError(None if status is None else _int(status), str(o["msg"]))
    if kind == "timeout":
        return TimedOut(_num(o["after"]))
    if kind == "400":
        return BadRequest(str(o["msg"]))
    if kind == "auth":
        return AuthFailed(_int(o["status"]), str(o["msg"]))
    if kind == "404":
        return ModelNotFound(str(o["msg"]))
    if kind == "abandoned":
        return Abandoned()
    if kind == "cancelled":
        return Cancelled()
    raise ValueError(f"unknown outcome {kind!r}")


_STATUS_NUMBERS = (
    "requests_in_window",
    "tokens_in_window",
    "requests_today",
    "in_flight",
    "configured_rpm",
    "configured_tpm",
    "learnt_rpm",
    "learnt_tpm",
)


def _encode_status(s: ModelStatus, offset: float) -> dict[str, Any]:
    out: dict[str, Any] = {name: getattr(s, name) for name in _STATUS_NUMBERS}
    out.update(
        model=s.model,
        cooldown_until=wall(s.cooldown_until, offset),
        cooldown_reason=None if s.cooldown_reason is None else str(s.cooldown_reason),
        exhausted_until=wall(s.exhausted_until, offset),
        unavailable=s.unavailable,
        counters=dict(s.counters),
        burst=s.burst,
        limiter=s.limiter,
    )
    return out


def _decode_status(s: Mapping[str, Any], offset: float) -> ModelStatus:
    reason = s["cooldown_reason"]
    unavailable = s["unavailable"]
    return ModelStatus(
        model=str(s["model"]),
        cooldown_until=steady(s["cooldown_until"], offset),
        cooldown_reason=None if reason is None else str(reason),
        exhausted_until=steady(s["exhausted_until"], offset),
        unavailable=None if unavailable is None else str(unavailable),
        counters={str(k): v for k, v in s["counters"].items()},
        burst=_num(s["burst"]),
        limiter=str(s["limiter"]),
        **{name: _int(s[name]) for name in _STATUS_NUMBERS},
    )


def _encode_plan(plan: Plan) -> dict[str, Any]:
    return {
        "tiers": [
            {
                "tier": t.tier,
                "rank": t.rank,
                "demand": t.demand,
                "requests": dict(t.requests),
                "finish_s": t.finish_s,
                "binding": [[b.model, b.kind] for b in t.binding],
                "chain": list(t.chain),
            }
            for t in plan.tiers
        ],
        "makespan_s": plan.makespan_s,
        "horizon_s": plan.horizon_s,
        "spare": dict(plan.spare),
    }


def _decode_plan(p: Mapping[str, Any]) -> Plan:
    return Plan(
        tiers=tuple(
            TierPlan(
                tier=str(t["tier"]),
                rank=_int(t["rank"]),
                demand=_num(t["demand"]),
                requests={str(m): _num(n) for m, n in t["requests"].items()},
                finish_s=None if t["finish_s"] is None else _num(t["finish_s"]),
                binding=tuple(Binding(str(m), str(k)) for m, k in t["binding"]),
                chain=tuple(str(m) for m in t["chain"]),
            )
            for t in p["tiers"]
        ),
        makespan_s=None if p["makespan_s"] is None else _num(p["makespan_s"]),
        horizon_s=_num(p["horizon_s"]),
        spare={str(m): _num(n) for m, n in p["spare"].items()},
    )


def _encode_budget(b: BudgetState) -> list[Any]:
    """Its times are wall-clock already (``resets_at``)."""
    return [
        b.usd_per_day,
        b.day,
        b.spent_usd,
        b.committed_usd,
        b.resets_at,
        str(b.on_exhausted),
        [
            [
                t.tier,
                t.spent_usd,
                t.committed_usd,
                t.cap_usd,
                t.reserved_usd,
                t.may_spend,
                t.batch_usd,
                t.backlog_usd,
                t.moved,
            ]
            for t in b.tiers
        ],
        [[tier, n] for tier, n in b.waiting],
    ]


def _decode_budget(b: Any) -> BudgetState:
    usd, day, spent, committed, resets_at, on_exhausted, tiers, waiting = b
    return BudgetState(
        _num(usd),
        _int(day),
        _num(spent),
        _num(committed),
        _num(resets_at),
        OnExhausted(on_exhausted),
        tuple(
            TierBudget(
                str(tier),
                _num(s),
                _num(c),
                None if cap is None else _num(cap),
                _num(r),
                bool(m),
                _num(batch),
                _num(backlog),
                bool(moved),
            )
            for tier, s, c, cap, r, m, batch, backlog, moved in tiers
        ),
        tuple((str(tier), _int(n)) for tier, n in waiting),
    )


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {value!r}")
    return value


def _num(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise TypeError(f"expected a number, got {value!r}")
    return float(value)

"""The quota snapshot: ``QuotaPolicy``'s state as plain data
(str/int/float/list/dict/None, for msgpack or JSON) and back.

Its times are wall-clock times (steady + the offset at save time); loading
converts them with the offset of the restoring process. Every field is
checked as it is read: anything but a well-formed snapshot of this format
and version raises ``SnapshotError`` naming the field.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Final

from tierbatch.policies.errors import SnapshotError
from tierbatch.policies.quota_state import CooldownReason, Held, ModelState, WindowEntry
from tierbatch.policies.rolling_window import RollingWindow

__all__ = ["SNAPSHOT_FORMAT", "SNAPSHOT_VERSION", "dump", "dump_model", "load", "load_model"]

SNAPSHOT_FORMAT: Final = "tierbatch.quota"
SNAPSHOT_VERSION: Final = 1


def dump(
    next_grant_id: int,
    models: Mapping[str, ModelState],
    held: Mapping[int, Held],
    wall_offset: float,
) -> dict[str, Any]:
    """The policy's state as plain data; ``load`` of it, with the offset at
    load time, gives the same state."""
    return {
        "format": SNAPSHOT_FORMAT,
        "version": SNAPSHOT_VERSION,
        "next_grant_id": next_grant_id,
        "models": {name: dump_model(state, wall_offset) for name, state in models.items()},
        "in_flight": [
            [gid, h.state.name, h.entry.granted_at + wall_offset, h.est_tokens, h.entry.day]
            for gid, h in sorted(held.items())
        ],
    }


def load(
    data: Mapping[str, Any],
    models: Mapping[str, ModelState],
    window_s: float,
    wall_offset: float,
) -> tuple[dict[int, Held], int]:
    """Load ``data`` into ``models`` (the configured models' fresh states;
    models of the snapshot not among them are dropped, with their grants in
    flight). Returns the grants in flight and the next grant id."""
    if not isinstance(data, Mapping):
        raise SnapshotError(f"a quota snapshot is a mapping, got {type(data).__name__}")
    if data.get("format") != SNAPSHOT_FORMAT:
        raise SnapshotError(f"not a quota snapshot (format {data.get('format')!r})")
    if data.get("version") != SNAPSHOT_VERSION:
        raise SnapshotError(
            f"unsupported quota snapshot version {data.get('version')!r} "
            f"(this build reads version {SNAPSHOT_VERSION})"
        )
    next_grant_id = _int(data["next_grant_id"], "next_grant_id")
    saved_models = _mapping(data["models"], "models")
    entries: dict[int, tuple[ModelState, WindowEntry]] = {}
    for name, saved in saved_models.items():
        state = models.get(name)
        if state is not None:
            load_model(state, _mapping(saved, f"models[{name!r}]"), entries, window_s, wall_offset)
    held: dict[int, Held] = {}
    for item in _list(data["in_flight"], "in_flight"):
        grant_id, name, granted_at, est_tokens, day = _list(item, "in_flight entry")
        grant_id, est_tokens = _int(grant_id, "grant id"), _int(est_tokens, "est_tokens")
        if grant_id in held:
            raise SnapshotError(f"grant {grant_id} is in flight twice")
        state = models.get(_str(name, "in-flight model"))
        if state is None:
            continue
        found = entries.get(grant_id)
        if found is not None and found[0] is state:
            entry = found[1]
        else:  # its window entry had expired: only the in-flight slot remains
            granted = _float(granted_at, "granted_at") - wall_offset
            entry = WindowEntry(grant_id, granted, granted + window_s, est_tokens, _int(day, "day"))
        held[grant_id] = Held(state, entry, est_tokens)
        state.in_flight += 1
    highest = max([*entries, *held], default=0)
    if next_grant_id <= highest:
        raise SnapshotError(f"next_grant_id {next_grant_id} <= a recorded grant id {highest}")
    return held, next_grant_id


def load_model(
    state: ModelState,
    saved: Mapping[str, Any],
    entries: dict[int, tuple[ModelState, WindowEntry]],
    window_s: float,
    wall_offset: float,
) -> None:
    """Load one model's saved state into ``state``; its window entries are
    added to ``entries`` (grant id -> state and entry)."""
    window: list[WindowEntry] = []
    for item in _list(saved["window"], "window"):
        fields = _list(item, "window entry")
        if len(fields) not in (4, 5):
            raise SnapshotError(f"window entry: expected 4 or 5 fields, got {fields!r}")
        grant_id, granted_at, tokens, day = fields[:4]
        granted = _float(granted_at, "granted_at") - wall_offset
        expires = (
            _float(fields[4], "expires_at") - wall_offset
            if len(fields) == 5
            else granted + window_s
        )
        entry = WindowEntry(
            _int(grant_id, "grant id"),
            granted,
            expires,
            _int(tokens, "tokens"),
            _int(day, "day"),
        )
        if entry.grant_id in entries:
            raise SnapshotError(f"grant {entry.grant_id} is in a window twice")
        entries[entry.grant_id] = (state, entry)
        window.append(entry)
    window.sort(key=lambda e: e.expires_at)
    state.window = RollingWindow()
    state.entries = {}
    for entry in window:
        entry.handle = state.window.add(entry.expires_at, entry.tokens)
        state.entries[entry.handle] = entry
    estimate = saved.get("estimate")
    if estimate is not None:
        try:
            state.estimate.restore(dict(_mapping(estimate, "estimate")))
        except (KeyError, TypeError, ValueError) as exc:
            raise SnapshotError(f"models[{state.name!r}].estimate: {exc}") from exc
    state.day = _opt_int(saved["day"], "day")
    state.requests_today = _int(saved["requests_today"], "requests_today")
    state.cooldown_until = _steady_or_none(
        _opt_float(saved["cooldown_until"], "cooldown_until"), wall_offset
    )
    reason = saved["cooldown_reason"]
    state.cooldown_reason = None if reason is None else CooldownReason(reason)
    state.exhausted_until = _steady_or_none(
        _opt_float(saved["exhausted_until"], "exhausted_until"), wall_offset
    )
    unavailable = saved["unavailable"]
    state.unavailable = None if unavailable is None else _str(unavailable, "unavailable")
    state.consecutive_429s = _int(saved["consecutive_429s"], "consecutive_429s")
    state.consecutive_errors = _int(saved["consecutive_errors"], "consecutive_errors")
    for key, value in _mapping(saved["counters"], "counters").items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise SnapshotError(f"counter {key!r} is not a number: {value!r}")
        state.counters[_str(key, "counter name")] = value


def dump_model(state: ModelState, wall_offset: float) -> dict[str, Any]:
    """One model's state as plain data, its times on the wall clock."""
    window = []
    for handle, expires_at, tokens in state.window.entries():
        e = state.entries.get(handle)
        if e is not None:
            window.append(
                [e.grant_id, e.granted_at + wall_offset, tokens, e.day, expires_at + wall_offset]
            )

    return {
        "window": window,
        "day": state.day,
        "requests_today": state.requests_today,
        "cooldown_until": _wall_or_none(state.cooldown_until, wall_offset),
        "cooldown_reason": None if state.cooldown_reason is None else str(state.cooldown_reason),
        "exhausted_until": _wall_or_none(state.exhausted_until, wall_offset),
        "unavailable": state.unavailable,
        "consecutive_429s": state.consecutive_429s,
        "consecutive_errors": state.consecutive_errors,
        "estimate": state.estimate.snapshot(),
        "counters": dict(state.counters),
    }


# Snapshot field readers: each raises SnapshotError naming the field.


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SnapshotError(f"{what}: expected an integer, got {value!r}")
    return value


def _opt_int(value: Any, what: str) -> int | None:
    return None if value is None else _int(value, what)


def _float(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise SnapshotError(f"{what}: expected a number, got {value!r}")
    return float(value)


def _opt_float(value: Any, what: str) -> float | None:
    return None if value is None else _float(value, what)


def _str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise SnapshotError(f"{what}: expected a string, got {value!r}")
    return value


def _list(value: Any, what: str) -> list[Any]:
    if not isinstance(value, list | tuple):
        raise SnapshotError(f"{what}: expected a list, got {type(value).__name__}")
    return list(value)


def _mapping(value: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise SnapshotError(f"{what}: expected a mapping, got {type(value).__name__}")
    return value


def _steady_or_none(wall: float | None, wall_offset: float) -> float | None:
    return None if wall is None else wall - wall_offset


def _wall_or_none(steady: float | None, wall_offset: float) -> float | None:
    return None if steady is None else steady + wall_offset

"""Per-model quota: rolling windows, cooldowns, daily limits, in-flight caps.

``QuotaPolicy`` decides, for a request of ``est_tokens`` input tokens and a
fallback chain of models, which model may be called *now* -- or exactly when
one could be, so the ModelRegistry actor can park the caller and arm a
single timer instead of letting anyone sleep on a guess.

Every limit is a deadline or a count compared with ``now`` at the moment of
each decision; nothing expires because a timer fired. That is what keeps a
later, longer cooldown from being cut short by an earlier, shorter one (the
bug of the original TaskManager and of LiteLLM's cooldown cache).

Limits, each scaled by ``QuotaConfig.utilisation`` (0 = unlimited):

* ``rpm`` requests and ``tpm`` input tokens per rolling window of
  ``window_s + margin_s`` seconds: a grant at ``t`` occupies the window
  over ``[t, t + window_s + margin_s)``;
* ``rpd`` requests per local calendar day of ``QuotaConfig.timezone``;
* ``max_in_flight`` grants not yet reported.

Window sums are kept running (``requests``/``tokens`` per model) and expired
entries are dropped from the front of a time-ordered deque when a mutating
call passes their expiry, so a grant costs O(1) amortised; read-only calls
(``earliest``, ``can_grant``, ``next_event``, ``status``, ``snapshot``) never
change state and so may be asked about any ``now``.

Two timelines. ``now`` is *steady* time (a monotonic clock's seconds, any
origin): every window, cooldown, backoff and deadline here lives on it, so a
step of the wall clock neither frees a window early nor stretches it by an
hour. The calendar day is wall-clock time, so every call that needs it also
takes ``wall_offset``: the wall clock reads ``now + wall_offset`` at that
moment. Days are the only thing it changes; deadlines derived from a day
(the next midnight) are converted back to steady time. Snapshots hold
wall-clock times (steady + the offset at save time) and ``restore`` converts
them with the offset of the restoring process, whose steady origin differs.
With the default offset 0 the two timelines coincide, as for a caller that
simply passes epoch seconds.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any, Final, assert_never

from tierbatch.policies.config import ModelSpec, QuotaConfig
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
)
from tierbatch.policies.pacific_day import LocalCalendar

__all__ = [
    "COUNTER_NAMES",
    "DAY_BOUNDARY_SLACK_S",
    "SNAPSHOT_FORMAT",
    "SNAPSHOT_VERSION",
    "AcquireResult",
    "CooldownReason",
    "Grant",
    "ModelStatus",
    "NoRoute",
    "QuotaPolicy",
    "SnapshotError",
    "Wait",
    "backoff_delay",
    "scaled_limit",
]

SNAPSHOT_FORMAT: Final = "tierbatch.quota"
SNAPSHOT_VERSION: Final = 1

_MAX_BACKOFF_EXPONENT: Final = 62  # 2**62 s outlasts any backoff_max_s; avoids float overflow

DAY_BOUNDARY_SLACK_S: Final = 300.0
"""How near a local midnight a per-day 429's own ``retryDelay`` is trusted
(see ``QuotaPolicy.report``): our midnight and the provider's count may
disagree by this much. Farther from midnight a short ``retryDelay`` on a
per-day 429 is not a reset time -- Gemini sends per-minute-sized delays
with per-day violations -- and the day's end stands."""


@dataclass(frozen=True, slots=True)
class Grant:
    """Permission to send one request to ``model`` now.

    Every grant must be answered by exactly one ``QuotaPolicy.report``
    (``Cancelled`` when the request was never sent) or it holds an
    in-flight slot until ``forget_in_flight``.
    """

    grant_id: int
    model: str
    granted_at: float
    est_tokens: int


@dataclass(frozen=True, slots=True)
class Wait:
    """No model of the chain can take the request now.

    ``until`` is exactly the earliest moment one of them can, given the
    current state; None when only an event (an in-flight request of a
    capped model being reported) can free capacity.
    """

    until: float | None


@dataclass(frozen=True, slots=True)
class NoRoute:
    """No model of the chain can ever take the request: each is unknown,
    unavailable (404), or too small for ``est_tokens``. Waiting is pointless;
    the caller must fail or re-pack the request."""

    reason: str


AcquireResult = Grant | Wait | NoRoute


class CooldownReason(StrEnum):
    """Why a model is cooling down (the reason of its latest deadline).

    ``RATE_LIMITED``: a 429 on requests per minute, or of unknown scope;
    ``TOKENS_LIMITED``: a 429 on input tokens per minute;
    ``SERVER_ERRORS``: ``server_error_threshold`` consecutive 5xx/timeouts.
    A per-day 429 is not a cooldown: it sets ``exhausted_until``.
    """

    RATE_LIMITED = "rate_limited"
    TOKENS_LIMITED = "tokens_limited"
    SERVER_ERRORS = "server_errors"


@dataclass(frozen=True, slots=True)
class ModelStatus:
    """A read-only view of one model's quota state, for stats and metrics.

    Window and day counts are as of the ``now`` passed to ``status``;
    ``cooldown_until``/``exhausted_until`` are None once passed.
    ``exhausted_until`` is also set when the day's request count has
    reached ``rpd``. ``counters`` are cumulative (see ``COUNTER_NAMES``).
    """

    model: str
    requests_in_window: int
    tokens_in_window: int
    requests_today: int
    in_flight: int
    cooldown_until: float | None
    cooldown_reason: str | None
    exhausted_until: float | None
    unavailable: str | None
    counters: Mapping[str, int | float] = field(hash=False)


class SnapshotError(ValueError):
    """A snapshot is corrupt, of another format or of an unsupported version."""


def scaled_limit(limit: int, utilisation: float) -> int:
    """``limit`` scaled by ``utilisation``, floored but at least 1; 0 stays 0
    (unlimited). A relative epsilon keeps 100 * 0.29 from flooring to 28."""
    if limit <= 0:
        return 0
    scaled = limit * utilisation
    return max(1, math.floor(scaled + 1e-9 * max(1.0, scaled)))


def backoff_delay(base_s: float, max_s: float, exponent: int) -> float:
    """Bounded exponential backoff: ``min(base_s * 2**exponent, max_s)``."""
    return min(base_s * 2.0 ** min(max(exponent, 0), _MAX_BACKOFF_EXPONENT), max_s)


COUNTER_NAMES: Final = (
    "granted",
    "succeeded",
    "rate_limited",  # every 429, any scope
    "rate_limited_day",  # 429s on requests per day (also counted in rate_limited)
    "server_errors",
    "timeouts",
    "other_errors",  # bad_requests + auth_failures + not_found
    "bad_requests",
    "auth_failures",
    "not_found",
    "abandoned",
    "cancelled",
    "input_tokens",  # as reported by Succeeded usage
    "output_tokens",
)
"""Integer counters of every model; ``cooldown_s`` (float) is added to them:
the seconds by which cooldowns extended the model's cooldown deadline, so
overlapping 429s are not counted twice."""


def _fresh_counters() -> dict[str, int | float]:
    counters: dict[str, int | float] = dict.fromkeys(COUNTER_NAMES, 0)
    counters["cooldown_s"] = 0.0
    return counters


@dataclass(frozen=True, slots=True)
class _Limits:
    rpm: int
    tpm: int
    rpd: int
    max_in_flight: int
    max_input_tokens: int

    @classmethod
    def of(cls, spec: ModelSpec, utilisation: float) -> _Limits:
        # max_input_tokens is the model's context size, not a quota: not scaled.
        return cls(
            rpm=scaled_limit(spec.rpm, utilisation),
            tpm=scaled_limit(spec.tpm, utilisation),
            rpd=scaled_limit(spec.rpd, utilisation),
            max_in_flight=scaled_limit(spec.max_in_flight, utilisation),
            max_input_tokens=max(spec.max_input_tokens, 0),
        )


@dataclass(slots=True, eq=False)
class _Entry:
    """One grant's footprint in its model's window. ``counted`` is whether
    it is still in the running sums: False once expired (pruned) or
    refunded by ``Cancelled``."""

    grant_id: int
    granted_at: float
    expires_at: float
    tokens: int
    day: int
    counted: bool = True


@dataclass(slots=True, eq=False)
class _ModelState:
    name: str
    limits: _Limits
    window: deque[_Entry] = field(default_factory=deque)
    requests: int = 0  # counted entries in window (expired ones until pruned)
    tokens: int = 0  # their tokens
    day: int | None = None  # the local day requests_today counts
    requests_today: int = 0
    in_flight: int = 0
    cooldown_until: float | None = None
    cooldown_reason: CooldownReason | None = None
    exhausted_until: float | None = None
    unavailable: str | None = None
    consecutive_429s: int = 0
    consecutive_errors: int = 0
    skew: float = 0.0  # how far the provider's window runs behind ours (learnt)
    counters: dict[str, int | float] = field(default_factory=_fresh_counters)


@dataclass(slots=True, eq=False)
class _Held:
    state: _ModelState
    entry: _Entry
    est_tokens: int


class QuotaPolicy:
    """The quota state of every configured model, and the decisions on it.

    Not thread-safe: one owner (the ModelRegistry actor) calls it. ``now``
    is steady time and is expected not to go backwards; if it does, nothing
    breaks, but entries already expired stay expired. ``wall_offset`` is
    the wall clock minus steady time at that moment (see the module
    docstring); if the wall clock steps back across midnight, a model keeps
    counting the later day it has already granted in.
    """

    def __init__(self, models: Mapping[str, ModelSpec], quota: QuotaConfig) -> None:
        self._quota = quota
        self._window_s = quota.window_s + quota.margin_s
        self._calendar = LocalCalendar(quota.timezone)
        self._models: dict[str, _ModelState] = {
            name: _ModelState(name, _Limits.of(spec, quota.utilisation))
            for name, spec in models.items()
        }
        self._held: dict[int, _Held] = {}
        self._next_grant_id = 1

    # -- decisions ---------------------------------------------------------

    def acquire(
        self,
        chain: Sequence[str],
        est_tokens: int,
        now: float,
        patience_s: float = 0.0,
        *,
        wall_offset: float = 0.0,
    ) -> AcquireResult:
        """A grant on the first model of ``chain`` that can take the request
        now; else when one can (``Wait``), or that none ever can (``NoRoute``).

        ``patience_s``: when the first usable model of the chain (the
        primary) cannot take the request now but can within this many
        seconds, wait for it (``Wait`` at that moment) instead of granting a
        fallback -- a little latency for the best model, rather than a
        fallback taken because two windows happened to free a moment apart.
        Duplicates and unknown names in ``chain`` are skipped.
        """
        _check_tokens(est_tokens)
        today = self._calendar.day(now + wall_offset)
        soonest: float | None = None
        event_only = False
        never: list[str] = []
        seen: set[str] = set()
        primary = True
        for name in chain:
            if name in seen:
                continue
            seen.add(name)
            state = self._models.get(name)
            if state is None:
                never.append(f"{name}: not configured")
                continue
            why_never = _never_reason(state, est_tokens)
            if why_never is not None:
                never.append(f"{name}: {why_never}")
                continue
            self._advance(state, now)
            at = self._earliest(state, est_tokens, now, wall_offset, today)
            if at is None:
                event_only = True
            elif at <= now:
                return self._grant(state, est_tokens, now, today)
            elif primary and at <= now + patience_s:
                return Wait(at)
            elif soonest is None or at < soonest:
                soonest = at
            primary = False
        if soonest is not None or event_only:
            return Wait(soonest)
        return NoRoute("; ".join(never) if never else "empty fallback chain")

    def can_grant(
        self, model: str, est_tokens: int, now: float, *, wall_offset: float = 0.0
    ) -> bool:
        """Whether ``acquire([model], est_tokens, now)`` would grant. Read-only."""
        at = self.earliest(model, est_tokens, now, wall_offset=wall_offset)
        return at is not None and at <= now

    def earliest(
        self, model: str, est_tokens: int, now: float, *, wall_offset: float = 0.0
    ) -> float | None:
        """The earliest ``t >= now`` at which ``model`` could be granted if
        nothing else happened: ``now`` if it can be now, None if only an
        in-flight report can free it, ``math.inf`` if never. Read-only."""
        _check_tokens(est_tokens)
        state = self._models.get(model)
        if state is None or _never_reason(state, est_tokens) is not None:
            return math.inf
        today = self._calendar.day(now + wall_offset)
        return self._earliest(state, est_tokens, now, wall_offset, today)

    def next_event(self, now: float, *, wall_offset: float = 0.0) -> float | None:
        """The earliest moment after ``now`` at which capacity can appear by
        time alone: a cooldown or exhaustion ending, a window entry expiring,
        a full day's count resetting at local midnight. None if there is no
        such moment. One timer armed at it is enough to wake every waiter
        in time. Read-only."""
        soonest = math.inf
        today = self._calendar.day(now + wall_offset)
        for state in self._models.values():
            if state.unavailable is not None:
                continue
            if state.cooldown_until is not None and state.cooldown_until > now:
                soonest = min(soonest, state.cooldown_until)
            exhausted = self._exhausted_until(state, now, wall_offset, today)
            if exhausted is not None:
                soonest = min(soonest, exhausted)
            oldest = next(_live_entries(state, now), None)
            if oldest is not None:
                soonest = min(soonest, oldest.expires_at)
        return None if soonest == math.inf else soonest

    # -- outcomes ----------------------------------------------------------

    def report(
        self, grant_id: int, outcome: CallOutcome, now: float, *, wall_offset: float = 0.0
    ) -> bool:
        """Accounts for what happened to a granted request.

        Returns False, changing nothing, for an unknown grant or one already
        reported, so a duplicate report (a retried tell) is harmless.

        A 429 cools the model down for its ``retryDelay``; a delay that is
        absent, zero, negative or not finite is no delay, and the bounded
        backoff applies instead (a zero cooldown would grant the model again
        at once and burn an attempt on every retry). A per-day 429 exhausts
        the model until the end of the local day its request was *counted
        in* (the grant's day, not the report's: a request counted at 23:59:59
        and refused at 00:00:01 says nothing about the new day). Within
        ``DAY_BOUNDARY_SLACK_S`` of a midnight a ``retryDelay`` shorter than
        the time to that day's end wins -- there our midnight and the
        provider's count may disagree -- and once the grant's day has ended
        only the delay, else the backoff, holds the model.
        """
        if not isinstance(outcome, _OUTCOME_TYPES):
            raise TypeError(f"not a CallOutcome: {outcome!r}")
        held = self._held.pop(grant_id, None)
        if held is None:
            return False
        state, entry = held.state, held.entry
        self._advance(state, now)
        state.in_flight -= 1
        counters = state.counters
        match outcome:
            case Succeeded():
                used = max(outcome.usage.input_tokens, 0)
                if entry.counted:
                    state.tokens += used - entry.tokens
                entry.tokens = used
                state.consecutive_429s = 0
                state.consecutive_errors = 0
                _bump(counters, "succeeded")
                _bump(counters, "input_tokens", used)
                _bump(counters, "output_tokens", max(outcome.usage.output_tokens, 0))
            case RateLimited():
                # A refused request keeps its place in our window: whether the
                # provider counts it is not documented, and freeing it made
                # tierbatch far more aggressive when another client shares
                # the quota (429s per 1,000 requests rose from ~120 to ~380
                # in the bench's storm workload).
                self._rate_limited(state, entry, outcome, now, wall_offset)
            case ServerError() | TimedOut():
                _bump(counters, "server_errors" if isinstance(outcome, ServerError) else "timeouts")
                state.consecutive_errors += 1
                threshold = self._quota.server_error_threshold
                if state.consecutive_errors >= threshold:
                    delay = self._backoff(state.consecutive_errors - threshold)
                    self._cool_down(state, now + delay, CooldownReason.SERVER_ERRORS, now)
            case BadRequest():
                _bump(counters, "bad_requests")
                _bump(counters, "other_errors")
            case AuthFailed():
                _bump(counters, "auth_failures")
                _bump(counters, "other_errors")
            case ModelNotFound():
                _bump(counters, "not_found")
                _bump(counters, "other_errors")
                if state.unavailable is None:
                    state.unavailable = outcome.message or "model not found (404)"
            case Abandoned():
                _bump(counters, "abandoned")
            case Cancelled():
                _bump(counters, "cancelled")
                self._refund(state, entry)
            case _:
                assert_never(outcome)
        return True

    def sent(self, grant_id: int, at: float) -> bool:
        """The request of ``grant_id`` actually left at ``at``.

        The provider counts a request when it arrives, which can be a little
        after the grant (a busy event loop, connection set-up, a launch
        stagger). Moving the window entry to the send time keeps our window
        from freeing before the provider's does, so those lags cannot turn
        into 429s. Only ever moves an entry later; False for an unknown grant.
        """
        held = self._held.get(grant_id)
        if held is None:
            return False
        old = held.entry
        if not old.counted or at <= old.granted_at:
            return True
        state = held.state
        old.counted = False
        moved = _Entry(grant_id, at, at + self._span(state), old.tokens, old.day)
        _insert_in_order(state.window, moved)
        held.entry = moved
        return True

    def mark_unavailable(self, model: str, reason: str) -> None:
        """Routes around ``model`` from now on (as after a 404) until
        ``clear_unavailable`` or a fresh policy. An unconfigured model is
        never routed to anyway, so naming one does nothing."""
        state = self._models.get(model)
        if state is not None and state.unavailable is None:
            state.unavailable = reason or "marked unavailable"

    def clear_unavailable(self, model: str | None = None) -> None:
        """Makes ``model`` (every model when None) routable again, say after
        a restart that wants to re-probe models a snapshot recorded as 404."""
        for state in self._models.values():
            if model is None or state.name == model:
                state.unavailable = None

    def forget_in_flight(self) -> None:
        """Treats every outstanding grant as ``Abandoned``: for a policy
        restored in a new process, whose predecessor's requests will never
        be reported. Their window and day usage stays spent."""
        for held in self._held.values():
            held.state.in_flight -= 1
            _bump(held.state.counters, "abandoned")
        self._held.clear()

    # -- views -------------------------------------------------------------

    def status(self, now: float, *, wall_offset: float = 0.0) -> tuple[ModelStatus, ...]:
        """Every configured model's state as of ``now``, in config order.
        Its deadlines are steady times, like ``now``. Read-only."""
        today = self._calendar.day(now + wall_offset)
        return tuple(
            self._status(state, now, wall_offset, today) for state in self._models.values()
        )

    def snapshot(self, *, wall_offset: float = 0.0) -> dict[str, Any]:
        """The whole state as plain data (str/int/float/list/dict/None), for
        msgpack or JSON. Its times are wall-clock times: steady times plus
        ``wall_offset``, the offset now. ``restore`` of it, with the offset
        at restore time, gives an equivalent policy."""
        return {
            "format": SNAPSHOT_FORMAT,
            "version": SNAPSHOT_VERSION,
            "next_grant_id": self._next_grant_id,
            "models": {
                name: _snapshot_model(state, wall_offset) for name, state in self._models.items()
            },
            "in_flight": [
                [gid, h.state.name, h.entry.granted_at + wall_offset, h.est_tokens, h.entry.day]
                for gid, h in sorted(self._held.items())
            ],
        }

    @classmethod
    def restore(
        cls,
        models: Mapping[str, ModelSpec],
        quota: QuotaConfig,
        data: Mapping[str, Any],
        *,
        wall_offset: float = 0.0,
    ) -> QuotaPolicy:
        """A policy for ``models``/``quota`` in the state ``data`` records.

        ``wall_offset`` is the restoring clock's (wall minus steady, now):
        the snapshot's wall-clock times become steady times of this process,
        so a cooldown keeps its remaining time across a restart whose
        monotonic clock starts from a new origin.

        Models in ``data`` that are not configured are dropped (with their
        in-flight grants); configured models absent from it start fresh.
        Limits come from the configuration, not the snapshot. Raises
        ``SnapshotError`` for anything but a well-formed snapshot of this
        format and version.
        """
        policy = cls(models, quota)
        try:
            policy._load(data, wall_offset)
        except SnapshotError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
            raise SnapshotError(f"corrupt quota snapshot: {exc!r}") from exc
        return policy

    # -- internals ---------------------------------------------------------

    def _advance(self, state: _ModelState, now: float) -> None:
        """Brings ``state`` up to ``now``: drops expired window entries,
        clears passed deadlines, starts a new day's count."""
        window = state.window
        while window and (window[0].expires_at <= now or not window[0].counted):
            entry = window.popleft()
            if entry.counted:
                entry.counted = False
                state.requests -= 1
                state.tokens -= entry.tokens
        if state.cooldown_until is not None and state.cooldown_until <= now:
            state.cooldown_until = None
            state.cooldown_reason = None
        if state.exhausted_until is not None and state.exhausted_until <= now:
            state.exhausted_until = None

    def _earliest(
        self, state: _ModelState, est_tokens: int, now: float, wall_offset: float, today: int
    ) -> float | None:
        limits = state.limits
        if limits.max_in_flight and state.in_flight >= limits.max_in_flight:
            return None
        # Each limit alone only relaxes as time passes, so the earliest
        # moment all allow the request is the latest of their own moments.
        at = now
        if state.cooldown_until is not None:
            at = max(at, state.cooldown_until)
        if state.exhausted_until is not None:
            at = max(at, state.exhausted_until)
        if limits.rpd and _requests_today(state, today) >= limits.rpd:
            at = max(at, self._day_end(state.day, now, wall_offset))
        if limits.rpm or limits.tpm:
            at = max(at, _window_frees_at(state, est_tokens, now))
        return at

    def _day_end(self, day: int | None, now: float, wall_offset: float) -> float:
        """The steady moment the wall clock enters a local day after ``day``
        (``now`` if it already has; ``day`` None: the current day)."""
        wall = now + wall_offset
        today = self._calendar.day(wall)
        if day is None:
            day = today
        if today > day:
            return now
        # Behind ``day`` only after the wall clock stepped back across midnight.
        at = (
            self._calendar.next_midnight(wall)
            if today == day
            else self._calendar.day_start(day + 1)
        )
        return _steady(at, wall_offset)

    def _exhausted_until(
        self, state: _ModelState, now: float, wall_offset: float, today: int
    ) -> float | None:
        """Until when the model is out for the day (a per-day 429, or the
        day's count at ``rpd``), whichever ends later; None if it is not."""
        exhausted = _future(state.exhausted_until, now)
        if state.limits.rpd and _requests_today(state, today) >= state.limits.rpd:
            day_end = self._day_end(state.day, now, wall_offset)
            exhausted = day_end if exhausted is None else max(exhausted, day_end)
        return exhausted

    def _grant(self, state: _ModelState, est_tokens: int, now: float, today: int) -> Grant:
        grant_id = self._next_grant_id
        self._next_grant_id += 1
        if state.day is None or today > state.day:  # the first grant of a new day
            state.day = today
            state.requests_today = 0
        entry = _Entry(grant_id, now, now + self._span(state), est_tokens, state.day)
        _insert_in_order(state.window, entry)
        state.requests += 1
        state.tokens += est_tokens
        state.requests_today += 1
        state.in_flight += 1
        _bump(state.counters, "granted")
        self._held[grant_id] = _Held(state, entry, est_tokens)
        return Grant(grant_id, state.name, now, est_tokens)

    def _rate_limited(
        self,
        state: _ModelState,
        entry: _Entry,
        outcome: RateLimited,
        now: float,
        wall_offset: float,
    ) -> None:
        _bump(state.counters, "rate_limited")
        delay = outcome.retry_delay_s
        if delay is not None and not 0.0 < delay < math.inf:
            delay = None  # zero, negative or NaN: no delay at all
        backoff = self._backoff(state.consecutive_429s)
        state.consecutive_429s += 1
        if outcome.scope.per_day:
            _bump(state.counters, "rate_limited_day")
            until = self._day_exhausted_until(entry.day, delay, backoff, now, wall_offset)
            if state.exhausted_until is None or until > state.exhausted_until:
                state.exhausted_until = until
            return
        if delay is not None and delay <= self._quota.max_skew_s and delay > state.skew:
            self._learn_skew(state, delay, now)
        reason = (
            CooldownReason.TOKENS_LIMITED
            if outcome.scope is RateLimitScope.TOKENS_PER_MINUTE
            else CooldownReason.RATE_LIMITED
        )
        self._cool_down(state, now + (backoff if delay is None else delay), reason, now)

    def _day_exhausted_until(
        self, day: int, delay: float | None, backoff: float, now: float, wall_offset: float
    ) -> float:
        """When a per-day 429 on a request counted in local ``day`` lets the
        model go again (the rule is in ``report``'s docstring)."""
        end = self._day_end(day, now, wall_offset)
        if end <= now:
            return now + (backoff if delay is None else delay)
        start = _steady(self._calendar.day_start(day), wall_offset)
        near_midnight = (
            abs(now - start) <= DAY_BOUNDARY_SLACK_S or end - now <= DAY_BOUNDARY_SLACK_S
        )
        if delay is not None and near_midnight and now + delay < end:
            return now + delay
        return end

    def _span(self, state: _ModelState) -> float:
        """How long a request occupies ``state``'s window on our side."""
        return self._window_s + state.skew

    @staticmethod
    def _learn_skew(state: _ModelState, delay: float, now: float) -> None:
        """A per-minute 429 although our window had room: the provider counts
        the request later than we do (our send time vs its arrival time), by
        at least the ``retryDelay`` it asks for when that is short. Every
        entry, present and future, occupies the window that much longer --
        a uniform shift of the entries still in it (one that has already
        left stays gone), so the window stays in expiry order. The skew only
        grows, up to ``QuotaConfig.max_skew_s``: a long delay means real
        overuse (another client), which the cooldown handles instead."""
        shift = delay - state.skew
        state.skew = delay
        for entry in state.window:
            if entry.expires_at > now:
                entry.expires_at += shift

    def _cool_down(
        self, state: _ModelState, deadline: float, reason: CooldownReason, now: float
    ) -> None:
        """Extends the cooldown to ``deadline``; never shortens it."""
        current = state.cooldown_until
        if current is None or current <= now:
            current = now
        if deadline <= current:
            return
        _bump(state.counters, "cooldown_s", deadline - current)
        state.cooldown_until = deadline
        state.cooldown_reason = reason

    def _backoff(self, exponent: int) -> float:
        return backoff_delay(self._quota.backoff_base_s, self._quota.backoff_max_s, exponent)

    @staticmethod
    def _release_window(state: _ModelState, entry: _Entry) -> None:
        if entry.counted:
            entry.counted = False  # dropped from the deque when it reaches the front
            state.requests -= 1
            state.tokens -= entry.tokens

    @classmethod
    def _refund(cls, state: _ModelState, entry: _Entry) -> None:
        cls._release_window(state, entry)
        if entry.day == state.day and state.requests_today > 0:
            state.requests_today -= 1

    def _status(
        self, state: _ModelState, now: float, wall_offset: float, today: int
    ) -> ModelStatus:
        expired_requests, expired_tokens = _expired_totals(state, now)
        requests_today = _requests_today(state, today)
        exhausted = self._exhausted_until(state, now, wall_offset, today)
        cooldown = _future(state.cooldown_until, now)
        return ModelStatus(
            model=state.name,
            requests_in_window=state.requests - expired_requests,
            tokens_in_window=state.tokens - expired_tokens,
            requests_today=requests_today,
            in_flight=state.in_flight,
            cooldown_until=cooldown,
            cooldown_reason=None if cooldown is None else state.cooldown_reason,
            exhausted_until=exhausted,
            unavailable=state.unavailable,
            counters=MappingProxyType(dict(state.counters)),
        )

    def _load(self, data: Mapping[str, Any], wall_offset: float) -> None:
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
        entries: dict[int, tuple[_ModelState, _Entry]] = {}
        for name, saved in saved_models.items():
            state = self._models.get(name)
            if state is not None:
                self._load_model(state, _mapping(saved, f"models[{name!r}]"), entries, wall_offset)
        for item in _list(data["in_flight"], "in_flight"):
            grant_id, name, granted_at, est_tokens, day = _list(item, "in_flight entry")
            grant_id, est_tokens = _int(grant_id, "grant id"), _int(est_tokens, "est_tokens")
            if grant_id in self._held:
                raise SnapshotError(f"grant {grant_id} is in flight twice")
            state = self._models.get(_str(name, "in-flight model"))
            if state is None:
                continue
            found = entries.get(grant_id)
            if found is not None and found[0] is state:
                entry = found[1]
            else:  # its window entry had expired: only the in-flight slot remains
                granted = _float(granted_at, "granted_at") - wall_offset
                entry = _Entry(
                    grant_id, granted, granted + self._span(state), est_tokens, _int(day, "day")
                )
                entry.counted = False
            self._held[grant_id] = _Held(state, entry, est_tokens)
            state.in_flight += 1
        highest = max([*entries, *self._held], default=0)
        if next_grant_id <= highest:
            raise SnapshotError(f"next_grant_id {next_grant_id} <= a recorded grant id {highest}")
        self._next_grant_id = next_grant_id

    def _load_model(
        self,
        state: _ModelState,
        saved: Mapping[str, Any],
        entries: dict[int, tuple[_ModelState, _Entry]],
        wall_offset: float,
    ) -> None:
        window: list[_Entry] = []
        state.skew = _float(saved.get("skew", 0.0), "skew")
        for item in _list(saved["window"], "window"):
            fields = _list(item, "window entry")
            if len(fields) not in (4, 5):
                raise SnapshotError(f"window entry: expected 4 or 5 fields, got {fields!r}")
            grant_id, granted_at, tokens, day = fields[:4]
            granted = _float(granted_at, "granted_at") - wall_offset
            expires = (
                _float(fields[4], "expires_at") - wall_offset
                if len(fields) == 5
                else granted + self._span(state)
            )
            entry = _Entry(
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
        state.window = deque(window)
        state.requests = len(window)
        state.tokens = sum(e.tokens for e in window)
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


_OUTCOME_TYPES: Final = (
    Succeeded,
    RateLimited,
    ServerError,
    TimedOut,
    BadRequest,
    AuthFailed,
    ModelNotFound,
    Abandoned,
    Cancelled,
)


def _check_tokens(est_tokens: int) -> None:
    if est_tokens < 0:
        raise ValueError(f"est_tokens must be >= 0, got {est_tokens}")


def _never_reason(state: _ModelState, est_tokens: int) -> str | None:
    """Why ``state``'s model can never take a request of ``est_tokens``."""
    if state.unavailable is not None:
        return f"unavailable ({state.unavailable})"
    limits = state.limits
    if limits.tpm and est_tokens > limits.tpm:
        return f"{est_tokens} tokens exceed its {limits.tpm} tokens per minute"
    if limits.max_input_tokens and est_tokens > limits.max_input_tokens:
        return f"{est_tokens} tokens exceed its {limits.max_input_tokens} max input tokens"
    return None


def _live_entries(state: _ModelState, now: float) -> Iterator[_Entry]:
    """Counted window entries still occupying the window at ``now``, oldest first."""
    for entry in state.window:
        if entry.counted and entry.expires_at > now:
            yield entry


def _expired_totals(state: _ModelState, now: float) -> tuple[int, int]:
    """Requests and tokens of counted entries expired at ``now`` but not yet pruned."""
    requests = tokens = 0
    for entry in state.window:
        if entry.expires_at > now:
            break
        if entry.counted:
            requests += 1
            tokens += entry.tokens
    return requests, tokens


def _window_frees_at(state: _ModelState, est_tokens: int, now: float) -> float:
    """When the window has room for one more request of ``est_tokens``:
    ``now``, or the expiry that brings both sums under their limits."""
    limits = state.limits
    expired_requests, expired_tokens = _expired_totals(state, now)
    excess_requests = state.requests - expired_requests - limits.rpm + 1 if limits.rpm else 0
    excess_tokens = state.tokens - expired_tokens + est_tokens - limits.tpm if limits.tpm else 0
    if excess_requests <= 0 and excess_tokens <= 0:
        return now
    for entry in _live_entries(state, now):
        excess_requests -= 1
        excess_tokens -= entry.tokens
        if excess_requests <= 0 and excess_tokens <= 0:
            return entry.expires_at
    return math.inf  # unreachable while est_tokens <= tpm; kept total for safety


def _insert_in_order(window: deque[_Entry], entry: _Entry) -> None:
    """Appends ``entry``; if the clock stepped back, inserts it in expiry order."""
    if not window or window[-1].expires_at <= entry.expires_at:
        window.append(entry)
        return
    index = len(window)
    while index > 0 and window[index - 1].expires_at > entry.expires_at:
        index -= 1
    window.insert(index, entry)


def _requests_today(state: _ModelState, today: int) -> int:
    """The model's count for local day ``today``: 0 once a later day began."""
    if state.day is None or today > state.day:
        return 0
    return state.requests_today


def _steady(wall: float, wall_offset: float) -> float:
    """The steady time at which the wall clock reads ``wall``, rounded so
    that it really does read at least ``wall`` then: a midnight converted to
    steady time must not come back a hair before midnight."""
    steady = wall - wall_offset
    while steady + wall_offset < wall:
        steady = math.nextafter(steady, math.inf)
    return steady


def _steady_or_none(wall: float | None, wall_offset: float) -> float | None:
    return None if wall is None else wall - wall_offset


def _wall_or_none(steady: float | None, wall_offset: float) -> float | None:
    return None if steady is None else steady + wall_offset


def _future(deadline: float | None, now: float) -> float | None:
    return deadline if deadline is not None and deadline > now else None


def _bump(counters: dict[str, int | float], name: str, amount: int | float = 1) -> None:
    counters[name] = counters.get(name, 0) + amount


def _snapshot_model(state: _ModelState, wall_offset: float) -> dict[str, Any]:
    return {
        "window": [
            [e.grant_id, e.granted_at + wall_offset, e.tokens, e.day, e.expires_at + wall_offset]
            for e in state.window
            if e.counted
        ],
        "day": state.day,
        "requests_today": state.requests_today,
        "cooldown_until": _wall_or_none(state.cooldown_until, wall_offset),
        "cooldown_reason": None if state.cooldown_reason is None else str(state.cooldown_reason),
        "exhausted_until": _wall_or_none(state.exhausted_until, wall_offset),
        "unavailable": state.unavailable,
        "consecutive_429s": state.consecutive_429s,
        "consecutive_errors": state.consecutive_errors,
        "skew": state.skew,
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

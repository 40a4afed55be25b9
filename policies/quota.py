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

Window sums live in a ``RollingWindow`` (Fenwick trees over the entries in
expiry order), so "when does the window have room for this request" costs
O(log n) however many requests the window holds; read-only calls
(``earliest``, ``can_grant``, ``next_event``, ``status``, ``snapshot``) never
change state and so may be asked about any ``now``.

What the provider really admits is learnt per model by a ``LimitEstimate``
(``policies.estimator``): effective limits below the configured ceilings
after 429s, raised again by clean windows, and -- with ``limiter = "auto"``
-- a pacing bucket at the limit's rate whose burst is learnt, so a token
bucket on the provider's side is met at its own size rather than with a
whole window at once.

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

The per-model state lives in ``policies.quota_state``, the snapshot format
(dump and checked load) in ``policies.quota_snapshot``; this module holds
the decisions.

Longer than the house's ~450 lines on purpose: QuotaPolicy is the registry's
one state machine; its state types (quota_state) and its snapshot
(quota_snapshot) are modules of their own.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final, assert_never

from tierbatch.policies.config import LimiterMode, ModelSpec, QuotaConfig
from tierbatch.policies.errors import SnapshotError
from tierbatch.policies.estimator import EstimatorConfig, LimiterShape, LimitEstimate
from tierbatch.policies.local_calendar import LocalCalendar
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
from tierbatch.policies.planner import ModelCapacity
from tierbatch.policies.quota_snapshot import SNAPSHOT_FORMAT, SNAPSHOT_VERSION, dump, load
from tierbatch.policies.quota_state import (
    COUNTER_NAMES,
    CooldownReason,
    Held,
    Limits,
    ModelState,
    WindowEntry,
    scaled_limit,
)

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
    "OutstandingGrant",
    "QuotaAt",
    "QuotaPolicy",
    "SnapshotError",
    "Wait",
    "backoff_delay",
    "scaled_limit",
]


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


@dataclass(frozen=True, slots=True)
class OutstandingGrant:
    """A grant another owner of this quota made, handed over to this one
    (``QuotaPolicy.adopt``): its holder still has it in flight, or finished
    it recently. Times are steady times of the adopting process:
    ``granted_at`` when it was granted, ``sent_at`` when its request left
    (None: not yet)."""

    grant_id: int
    model: str
    est_tokens: int
    granted_at: float
    sent_at: float | None = None
    in_flight: bool = True

    @property
    def placed_at(self) -> float:
        """Where its place in the window starts."""
        return self.granted_at if self.sent_at is None else max(self.sent_at, self.granted_at)


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
    # What the provider is learnt to admit (``policies.estimator``): the
    # effective limits (the configured ones until a 429 says otherwise), the
    # burst the pacing allows, and the limiter's shape as far as known.
    configured_rpm: int = 0
    configured_tpm: int = 0
    learnt_rpm: int = 0
    learnt_tpm: int = 0
    burst: float = 0.0
    limiter: str = "unknown"


def backoff_delay(base_s: float, max_s: float, exponent: int) -> float:
    """Bounded exponential backoff: ``min(base_s * 2**exponent, max_s)``."""
    return min(base_s * 2.0 ** min(max(exponent, 0), _MAX_BACKOFF_EXPONENT), max_s)


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
        estimator = EstimatorConfig(
            window_s=quota.window_s,
            pacing=quota.limiter is LimiterMode.AUTO,
            learn=quota.learn_limits,
            initial_burst=quota.initial_burst,
        )
        self._models: dict[str, ModelState] = {}
        for name, spec in models.items():
            limits = Limits.of(spec, quota.utilisation)
            self._models[name] = ModelState(
                name, limits, LimitEstimate(limits.rpm, limits.tpm, estimator)
            )
        self._held: dict[int, Held] = {}
        # Grants ``forget_in_flight`` gave up on, which ``adopt`` may still claim.
        self._forgotten: dict[int, Held] = {}
        # ``take_over``: grants made before this steady time are in the day's count.
        self._counted_until: float | None = None
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

    def grant(self, model: str, est_tokens: int, now: float, *, wall_offset: float = 0.0) -> Grant:
        """Take ``model``'s capacity for one request now. Only when
        ``earliest`` says it can be granted now; raises ``ValueError``
        otherwise (a caller bug, not a quota state)."""
        _check_tokens(est_tokens)
        state = self._models.get(model)
        if state is None:
            raise ValueError(f"grant: unknown model {model!r}")
        self._advance(state, now)
        today = self._calendar.day(now + wall_offset)
        at = (
            math.inf
            if _never_reason(state, est_tokens) is not None
            else self._earliest(state, est_tokens, now, wall_offset, today)
        )
        if at is None or at > now:
            raise ValueError(f"grant: {model} cannot take {est_tokens} tokens at {now}")
        return self._grant(state, est_tokens, now, today)

    def never_reason(self, model: str, est_tokens: int) -> str | None:
        """Why ``model`` can never take a request of ``est_tokens`` (unknown,
        unavailable, too small), or None."""
        state = self._models.get(model)
        if state is None:
            return "not configured"
        return _never_reason(state, est_tokens)

    def view(self, wall_offset: float) -> QuotaAt:
        """This policy with the wall offset bound, as the waiting list asks it."""
        return QuotaAt(self, wall_offset)

    def capacity(self, now: float, *, wall_offset: float = 0.0) -> dict[str, ModelCapacity]:
        """What each model can admit from ``now`` on, for the planner: what
        is left in its window and pacing bucket now, its learnt rates after
        that, the day's remainder, and its cooldown. Read-only."""
        today = self._calendar.day(now + wall_offset)
        window_s = self._quota.window_s
        out: dict[str, ModelCapacity] = {}
        for name, state in self._models.items():
            estimate = state.estimate
            if state.unavailable is not None:
                out[name] = ModelCapacity(name, 0.0, 0.0, 0.0, 0.0)
                continue
            requests, tokens = state.window.live(now)
            if estimate.rpm:
                ready_r = max(0.0, min(float(estimate.rpm - requests), estimate.level(now)))
                rate_r = estimate.rpm / window_s
            else:
                ready_r, rate_r = math.inf, math.inf
            if estimate.tpm:
                ready_t = float(max(0, estimate.tpm - tokens))
                rate_t = estimate.tpm / window_s
            else:
                ready_t, rate_t = math.inf, math.inf
            left = (
                float(max(0, state.limits.rpd - _requests_today(state, today)))
                if state.limits.rpd
                else math.inf
            )
            blocked = max(
                state.cooldown_until or now,
                self._exhausted_until(state, now, wall_offset, today) or now,
            )
            # Capacity comes a window at a time unless the provider showed a
            # bucket's steady trickle (assuming steps is the safe side); the
            # first step is when the oldest place in our window frees, so a
            # plan made in the middle of a window does not start counting a
            # whole window from now (which would push its end a little later
            # at every replan).
            # While the pacing holds requests back (a burst below a whole
            # window), capacity is its steady trickle.
            stepped = (
                estimate.shape is not LimiterShape.BUCKET
                and bool(estimate.rpm)
                and (not estimate.paced or estimate.burst >= estimate.rpm)
            )
            oldest = state.window.oldest_expiry(now) if stepped else None
            newest = state.window.newest_expiry(now) if stepped else None
            if oldest is not None and newest is not None and newest - oldest > window_s / 4:
                # A window filled bit by bit frees bit by bit: a steady
                # trickle, not one step.
                stepped, oldest = False, None
            out[name] = ModelCapacity(
                name,
                ready_requests=ready_r,
                requests_per_s=rate_r,
                ready_tokens=ready_t,
                tokens_per_s=rate_t,
                left_today=left,
                step_s=window_s if stepped else 0.0,
                delay_s=max(0.0, blocked - now),
                first_step_s=None if oldest is None else oldest - now,
            )
        return out

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
            oldest = state.window.oldest_expiry(now)
            if oldest is not None:
                soonest = min(soonest, oldest)
            paced = state.estimate.ready_at(now)
            if paced > now:
                soonest = min(soonest, paced)
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
                if entry.handle is not None:
                    state.window.retoken(entry.handle, used)
                entry.tokens = used
                state.accepted.append((entry.granted_at, used))
                state.estimate.on_success(now, held.at_edge, tokens=used)
                state.consecutive_429s = 0
                state.consecutive_errors = 0
                _bump(counters, "succeeded")
                _bump(counters, "input_tokens", used)
                _bump(counters, "output_tokens", max(outcome.usage.output_tokens, 0))
                _bump(counters, "thinking_tokens", max(outcome.usage.thinking_tokens, 0))
                _bump(counters, "cached_tokens", max(outcome.usage.cached_tokens, 0))
            case RateLimited():
                self._rate_limited(state, held, outcome, now, wall_offset)
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

    def sent(self, grant_id: int, at: float, *, tokens: int = 0) -> bool:
        """The request of ``grant_id`` actually left at ``at``, carrying
        ``tokens`` estimated input tokens.

        The provider counts a request when it arrives, which can be a little
        after the grant (a busy event loop, connection set-up, a launch
        stagger). Moving the window entry to the send time keeps our window
        from freeing before the provider's does, so those lags cannot turn
        into 429s. Only ever moves an entry later; False for an unknown grant.

        ``tokens`` (0: what was granted) is what the request carries, which
        its window entry counts from now on until the answer trues it up: a
        grant reserves room for the waiting packs of its tier that may be
        merged into it (articles that trickled in), and what it did not
        carry is free again at once. (Before, a merge went uncounted until
        the answer, the merged tokens went over the provider's limit and
        read as a lower one: bench, trickling arrivals, flash's learnt tpm
        a quarter of the real.)
        """
        _check_tokens(tokens)
        held = self._held.get(grant_id)
        if held is None:
            return False
        entry, state = held.entry, held.state
        if entry.handle is None or not state.counted(entry):
            return True
        if tokens and tokens != entry.tokens:
            state.window.retoken(entry.handle, tokens)
            entry.tokens = tokens
        if at <= entry.granted_at:
            return True
        if state.window.is_held(entry.handle):
            # Its place now counts from when it left (never earlier).
            entry.expires_at = at + self._window_s + state.estimate.edge_guard_s
            state.window.place(entry.handle, entry.expires_at)
            return True
        state.window.remove(entry.handle)
        state.entries.pop(entry.handle, None)
        entry.granted_at = at
        entry.handle = state.window.add(
            at + self._window_s + state.estimate.edge_guard_s, entry.tokens
        )
        entry.expires_at = state.window.expiry(entry.handle)
        state.entries[entry.handle] = entry
        return True

    def reserved(self, grant_id: int) -> int | None:
        """The input tokens an outstanding grant holds in its window now
        (None: unknown, or already reported)."""
        held = self._held.get(grant_id)
        return None if held is None else held.entry.tokens

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
        self._forgotten.update(self._held)
        self._held.clear()

    def take_over(self, *, saved_at: float | None, first_grant_id: int) -> None:
        """This policy, restored from the snapshot a shared quota's owner
        saved at ``saved_at`` (steady time; None: there was none), takes over
        from that owner, which died: its grants in flight are set aside for
        ``adopt`` to claim (``forget_in_flight``), grant ids start at
        ``first_grant_id`` -- above any its predecessors handed out since
        that snapshot, so an adopted grant never shares its id with a new
        one -- and grants made before ``saved_at`` are in the day's count
        already."""
        self.forget_in_flight()
        self._next_grant_id = max(self._next_grant_id, first_grant_id)
        self._counted_until = saved_at

    def adopt(
        self, grants: Sequence[OutstandingGrant], now: float, *, wall_offset: float = 0.0
    ) -> tuple[OutstandingGrant, ...]:
        """Takes over grants a previous owner of this quota made (see
        ``take_over``), so each keeps its id and its place in the window,
        and its report is accounted as if granted here.

        A grant the restored snapshot holds (in its window, or in flight) is
        that same entry, counted once. Any other gets a place in the window
        from when it left (none once that place has expired) and, if it was
        made after the snapshot, counts towards its day's requests. An
        in-flight one holds an in-flight slot until ``report``. Grants of
        unknown models, and ids already held, are skipped. Returns the grants
        adopted in flight."""
        index: dict[int, tuple[ModelState, WindowEntry]] | None = None
        adopted: list[OutstandingGrant] = []
        for grant in grants:
            _check_tokens(grant.est_tokens)
            state = self._models.get(grant.model)
            if state is None or grant.grant_id in self._held:
                continue
            self._next_grant_id = max(self._next_grant_id, grant.grant_id + 1)
            self._advance(state, now)
            forgotten = self._forgotten.pop(grant.grant_id, None)
            if forgotten is not None and forgotten.state is state:
                entry = forgotten.entry
                if grant.in_flight:  # not abandoned after all
                    _bump(state.counters, "abandoned", -1)
            else:
                if index is None:
                    index = {
                        e.grant_id: (s, e)
                        for s in self._models.values()
                        for e in s.entries.values()
                        if s.counted(e)
                    }
                found = index.get(grant.grant_id)
                if found is not None and found[0] is state:
                    entry = found[1]
                else:
                    entry = self._adopted_entry(state, grant, now, wall_offset)
            if grant.in_flight:
                self._held[grant.grant_id] = Held(state, entry, grant.est_tokens)
                state.in_flight += 1
                if grant.sent_at is not None:
                    self.sent(grant.grant_id, grant.sent_at)
                adopted.append(grant)
        return tuple(adopted)

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
        return dump(self._next_grant_id, self._models, self._held, wall_offset)

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
            policy._held, policy._next_grant_id = load(
                data, policy._models, policy._window_s, wall_offset
            )
        except SnapshotError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
            raise SnapshotError(f"corrupt quota snapshot: {exc!r}") from exc
        return policy

    # -- internals ---------------------------------------------------------

    def _advance(self, state: ModelState, now: float) -> None:
        """Brings ``state`` up to ``now``: drops expired window entries,
        clears passed deadlines, starts a new day's count."""
        state.window.expire(now)
        if len(state.entries) > 2 * len(state.window) + 256:
            live = [handle for handle, _, _ in state.window.entries()]
            state.entries = {h: state.entries[h] for h in live if h in state.entries}
        accepted, horizon = state.accepted, now - self._quota.window_s
        while accepted and accepted[0][0] <= horizon:
            accepted.popleft()
        if state.cooldown_until is not None and state.cooldown_until <= now:
            state.cooldown_until = None
            state.cooldown_reason = None
        if state.exhausted_until is not None and state.exhausted_until <= now:
            state.exhausted_until = None

    def _earliest(
        self, state: ModelState, est_tokens: int, now: float, wall_offset: float, today: int
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
        estimate = state.estimate
        if estimate.rpm or estimate.tpm:
            at = max(at, state.window.frees_at(now, estimate.rpm, estimate.tpm, est_tokens))
            at = max(at, estimate.ready_at(now, est_tokens))
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
        self, state: ModelState, now: float, wall_offset: float, today: int
    ) -> float | None:
        """Until when the model is out for the day (a per-day 429, or the
        day's count at ``rpd``), whichever ends later; None if it is not."""
        exhausted = _future(state.exhausted_until, now)
        if state.limits.rpd and _requests_today(state, today) >= state.limits.rpd:
            day_end = self._day_end(state.day, now, wall_offset)
            exhausted = day_end if exhausted is None else max(exhausted, day_end)
        return exhausted

    def _adopted_entry(
        self, state: ModelState, grant: OutstandingGrant, now: float, wall_offset: float
    ) -> WindowEntry:
        """A grant the restored snapshot does not hold: a place in the window
        while one is left and, made after the snapshot, its day's count."""
        at = grant.placed_at
        day = self._calendar.day(grant.granted_at + wall_offset)
        entry = WindowEntry(grant.grant_id, at, at + self._window_s, grant.est_tokens, day)
        counted = self._counted_until is not None and grant.granted_at <= self._counted_until
        if entry.expires_at > now and (grant.in_flight or not counted):
            entry.handle = state.window.add(entry.expires_at, grant.est_tokens)
            entry.expires_at = state.window.expiry(entry.handle)
            state.entries[entry.handle] = entry
        if not counted:
            if state.day is None or day > state.day:
                state.day = day
                state.requests_today = 0
            if day == state.day:
                state.requests_today += 1
            _bump(state.counters, "granted")
        return entry

    def _grant(self, state: ModelState, est_tokens: int, now: float, today: int) -> Grant:
        grant_id = self._next_grant_id
        self._next_grant_id += 1
        if state.day is None or today > state.day:  # the first grant of a new day
            state.day = today
            state.requests_today = 0
        if state.first_use is None:
            state.first_use = now
        expires_at = now + self._window_s + state.estimate.edge_guard_s
        entry = WindowEntry(grant_id, now, expires_at, est_tokens, state.day)
        # Counted from the grant until it is sent (``sent`` moves it then).
        entry.handle = state.window.hold(est_tokens, entry.expires_at)
        state.entries[entry.handle] = entry
        estimate = state.estimate
        near_limit = bool(estimate.rpm) and state.window.requests >= 0.9 * estimate.rpm
        at_edge = estimate.on_grant(now, near_limit=near_limit, tokens=est_tokens)
        state.requests_today += 1
        state.in_flight += 1
        _bump(state.counters, "granted")
        self._held[grant_id] = Held(state, entry, est_tokens, at_edge)
        return Grant(grant_id, state.name, now, est_tokens)

    def _rate_limited(
        self,
        state: ModelState,
        held: Held,
        outcome: RateLimited,
        now: float,
        wall_offset: float,
    ) -> None:
        _bump(state.counters, "rate_limited")
        entry = held.entry
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
        accepted = state.accepted
        estimate = state.estimate
        tokens_scope = outcome.scope is RateLimitScope.TOKENS_PER_MINUTE
        if tokens_scope:
            share = state.window.tokens / estimate.tpm if estimate.tpm else 0.0
        else:
            share = state.window.requests / estimate.rpm if estimate.rpm else 0.0
        keep_place = estimate.on_rate_limited(
            now,
            tokens_scope=tokens_scope,
            retry_delay_s=delay,
            accepted_in_window=len(accepted),
            tokens_in_window=sum(tokens for _, tokens in accepted),
            in_burst=not held.at_edge,
            observed_s=now - state.first_use if state.first_use is not None else None,
            sent_at=entry.granted_at,
            window_share=share,
            tokens=entry.tokens,
        )
        # A refused request keeps its place in our window on window evidence:
        # another client may be spending the quota, and freeing the place
        # made tierbatch far more aggressive then (429s per 1,000 requests
        # rose from ~120 to ~380 in the bench's storm workload). A bucket
        # never counted it: the place goes back.
        if not keep_place and entry.handle is not None:
            state.window.remove(entry.handle)
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

    def _cool_down(
        self, state: ModelState, deadline: float, reason: CooldownReason, now: float
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

    @classmethod
    def _refund(cls, state: ModelState, entry: WindowEntry) -> None:
        if entry.handle is not None:
            state.window.remove(entry.handle)
        if entry.day == state.day and state.requests_today > 0:
            state.requests_today -= 1

    def _status(self, state: ModelState, now: float, wall_offset: float, today: int) -> ModelStatus:
        requests, tokens = state.window.live(now)
        requests_today = _requests_today(state, today)
        exhausted = self._exhausted_until(state, now, wall_offset, today)
        cooldown = _future(state.cooldown_until, now)
        estimate = state.estimate
        return ModelStatus(
            model=state.name,
            requests_in_window=requests,
            tokens_in_window=tokens,
            requests_today=requests_today,
            in_flight=state.in_flight,
            cooldown_until=cooldown,
            cooldown_reason=None if cooldown is None else state.cooldown_reason,
            exhausted_until=exhausted,
            unavailable=state.unavailable,
            counters=MappingProxyType(dict(state.counters)),
            configured_rpm=estimate.configured_rpm,
            configured_tpm=estimate.configured_tpm,
            learnt_rpm=estimate.rpm,
            learnt_tpm=estimate.tpm,
            burst=estimate.burst,
            limiter=estimate.shape.value,
        )


class QuotaAt:
    """A ``QuotaPolicy`` with the wall offset of one moment bound: the
    ``QuotaView`` the registry's waiting list asks."""

    __slots__ = ("_offset", "_policy")

    def __init__(self, policy: QuotaPolicy, wall_offset: float) -> None:
        self._policy = policy
        self._offset = wall_offset

    def earliest(self, model: str, est_tokens: int, now: float) -> float | None:
        return self._policy.earliest(model, est_tokens, now, wall_offset=self._offset)

    def grant(self, model: str, est_tokens: int, now: float) -> Grant:
        return self._policy.grant(model, est_tokens, now, wall_offset=self._offset)

    def never_reason(self, model: str, est_tokens: int) -> str | None:
        return self._policy.never_reason(model, est_tokens)


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


def _never_reason(state: ModelState, est_tokens: int) -> str | None:
    """Why ``state``'s model can never take a request of ``est_tokens``."""
    if state.unavailable is not None:
        return f"unavailable ({state.unavailable})"
    limits = state.limits
    if limits.tpm and est_tokens > limits.tpm:
        return f"{est_tokens} tokens exceed its {limits.tpm} tokens per minute"
    if limits.max_input_tokens and est_tokens > limits.max_input_tokens:
        return f"{est_tokens} tokens exceed its {limits.max_input_tokens} max input tokens"
    return None


def _requests_today(state: ModelState, today: int) -> int:
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


def _future(deadline: float | None, now: float) -> float | None:
    return deadline if deadline is not None and deadline > now else None


def _bump(counters: dict[str, int | float], name: str, amount: int | float = 1) -> None:
    counters[name] = counters.get(name, 0) + amount

"""The quota policy against an obviously-correct reference, step by step.

The reference keeps every grant ever made (time, tokens, cancelled or not),
every cooldown and exhaustion deadline ever set, and answers "may model M
take E tokens at time t?" by counting from scratch. The earliest grantable
moment it finds by trying, in order, every instant at which any of those
counts or deadlines can change. Hypothesis drives both with random chains,
every kind of outcome, time jumps across Pacific midnight and DST changes,
steps of the wall clock (steady time goes on; only the day may change),
snapshot/restore cycles -- also into a process whose steady clock has another
origin -- and compares them after every step.

Times are steady; the wall clock reads ``t + offset``. Offsets and origin
shifts are whole seconds and every time stays in [2**30, 2**31), where floats
are multiples of 2**-22: converting between the timelines is then exact, so
the reference and the policy can be compared with ``==``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

import msgpack
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from tierbatch.policies.config import LimiterMode, ModelSpec, QuotaConfig
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
from tierbatch.policies.quota import DAY_BOUNDARY_SLACK_S, Grant, NoRoute, QuotaPolicy, Wait

LA = ZoneInfo("America/Los_Angeles")
NAMES = ("m0", "m1", "m2", "m3")


def pacific(y: int, mo: int, d: int, h: int = 0, mi: int = 0) -> float:
    return datetime(y, mo, d, h, mi, tzinfo=LA).timestamp()


# Clock starts a few hours around interesting local midnights.
STARTS = (
    pacific(2024, 3, 10),  # spring forward at 02:00: a 23 h day
    pacific(2024, 11, 3),  # fall back at 02:00: a 25 h day
    pacific(2025, 3, 9),  # spring forward again
    pacific(2024, 6, 15),  # an ordinary day
)


@lru_cache(maxsize=4096)
def local_date(whole_seconds: int) -> date:
    return datetime.fromtimestamp(whole_seconds, LA).date()


def day_of(t: float) -> date:
    # Days change on whole seconds; flooring avoids fromtimestamp's rounding
    # to the microsecond, which would move t = midnight - 1e-7 into the next day.
    return local_date(math.floor(t))


def midnight_of(day: date) -> float:
    # Midnight always exists in Los Angeles (clocks change at 02:00).
    return datetime.combine(day, time(), tzinfo=LA).timestamp()


def next_midnight(wall: float) -> float:
    return midnight_of(day_of(wall) + timedelta(days=1))


def before(t: float) -> float:
    return math.nextafter(t, -math.inf)


def scaled(limit: int, utilisation: float) -> int:
    # utilisation is 1.0, 0.75 or 0.5 here: products are exact
    return 0 if limit == 0 else max(1, math.floor(limit * utilisation))


@dataclass
class RefGrant:
    gid: int
    model: str
    t: float
    tokens: int
    day: date
    cancelled: bool = False
    reported: bool = False
    expires: float = math.inf  # set at grant: t + window


@dataclass
class RefModel:
    rpm: int
    tpm: int
    rpd: int
    cap: int
    max_input: int
    cooldowns: list[float] = field(default_factory=list)
    exhaustions: list[float] = field(default_factory=list)
    unavailable: bool = False
    consecutive_429s: int = 0
    consecutive_errors: int = 0


class Reference:
    """Counts everything from the full history on every question."""

    def __init__(self, specs: dict[str, ModelSpec], quota: QuotaConfig) -> None:
        u = quota.utilisation
        self.quota = quota
        self.window = quota.window_s + quota.margin_s
        self.models = {
            name: RefModel(
                rpm=scaled(s.rpm, u),
                tpm=scaled(s.tpm, u),
                rpd=scaled(s.rpd, u),
                cap=scaled(s.max_in_flight, u),
                max_input=s.max_input_tokens,
            )
            for name, s in specs.items()
        }
        self.grants: dict[int, RefGrant] = {}
        self.offset = 0.0  # the wall clock reads t + offset

    # -- questions --

    def counted(self, model: str) -> list[RefGrant]:
        return [g for g in self.grants.values() if g.model == model and not g.cancelled]

    def in_window(self, model: str, t: float) -> list[RefGrant]:
        return [g for g in self.counted(model) if g.t <= t < g.expires]

    def day(self, model: str, t: float) -> date:
        """The day the model counts in: the wall clock's, or the latest day
        it was granted in when the wall clock stepped back across midnight."""
        granted = [g.day for g in self.grants.values() if g.model == model]
        return max([day_of(t + self.offset), *granted])

    def today(self, model: str, t: float) -> int:
        day = self.day(model, t)
        return sum(1 for g in self.counted(model) if g.day == day)

    def day_end(self, model: str, t: float) -> float:
        """When (steady) the model's day ends."""
        return midnight_of(self.day(model, t) + timedelta(days=1)) - self.offset

    def in_flight(self, model: str) -> int:
        return sum(1 for g in self.grants.values() if g.model == model and not g.reported)

    def never(self, model: str, est: int) -> bool:
        m = self.models.get(model)
        return (
            m is None
            or m.unavailable
            or (m.tpm > 0 and est > m.tpm)
            or (m.max_input > 0 and est > m.max_input)
        )

    def time_allows(self, model: str, est: int, t: float) -> bool:
        """Every limit but the in-flight cap allows the request at t."""
        m = self.models[model]
        window = self.in_window(model, t)
        return (
            all(d <= t for d in m.cooldowns)
            and all(d <= t for d in m.exhaustions)
            and (m.rpm == 0 or len(window) < m.rpm)
            and (m.tpm == 0 or sum(g.tokens for g in window) + est <= m.tpm)
            and (m.rpd == 0 or self.today(model, t) < m.rpd)
        )

    def capped(self, model: str) -> bool:
        m = self.models[model]
        return m.cap > 0 and self.in_flight(model) >= m.cap

    def grantable(self, model: str, est: int, now: float) -> bool:
        return (
            not self.never(model, est)
            and not self.capped(model)
            and self.time_allows(model, est, now)
        )

    def earliest(self, model: str, est: int, now: float) -> float | None:
        if self.never(model, est):
            return math.inf
        if self.capped(model):
            return None
        m = self.models[model]
        moments = {now, self.day_end(model, now), *m.cooldowns, *m.exhaustions}
        moments |= {g.expires for g in self.counted(model)}
        for t in sorted(x for x in moments if x >= now):
            if self.time_allows(model, est, t):
                return t
        raise AssertionError(f"reference: {model} never frees up")

    def expected_acquire(self, chain: list[str], est: int, now: float) -> tuple[str, Any]:
        for model in chain:
            if model in self.models and self.grantable(model, est, now):
                return ("grant", model)
        times = [self.earliest(model, est, now) for model in chain]
        finite = [t for t in times if t is not None and t != math.inf]
        if finite:
            return ("wait", min(finite))
        if any(t is None for t in times):
            return ("wait", None)
        return ("noroute", None)

    def cooldown_end(self, model: str, now: float) -> float | None:
        end = max(self.models[model].cooldowns, default=-math.inf)
        return end if end > now else None

    def exhausted_end(self, model: str, now: float) -> float | None:
        m = self.models[model]
        end = max(m.exhaustions, default=-math.inf)
        if m.rpd and self.today(model, now) >= m.rpd:
            end = max(end, self.day_end(model, now))
        return end if end > now else None

    def next_event(self, now: float) -> float | None:
        moments: list[float] = []
        for name, m in self.models.items():
            if m.unavailable:
                continue
            for end in (self.cooldown_end(name, now), self.exhausted_end(name, now)):
                if end is not None:
                    moments.append(end)
            moments += [g.expires for g in self.in_window(name, now)]
        return min(moments, default=None)

    # -- events --

    def grant(self, gid: int, model: str, now: float, est: int) -> None:
        assert gid not in self.grants
        expires = now + self.window
        day = self.day(model, now)
        self.grants[gid] = RefGrant(gid, model, now, est, day, expires=expires)

    def backoff(self, exponent: int) -> float:
        return min(self.quota.backoff_base_s * 2**exponent, self.quota.backoff_max_s)

    def report(self, gid: int, outcome: CallOutcome, now: float) -> None:
        g = self.grants[gid]
        g.reported = True
        m = self.models[g.model]
        if isinstance(outcome, Succeeded):
            g.tokens = outcome.usage.input_tokens
            m.consecutive_429s = m.consecutive_errors = 0
        elif isinstance(outcome, RateLimited):
            given = outcome.retry_delay_s
            # "0s", a negative or a NaN delay is no delay.
            delay = given if given is not None and 0 < given < math.inf else None
            backoff = self.backoff(m.consecutive_429s)
            m.consecutive_429s += 1
            wait = backoff if delay is None else delay
            if outcome.scope is RateLimitScope.REQUESTS_PER_DAY:
                # Against the day the request was counted in.
                start = midnight_of(g.day) - self.offset
                end = midnight_of(g.day + timedelta(days=1)) - self.offset
                near = abs(now - start) <= DAY_BOUNDARY_SLACK_S or end - now <= DAY_BOUNDARY_SLACK_S
                if end <= now:  # that day is over: only the delay, else a backoff
                    m.exhaustions.append(now + wait)
                elif delay is not None and near and now + delay < end:
                    m.exhaustions.append(now + delay)
                else:
                    m.exhaustions.append(end)
            else:
                m.cooldowns.append(now + wait)
        elif isinstance(outcome, ServerError | TimedOut):
            m.consecutive_errors += 1
            threshold = self.quota.server_error_threshold
            if m.consecutive_errors >= threshold:
                m.cooldowns.append(now + self.backoff(m.consecutive_errors - threshold))
        elif isinstance(outcome, ModelNotFound):
            m.unavailable = True
        elif isinstance(outcome, Cancelled):
            g.cancelled = True

    def shift(self, seconds: float) -> None:
        """A new steady origin: every steady time moves by ``seconds``."""
        for g in self.grants.values():
            g.t += seconds
            g.expires += seconds
        for m in self.models.values():
            m.cooldowns = [d + seconds for d in m.cooldowns]
            m.exhaustions = [d + seconds for d in m.exhaustions]
        self.offset -= seconds


# -- strategies ------------------------------------------------------------------

delays = st.one_of(
    st.none(),
    st.sampled_from([0.0, -1.0, math.nan, 0.5, 2.0, 26.0, 45.83]),
    st.floats(min_value=0.0, max_value=120.0, allow_nan=False, allow_infinity=False),
)
rate_limits = st.builds(RateLimited, st.sampled_from(list(RateLimitScope)), delays)
OUTCOME_KINDS: dict[str, st.SearchStrategy[CallOutcome]] = {
    "succeeded": st.builds(Succeeded, st.builds(Usage, st.integers(0, 15), st.integers(0, 5))),
    "rate_limited": rate_limits,
    "server_error": st.builds(ServerError, st.sampled_from([500, 503, None])),
    "timed_out": st.builds(TimedOut, st.just(60.0)),
    "bad_request": st.builds(BadRequest, st.just("bad")),
    "auth_failed": st.builds(AuthFailed, st.just(403), st.just("denied")),
    "abandoned": st.just(Abandoned()),
    "cancelled": st.just(Cancelled()),
    "not_found": st.builds(ModelNotFound, st.just("gone")),
}
# Weights as repetitions (sampled_from is close to uniform; one_of merges
# repeated branches). 429s drive cooldowns, so they come most often; a 404
# retires a model for good, so it comes rarely.
_WEIGHTED_KINDS = (
    ["rate_limited"] * 8
    + ["succeeded"] * 5
    + ["server_error", "timed_out"] * 2
    + ["cancelled", "abandoned"] * 2
    + ["bad_request", "auth_failed", "not_found"]
)
outcomes = st.sampled_from(_WEIGHTED_KINDS).flatmap(OUTCOME_KINDS.__getitem__)
estimates = st.one_of(st.integers(0, 6), st.integers(0, 12))
time_steps = st.one_of(
    st.floats(min_value=0.0, max_value=5.0, allow_nan=False),
    st.sampled_from([0.25, 1.0, 10.0, 30.0, 60.0, 60.5]),
    st.floats(min_value=60.0, max_value=900.0, allow_nan=False),
    st.floats(min_value=3600.0, max_value=30 * 3600.0, allow_nan=False),
)


class QuotaMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.specs: dict[str, ModelSpec] = {}
        self.quota = QuotaConfig(limiter=LimiterMode.WINDOW, learn_limits=False)
        self.policy = QuotaPolicy({}, self.quota)
        self.ref = Reference({}, self.quota)
        self.names: tuple[str, ...] = ()
        self.pending: tuple[list[str], int, float] | None = None  # an unverified Wait
        self.offset = 0.0  # wall minus steady: the wall clock reads now + offset

    @initialize(
        data=st.data(),
        count=st.integers(3, 4),
        start=st.sampled_from(STARTS),
        offset=st.floats(min_value=-4 * 3600.0, max_value=4 * 3600.0, allow_nan=False),
    )
    def setup(self, data: st.DataObject, count: int, start: float, offset: float) -> None:
        for index, name in enumerate(NAMES[:count]):
            # The first model is roomy (several grants in flight and in one
            # window); the others are tight, so limits bind within a few steps.
            roomy = index == 0
            self.specs[name] = ModelSpec(
                name=name,
                rpm=data.draw(st.sampled_from([0, 4, 6] if roomy else [0, 1, 2, 3]), label="rpm"),
                tpm=data.draw(st.sampled_from([0, 40] if roomy else [0, 10, 25, 40]), label="tpm"),
                rpd=data.draw(st.sampled_from([0, 8] if roomy else [0, 1, 2, 3, 4]), label="rpd"),
                max_in_flight=data.draw(
                    st.sampled_from([0, 4] if roomy else [0, 1, 2]), label="max_in_flight"
                ),
                max_input_tokens=data.draw(
                    st.sampled_from([1_000_000] if roomy else [1_000_000, 1_000_000, 8]),
                    label="max_input",
                ),
            )
        self.quota = QuotaConfig(
            # The reference models a rolling window with the configured limits
            # as the truth; pacing and learning are tested in test_estimator.
            limiter=LimiterMode.WINDOW,
            learn_limits=False,
            window_s=data.draw(st.sampled_from([60.0, 10.0]), label="window_s"),
            margin_s=data.draw(st.sampled_from([0.5, 0.0]), label="margin_s"),
            utilisation=data.draw(st.sampled_from([1.0, 0.75, 0.5]), label="utilisation"),
            backoff_base_s=data.draw(st.sampled_from([1.0, 0.5]), label="backoff_base_s"),
            backoff_max_s=data.draw(st.sampled_from([60.0, 4.0]), label="backoff_max_s"),
            server_error_threshold=data.draw(st.integers(1, 3), label="threshold"),
        )
        self.policy = QuotaPolicy(self.specs, self.quota)
        self.ref = Reference(self.specs, self.quota)
        self.names = tuple(self.specs)
        self.now = start + offset

    def chains(self) -> st.SearchStrategy[list[str]]:
        models = st.sampled_from(self.names)
        return st.lists(st.one_of(models, models, models, st.just("ghost")), min_size=1, max_size=5)

    # -- requests --

    @rule(data=st.data(), est=estimates)
    def acquire(self, data: st.DataObject, est: int) -> None:
        self.acquire_and_compare(data.draw(self.chains(), label="chain"), est)

    # Hypothesis picks rules uniformly: twins give requests and reports the
    # weight they have in real traffic.
    @rule(data=st.data(), est=estimates)
    def acquire_more(self, data: st.DataObject, est: int) -> None:
        self.acquire_and_compare(data.draw(self.chains(), label="chain"), est)

    @rule(data=st.data(), est=estimates)
    def acquire_again(self, data: st.DataObject, est: int) -> None:
        self.acquire_and_compare(data.draw(self.chains(), label="chain"), est)

    def acquire_and_compare(self, chain: list[str], est: int) -> None:
        expected = self.ref.expected_acquire(chain, est, self.now)
        result = self.policy.acquire(chain, est, self.now, wall_offset=self.offset)
        if isinstance(result, Grant):
            assert expected == ("grant", result.model), (expected, result)
            assert (result.granted_at, result.est_tokens) == (self.now, est)
            self.check_grant_is_within_limits(result.model, est)
            self.ref.grant(result.grant_id, result.model, self.now, est)
            self.pending = None
        elif isinstance(result, Wait):
            assert expected == ("wait", result.until), (expected, result)
            if result.until is not None:
                assert result.until > self.now
                self.pending = (chain, est, result.until)
        else:
            assert isinstance(result, NoRoute)
            assert expected == ("noroute", None), (expected, result)

    def check_grant_is_within_limits(self, model: str, est: int) -> None:
        """What the grant must respect, spelt out (the reference agrees by
        construction; this states the safety rules once more, directly)."""
        m, ref, now = self.ref.models[model], self.ref, self.now
        assert not m.unavailable
        assert all(d <= now for d in m.cooldowns), "granted during a cooldown"
        assert all(d <= now for d in m.exhaustions), "granted while exhausted for the day"
        window = ref.in_window(model, now)
        assert m.rpm == 0 or len(window) + 1 <= m.rpm
        assert m.tpm == 0 or sum(g.tokens for g in window) + est <= m.tpm
        assert m.rpd == 0 or ref.today(model, now) + 1 <= m.rpd
        assert m.cap == 0 or ref.in_flight(model) + 1 <= m.cap

    @precondition(lambda self: self.pending is not None)
    @rule()
    def wait_ends_exactly_when_promised(self) -> None:
        """Advance to just before the promised moment: still nothing; at it: a grant."""
        assert self.pending is not None
        chain, est, until = self.pending
        self.pending = None
        if until <= self.now:
            return
        self.now = before(until)
        offset = self.offset
        assert not any(self.policy.can_grant(m, est, self.now, wall_offset=offset) for m in chain)
        assert self.policy.acquire(chain, est, self.now, wall_offset=offset) == Wait(until)
        self.now = until
        result = self.policy.acquire(chain, est, self.now, wall_offset=offset)
        assert isinstance(result, Grant), result
        assert self.ref.expected_acquire(chain, est, self.now) == ("grant", result.model)
        self.ref.grant(result.grant_id, result.model, self.now, est)

    # -- outcomes --

    @precondition(lambda self: any(not g.reported for g in self.ref.grants.values()))
    @rule(data=st.data())
    def report(self, data: st.DataObject) -> None:
        self.report_and_compare(data)

    @precondition(lambda self: any(not g.reported for g in self.ref.grants.values()))
    @rule(data=st.data())
    def report_more(self, data: st.DataObject) -> None:
        self.report_and_compare(data)

    def report_and_compare(self, data: st.DataObject) -> None:
        outstanding = sorted(g.gid for g in self.ref.grants.values() if not g.reported)
        gid = data.draw(st.sampled_from(outstanding), label="grant")
        outcome = data.draw(outcomes, label="outcome")
        model = self.ref.grants[gid].model
        cooling_before = self.ref.cooldown_end(model, self.now)
        assert self.policy.report(gid, outcome, self.now, wall_offset=self.offset)
        self.ref.report(gid, outcome, self.now)
        self.pending = None
        statuses = self.policy.status(self.now, wall_offset=self.offset)
        cooling_after = statuses[self.names.index(model)].cooldown_until
        if cooling_before is not None:  # never shortened by a later, shorter 429
            assert cooling_after is not None and cooling_after >= cooling_before

    @rule(
        data=st.data(),
        long=st.floats(min_value=20.0, max_value=120.0, allow_nan=False),
        short=st.one_of(st.none(), st.floats(min_value=0.0, max_value=19.0, allow_nan=False)),
        gap=st.floats(min_value=0.0, max_value=5.0, allow_nan=False),
        long_scope=st.sampled_from([RateLimitScope.REQUESTS_PER_MINUTE, RateLimitScope.UNKNOWN]),
    )
    def overlapping_429s(
        self,
        data: st.DataObject,
        long: float,
        short: float | None,
        gap: float,
        long_scope: RateLimitScope,
    ) -> None:
        """Two requests of one model hit 429s: the one with the longer delay
        reports first, the shorter one after it. The deadline must stay.
        Takes the two grants itself when the model has room for them."""
        model = data.draw(st.sampled_from(self.names), label="model")
        while self.ref.in_flight(model) < 2 and self.ref.grantable(model, 0, self.now):
            self.acquire_and_compare([model], 0)
        held = sorted(
            g.gid for g in self.ref.grants.values() if g.model == model and not g.reported
        )
        if len(held) < 2:
            return
        first, second = held[:2]
        assert self.policy.report(
            first, RateLimited(long_scope, long), self.now, wall_offset=self.offset
        )
        self.ref.report(first, RateLimited(long_scope, long), self.now)
        deadline = self.now + long
        self.now += gap
        shorter = RateLimited(RateLimitScope.TOKENS_PER_MINUTE, short)
        assert self.policy.report(second, shorter, self.now, wall_offset=self.offset)
        self.ref.report(second, shorter, self.now)
        status = self.policy.status(self.now, wall_offset=self.offset)[self.names.index(model)]
        assert status.cooldown_until is not None and status.cooldown_until >= deadline
        self.pending = None

    @rule(
        data=st.data(),
        lead=st.floats(min_value=0.0, max_value=10.0, allow_nan=False),
        answer_after=st.floats(min_value=0.0, max_value=700.0, allow_nan=False),
        delay=delays,
    )
    def per_day_429_around_midnight(
        self, data: st.DataObject, lead: float, answer_after: float, delay: float | None
    ) -> None:
        """A request counted in the last seconds of a local day, refused with
        a per-day 429 on either side of midnight: the refusal counts against
        the day the request was counted in."""
        model = data.draw(st.sampled_from(self.names), label="model")
        midnight = next_midnight(self.now + self.offset) - self.offset
        self.now = max(self.now, midnight - lead)
        if not self.ref.grantable(model, 0, self.now):
            return
        self.acquire_and_compare([model], 0)
        gid = max(self.ref.grants)  # the grant just made
        self.now += answer_after
        outcome = RateLimited(RateLimitScope.REQUESTS_PER_DAY, delay)
        assert self.policy.report(gid, outcome, self.now, wall_offset=self.offset)
        self.ref.report(gid, outcome, self.now)
        self.pending = None

    @rule(data=st.data())
    def report_twice_or_unknown(self, data: st.DataObject) -> None:
        done = sorted(g.gid for g in self.ref.grants.values() if g.reported)
        gid = data.draw(st.sampled_from([*done, 0, 10_000]), label="stale grant")
        before_state = self.policy.snapshot()
        assert not self.policy.report(gid, data.draw(outcomes), self.now, wall_offset=self.offset)
        assert self.policy.snapshot() == before_state

    @rule(data=st.data())
    def mark_unavailable(self, data: st.DataObject) -> None:
        if data.draw(st.integers(0, 9), label="rarely") != 5:  # not a bound: those come often
            return
        model = data.draw(st.sampled_from(self.names), label="model")
        self.policy.mark_unavailable(model, "operator")
        self.ref.models[model].unavailable = True
        self.pending = None

    # -- time --

    @rule(step=time_steps)
    def advance(self, step: float) -> None:
        self.now += step

    @rule(data=st.data(), kind=st.sampled_from(["midnight", "next_event", "deadline"]))
    def advance_to_a_boundary(self, data: st.DataObject, kind: str) -> None:
        """Land exactly on (or just before) a local midnight, the policy's
        next event, or a cooldown end / exhaustion end / window expiry the
        reference knows of: where off-by-one-instant bugs live."""
        if kind == "next_event":
            at = self.policy.next_event(self.now, wall_offset=self.offset)
            if at is not None:
                self.now = at
            return
        if kind == "midnight":
            targets = [next_midnight(self.now + self.offset) - self.offset]
        else:
            targets = [
                d
                for m in self.ref.models.values()
                for d in (*m.cooldowns, *m.exhaustions)
                if d > self.now
            ]
            targets += [g.expires for g in self.ref.grants.values() if g.expires > self.now]
        if targets:
            target = data.draw(st.sampled_from(sorted(targets)), label="target")
            just_before = data.draw(st.booleans(), label="just before")
            self.now = max(self.now, before(target)) if just_before else target

    @rule(
        step=st.one_of(
            st.sampled_from([-3600, 3600, -7200, 7200, -86_400, 86_400]),
            st.integers(-5000, 5000),
        )
    )
    def step_the_wall_clock(self, step: int) -> None:
        """An NTP step, a resumed VM: the wall clock jumps, steady time does
        not. Windows, cooldowns and waits stay put (the invariants say so);
        only the day may change."""
        self.offset += step
        self.ref.offset = self.offset
        self.pending = None

    # -- persistence --

    @rule(through_msgpack=st.booleans())
    def snapshot_and_restore(self, through_msgpack: bool) -> None:
        data = self.policy.snapshot(wall_offset=self.offset)
        assert is_plain(data)
        if through_msgpack:
            data = msgpack.unpackb(msgpack.packb(data), raw=False)
        restored = QuotaPolicy.restore(self.specs, self.quota, data, wall_offset=self.offset)
        assert restored.snapshot(wall_offset=self.offset) == data
        assert data == self.policy.snapshot(wall_offset=self.offset)
        self.policy = restored

    @rule()
    def restart(self) -> None:
        """A new process: restore, then whatever was in flight is abandoned."""
        data = self.policy.snapshot(wall_offset=self.offset)
        restored = QuotaPolicy.restore(self.specs, self.quota, data, wall_offset=self.offset)
        restored.forget_in_flight()
        self.policy = restored
        for g in self.ref.grants.values():
            g.reported = True
        self.pending = None

    @rule(shift=st.integers(-(10**8), 10**8), forget=st.booleans())
    def restart_with_a_new_clock_origin(self, shift: int, forget: bool) -> None:
        """Saved by one process, restored by another whose steady clock has a
        different origin (a reboot): everything keeps its remaining time."""
        data = self.policy.snapshot(wall_offset=self.offset)
        self.now += shift
        self.ref.shift(shift)
        self.offset = self.ref.offset
        restored = QuotaPolicy.restore(self.specs, self.quota, data, wall_offset=self.offset)
        assert restored.snapshot(wall_offset=self.offset) == data
        if forget:
            restored.forget_in_flight()
            for g in self.ref.grants.values():
                g.reported = True
        self.policy = restored
        self.pending = None

    # -- checks after every step --

    @invariant()
    def status_matches_reference(self) -> None:
        ref, now = self.ref, self.now
        for status in self.policy.status(now, wall_offset=self.offset):
            name = status.model
            window = ref.in_window(name, now)
            assert status.requests_in_window == len(window)
            assert status.tokens_in_window == sum(g.tokens for g in window)
            assert status.requests_today == ref.today(name, now)
            assert status.in_flight == ref.in_flight(name)
            assert status.cooldown_until == ref.cooldown_end(name, now)
            assert status.exhausted_until == ref.exhausted_end(name, now)
            assert (status.unavailable is not None) == ref.models[name].unavailable
            assert status.counters["granted"] == sum(
                1 for g in ref.grants.values() if g.model == name
            )

    @invariant()
    def decisions_match_reference(self) -> None:
        """Never grantable while the reference says blocked (cooldown, window,
        day, cap); always grantable when it says free (no model stuck); and
        the same earliest moment."""
        offset = self.offset
        for name in (*self.names, "ghost"):
            for est in (0, 1, 7, 12):
                assert self.policy.can_grant(
                    name, est, self.now, wall_offset=offset
                ) == self.ref.grantable(name, est, self.now), (name, est)
                assert self.policy.earliest(
                    name, est, self.now, wall_offset=offset
                ) == self.ref.earliest(name, est, self.now), (name, est)

    @invariant()
    def next_event_matches_reference(self) -> None:
        assert self.policy.next_event(self.now, wall_offset=self.offset) == self.ref.next_event(
            self.now
        )

    @invariant()
    def history_respects_every_limit(self) -> None:
        """Over the whole history: at most rpm grants in any window of
        window_s + margin_s seconds (the busiest window starts at a grant),
        at most rpd per Pacific day."""
        ref = self.ref
        for name, m in ref.models.items():
            times = sorted(g.t for g in ref.counted(name))
            if m.rpm:
                for i, start in enumerate(times):
                    in_window = sum(1 for t in times[i:] if t < start + ref.window)
                    assert in_window <= m.rpm, (name, start)
            if m.rpd:
                per_day: dict[date, int] = {}
                for g in ref.counted(name):
                    per_day[g.day] = per_day.get(g.day, 0) + 1
                assert max(per_day.values(), default=0) <= m.rpd, (name, per_day)


def is_plain(value: object) -> bool:
    if value is None or isinstance(value, str | int | float):
        return True
    if isinstance(value, list):
        return all(is_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and is_plain(v) for k, v in value.items())
    return False


QuotaMachine.TestCase.settings = settings(stateful_step_count=50, deadline=None)
TestQuotaStateMachine = QuotaMachine.TestCase

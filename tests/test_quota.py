"""Worked examples for the quota policy: windows, cooldowns, days, snapshots."""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

import msgpack
import pytest

from tierbatch.policies.config import LimiterMode, ModelSpec, QuotaConfig
from tierbatch.policies.local_calendar import LocalCalendar, UnknownTimeZoneError
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
from tierbatch.policies.quota import (
    SNAPSHOT_VERSION,
    CooldownReason,
    Grant,
    ModelStatus,
    NoRoute,
    QuotaPolicy,
    SnapshotError,
    Wait,
    backoff_delay,
    scaled_limit,
)

LA = ZoneInfo("America/Los_Angeles")
W = 60.5  # default window_s + margin_s
RPM = RateLimitScope.REQUESTS_PER_MINUTE
TPM = RateLimitScope.TOKENS_PER_MINUTE
RPD = RateLimitScope.REQUESTS_PER_DAY


def pacific(y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: float = 0.0) -> float:
    return datetime(y, mo, d, h, mi, tzinfo=LA).timestamp() + s


T0 = pacific(2024, 6, 15, 12)  # an ordinary summer noon


def spec(name: str, rpm: int = 0, tpm: int = 0, rpd: int = 0, **kw: Any) -> ModelSpec:
    return ModelSpec(name=name, rpm=rpm, tpm=tpm, rpd=rpd, **kw)


# These tests pin the rolling-window semantics: a whole window at once, the
# configured limits taken as the truth. Pacing and learning are tested in
# tests/test_estimator.py.
FIXED: dict[str, Any] = {"limiter": LimiterMode.WINDOW, "learn_limits": False}


def policy(*specs: ModelSpec, **quota: Any) -> QuotaPolicy:
    return QuotaPolicy({s.name: s for s in specs}, QuotaConfig(**{**FIXED, **quota}))


def grant(p: QuotaPolicy, chain: list[str], tokens: int, now: float) -> Grant:
    result = p.acquire(chain, tokens, now)
    assert isinstance(result, Grant), result
    return result


def status(p: QuotaPolicy, model: str, now: float) -> ModelStatus:
    return next(s for s in p.status(now) if s.model == model)


def before(t: float) -> float:
    return math.nextafter(t, -math.inf)


def rate_limited(delay: float | None, scope: RateLimitScope = RPM) -> RateLimited:
    return RateLimited(scope, delay, "quota exceeded")


# -- granting and the chain ------------------------------------------------


def test_grant_is_recorded_in_window_day_in_flight_and_counters() -> None:
    p = policy(spec("a", rpm=5, tpm=1000, rpd=10))
    g = grant(p, ["a"], 120, T0)
    assert g == Grant(grant_id=g.grant_id, model="a", granted_at=T0, est_tokens=120)
    s = status(p, "a", T0)
    assert (s.requests_in_window, s.tokens_in_window, s.requests_today, s.in_flight) == (
        1,
        120,
        1,
        1,
    )
    assert s.counters["granted"] == 1
    assert grant(p, ["a"], 1, T0).grant_id != g.grant_id


def test_first_grantable_model_of_the_chain_wins() -> None:
    p = policy(spec("a", rpm=1), spec("b", rpm=1), spec("c", rpm=1))
    p.mark_unavailable("a", "retired")
    # unknown, duplicate and unavailable entries are skipped
    assert grant(p, ["ghost", "a", "b", "b", "c"], 1, T0).model == "b"
    assert grant(p, ["ghost", "a", "b", "b", "c"], 1, T0).model == "c"
    assert p.acquire(["ghost", "a", "b", "b", "c"], 1, T0) == Wait(T0 + W)


def test_chain_falls_back_while_primary_cools_and_returns_at_deadline() -> None:
    p = policy(spec("primary"), spec("fallback"))
    g = grant(p, ["primary", "fallback"], 1, T0)
    p.report(g.grant_id, rate_limited(10.0), T0)
    assert grant(p, ["primary", "fallback"], 1, T0 + 9.9).model == "fallback"
    assert grant(p, ["primary", "fallback"], 1, T0 + 10.0).model == "primary"


# -- the rolling window ------------------------------------------------------


def test_request_window_frees_exactly_at_grant_plus_window_plus_margin() -> None:
    p = policy(spec("a", rpm=2))
    grant(p, ["a"], 1, T0)
    grant(p, ["a"], 1, T0 + 3.25)
    assert p.acquire(["a"], 1, T0 + 10) == Wait(T0 + W)
    assert p.earliest("a", 1, T0 + 10) == T0 + W
    assert not p.can_grant("a", 1, before(T0 + W))
    assert p.can_grant("a", 1, T0 + W)
    grant(p, ["a"], 1, T0 + W)
    assert p.acquire(["a"], 1, T0 + W) == Wait(T0 + 3.25 + W)


def test_margin_widens_the_window() -> None:
    p = policy(spec("a", rpm=1), window_s=60.0, margin_s=2.0)
    grant(p, ["a"], 1, T0)
    assert p.acquire(["a"], 1, T0 + 61) == Wait(T0 + 62.0)


def test_token_window_waits_for_enough_expiries() -> None:
    p = policy(spec("a", tpm=100))
    grant(p, ["a"], 40, T0)
    grant(p, ["a"], 30, T0 + 1)
    grant(p, ["a"], 30, T0 + 2)
    # 100 in the window: 50 more needs the first two entries (70) gone
    assert p.acquire(["a"], 50, T0 + 5) == Wait(T0 + 1 + W)
    assert p.acquire(["a"], 40, T0 + 5) == Wait(T0 + W)
    assert status(p, "a", T0 + W).tokens_in_window == 60
    assert grant(p, ["a"], 40, T0 + W).est_tokens == 40


def test_succeeded_replaces_estimate_with_actual_input_tokens() -> None:
    p = policy(spec("a", tpm=100))
    g = grant(p, ["a"], 80, T0)
    assert p.acquire(["a"], 70, T0) == Wait(T0 + W)
    assert p.report(g.grant_id, Succeeded(Usage(input_tokens=30, output_tokens=7)), T0 + 1)
    assert status(p, "a", T0 + 1).tokens_in_window == 30  # refund of 50
    grant(p, ["a"], 70, T0 + 1)
    counters = status(p, "a", T0 + 1).counters
    assert (counters["succeeded"], counters["input_tokens"], counters["output_tokens"]) == (
        1,
        30,
        7,
    )


def test_succeeded_charges_tokens_above_the_estimate() -> None:
    p = policy(spec("a", tpm=100))
    g = grant(p, ["a"], 10, T0)
    p.report(g.grant_id, Succeeded(Usage(input_tokens=100, output_tokens=0)), T0 + 1)
    assert status(p, "a", T0 + 1).tokens_in_window == 100
    assert p.acquire(["a"], 1, T0 + 1) == Wait(T0 + W)
    assert p.can_grant("a", 0, T0 + 1)  # a zero-token request still fits exactly


def test_report_after_the_entry_expired_does_not_touch_the_window() -> None:
    p = policy(spec("a", tpm=100))
    g = grant(p, ["a"], 60, T0)
    grant(p, ["a"], 40, T0 + W)
    p.report(g.grant_id, Succeeded(Usage(input_tokens=90, output_tokens=1)), T0 + W + 1)
    assert status(p, "a", T0 + W + 1).tokens_in_window == 40


def test_cancelled_refunds_window_and_day() -> None:
    p = policy(spec("a", rpm=1, tpm=50, rpd=1))
    g = grant(p, ["a"], 50, T0)
    assert isinstance(p.acquire(["a"], 50, T0), Wait)
    assert p.report(g.grant_id, Cancelled(), T0 + 1)
    s = status(p, "a", T0 + 1)
    assert (s.requests_in_window, s.tokens_in_window, s.requests_today, s.in_flight) == (
        0,
        0,
        0,
        0,
    )
    assert s.counters["cancelled"] == 1
    grant(p, ["a"], 50, T0 + 1)


def test_cancel_after_midnight_does_not_refund_the_new_day() -> None:
    p = policy(spec("a", rpd=1))
    late = pacific(2024, 6, 15, 23, 59, 30.0)
    g = grant(p, ["a"], 1, late)
    grant(p, ["a"], 1, pacific(2024, 6, 16, 0, 0, 10.0))
    p.report(g.grant_id, Cancelled(), pacific(2024, 6, 16, 0, 0, 20.0))
    assert status(p, "a", pacific(2024, 6, 16, 0, 1)).requests_today == 1


def test_abandoned_keeps_usage_but_frees_the_slot() -> None:
    p = policy(spec("a", rpm=1, max_in_flight=1))
    g = grant(p, ["a"], 5, T0)
    assert p.report(g.grant_id, Abandoned(), T0 + 1)
    s = status(p, "a", T0 + 1)
    assert (s.in_flight, s.requests_in_window, s.tokens_in_window) == (0, 1, 5)
    assert s.counters["abandoned"] == 1
    assert p.acquire(["a"], 1, T0 + 1) == Wait(T0 + W)


def test_time_going_back_keeps_the_window_in_expiry_order() -> None:
    """``now`` is steady time and does not go back; if a caller's does, the
    window still frees each place at its own expiry."""
    p = policy(spec("a", rpm=2))
    grant(p, ["a"], 1, T0 + 10)
    grant(p, ["a"], 1, T0)
    assert p.acquire(["a"], 1, T0 + 10) == Wait(T0 + W)
    assert p.next_event(T0 + 10) == T0 + W
    assert status(p, "a", T0 + W).requests_in_window == 1


# -- 429s and cooldowns ----------------------------------------------------------


def test_fractional_retry_delay_sets_an_exact_deadline() -> None:
    p = policy(spec("a"))
    g = grant(p, ["a"], 1, T0)
    p.report(g.grant_id, rate_limited(45.83), T0 + 0.5)
    deadline = T0 + 0.5 + 45.83
    s = status(p, "a", T0 + 1)
    assert (s.cooldown_until, s.cooldown_reason) == (deadline, CooldownReason.RATE_LIMITED)
    assert p.acquire(["a"], 1, T0 + 1) == Wait(deadline)
    assert p.next_event(T0 + 1) == deadline
    assert not p.can_grant("a", 1, before(deadline))
    assert grant(p, ["a"], 1, deadline).granted_at == deadline
    assert status(p, "a", deadline).cooldown_until is None


def test_earlier_shorter_429_never_shortens_a_longer_cooldown() -> None:
    p = policy(spec("a"))
    first, second = grant(p, ["a"], 1, T0), grant(p, ["a"], 1, T0)
    p.report(first.grant_id, rate_limited(30.0, TPM), T0 + 1)  # until T0 + 31
    p.report(second.grant_id, rate_limited(2.0), T0 + 2)  # until T0 + 4: arrives later, ends sooner
    s = status(p, "a", T0 + 5)
    assert (s.cooldown_until, s.cooldown_reason) == (T0 + 31, CooldownReason.TOKENS_LIMITED)
    assert p.acquire(["a"], 1, T0 + 5) == Wait(T0 + 31)
    assert p.next_event(T0 + 2) == T0 + 31  # the shorter deadline is no event
    assert s.counters["cooldown_s"] == pytest.approx(30.0)  # the overlap is not counted twice


def test_later_longer_429_extends_a_cooldown() -> None:
    p = policy(spec("a"))
    first, second = grant(p, ["a"], 1, T0), grant(p, ["a"], 1, T0)
    p.report(first.grant_id, rate_limited(5.0), T0)
    p.report(second.grant_id, rate_limited(20.0, TPM), T0 + 1)
    s = status(p, "a", T0 + 2)
    assert (s.cooldown_until, s.cooldown_reason) == (T0 + 21, CooldownReason.TOKENS_LIMITED)
    assert s.counters["cooldown_s"] == pytest.approx(21.0)


def test_429_without_retry_delay_backs_off_exponentially_until_success() -> None:
    p = policy(spec("a"), backoff_base_s=1.0, backoff_max_s=5.0)
    now = T0
    expected = [1.0, 2.0, 4.0, 5.0, 5.0]
    for delay in expected:
        g = grant(p, ["a"], 1, now)
        p.report(g.grant_id, rate_limited(None), now)
        assert status(p, "a", now).cooldown_until == now + delay
        now += delay
    g = grant(p, ["a"], 1, now)
    p.report(g.grant_id, Succeeded(Usage(1, 1)), now)
    g = grant(p, ["a"], 1, now)
    p.report(g.grant_id, rate_limited(None), now)
    assert status(p, "a", now).cooldown_until == now + 1.0
    assert status(p, "a", now).counters["rate_limited"] == 6


@pytest.mark.parametrize("delay", [0.0, -3.0, math.nan])
def test_zero_retry_delay_uses_backoff(delay: float) -> None:
    """``retryDelay: "0s"`` is no delay: without a cooldown the model would
    be granted again at once and every retry would burn an attempt."""
    p = policy(spec("a"), backoff_base_s=1.0, backoff_max_s=60.0)
    g = grant(p, ["a"], 1, T0)
    p.report(g.grant_id, rate_limited(delay), T0)
    s = status(p, "a", T0)
    assert (s.cooldown_until, s.cooldown_reason) == (T0 + 1.0, CooldownReason.RATE_LIMITED)
    assert not p.can_grant("a", 1, T0)
    g = grant(p, ["a"], 1, T0 + 1.0)
    p.report(g.grant_id, rate_limited(delay), T0 + 1.0)
    assert status(p, "a", T0 + 1.0).cooldown_until == T0 + 3.0  # the backoff grows


def test_cooldown_is_a_deadline_not_a_timer() -> None:
    # No next_event/timer call between the 429 and the deadline: expiry
    # depends only on the now passed to the decision.
    p = policy(spec("a"))
    g = grant(p, ["a"], 1, T0)
    p.report(g.grant_id, rate_limited(7.0), T0)
    assert grant(p, ["a"], 1, T0 + 3600).granted_at == T0 + 3600


def test_server_errors_cool_down_after_the_threshold_and_reset_on_success() -> None:
    p = policy(spec("a"), server_error_threshold=3, backoff_base_s=2.0, backoff_max_s=100.0)
    now = T0
    outcomes = [ServerError(503), TimedOut(60.0), ServerError(None), ServerError(500)]
    delays = [None, None, 2.0, 4.0]  # base * 2**(n - threshold) from the threshold on
    for outcome, delay in zip(outcomes, delays, strict=True):
        g = grant(p, ["a"], 1, now)
        p.report(g.grant_id, outcome, now)
        s = status(p, "a", now)
        assert s.cooldown_until == (None if delay is None else now + delay)
        now += delay or 0.0
    assert s.cooldown_reason == CooldownReason.SERVER_ERRORS
    assert (s.counters["server_errors"], s.counters["timeouts"]) == (3, 1)
    g = grant(p, ["a"], 1, now)
    p.report(g.grant_id, Succeeded(Usage(1, 1)), now)
    for _ in range(2):
        p.report(grant(p, ["a"], 1, now).grant_id, ServerError(502), now)
    assert status(p, "a", now).cooldown_until is None  # the count restarted


def test_client_errors_are_counted_without_cooldown() -> None:
    p = policy(spec("a"))
    p.report(grant(p, ["a"], 1, T0).grant_id, BadRequest("bad"), T0)
    p.report(grant(p, ["a"], 1, T0).grant_id, AuthFailed(403, "denied"), T0)
    s = status(p, "a", T0)
    assert s.cooldown_until is None and s.in_flight == 0
    assert (s.counters["bad_requests"], s.counters["auth_failures"]) == (1, 1)
    assert s.counters["other_errors"] == 2


# -- unavailable models and NoRoute -----------------------------------------------


def test_model_not_found_makes_the_model_unavailable() -> None:
    p = policy(spec("old"), spec("new"))
    g = grant(p, ["old", "new"], 1, T0)
    p.report(g.grant_id, ModelNotFound("models/old is not found"), T0)
    assert status(p, "old", T0).unavailable == "models/old is not found"
    assert grant(p, ["old", "new"], 1, T0).model == "new"
    result = p.acquire(["old"], 1, T0 + 86_400 * 30)
    assert isinstance(result, NoRoute) and "old" in result.reason
    assert p.earliest("old", 1, T0) == math.inf
    p.clear_unavailable("old")
    assert p.can_grant("old", 1, T0)


def test_mark_unavailable_and_unknown_models() -> None:
    p = policy(spec("a"))
    p.mark_unavailable("a", "shut down")
    p.mark_unavailable("ghost", "never configured")  # no-op
    assert status(p, "a", T0).unavailable == "shut down"
    assert isinstance(p.acquire(["a", "ghost"], 1, T0), NoRoute)
    assert p.earliest("ghost", 1, T0) == math.inf
    assert not p.can_grant("ghost", 1, T0)
    assert p.next_event(T0) is None


@pytest.mark.parametrize(
    ("chain", "tokens", "fragment"),
    [
        ([], 1, "empty"),
        (["ghost"], 1, "not configured"),
        (["small"], 101, "tokens per minute"),
        (["short"], 501, "max input tokens"),
        (["small", "short", "ghost"], 600, "small"),
    ],
)
def test_no_route(chain: list[str], tokens: int, fragment: str) -> None:
    p = policy(spec("small", tpm=100), spec("short", max_input_tokens=500))
    result = p.acquire(chain, tokens, T0)
    assert isinstance(result, NoRoute)
    assert fragment in result.reason


def test_wait_names_the_soonest_model_of_the_chain_not_the_first() -> None:
    p = policy(spec("slow"), spec("soon"), spec("later"))
    for model, delay in (("slow", 30.0), ("soon", 10.25), ("later", 20.0)):
        p.report(grant(p, [model], 1, T0).grant_id, rate_limited(delay), T0)
    assert p.acquire(["slow", "soon", "later"], 1, T0 + 1) == Wait(T0 + 10.25)
    assert grant(p, ["slow", "soon", "later"], 1, T0 + 10.25).model == "soon"


def test_a_hopeless_model_does_not_hide_a_waitable_one() -> None:
    p = policy(spec("small", tpm=10), spec("busy", rpm=1))
    grant(p, ["busy"], 50, T0)
    assert p.acquire(["small", "busy"], 50, T0 + 1) == Wait(T0 + W)


# -- in-flight cap ---------------------------------------------------------------------


def test_in_flight_cap_gives_wait_none_until_a_report() -> None:
    p = policy(spec("a", max_in_flight=2))
    g1, _ = grant(p, ["a"], 1, T0), grant(p, ["a"], 1, T0)
    assert p.acquire(["a"], 1, T0) == Wait(None)
    assert p.earliest("a", 1, T0) is None
    assert p.next_event(T0) == T0 + W  # the window entries still expire
    p.report(g1.grant_id, Succeeded(Usage(1, 1)), T0 + 1)
    grant(p, ["a"], 1, T0 + 1)


def test_in_flight_capped_model_does_not_hide_a_timed_wait() -> None:
    p = policy(spec("capped", max_in_flight=1), spec("cooling"))
    grant(p, ["capped"], 1, T0)
    p.report(grant(p, ["cooling"], 1, T0).grant_id, rate_limited(12.5), T0)
    assert p.acquire(["capped", "cooling"], 1, T0) == Wait(T0 + 12.5)


# -- utilisation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("limit", "utilisation", "expected"),
    [(10, 0.5, 5), (3, 0.5, 1), (1, 0.1, 1), (0, 0.5, 0), (100, 0.29, 29), (7, 1.0, 7)],
)
def test_scaled_limit(limit: int, utilisation: float, expected: int) -> None:
    assert scaled_limit(limit, utilisation) == expected


def test_utilisation_scales_every_limit() -> None:
    p = policy(spec("a", rpm=4, tpm=100, rpd=6, max_in_flight=4), utilisation=0.5)
    assert isinstance(p.acquire(["a"], 51, T0), NoRoute)  # tpm 50
    held = [grant(p, ["a"], 1, T0), grant(p, ["a"], 1, T0)]
    assert p.acquire(["a"], 1, T0) == Wait(None)  # max_in_flight 2
    for g in held:
        p.report(g.grant_id, Succeeded(Usage(1, 1)), T0)
    assert p.acquire(["a"], 1, T0) == Wait(T0 + W)  # rpm 2
    grant(p, ["a"], 1, T0 + W)
    assert status(p, "a", T0 + W).requests_today == 3  # rpd 3
    assert p.acquire(["a"], 1, T0 + 3 * W) == Wait(pacific(2024, 6, 16))


def test_backoff_delay_is_bounded() -> None:
    assert [backoff_delay(0.5, 3.0, n) for n in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert backoff_delay(1.0, 60.0, 10_000) == 60.0


# -- per-day limits ----------------------------------------------------------------------


def test_per_day_429_exhausts_the_model_until_pacific_midnight() -> None:
    p = policy(spec("a", rpd=1000), spec("b"))
    afternoon = pacific(2024, 6, 15, 15, 30)
    g = grant(p, ["a"], 1, afternoon)
    p.report(g.grant_id, rate_limited(3600.0, RPD), afternoon)
    midnight = pacific(2024, 6, 16)
    s = status(p, "a", afternoon)
    assert (s.exhausted_until, s.cooldown_until) == (midnight, None)
    assert s.counters["rate_limited_day"] == 1
    assert p.acquire(["a"], 1, afternoon + 7200) == Wait(midnight)
    assert p.next_event(afternoon + 7200) == midnight
    assert grant(p, ["a", "b"], 1, afternoon + 7200).model == "b"
    assert not p.can_grant("a", 1, before(midnight))
    assert grant(p, ["a"], 1, midnight).model == "a"


def test_daily_count_resets_at_local_midnight() -> None:
    p = policy(spec("a", rpd=2))
    evening = pacific(2024, 6, 15, 22)
    grant(p, ["a"], 1, evening)
    grant(p, ["a"], 1, evening + 60)
    midnight = pacific(2024, 6, 16)
    assert p.acquire(["a"], 1, evening + 120) == Wait(midnight)
    assert status(p, "a", evening + 120).exhausted_until == midnight
    assert p.next_event(evening + 2 * W + 120) == midnight
    assert status(p, "a", midnight).requests_today == 0
    grant(p, ["a"], 1, midnight)
    grant(p, ["a"], 1, midnight)
    assert status(p, "a", midnight).requests_today == 2


@pytest.mark.parametrize(
    ("day", "hours"),
    [(date(2024, 3, 10), 23), (date(2024, 11, 3), 25), (date(2024, 6, 15), 24)],
)
def test_day_length_across_dst(day: date, hours: int) -> None:
    p = policy(spec("a", rpd=1))
    start = pacific(day.year, day.month, day.day)
    morning = pacific(day.year, day.month, day.day, 10)
    grant(p, ["a"], 1, morning)
    result = p.acquire(["a"], 1, morning + 1)
    assert result == Wait(start + hours * 3600)
    assert isinstance(result, Wait) and result.until is not None
    assert datetime.fromtimestamp(result.until, LA).time().hour == 0
    assert not p.can_grant("a", 1, before(result.until))
    assert grant(p, ["a"], 1, result.until).granted_at == result.until


def test_per_day_429_on_the_spring_forward_day() -> None:
    p = policy(spec("a"))
    after_change = pacific(2024, 3, 10, 3, 30)  # 03:30 PDT, one hour after the jump
    p.report(grant(p, ["a"], 1, after_change).grant_id, rate_limited(None, RPD), after_change)
    assert status(p, "a", after_change).exhausted_until == pacific(2024, 3, 11)
    assert pacific(2024, 3, 11) - after_change == (24 - 3.5) * 3600


def test_per_day_429_after_midnight_counts_against_the_grants_day() -> None:
    """Counted at 23:59:59, refused at 00:00:01: the refusal is about the day
    that just ended, so the new day is not lost -- only the backoff holds
    the model (no retryDelay was given)."""
    p = policy(spec("a", rpd=1000), backoff_base_s=1.0)
    g = grant(p, ["a"], 1, pacific(2024, 6, 15, 23, 59, 59.0))
    refused = pacific(2024, 6, 16, 0, 0, 1.0)
    p.report(g.grant_id, rate_limited(None, RPD), refused)
    s = status(p, "a", refused)
    assert s.exhausted_until == refused + 1.0
    assert s.counters["rate_limited_day"] == 1
    assert grant(p, ["a"], 1, refused + 1.0).model == "a"
    assert status(p, "a", refused + 1.0).requests_today == 1


def test_per_day_429_after_midnight_with_a_retry_delay_waits_that_long() -> None:
    p = policy(spec("a"))
    g = grant(p, ["a"], 1, pacific(2024, 6, 15, 23, 59, 59.0))
    refused = pacific(2024, 6, 16, 0, 0, 1.0)
    p.report(g.grant_id, rate_limited(20.0, RPD), refused)
    assert status(p, "a", refused).exhausted_until == refused + 20.0


@pytest.mark.parametrize(
    ("granted", "refused"),
    [
        # Counted in the new day while the provider still counted the old one.
        (pacific(2024, 6, 16, 0, 0, 1.0), pacific(2024, 6, 16, 0, 0, 2.0)),
        # A minute before midnight: the provider resets before our midnight.
        (pacific(2024, 6, 15, 23, 58, 59.0), pacific(2024, 6, 15, 23, 59, 0.0)),
    ],
)
def test_short_retry_delay_near_midnight_wins(granted: float, refused: float) -> None:
    p = policy(spec("a"))
    g = grant(p, ["a"], 1, granted)
    p.report(g.grant_id, rate_limited(20.0, RPD), refused)
    assert status(p, "a", refused).exhausted_until == refused + 20.0
    assert grant(p, ["a"], 1, refused + 20.0).model == "a"


def test_short_retry_delay_far_from_midnight_keeps_the_day_exhausted() -> None:
    """Gemini sends per-minute-sized delays with per-day violations; in the
    middle of the day such a delay is not when the day's quota returns."""
    p = policy(spec("a"))
    afternoon = pacific(2024, 6, 15, 15, 30)
    g = grant(p, ["a"], 1, afternoon)
    p.report(g.grant_id, rate_limited(47.0, RPD), afternoon)
    assert status(p, "a", afternoon).exhausted_until == pacific(2024, 6, 16)


def test_a_retry_delay_longer_than_the_rest_of_the_day_ends_at_midnight() -> None:
    p = policy(spec("a"))
    late = pacific(2024, 6, 15, 23, 59, 50.0)
    g = grant(p, ["a"], 1, late)
    p.report(g.grant_id, rate_limited(30.0, RPD), late)
    assert status(p, "a", late).exhausted_until == pacific(2024, 6, 16)


# -- two timelines: steady deadlines, wall-clock days ------------------------------------

HOUR = 3600.0


@pytest.mark.parametrize("step", [-HOUR, HOUR])
def test_a_wall_step_moves_no_window_and_no_cooldown(step: float) -> None:
    """Steady time goes on while the wall clock steps: a full window still
    frees 45.5 s later, and a cooldown keeps its remaining time."""
    p = policy(spec("a", rpm=2), spec("b"))
    grant(p, ["a"], 1, T0)
    grant(p, ["a"], 1, T0)
    g = grant(p, ["b"], 1, T0)
    p.report(g.grant_id, rate_limited(30.0), T0)
    now = T0 + 15.0
    assert p.earliest("a", 1, now, wall_offset=step) - now == pytest.approx(45.5)
    assert p.acquire(["a"], 1, now, wall_offset=step) == Wait(T0 + W)
    assert not p.can_grant("b", 1, now, wall_offset=step)
    assert p.next_event(now, wall_offset=step) == T0 + 30.0
    assert status(p, "b", now).cooldown_until == T0 + 30.0


def test_the_day_follows_the_wall_clock() -> None:
    """Steady time is mid-afternoon; the wall clock says 23:30: the day's
    count resets at the wall clock's midnight, converted to steady time."""
    p = QuotaPolicy({"a": spec("a", rpd=1)}, QuotaConfig(**FIXED))
    afternoon = pacific(2024, 6, 15, 15, 30)
    offset = pacific(2024, 6, 15, 23, 30) - afternoon
    grant_ = p.acquire(["a"], 1, afternoon, wall_offset=offset)
    assert isinstance(grant_, Grant)
    midnight = pacific(2024, 6, 16) - offset
    assert p.acquire(["a"], 1, afternoon + 1, wall_offset=offset) == Wait(midnight)
    assert p.next_event(afternoon + W, wall_offset=offset) == midnight  # the window emptied
    assert not p.can_grant("a", 1, before(midnight), wall_offset=offset)
    assert p.can_grant("a", 1, midnight, wall_offset=offset)


def test_a_backward_step_across_midnight_keeps_counting_the_later_day() -> None:
    p = policy(spec("a", rpd=2))
    after = pacific(2024, 6, 16, 0, 10)
    grant(p, ["a"], 1, after)
    grant(p, ["a"], 1, after)
    back = -HOUR  # the wall clock now reads 23:10 of the day before
    s = next(x for x in p.status(after + 1, wall_offset=back) if x.model == "a")
    assert s.requests_today == 2
    assert p.acquire(["a"], 1, after + 1, wall_offset=back) == Wait(pacific(2024, 6, 17) + HOUR)


def test_steady_midnight_is_never_a_hair_early() -> None:
    """An offset that does not convert exactly must not make the promised
    moment fall a rounding error before the wall clock's midnight."""
    p = QuotaPolicy({"a": spec("a", rpd=1)}, QuotaConfig(**FIXED))
    now = 12_345.678  # a monotonic clock shortly after boot
    offset = pacific(2024, 6, 15, 23, 59, 0.1) - now
    assert isinstance(p.acquire(["a"], 1, now, wall_offset=offset), Grant)
    result = p.acquire(["a"], 1, now + 1, wall_offset=offset)
    assert isinstance(result, Wait) and result.until is not None
    assert result.until + offset >= pacific(2024, 6, 16)
    assert p.can_grant("a", 1, result.until, wall_offset=offset)


def test_snapshot_holds_wall_times_and_restores_to_a_new_steady_origin() -> None:
    """Saved by a process whose steady clock reads ~1e6 s, restored by one
    whose steady clock just started: every deadline keeps its remaining
    time and the day keeps its count."""
    models = {"a": spec("a", rpm=2, rpd=10), "b": spec("b")}
    p = QuotaPolicy(models, QuotaConfig(**FIXED))
    old_now, old_offset = 1_000_000.0, T0 - 1_000_000.0
    grant_a = p.acquire(["a"], 3, old_now, wall_offset=old_offset)
    grant_b = p.acquire(["b"], 1, old_now, wall_offset=old_offset)
    assert isinstance(grant_a, Grant) and isinstance(grant_b, Grant)
    p.report(grant_b.grant_id, rate_limited(30.0), old_now, wall_offset=old_offset)
    data = p.snapshot(wall_offset=old_offset)
    window = data["models"]["a"]["window"]
    assert window == [[grant_a.grant_id, T0, 3, window[0][3], T0 + W]]  # wall times
    assert data["models"]["b"]["cooldown_until"] == T0 + 30.0
    assert data["in_flight"][0][2] == T0
    new_now, new_offset = 5.0, T0 + 10.0 - 5.0  # restarted 10 s later, clock origin anew
    restored = QuotaPolicy.restore(models, QuotaConfig(**FIXED), data, wall_offset=new_offset)
    a, b = restored.status(new_now, wall_offset=new_offset)
    assert a.requests_today == 1 and a.requests_in_window == 1 and a.in_flight == 1
    assert b.cooldown_until is not None and b.cooldown_until - new_now == pytest.approx(20.0)
    assert restored.earliest("a", 1, new_now, wall_offset=new_offset) == new_now
    assert restored.snapshot(wall_offset=new_offset) == data


# -- reports -------------------------------------------------------------------------------


def test_report_is_idempotent_and_rejects_unknown_grants() -> None:
    p = policy(spec("a", rpm=3))
    g = grant(p, ["a"], 10, T0)
    assert p.report(g.grant_id, Succeeded(Usage(4, 1)), T0 + 1)
    before_state = p.snapshot()
    assert not p.report(g.grant_id, Cancelled(), T0 + 2)
    assert not p.report(9999, rate_limited(30.0), T0 + 2)
    assert p.snapshot() == before_state


def test_invalid_arguments() -> None:
    p = policy(spec("a"))
    with pytest.raises(ValueError, match="est_tokens"):
        p.acquire(["a"], -1, T0)
    g = grant(p, ["a"], 1, T0)
    with pytest.raises(TypeError):
        p.report(g.grant_id, "ok", T0)  # type: ignore[arg-type]
    assert p.report(g.grant_id, Succeeded(Usage(1, 1)), T0)  # the bad report changed nothing


def test_next_event_is_the_earliest_future_capacity_change() -> None:
    p = policy(spec("a", rpm=10), spec("b"))
    assert p.next_event(T0) is None
    grant(p, ["a"], 1, T0)
    assert p.next_event(T0) == T0 + W
    p.report(grant(p, ["b"], 1, T0 + 1).grant_id, rate_limited(5.0), T0 + 1)
    assert p.next_event(T0 + 1) == T0 + 6
    assert p.next_event(T0 + 6) == T0 + W  # passed deadlines are no event
    assert p.next_event(T0 + W) == T0 + 1 + W  # b's refused request still counts
    assert p.next_event(T0 + 1 + W) is None


# -- status and snapshots ----------------------------------------------------------------


def _is_plain(value: object) -> bool:
    if value is None or isinstance(value, str | int | float):
        return True
    if isinstance(value, list):
        return all(_is_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_plain(v) for k, v in value.items())
    return False


MODELS: Mapping[str, ModelSpec] = {
    "a": spec("a", rpm=3, tpm=100, rpd=10, max_in_flight=2),
    "b": spec("b", rpd=5),
}


def busy_policy() -> QuotaPolicy:
    p = QuotaPolicy(MODELS, QuotaConfig(**FIXED))
    g1 = grant(p, ["a"], 30, T0)
    grant(p, ["a"], 20, T0 + 1)
    g3 = grant(p, ["b"], 5, T0 + 2)
    p.report(g1.grant_id, Succeeded(Usage(25, 3)), T0 + 3)
    p.report(g3.grant_id, rate_limited(45.83, TPM), T0 + 3)
    grant(p, ["a"], 10, T0 + 4)
    return p


def test_snapshot_is_plain_data_and_survives_msgpack() -> None:
    p = busy_policy()
    data = p.snapshot()
    assert _is_plain(data)
    assert data["version"] == SNAPSHOT_VERSION
    packed = msgpack.unpackb(msgpack.packb(data), raw=False)
    assert packed == data
    restored = QuotaPolicy.restore(MODELS, QuotaConfig(**FIXED), packed)
    assert restored.snapshot() == data
    for now in (T0 + 5, T0 + W, T0 + 2 * W):
        assert restored.status(now) == p.status(now)
        assert restored.next_event(now) == p.next_event(now)
        assert restored.acquire(["a", "b"], 40, now) == p.acquire(["a", "b"], 40, now)
    assert restored.report(2, Cancelled(), T0 + 3 * W) == p.report(2, Cancelled(), T0 + 3 * W)
    assert restored.snapshot() == p.snapshot()


def test_restore_drops_unconfigured_models_and_starts_new_ones_fresh() -> None:
    data = busy_policy().snapshot()
    restored = QuotaPolicy.restore({"a": MODELS["a"], "c": spec("c")}, QuotaConfig(**FIXED), data)
    assert [s.model for s in restored.status(T0 + 5)] == ["a", "c"]
    fresh = status(restored, "c", T0 + 5)
    assert (fresh.requests_today, fresh.in_flight, fresh.counters["granted"]) == (0, 0, 0)
    assert status(restored, "a", T0 + 5).in_flight == 2
    new = grant(restored, ["c"], 1, T0 + 5)
    assert new.grant_id == data["next_grant_id"]


def test_forget_in_flight_after_restore_treats_grants_as_abandoned() -> None:
    p = busy_policy()
    restored = QuotaPolicy.restore(MODELS, QuotaConfig(**FIXED), p.snapshot())
    restored.forget_in_flight()
    s = status(restored, "a", T0 + 5)
    assert (s.in_flight, s.requests_in_window, s.counters["abandoned"]) == (0, 3, 2)
    assert not restored.report(2, Succeeded(Usage(1, 1)), T0 + 5)


def test_day_rolls_over_after_restore() -> None:
    models = {"a": spec("a", rpd=1)}
    p = QuotaPolicy(models, QuotaConfig(**FIXED))
    late = pacific(2024, 6, 15, 23)
    p.report(grant(p, ["a"], 1, late).grant_id, Succeeded(Usage(1, 1)), late)
    restored = QuotaPolicy.restore(models, QuotaConfig(**FIXED), p.snapshot())
    assert restored.acquire(["a"], 1, late + 60) == Wait(pacific(2024, 6, 16))
    assert status(restored, "a", pacific(2024, 6, 16, 8)).requests_today == 0
    grant(restored, ["a"], 1, pacific(2024, 6, 16, 8))


def _corrupt(data: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    data = msgpack.unpackb(msgpack.packb(data), raw=False)
    target: Any = data
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return data


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("format",), "something.else"),
        (("version",), SNAPSHOT_VERSION + 1),
        (("next_grant_id",), "7"),
        (("next_grant_id",), 1),  # would reuse recorded grant ids
        (("models",), []),
        (("models", "a", "window", 0), [1, 2.0]),
        (("models", "a", "window", 0, 1), "noon"),
        (("models", "b", "cooldown_reason"), "sleepy"),
        (("models", "a", "counters", "granted"), "many"),
        (("models", "a", "requests_today"), None),
        (("in_flight",), {"2": "a"}),
        (("in_flight", 0, 0), 2.5),
    ],
)
def test_restore_rejects_corrupt_snapshots(path: tuple[Any, ...], value: Any) -> None:
    data = _corrupt(busy_policy().snapshot(), path, value)
    with pytest.raises(SnapshotError):
        QuotaPolicy.restore(MODELS, QuotaConfig(**FIXED), data)


def test_restore_rejects_missing_fields() -> None:
    data = busy_policy().snapshot()
    del data["models"]["a"]["cooldown_until"]
    with pytest.raises(SnapshotError, match="cooldown_until"):
        QuotaPolicy.restore(MODELS, QuotaConfig(**FIXED), data)


def test_restore_rejects_non_mappings() -> None:
    with pytest.raises(SnapshotError):
        QuotaPolicy.restore({}, QuotaConfig(**FIXED), [1, 2])  # type: ignore[arg-type]


def test_status_reports_every_model_in_config_order() -> None:
    p = busy_policy()
    a, b = p.status(T0 + 5)
    assert (a.model, b.model) == ("a", "b")
    assert (a.requests_in_window, a.tokens_in_window, a.in_flight) == (3, 55, 2)
    assert (b.cooldown_until, b.cooldown_reason) == (T0 + 3 + 45.83, "tokens_limited")
    assert a.counters["input_tokens"] == 25
    with pytest.raises(TypeError):
        a.counters["granted"] = 0  # type: ignore[index]


# -- the calendar ------------------------------------------------------------------------------


def test_calendar_days_and_midnights() -> None:
    cal = LocalCalendar("America/Los_Angeles")
    assert cal.timezone == "America/Los_Angeles"
    spring = pacific(2024, 3, 10)
    assert cal.day(spring) == date(2024, 3, 10).toordinal()
    assert cal.day(before(spring)) == date(2024, 3, 9).toordinal()
    assert cal.next_midnight(before(spring)) == spring
    assert cal.next_midnight(spring) - spring == 23 * 3600
    assert cal.day_start(date(2024, 11, 3).toordinal()) == pacific(2024, 11, 3)


def test_calendar_day_starts_when_a_dst_gap_swallows_midnight() -> None:
    havana = ZoneInfo("America/Havana")  # 2012-04-01 00:00 did not exist: 23:59:59 -> 01:00
    cal = LocalCalendar("America/Havana")
    start = cal.day_start(date(2012, 4, 1).toordinal())
    assert datetime.fromtimestamp(start, havana).replace(tzinfo=None) == datetime(2012, 4, 1, 1)
    assert datetime.fromtimestamp(start - 1, havana).date() == date(2012, 3, 31)


def test_unknown_time_zone() -> None:
    with pytest.raises(UnknownTimeZoneError):
        LocalCalendar("Mars/Olympus_Mons")
    with pytest.raises(ValueError, match="Mars"):
        policy(spec("a"), timezone="Mars/Olympus_Mons")


# -- sent: the window follows when the request really left ---------------------


def test_sent_moves_the_window_entry_to_the_send_time() -> None:
    p = policy(spec("m", rpm=1, tpm=1000))
    g = grant(p, ["m"], 100, T0)
    assert p.sent(g.grant_id, T0 + 2.0)
    # The window now frees W after the send, not after the grant.
    assert p.acquire(["m"], 100, T0 + W) == Wait(T0 + 2.0 + W)
    assert status(p, "m", T0 + 1).tokens_in_window == 100
    assert isinstance(p.acquire(["m"], 100, T0 + 2.0 + W), Grant)


def test_a_request_sent_with_merged_packs_counts_what_it_carries() -> None:
    """Waiting packs merged into a granted one at the grant (trickling
    arrivals) made its request carry more than the grant reserved; the
    window counted only the reservation until the answer, the next grants
    went over the provider's tokens limit, and its 429s read as a lower
    limit (bench, daemon workload: flash's learnt tpm a quarter of the real)."""
    p = policy(spec("m", rpm=10, tpm=1000))
    g = grant(p, ["m"], 200, T0)
    assert p.sent(g.grant_id, T0 + 0.1, tokens=900)
    assert status(p, "m", T0 + 0.2).tokens_in_window == 900
    assert p.reserved(g.grant_id) == 900
    assert p.acquire(["m"], 200, T0 + 0.2) == Wait(T0 + 0.1 + W)
    # Room reserved for a merge that did not happen is free at the send.
    g2 = grant(p, ["m"], 100, T0 + 0.3)
    assert p.sent(g2.grant_id, T0 + 0.3, tokens=10)
    assert status(p, "m", T0 + 0.4).tokens_in_window == 910
    assert p.sent(g2.grant_id, T0 + 0.3)  # no tokens: what it holds stays
    assert status(p, "m", T0 + 0.4).tokens_in_window == 910
    p.report(g.grant_id, Succeeded(Usage(880, 1)), T0 + 1)
    assert status(p, "m", T0 + 1).tokens_in_window == 890
    assert p.reserved(g.grant_id) is None


def test_sent_never_moves_an_entry_earlier_and_ignores_unknown_grants() -> None:
    p = policy(spec("m", rpm=1))
    g = grant(p, ["m"], 10, T0)
    assert p.sent(g.grant_id, T0 - 5.0)
    assert p.acquire(["m"], 10, T0 + 1) == Wait(T0 + W)
    assert not p.sent(999, T0)
    p.report(g.grant_id, Succeeded(Usage(10, 1)), T0 + 1)
    assert not p.sent(g.grant_id, T0 + 2)  # already reported


def test_sent_then_cancelled_refunds_exactly_once() -> None:
    p = policy(spec("m", rpm=2, tpm=100))
    g = grant(p, ["m"], 60, T0)
    p.sent(g.grant_id, T0 + 1)
    p.report(g.grant_id, Cancelled(), T0 + 1)
    s = status(p, "m", T0 + 1)
    assert (s.requests_in_window, s.tokens_in_window, s.requests_today) == (0, 0, 0)
    assert isinstance(p.acquire(["m"], 100, T0 + 1), Grant)


def test_sent_keeps_snapshots_exact() -> None:
    models = {"m": spec("m", rpm=3, tpm=1000)}
    p = QuotaPolicy(models, QuotaConfig(**FIXED))
    a = grant(p, ["m"], 10, T0)
    grant(p, ["m"], 20, T0 + 0.5)
    p.sent(a.grant_id, T0 + 1.0)
    restored = QuotaPolicy.restore(models, QuotaConfig(**FIXED), p.snapshot())
    assert restored.snapshot() == p.snapshot()
    assert restored.acquire(["m"], 10, T0 + 2) == p.acquire(["m"], 10, T0 + 2)


# -- patience: a moment's wait for the primary rather than a fallback ---------


def test_patience_waits_for_a_primary_that_frees_soon() -> None:
    p = policy(spec("pro", rpm=1), spec("lite", rpm=10))
    grant(p, ["pro"], 10, T0)
    soon = T0 + W - 0.5
    assert p.acquire(["pro", "lite"], 10, soon, patience_s=1.0) == Wait(T0 + W)
    g = p.acquire(["pro", "lite"], 10, soon, patience_s=0.2)  # too long to wait
    assert isinstance(g, Grant) and g.model == "lite"
    g = p.acquire(["pro", "lite"], 10, T0 + W, patience_s=1.0)
    assert isinstance(g, Grant) and g.model == "pro"


def test_patience_only_concerns_the_first_usable_model() -> None:
    p = policy(spec("gone", rpm=1), spec("pro", rpm=1), spec("lite", rpm=10))
    p.mark_unavailable("gone", "404")
    grant(p, ["pro"], 10, T0)
    # "gone" can never serve, so "pro" is the primary that is waited for.
    assert p.acquire(["gone", "pro", "lite"], 10, T0 + W - 0.1, patience_s=1.0) == Wait(T0 + W)
    # A fallback that frees soon is not waited for: the next one is taken.
    p2 = policy(spec("pro", rpm=1), spec("flash", rpm=1), spec("lite", rpm=10))
    grant(p2, ["flash"], 10, T0)
    p2.report(1, Succeeded(Usage(10, 1)), T0)
    grant(p2, ["pro"], 10, T0 + 30)
    g = p2.acquire(["pro", "flash", "lite"], 10, T0 + W - 0.1, patience_s=1.0)
    assert isinstance(g, Grant) and g.model == "lite"

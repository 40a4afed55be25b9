"""QuotaEmulator: Gemini's per-key, per-model quotas as the fakes enforce them."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tierbatch.adapters.simulation.quota_emulator import (
    FREE_TIER_SUFFIX,
    INPUT_TOKENS_METRIC,
    INPUT_TOKENS_PER_MINUTE_ID,
    REQUESTS_METRIC,
    REQUESTS_PER_DAY_ID,
    REQUESTS_PER_MINUTE_ID,
    QuotaEmulator,
)
from tierbatch.policies.config import ModelSpec, ProviderLimiter
from tierbatch.policies.outcomes import RateLimitScope

PACIFIC = ZoneInfo("America/Los_Angeles")
MODEL = "gemini-2.5-flash"
T0 = datetime(2026, 6, 10, 12, 0, tzinfo=PACIFIC).timestamp()


def emulator(rpm: int = 0, tpm: int = 0, rpd: int = 0, window_s: float = 60.0) -> QuotaEmulator:
    return QuotaEmulator({MODEL: ModelSpec(MODEL, rpm=rpm, tpm=tpm, rpd=rpd)}, window_s)


def bucket(
    rpm: int = 0, tpm: int = 0, rpd: int = 0, window_s: float = 60.0, bucket_s: float = 10.0
) -> QuotaEmulator:
    return QuotaEmulator(
        {MODEL: ModelSpec(MODEL, rpm=rpm, tpm=tpm, rpd=rpd)},
        window_s,
        limiter=ProviderLimiter.BUCKET,
        bucket_s=bucket_s,
    )


def test_rolling_window_admits_exactly_when_the_oldest_request_leaves() -> None:
    q = emulator(rpm=3)
    for dt in (0.0, 10.0, 20.0):
        assert q.check("k", MODEL, 10, T0 + dt) is None
    refused = q.check("k", MODEL, 10, T0 + 30.0)
    assert refused is not None
    assert refused.scope is RateLimitScope.REQUESTS_PER_MINUTE
    assert refused.quota_id == REQUESTS_PER_MINUTE_ID
    assert refused.quota_metric == REQUESTS_METRIC
    assert refused.quota_value == 3
    assert refused.retry_delay_s == pytest.approx(30.0)
    assert q.check("k", MODEL, 10, T0 + 59.999) is not None
    assert q.check("k", MODEL, 10, T0 + 60.0) is None  # the t0 request just left
    assert q.check("k", MODEL, 10, T0 + 60.0) is not None  # t0+10 is still inside


def test_rejected_requests_are_not_counted() -> None:
    q = emulator(rpm=1)
    assert q.check("k", MODEL, 1, T0) is None
    for dt in range(1, 60, 5):
        violation = q.check("k", MODEL, 1, T0 + dt)
        assert violation is not None
        assert violation.retry_delay_s == pytest.approx(60.0 - dt)
    assert q.check("k", MODEL, 1, T0 + 60.0) is None


def test_retrying_after_the_exact_delay_is_admitted() -> None:
    q = emulator(rpm=2, window_s=1.7)
    now = T0 + 0.123456789
    assert q.check("k", MODEL, 1, now) is None
    assert q.check("k", MODEL, 1, now + 0.3) is None
    violation = q.check("k", MODEL, 1, now + 0.9)
    assert violation is not None
    assert q.check("k", MODEL, 1, now + 0.9 + violation.retry_delay_s) is None


def test_input_tokens_per_window() -> None:
    q = emulator(tpm=100)
    assert q.check("k", MODEL, 60, T0) is None
    assert q.check("k", MODEL, 30, T0 + 5) is None
    violation = q.check("k", MODEL, 20, T0 + 10)
    assert violation is not None
    assert violation.scope is RateLimitScope.TOKENS_PER_MINUTE
    assert violation.quota_id == INPUT_TOKENS_PER_MINUTE_ID
    assert violation.quota_metric == INPUT_TOKENS_METRIC
    assert violation.quota_value == 100
    assert violation.retry_delay_s == pytest.approx(50.0)  # when the 60 leave
    assert q.check("k", MODEL, 10, T0 + 10) is None  # a smaller one still fits
    assert q.check("k", MODEL, 20, T0 + 60) is None


def test_tokens_needing_several_requests_to_leave() -> None:
    q = emulator(tpm=100)
    for dt, tokens in ((0, 30), (10, 30), (20, 30)):
        assert q.check("k", MODEL, tokens, T0 + dt) is None
    violation = q.check("k", MODEL, 70, T0 + 25)
    assert violation is not None
    assert violation.retry_delay_s == pytest.approx(45.0)  # 90+70-100 = 60: two must leave


def test_a_request_larger_than_the_token_limit_is_refused_with_a_whole_window() -> None:
    q = emulator(tpm=100)
    violation = q.check("k", MODEL, 101, T0)
    assert violation is not None
    assert violation.scope is RateLimitScope.TOKENS_PER_MINUTE
    assert violation.retry_delay_s == pytest.approx(60.0)


def test_requests_per_day_reset_at_pacific_midnight() -> None:
    q = emulator(rpd=2)
    evening = datetime(2026, 1, 15, 23, 59, 0, tzinfo=PACIFIC).timestamp()
    assert q.check("k", MODEL, 1, evening - 7200) is None
    assert q.check("k", MODEL, 1, evening - 3600) is None
    violation = q.check("k", MODEL, 1, evening)
    assert violation is not None
    assert violation.scope is RateLimitScope.REQUESTS_PER_DAY
    assert violation.scope.per_day
    assert violation.quota_id == REQUESTS_PER_DAY_ID
    assert violation.quota_value == 2
    assert violation.retry_delay_s == pytest.approx(60.0)
    midnight = datetime(2026, 1, 16, 0, 0, 0, tzinfo=PACIFIC).timestamp()
    assert q.check("k", MODEL, 1, midnight - 0.01) is not None
    assert q.check("k", MODEL, 1, midnight) is None
    assert q.usage("k", MODEL, midnight) == (1, 1, 1)


def test_day_length_follows_daylight_saving_time() -> None:
    q = emulator(rpd=1)
    spring_forward = datetime(2026, 3, 8, 0, 0, tzinfo=PACIFIC).timestamp()
    fall_back = datetime(2026, 11, 1, 0, 0, tzinfo=PACIFIC).timestamp()
    assert q.seconds_to_day_reset(spring_forward) == pytest.approx(23 * 3600)
    assert q.seconds_to_day_reset(fall_back) == pytest.approx(25 * 3600)
    utc_midnight = datetime(2026, 6, 10, 0, 0, tzinfo=ZoneInfo("UTC")).timestamp()
    # 00:00 UTC is 17:00 the day before in Los Angeles (PDT): 7 h to go.
    assert q.seconds_to_day_reset(utc_midnight) == pytest.approx(7 * 3600)


def test_per_day_is_reported_before_per_minute() -> None:
    q = emulator(rpm=1, rpd=1)
    assert q.check("k", MODEL, 1, T0) is None
    violation = q.check("k", MODEL, 1, T0 + 1)
    assert violation is not None
    assert violation.scope is RateLimitScope.REQUESTS_PER_DAY


def test_quota_is_per_key_and_per_model() -> None:
    other = "gemini-2.5-pro"
    q = QuotaEmulator({MODEL: ModelSpec(MODEL, 1, 0, 0), other: ModelSpec(other, 1, 0, 0)})
    assert q.check("a", MODEL, 1, T0) is None
    assert q.check("a", MODEL, 1, T0) is not None
    assert q.check("b", MODEL, 1, T0) is None
    assert q.check("a", other, 1, T0) is None


def test_zero_and_unknown_models_are_unlimited() -> None:
    q = emulator()
    for i in range(1000):
        assert q.check("k", MODEL, 10_000, T0 + i * 0.001) is None
        assert q.check("k", "not-configured", 10_000, T0) is None


def test_spend_counts_another_clients_requests_and_tokens() -> None:
    q = emulator(rpm=5, tpm=1000, rpd=100)
    q.spend("k", MODEL, requests=5, tokens=0, now=T0)
    violation = q.check("k", MODEL, 1, T0 + 1)
    assert violation is not None
    assert violation.scope is RateLimitScope.REQUESTS_PER_MINUTE
    assert violation.retry_delay_s == pytest.approx(59.0)
    assert q.check("other-key", MODEL, 1, T0 + 1) is None
    assert q.check("k", MODEL, 1, T0 + 60) is None

    q.spend("k", MODEL, requests=0, tokens=950, now=T0 + 61)
    token_violation = q.check("k", MODEL, 100, T0 + 62)
    assert token_violation is not None
    assert token_violation.scope is RateLimitScope.TOKENS_PER_MINUTE
    assert q.usage("k", MODEL, T0 + 62) == (1, 951, 6)


def test_spend_beyond_the_limit_lengthens_the_delay() -> None:
    q = emulator(rpm=2)
    q.spend("k", MODEL, requests=1, tokens=0, now=T0)
    q.spend("k", MODEL, requests=1, tokens=0, now=T0 + 10)
    q.spend("k", MODEL, requests=1, tokens=0, now=T0 + 20)
    violation = q.check("k", MODEL, 1, T0 + 30)
    assert violation is not None
    assert violation.retry_delay_s == pytest.approx(40.0)  # two must leave: t0, t0+10


def test_free_tier_ids() -> None:
    q = QuotaEmulator({MODEL: ModelSpec(MODEL, 1, 0, 0)}, free_tier=True)
    assert q.check("k", MODEL, 1, T0) is None
    violation = q.check("k", MODEL, 1, T0)
    assert violation is not None
    assert violation.quota_id == REQUESTS_PER_MINUTE_ID + FREE_TIER_SUFFIX
    assert "free_tier" in violation.quota_metric


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="window_s"):
        QuotaEmulator({}, window_s=0)
    with pytest.raises(ValueError, match=">= 0"):
        emulator().spend("k", MODEL, -1, 0, T0)
    with pytest.raises(ValueError, match="limiter must be one of window, bucket"):
        QuotaEmulator({}, limiter="leaky")
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="bucket_s"):
            QuotaEmulator({}, bucket_s=bad)


# ---- the token-bucket shape ------------------------------------------------------


def test_bucket_admits_its_size_at_once_then_the_refill_rate() -> None:
    q = bucket(rpm=60, bucket_s=10.0)  # one a second, ten at once
    assert q.limiter is ProviderLimiter.BUCKET
    assert q.bucket_size(60) == pytest.approx(10.0)
    for _ in range(10):
        assert q.check("k", MODEL, 1, T0) is None
    refused = q.check("k", MODEL, 1, T0)
    assert refused is not None
    assert refused.scope is RateLimitScope.REQUESTS_PER_MINUTE
    assert refused.quota_id == REQUESTS_PER_MINUTE_ID
    assert refused.quota_metric == REQUESTS_METRIC
    assert refused.quota_value == 60
    # The next request is admitted when one request's worth has refilled:
    # a second, not a window.
    assert refused.retry_delay_s == pytest.approx(1.0)
    assert q.check("k", MODEL, 1, T0 + 0.5) is not None
    assert q.check("k", MODEL, 1, T0 + 1.0) is None
    assert q.check("k", MODEL, 1, T0 + 1.0) is not None


def test_bucket_sustains_the_limits_rate_and_no_more() -> None:
    q = bucket(rpm=120, bucket_s=5.0)  # two a second, ten at once
    admitted = 0
    for i in range(60 * 20):  # a minute, tried 20 times a second
        if q.check("k", MODEL, 1, T0 + i * 0.05) is None:
            admitted += 1
    # A window's quota plus the bucket it started full with, never a
    # rolling window's worth at any instant.
    assert admitted == pytest.approx(120 + 10, abs=1)


def test_bucket_refills_to_its_size_only() -> None:
    q = bucket(rpm=60, bucket_s=10.0)
    assert q.check("k", MODEL, 1, T0) is None
    # An hour idle refills ten requests' worth, not an hour's.
    later = T0 + 3600
    for _ in range(10):
        assert q.check("k", MODEL, 1, later) is None
    assert q.check("k", MODEL, 1, later) is not None


def test_bucket_retrying_after_the_exact_delay_is_admitted() -> None:
    q = bucket(rpm=7, tpm=900, window_s=1.7, bucket_s=0.3)
    now = T0 + 0.123456789
    for _ in range(50):
        violation = q.check("k", MODEL, 97, now)
        if violation is None:
            continue
        assert violation.retry_delay_s > 0
        now += violation.retry_delay_s
        assert q.check("k", MODEL, 97, now) is None


def test_bucket_input_tokens() -> None:
    q = bucket(tpm=600, bucket_s=10.0)  # 10 tokens a second, 100 at once
    assert q.check("k", MODEL, 70, T0) is None
    violation = q.check("k", MODEL, 50, T0)
    assert violation is not None
    assert violation.scope is RateLimitScope.TOKENS_PER_MINUTE
    assert violation.quota_id == INPUT_TOKENS_PER_MINUTE_ID
    assert violation.quota_metric == INPUT_TOKENS_METRIC
    assert violation.quota_value == 600
    assert violation.retry_delay_s == pytest.approx(2.0)  # 30 left, 50 wanted, 10/s
    assert q.check("k", MODEL, 30, T0) is None  # a smaller one still fits


def test_bucket_smaller_than_a_request_admits_it_when_full() -> None:
    q = bucket(tpm=600, bucket_s=10.0)  # 100 tokens at once
    assert q.check("k", MODEL, 300, T0) is None  # full: admitted, 200 in debt
    violation = q.check("k", MODEL, 300, T0 + 1)
    assert violation is not None
    assert violation.retry_delay_s == pytest.approx(29.0)  # from -190 back to 100
    assert q.check("k", MODEL, 300, T0 + 30) is None
    never = q.check("k", MODEL, 601, T0 + 3600)  # more than tpm: never
    assert never is not None
    assert never.retry_delay_s == pytest.approx(60.0)


def test_bucket_keeps_the_day_quota_and_reports_it_first() -> None:
    q = bucket(rpm=60, rpd=2)
    assert q.check("k", MODEL, 1, T0) is None
    assert q.check("k", MODEL, 1, T0) is None
    violation = q.check("k", MODEL, 1, T0 + 3600)
    assert violation is not None
    assert violation.scope is RateLimitScope.REQUESTS_PER_DAY
    assert q.usage("k", MODEL, T0 + 3600) == (0, 0, 2)  # the window has passed, not the day


def test_bucket_rejected_requests_are_not_counted_and_quota_is_per_key() -> None:
    q = bucket(rpm=6, bucket_s=10.0)  # one at once, one every 10 s
    assert q.check("k", MODEL, 1, T0) is None
    for dt in (1.0, 2.0, 9.0):
        violation = q.check("k", MODEL, 1, T0 + dt)
        assert violation is not None
        assert violation.retry_delay_s == pytest.approx(10.0 - dt)
    assert q.check("k", MODEL, 1, T0 + 10.0) is None
    assert q.check("other", MODEL, 1, T0) is None


def test_bucket_spend_drains_it_for_every_client_of_the_key() -> None:
    q = bucket(rpm=60, bucket_s=10.0)
    q.spend("k", MODEL, requests=15, tokens=0, now=T0)  # five in debt
    violation = q.check("k", MODEL, 1, T0)
    assert violation is not None
    assert violation.retry_delay_s == pytest.approx(6.0)
    assert q.check("other-key", MODEL, 1, T0) is None


def test_bucket_with_unlimited_and_unknown_models() -> None:
    q = bucket()
    for i in range(1000):
        assert q.check("k", MODEL, 10_000, T0 + i * 0.001) is None
        assert q.check("k", "not-configured", 10_000, T0) is None


def _reference_bucket(
    admitted: list[Event], now: float, tokens: int, rpm: int, tpm: int, window: float, size: float
) -> RateLimitScope | None:
    """A bucket recomputed from scratch: replay every admission since the
    start, refilling between them."""

    def level(limit: int, costs: list[tuple[float, int]]) -> float:
        full = max(1.0, limit * size / window)
        value, at = full, T0
        for t, cost in costs:
            value = min(full, value + (t - at) * limit / window) - cost
            at = t
        return min(full, value + (now + 1e-6 - at) * limit / window)

    if rpm and level(rpm, [(t, 1) for t, _ in admitted]) < 1.0:
        return RateLimitScope.REQUESTS_PER_MINUTE
    if tpm:
        if tokens > tpm:
            return RateLimitScope.TOKENS_PER_MINUTE
        needed = min(float(tokens), max(1.0, tpm * size / window))
        if level(tpm, admitted) < needed:
            return RateLimitScope.TOKENS_PER_MINUTE
    return None


@given(
    rpm=st.integers(0, 30),
    tpm=st.integers(0, 600),
    steps=st.lists(
        st.tuples(st.floats(0.0, 1.0, allow_nan=False), st.integers(0, 120)),
        max_size=60,
    ),
)
def test_bucket_matches_a_brute_force_replay(
    rpm: int, tpm: int, steps: list[tuple[float, int]]
) -> None:
    window, size = 5.0, 1.0
    q = bucket(rpm=rpm, tpm=tpm, window_s=window, bucket_s=size)
    admitted: list[Event] = []
    now = T0
    for dt, tokens in steps:
        now += dt
        expected = _reference_bucket(admitted, now, tokens, rpm, tpm, window, size)
        violation = q.check("k", MODEL, tokens, now)
        assert (violation.scope if violation else None) == expected
        if violation is None:
            admitted.append((now, tokens))
        elif violation.retry_delay_s > 1e-3 and not (tpm and tokens > tpm):
            # Exact: just before the delay the same reason still holds.
            earlier = now + violation.retry_delay_s - 1e-3
            assert _reference_bucket(admitted, earlier, tokens, rpm, tpm, window, size) is not None


# A brute-force reference: every admitted request remembered, windows recounted.
Event = tuple[float, int]


def _reference_violation(
    admitted: list[Event], now: float, tokens: int, rpm: int, tpm: int, window: float
) -> RateLimitScope | None:
    # Same 1 µs tolerance as the emulator, so float rounding cannot split them.
    inside = [(t, tok) for t, tok in admitted if t + window > now + 1e-6]
    if rpm and len(inside) >= rpm:
        return RateLimitScope.REQUESTS_PER_MINUTE
    if tpm and sum(tok for _, tok in inside) + tokens > tpm:
        return RateLimitScope.TOKENS_PER_MINUTE
    return None


@given(
    rpm=st.integers(0, 5),
    tpm=st.integers(0, 300),
    steps=st.lists(
        st.tuples(st.floats(0.0, 3.0, allow_nan=False), st.integers(0, 120)),
        max_size=60,
    ),
)
def test_matches_a_brute_force_rolling_window(
    rpm: int, tpm: int, steps: list[tuple[float, int]]
) -> None:
    window = 5.0
    q = emulator(rpm=rpm, tpm=tpm, window_s=window)
    admitted: list[Event] = []
    now = T0
    for dt, tokens in steps:
        now += dt
        expected = _reference_violation(admitted, now, tokens, rpm, tpm, window)
        violation = q.check("k", MODEL, tokens, now)
        assert (violation.scope if violation else None) == expected
        if violation is None:
            admitted.append((now, tokens))
            continue
        # The delay is exact: just before it the same request is still
        # refused for the same reason; at it, that reason is gone.
        later = now + violation.retry_delay_s
        if violation.retry_delay_s > 1e-3:
            before = _reference_violation(admitted, later - 1e-3, tokens, rpm, tpm, window)
            assert before is not None
        after = _reference_violation(admitted, later, tokens, rpm, tpm, window)
        assert after != violation.scope or (tpm and tokens > tpm)

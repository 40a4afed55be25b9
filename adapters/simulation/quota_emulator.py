"""Gemini's quota enforcement, emulated on the server side of the fakes.

Gemini limits each project (here: each API key) per model on requests per
minute, input tokens per minute and requests per Pacific calendar day. How it
enforces a per-minute limit is undocumented, so the emulator has two shapes
(``ProviderLimiter``):

* ``window`` (the default): a rolling window of exactly ``window_s`` -- a
  request admitted at ``t`` counts while ``now < t + window_s`` -- the
  strictest reading, and the one the runtime's own accounting assumes;
* ``bucket``: a token bucket per limit, refilled continuously at the limit's
  rate (``rpm / window_s`` requests, ``tpm / window_s`` input tokens per
  second) and holding ``bucket_s`` seconds' worth (at least one request), full
  at first. A whole minute's quota sent at once then meets 429s after the
  bucket's size, and its ``retryDelay`` is when the next request would be
  admitted: a fraction of a second, not a window.

A rejected request is not counted in either shape, as with Gemini, so a
client hammering a 429 does not push its own reset further out. A request
with more input tokens than ``tpm`` can never fit (429, a whole window's
delay); in a bucket smaller than a request it is admitted once the bucket is
full, leaving it in debt.

Not thread-safe by design: the fake server and the simulated provider each
drive one emulator from a single event-loop thread.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from tierbatch.policies.config import ModelSpec, ProviderLimiter
from tierbatch.policies.outcomes import RateLimitScope

REQUESTS_PER_MINUTE_ID = "GenerateRequestsPerMinutePerProjectPerModel"
INPUT_TOKENS_PER_MINUTE_ID = "GenerateContentInputTokensPerModelPerMinute"
REQUESTS_PER_DAY_ID = "GenerateRequestsPerDayPerProjectPerModel"
REQUESTS_METRIC = "generativelanguage.googleapis.com/generate_content_requests"
INPUT_TOKENS_METRIC = "generativelanguage.googleapis.com/generate_content_input_token_count"
FREE_TIER_REQUESTS_METRIC = "generativelanguage.googleapis.com/generate_content_free_tier_requests"
FREE_TIER_INPUT_TOKENS_METRIC = (
    "generativelanguage.googleapis.com/generate_content_free_tier_input_token_count"
)
FREE_TIER_SUFFIX = "-FreeTier"
DEFAULT_BUCKET_S = 10.0
"""Seconds' worth of the limit a token bucket holds unless told otherwise."""
_EPSILON_S = 1e-6


@dataclass(frozen=True, slots=True)
class QuotaViolation:
    """Why a request was refused, in the terms of Gemini's ``QuotaFailure``.

    ``retry_delay_s`` is how long until the window would admit this very
    request (for the day quota: until the next Pacific midnight).
    """

    scope: RateLimitScope
    quota_id: str
    quota_metric: str
    quota_value: int
    retry_delay_s: float


@dataclass(slots=True)
class _Usage:
    """One (key, model)'s spending: a rolling window of admitted requests
    (time, requests, input tokens) with running totals, and today's count;
    in the bucket shape also the two buckets' levels as of ``level_at``
    (None: never used, full)."""

    window: deque[tuple[float, int, int]] = field(default_factory=deque)
    requests: int = 0
    tokens: int = 0
    day: date | None = None
    day_requests: int = 0
    request_level: float = 0.0
    token_level: float = 0.0
    level_at: float | None = None


class QuotaEmulator:
    """Admits or refuses requests per (api key, model) as Gemini would.

    A limit of 0 means unlimited; a model absent from ``models`` is unlimited.
    ``free_tier`` makes quota ids and metrics read as on Gemini's free tier
    (``...-FreeTier`` ids), which clients must parse just the same.
    ``limiter`` is the per-minute limits' shape (see the module docstring),
    ``bucket_s`` the seconds' worth a bucket holds.
    """

    def __init__(
        self,
        models: Mapping[str, ModelSpec],
        window_s: float = 60.0,
        timezone: str = "America/Los_Angeles",
        *,
        free_tier: bool = False,
        limiter: ProviderLimiter | str = ProviderLimiter.WINDOW,
        bucket_s: float = DEFAULT_BUCKET_S,
    ) -> None:
        if window_s <= 0:
            raise ValueError(f"window_s must be > 0, got {window_s}")
        try:
            shape = ProviderLimiter(limiter)
        except ValueError:
            choices = ", ".join(m.value for m in ProviderLimiter)
            raise ValueError(f"limiter must be one of {choices}, got {limiter!r}") from None
        if not (bucket_s > 0 and math.isfinite(bucket_s)):
            raise ValueError(f"bucket_s must be a number of seconds > 0, got {bucket_s}")
        self._models = dict(models)
        self._window_s = window_s
        self._tz = ZoneInfo(timezone)
        self._free_tier = free_tier
        self._limiter = shape
        self._bucket_s = bucket_s
        self._usage: dict[tuple[str, str], _Usage] = {}

    @property
    def window_s(self) -> float:
        return self._window_s

    @property
    def limiter(self) -> ProviderLimiter:
        return self._limiter

    @property
    def bucket_s(self) -> float:
        return self._bucket_s

    def bucket_size(self, limit: int) -> float:
        """What a bucket for ``limit`` per window holds: ``bucket_s`` seconds'
        worth, at least one (a request, or a token)."""
        return max(1.0, limit * self._bucket_s / self._window_s)

    def check(self, key: str, model: str, input_tokens: int, now: float) -> QuotaViolation | None:
        """Admit the request (and count it) or say which quota it exceeds.

        When several quotas are exceeded the day quota is reported first (it
        is the one that matters longest), then requests, then tokens.
        """
        spec = self._models.get(model)
        usage = self._current(key, model, now)
        if spec is not None:
            violation = self._violation(spec, usage, input_tokens, now)
            if violation is not None:
                return violation
        self._record(usage, 1, input_tokens, now, spec)
        return None

    def spend(self, key: str, model: str, requests: int, tokens: int, now: float) -> None:
        """Count ``requests`` requests carrying ``tokens`` input tokens in all,
        made at ``now`` by some other client sharing this key's quota.
        They are counted even beyond the limits, as another client's
        admitted requests would have been."""
        if requests < 0 or tokens < 0:
            raise ValueError("requests and tokens must be >= 0")
        self._record(self._current(key, model, now), requests, tokens, now, self._models.get(model))

    def usage(self, key: str, model: str, now: float) -> tuple[int, int, int]:
        """(requests in the window, input tokens in the window, requests today).
        The window is ``window_s`` long in either shape: in the bucket shape
        it only counts, it does not limit."""
        usage = self._current(key, model, now)
        return usage.requests, usage.tokens, usage.day_requests

    def seconds_to_day_reset(self, now: float) -> float:
        """Seconds from ``now`` to the next midnight in the quota timezone."""
        local = datetime.fromtimestamp(now, self._tz)
        midnight = datetime.combine(local.date() + timedelta(days=1), time(0), tzinfo=self._tz)
        return max(0.0, midnight.timestamp() - now)

    def _current(self, key: str, model: str, now: float) -> _Usage:
        """The (key, model) usage with expired window entries and a past
        day dropped, as of ``now``."""
        usage = self._usage.setdefault((key, model), _Usage())
        window = usage.window
        # The tolerance keeps "retry after retry_delay_s" admitted despite
        # floating-point rounding of now + delay.
        while window and window[0][0] + self._window_s <= now + _EPSILON_S:
            _t, n, tok = window.popleft()
            usage.requests -= n
            usage.tokens -= tok
        today = datetime.fromtimestamp(now, self._tz).date()
        if usage.day != today:
            usage.day = today
            usage.day_requests = 0
        return usage

    def _record(
        self, usage: _Usage, requests: int, tokens: int, now: float, spec: ModelSpec | None
    ) -> None:
        usage.window.append((now, requests, tokens))
        usage.requests += requests
        usage.tokens += tokens
        usage.day_requests += requests
        if self._limiter is ProviderLimiter.BUCKET and spec is not None:
            request_level, token_level = self._levels(spec, usage, now)
            usage.request_level = request_level - requests
            usage.token_level = token_level - tokens
            usage.level_at = now

    def _levels(self, spec: ModelSpec, usage: _Usage, now: float) -> tuple[float, float]:
        """Both buckets' levels at ``now``: full before the first request,
        then refilled at the limit's rate up to the bucket's size."""
        full_r = self.bucket_size(spec.rpm) if spec.rpm else 0.0
        full_t = self.bucket_size(spec.tpm) if spec.tpm else 0.0
        if usage.level_at is None:
            return full_r, full_t
        elapsed = max(0.0, now - usage.level_at)
        return (
            min(full_r, usage.request_level + elapsed * spec.rpm / self._window_s),
            min(full_t, usage.token_level + elapsed * spec.tpm / self._window_s),
        )

    def _violation(
        self, spec: ModelSpec, usage: _Usage, input_tokens: int, now: float
    ) -> QuotaViolation | None:
        if spec.rpd > 0 and usage.day_requests >= spec.rpd:
            return self._make(
                RateLimitScope.REQUESTS_PER_DAY,
                REQUESTS_PER_DAY_ID,
                spec.rpd,
                self.seconds_to_day_reset(now),
            )
        if self._limiter is ProviderLimiter.BUCKET:
            return self._bucket_violation(spec, usage, input_tokens, now)
        if spec.rpm > 0 and usage.requests >= spec.rpm:
            # Enough of the oldest requests must leave that one more fits.
            excess = usage.requests - spec.rpm + 1
            return self._make(
                RateLimitScope.REQUESTS_PER_MINUTE,
                REQUESTS_PER_MINUTE_ID,
                spec.rpm,
                self._delay_until_freed(usage, now, requests=excess, tokens=0),
            )
        if spec.tpm > 0 and usage.tokens + input_tokens > spec.tpm:
            if input_tokens > spec.tpm:
                delay = self._window_s  # can never fit; Gemini still says 429
            else:
                excess = usage.tokens + input_tokens - spec.tpm
                delay = self._delay_until_freed(usage, now, requests=0, tokens=excess)
            return self._make(
                RateLimitScope.TOKENS_PER_MINUTE, INPUT_TOKENS_PER_MINUTE_ID, spec.tpm, delay
            )
        return None

    def _bucket_violation(
        self, spec: ModelSpec, usage: _Usage, input_tokens: int, now: float
    ) -> QuotaViolation | None:
        """The bucket shape's per-minute check (the day's was made): each
        bucket must hold what the request takes -- one request; its tokens,
        or the whole bucket when it is smaller than that -- and the delay is
        how long its refill takes to get there."""
        # Admission is judged a moment later than the delay is counted from,
        # so "retry after retry_delay_s" is admitted despite floating-point
        # rounding of now + delay.
        request_level, token_level = self._levels(spec, usage, now + _EPSILON_S)
        request_now, token_now = self._levels(spec, usage, now)
        if spec.rpm > 0 and request_level < 1.0:
            rate = spec.rpm / self._window_s
            return self._make(
                RateLimitScope.REQUESTS_PER_MINUTE,
                REQUESTS_PER_MINUTE_ID,
                spec.rpm,
                (1.0 - request_now) / rate,
            )
        if spec.tpm > 0:
            if input_tokens > spec.tpm:  # can never fit; Gemini still says 429
                return self._make(
                    RateLimitScope.TOKENS_PER_MINUTE,
                    INPUT_TOKENS_PER_MINUTE_ID,
                    spec.tpm,
                    self._window_s,
                )
            needed = min(float(input_tokens), self.bucket_size(spec.tpm))
            if token_level < needed:
                rate = spec.tpm / self._window_s
                return self._make(
                    RateLimitScope.TOKENS_PER_MINUTE,
                    INPUT_TOKENS_PER_MINUTE_ID,
                    spec.tpm,
                    (needed - token_now) / rate,
                )
        return None

    def _delay_until_freed(self, usage: _Usage, now: float, *, requests: int, tokens: int) -> float:
        """Seconds until at least ``requests`` requests and ``tokens`` tokens
        have left the window, oldest first."""
        freed_requests = 0
        freed_tokens = 0
        for t, n, tok in usage.window:
            freed_requests += n
            freed_tokens += tok
            if freed_requests >= requests and freed_tokens >= tokens:
                return max(0.0, t + self._window_s - now)
        return self._window_s

    def _make(
        self, scope: RateLimitScope, quota_id: str, value: int, delay: float
    ) -> QuotaViolation:
        tokens = scope is RateLimitScope.TOKENS_PER_MINUTE
        if self._free_tier:
            metric = FREE_TIER_INPUT_TOKENS_METRIC if tokens else FREE_TIER_REQUESTS_METRIC
            quota_id += FREE_TIER_SUFFIX
        else:
            metric = INPUT_TOKENS_METRIC if tokens else REQUESTS_METRIC
        return QuotaViolation(scope, quota_id, metric, value, delay)

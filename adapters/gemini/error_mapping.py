"""Map Gemini error answers onto ``CallOutcome`` and keep the API key out of them.

Both SDK adapters share this: google-genai hands over the whole error body
(``{"error": {"code", "status", "message", "details": [...]}}``), the legacy
SDK (google.api_core) only the ``details`` list, so every reader here accepts
either. The runtime's quota logic depends on two things in a 429: the
``RetryInfo.retryDelay`` (Gemini sends no Retry-After header) and the
``QuotaFailure`` quota id, which says whether the per-minute request, the
per-minute input-token or the per-day quota ran out.

Every message that leaves an adapter passes through ``redact``: SDK errors
can echo request URLs with ``?key=...`` or the key itself.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from tierbatch.adapters.gemini.origin import ForeignOriginError, origin_of, redirect_target
from tierbatch.policies.outcomes import (
    AuthFailed,
    BadRequest,
    CallOutcome,
    ModelNotFound,
    RateLimited,
    RateLimitScope,
    ServerError,
)

REDACTED = "[REDACTED]"
MAX_MESSAGE_CHARS = 500
DEFAULT_KEY_ENV = ("GEMINI_API_KEY", "GOOGLE_API_KEY")

_KEY_IN_URL = re.compile(r"([?&](?:key|api_key|apiKey)=)[^&#\s'\"]+", re.IGNORECASE)
_KEY_IN_HEADER = re.compile(r"(x-goog-api-key['\"]?\s*[:=]\s*['\"]?)[^'\"\s,}]+", re.IGNORECASE)
_HTML_TAG = re.compile(r"<[A-Za-z!/][^>]*>")
_SPACES = re.compile(r"\s+")
_DURATION = re.compile(r"^\s*(?P<value>[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*s?\s*$")

_SCOPE_SEVERITY = {
    RateLimitScope.UNKNOWN: 0,
    RateLimitScope.REQUESTS_PER_MINUTE: 1,
    RateLimitScope.TOKENS_PER_MINUTE: 2,
    RateLimitScope.REQUESTS_PER_DAY: 3,
}


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """``text`` with every secret, ``?key=`` URL parameter and API-key header
    value replaced by ``[REDACTED]``."""
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    text = _KEY_IN_URL.sub(rf"\g<1>{REDACTED}", text)
    return _KEY_IN_HEADER.sub(rf"\g<1>{REDACTED}", text)


def safe_message(text: object, secrets: Iterable[str | None] = ()) -> str:
    """A redacted, one-line, length-capped message for an outcome or a log
    line. HTML tags are dropped: a 502 from Google's front end is a page."""
    try:
        raw = str(text)
    except Exception:  # a broken __str__ must not break error mapping
        return f"<unprintable {type(text).__name__}>"
    clean = _SPACES.sub(" ", _HTML_TAG.sub(" ", redact(raw, secrets))).strip()
    if len(clean) > MAX_MESSAGE_CHARS:
        clean = clean[: MAX_MESSAGE_CHARS - 3] + "..."
    return clean


def error_details(body_or_details: object) -> list[Mapping[str, Any]]:
    """The ``details`` entries of an error body, or of a bare details list."""
    details: object = body_or_details
    if isinstance(body_or_details, Mapping):
        error = body_or_details.get("error", body_or_details)
        details = error.get("details", ()) if isinstance(error, Mapping) else ()
    if isinstance(details, str | bytes) or not isinstance(details, Iterable):
        return []
    return [d for d in details if isinstance(d, Mapping)]


def error_reasons(body_or_details: object) -> set[str]:
    """``ErrorInfo.reason`` values, e.g. ``API_KEY_INVALID``."""
    reasons = set()
    for detail in error_details(body_or_details):
        reason = detail.get("reason")
        if isinstance(reason, str):
            reasons.add(reason)
    return reasons


def parse_retry_delay(value: object) -> float | None:
    """Seconds from a ``retryDelay``: ``"26s"``, ``"45.83s"``, a protobuf
    Duration as a dict (``{"seconds": "26", "nanos": 830000000}``) or object.
    None when absent, negative or unreadable."""
    seconds: float | None
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        match = _DURATION.match(value)
        seconds = float(match.group("value")) if match else None
    elif isinstance(value, Mapping):
        seconds = _duration_parts(value.get("seconds", 0), value.get("nanos", 0))
    else:
        seconds = _duration_parts(getattr(value, "seconds", None), getattr(value, "nanos", 0))
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return None
    return seconds


def _duration_parts(seconds: object, nanos: object) -> float | None:
    try:
        whole = float(seconds)  # type: ignore[arg-type]
        fraction = float(nanos or 0) / 1e9  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        return None
    return whole + fraction


def scope_for_quota(quota_id: str, quota_metric: str = "") -> RateLimitScope:
    """Which quota a ``QuotaFailure`` violation names.

    Gemini quota ids look like ``GenerateRequestsPerMinutePerProjectPerModel``,
    ``GenerateContentInputTokensPerModelPerMinute`` and
    ``GenerateRequestsPerDayPerProjectPerModel`` (with ``-FreeTier`` suffixes);
    the metric (``..._input_token_count``, ``..._requests``) breaks ties.
    """
    qid = quota_id.lower()
    metric = quota_metric.lower()
    if "perday" in qid or "per_day" in qid:
        return RateLimitScope.REQUESTS_PER_DAY
    if "token" in qid or (not qid and "token" in metric):
        return RateLimitScope.TOKENS_PER_MINUTE
    if "perminute" in qid or "request" in qid or (not qid and "request" in metric):
        return RateLimitScope.REQUESTS_PER_MINUTE
    return RateLimitScope.UNKNOWN


def parse_rate_limit(body_or_details: object, message: str = "") -> RateLimited:
    """A ``RateLimited`` from a 429 body or details list.

    With several violations the longest-lived quota wins (per day over input
    tokens per minute over requests per minute): that is the one the caller
    must wait for. Without ``RetryInfo`` -- or with ``retryDelay: "0s"``,
    which asks for no wait at all -- the delay is None and the registry
    applies its own bounded backoff.
    """
    delay: float | None = None
    scope = RateLimitScope.UNKNOWN
    for detail in error_details(body_or_details):
        kind = str(detail.get("@type", ""))
        if "retryDelay" in detail or kind.endswith("RetryInfo"):
            found = parse_retry_delay(detail.get("retryDelay"))
            delay = found if delay is None or (found is not None and found > delay) else delay
        violations = detail.get("violations")
        if kind.endswith("QuotaFailure") or isinstance(violations, list):
            for violation in violations if isinstance(violations, list) else ():
                if not isinstance(violation, Mapping):
                    continue
                candidate = scope_for_quota(
                    str(violation.get("quotaId", "")), str(violation.get("quotaMetric", ""))
                )
                if _SCOPE_SEVERITY[candidate] > _SCOPE_SEVERITY[scope]:
                    scope = candidate
    return RateLimited(scope=scope, retry_delay_s=delay or None, message=message)


def is_invalid_key(body_or_details: object, message: str = "") -> bool:
    """A 400 that is really an authentication failure (a wrong API key)."""
    if "API_KEY_INVALID" in error_reasons(body_or_details):
        return True
    return "api key not valid" in message.lower() or "api_key_invalid" in message.lower()


def auth_message(status: int, server_message: str, key_env: Sequence[str]) -> str:
    """Say what to fix. The server message must already be redacted."""
    names = " or ".join(key_env) or " or ".join(DEFAULT_KEY_ENV)
    return (
        f"Gemini rejected the API key (HTTP {status}: {server_message}). "
        f"Set {names} to a valid key, and check that the key's Google Cloud project "
        "has the Generative Language API enabled and may use this model."
    )


def redirect_refused(status: int, base_url: str, location: str | None) -> AuthFailed:
    """A redirect answer, which is never followed: the base URL is wrong.

    ``AuthFailed`` because, like a refused key, it is a configuration error
    that every further request would meet too: the run stops and keeps its
    queue rather than failing every article or retrying. Only the target's
    origin is named: the rest of a ``Location`` may carry anything.
    """
    target = redirect_target(base_url, location)
    where = "an unreadable address" if target is None else str(target)
    return AuthFailed(
        status,
        f"the Gemini endpoint {origin_of(base_url) or base_url} answered HTTP {status}, "
        f"a redirect to {where}; redirects are never followed, so the API key goes to "
        "no other address. Set provider.base_url (or GOOGLE_GEMINI_BASE_URL) to the "
        "address that serves the Gemini API itself.",
    )


def foreign_origin_refused(exc: ForeignOriginError) -> AuthFailed:
    """A request for another origin was stopped before it left (see
    ``origin``); reported like a redirect, as a configuration error."""
    return AuthFailed(
        0,
        f"{exc}; the API key is only ever sent to the configured base URL. "
        "Check provider.base_url (or GOOGLE_GEMINI_BASE_URL).",
    )


def outcome_for_status(
    status: int | None,
    body_or_details: object,
    message: str,
    *,
    key_env: Sequence[str] = DEFAULT_KEY_ENV,
) -> CallOutcome:
    """The outcome for an HTTP error answer. ``message`` must already be
    redacted (see ``safe_message``).

    429 -> RateLimited; 400 -> BadRequest, or AuthFailed for an invalid key;
    401/403 -> AuthFailed; 404 -> ModelNotFound; other 4xx -> BadRequest;
    5xx, 408 and anything else -> ServerError (retryable).
    """
    status = None if status is None else int(status)  # api_core hands over HTTPStatus
    if status == 429:
        return parse_rate_limit(body_or_details, message)
    if status == 400:
        if is_invalid_key(body_or_details, message):
            return AuthFailed(400, auth_message(400, message, key_env))
        return BadRequest(message)
    if status in (401, 403):
        return AuthFailed(status, auth_message(status, message, key_env))
    if status == 404:
        return ModelNotFound(message)
    if status is not None and 400 <= status < 500 and status != 408:
        return BadRequest(message)
    return ServerError(status, message)

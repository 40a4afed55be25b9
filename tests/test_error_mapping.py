"""429-body parsing, status mapping and key redaction, on hand-written bodies."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tierbatch.adapters.gemini.api_key import MissingApiKeyError, find_api_key, require_api_key
from tierbatch.adapters.gemini.error_mapping import (
    REDACTED,
    outcome_for_status,
    parse_rate_limit,
    parse_retry_delay,
    redact,
    safe_message,
    scope_for_quota,
)
from tierbatch.policies.outcomes import (
    AuthFailed,
    BadRequest,
    ModelNotFound,
    RateLimited,
    RateLimitScope,
    ServerError,
)

RPM = "GenerateRequestsPerMinutePerProjectPerModel-FreeTier"
TPM = "GenerateContentInputTokensPerModelPerMinute-FreeTier"
RPD = "GenerateRequestsPerDayPerProjectPerModel-FreeTier"
METRIC = "generativelanguage.googleapis.com/generate_content_free_tier_requests"


def quota_failure(*quota_ids: str) -> dict[str, Any]:
    return {
        "@type": "type.googleapis.com/google.rpc.QuotaFailure",
        "violations": [
            {
                "quotaMetric": METRIC,
                "quotaId": qid,
                "quotaDimensions": {"location": "global", "model": "gemini-2.5-flash"},
                "quotaValue": "10",
            }
            for qid in quota_ids
        ],
    }


def retry_info(delay: Any) -> dict[str, Any]:
    return {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay}


HELP = {
    "@type": "type.googleapis.com/google.rpc.Help",
    "links": [
        {"description": "Learn more", "url": "https://ai.google.dev/gemini-api/docs/rate-limits"}
    ],
}


def body(*details: dict[str, Any], code: int = 429, status: str = "RESOURCE_EXHAUSTED") -> dict:
    return {"error": {"code": code, "message": "quota", "status": status, "details": list(details)}}


@pytest.mark.parametrize(
    ("quota_id", "scope"),
    [
        (RPM, RateLimitScope.REQUESTS_PER_MINUTE),
        (TPM, RateLimitScope.TOKENS_PER_MINUTE),
        (RPD, RateLimitScope.REQUESTS_PER_DAY),
        ("SomethingElse", RateLimitScope.UNKNOWN),
    ],
)
def test_scope_from_whole_body_and_from_details_list(quota_id: str, scope: RateLimitScope) -> None:
    whole = body(quota_failure(quota_id), HELP, retry_info("26s"))
    assert parse_rate_limit(whole) == RateLimited(scope, 26.0)
    details = whole["error"]["details"]
    assert parse_rate_limit(details, "m") == RateLimited(scope, 26.0, "m")


def test_per_day_wins_over_per_minute() -> None:
    limited = parse_rate_limit(body(quota_failure(RPM, RPD, TPM), retry_info("3s")))
    assert limited.scope is RateLimitScope.REQUESTS_PER_DAY
    assert limited.scope.per_day


def test_scope_from_metric_when_id_is_blank() -> None:
    assert scope_for_quota("", "x/input_token_count") is RateLimitScope.TOKENS_PER_MINUTE
    assert scope_for_quota("", "x/requests") is RateLimitScope.REQUESTS_PER_MINUTE


@pytest.mark.parametrize(
    ("delay", "seconds"),
    [
        ("26s", 26.0),
        ("45.83s", 45.83),
        ("1.5s", 1.5),
        ("0s", 0.0),
        ("7", 7.0),
        ({"seconds": "26", "nanos": 830_000_000}, 26.83),
        ({"seconds": 3}, 3.0),
        ({"nanos": 500_000_000}, 0.5),
        (12, 12.0),
        ("-3s", None),
        ("soon", None),
        ("", None),
        (None, None),
        (True, None),
        ({"seconds": "x"}, None),
        ("infs", None),
    ],
)
def test_retry_delay_forms(delay: Any, seconds: float | None) -> None:
    assert parse_retry_delay(delay) == (pytest.approx(seconds) if seconds is not None else None)


def test_retry_delay_from_duration_object() -> None:
    class Duration:
        seconds = 4
        nanos = 250_000_000

    assert parse_retry_delay(Duration()) == pytest.approx(4.25)


def test_zero_retry_delay_is_no_delay() -> None:
    """``retryDelay: "0s"`` asks for no wait: the outcome carries none, so the
    registry's backoff applies (the policy also treats 0 as missing)."""
    limited = parse_rate_limit(body(quota_failure(RPM), retry_info("0s")))
    assert limited == RateLimited(RateLimitScope.REQUESTS_PER_MINUTE, None)


def test_missing_retry_info_gives_none() -> None:
    limited = parse_rate_limit(body(quota_failure(RPM), HELP))
    assert limited == RateLimited(RateLimitScope.REQUESTS_PER_MINUTE, None)
    assert parse_rate_limit({}) == RateLimited(RateLimitScope.UNKNOWN, None)
    assert parse_rate_limit("not a body") == RateLimited(RateLimitScope.UNKNOWN, None)


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
        lambda c: (
            st.lists(c, max_size=3)
            | st.dictionaries(
                st.sampled_from(
                    ["error", "details", "retryDelay", "violations", "quotaId", "@type"]
                )
                | st.text(max_size=4),
                c,
                max_size=4,
            )
        ),
        max_leaves=20,
    )
)
def test_parse_rate_limit_never_raises(value: Any) -> None:
    limited = parse_rate_limit(value)
    assert limited.retry_delay_s is None or limited.retry_delay_s >= 0


def test_status_mapping() -> None:
    assert isinstance(outcome_for_status(429, body(quota_failure(RPM)), "q"), RateLimited)
    for status in (500, 502, 503, 504, 408, None, 599):
        assert outcome_for_status(status, {}, "boom") == ServerError(status, "boom")
    assert outcome_for_status(HTTPStatus.SERVICE_UNAVAILABLE, [], "x") == ServerError(503, "x")
    assert type(outcome_for_status(HTTPStatus.SERVICE_UNAVAILABLE, [], "x").status) is int
    assert outcome_for_status(400, body(code=400, status="INVALID_ARGUMENT"), "bad") == BadRequest(
        "bad"
    )
    assert outcome_for_status(413, {}, "too big") == BadRequest("too big")
    assert outcome_for_status(404, {}, "models/x is not found") == ModelNotFound(
        "models/x is not found"
    )


@pytest.mark.parametrize("status", [401, 403])
def test_auth_failures_say_what_to_fix(status: int) -> None:
    outcome = outcome_for_status(status, {}, "denied", key_env=("MY_KEY", "OTHER_KEY"))
    assert isinstance(outcome, AuthFailed)
    assert outcome.status == status
    assert "MY_KEY or OTHER_KEY" in outcome.message


def test_invalid_key_400_is_auth_failure() -> None:
    info = {
        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
        "reason": "API_KEY_INVALID",
        "domain": "googleapis.com",
    }
    whole = body(info, code=400, status="INVALID_ARGUMENT")
    for given_body in (whole, whole["error"]["details"]):
        outcome = outcome_for_status(400, given_body, "API key not valid.")
        assert isinstance(outcome, AuthFailed)
        assert outcome.status == 400
        assert "GEMINI_API_KEY" in outcome.message
    assert isinstance(
        outcome_for_status(400, {}, "API key not valid. Pass a valid key"), AuthFailed
    )


def test_redact_secrets_url_keys_and_headers() -> None:
    key = "AIzaSyTESTKEY_0123456789"
    text = (
        f"POST https://x/v1beta/models/m:generateContent?key={key}&alt=json failed; "
        f"header x-goog-api-key: {key}; echoed {key}; other ?key=abc123"
    )
    clean = redact(text, [key, None, ""])
    assert key not in clean
    assert "abc123" not in clean
    assert clean.count(REDACTED) == 4
    assert "&alt=json" in clean


def test_safe_message_caps_length_and_survives_bad_str() -> None:
    class Bad:
        def __str__(self) -> str:
            raise RuntimeError("no")

    assert safe_message(Bad()) == "<unprintable Bad>"
    assert len(safe_message("x" * 10_000)) == 500


KEYISH = st.text("abcdefghijklmnopqrstuvwxyz0123456789_-", min_size=8, max_size=40)


@given(KEYISH, st.text(), st.text())
def test_redact_removes_every_occurrence(secret: str, before: str, after: str) -> None:
    assert secret not in redact(before + secret + after + secret, [secret])


def test_api_key_resolution() -> None:
    env = {"GEMINI_API_KEY": "  ", "GOOGLE_API_KEY": "g-key"}
    names = ("GEMINI_API_KEY", "GOOGLE_API_KEY")
    assert find_api_key(names, None, env) == "g-key"
    assert find_api_key(names, " explicit ", env) == "explicit"
    assert find_api_key(names, None, {"GEMINI_API_KEY": "a", "GOOGLE_API_KEY": "b"}) == "a"
    assert find_api_key(names, None, {}) is None
    with pytest.raises(MissingApiKeyError, match="GEMINI_API_KEY, GOOGLE_API_KEY"):
        require_api_key(names, None, {})


def test_safe_message_flattens_html_pages() -> None:
    page = (
        "<!DOCTYPE html>\n<html lang=en>\n<title>Error 502 (Server Error)!!1</title>\n"
        "<p><b>502.</b>"
    )
    assert safe_message(page) == "Error 502 (Server Error)!!1 502."

"""Gemini's JSON bodies for errors, as the fake server writes them.

Kept verbatim in shape (codes, statuses, ``details`` with their ``@type``
URLs) so the SDK adapters are tested against what Gemini really sends: in
particular the 429 body carries ``QuotaFailure``, ``Help`` and ``RetryInfo``
and the retry delay lives only there, never in a ``Retry-After`` header.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import Any

from tierbatch.adapters.simulation.quota_emulator import QuotaViolation

QUOTA_HELP_URL = "https://ai.google.dev/gemini-api/docs/rate-limits"


class RetryDelayFormat(StrEnum):
    """How ``RetryInfo.retryDelay`` is written: "45.83s" or "46s"."""

    FRACTIONAL = "fractional"
    INTEGER = "integer"


def format_retry_delay(seconds: float, fmt: RetryDelayFormat) -> str:
    """A protobuf Duration as Gemini writes ``retryDelay``."""
    if fmt is RetryDelayFormat.INTEGER:
        return f"{math.ceil(seconds)}s"
    text = f"{seconds:.3f}".rstrip("0").rstrip(".")
    return f"{text or '0'}s"


def error_body(
    code: int, status: str, message: str, details: Sequence[Mapping[str, Any]] = ()
) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details:
        error["details"] = list(details)
    return {"error": error}


def quota_error_body(
    violation: QuotaViolation, model: str, *, fmt: RetryDelayFormat, include_retry_info: bool
) -> dict[str, Any]:
    """Gemini's 429 body: QuotaFailure, Help and (optionally) RetryInfo."""
    delay = format_retry_delay(violation.retry_delay_s, fmt)
    message = (
        "You exceeded your current quota, please check your plan and billing details. "
        f"For more information on this error, head to: {QUOTA_HELP_URL}. "
        "To monitor your current usage, head to: https://ai.dev/usage?tab=rate-limit. \n"
        f"* Quota exceeded for metric: {violation.quota_metric}, "
        f"limit: {violation.quota_value}, model: {model}\n"
        f"Please retry in {delay}."
    )
    details: list[dict[str, Any]] = [
        {
            "@type": "type.googleapis.com/google.rpc.QuotaFailure",
            "violations": [
                {
                    "quotaMetric": violation.quota_metric,
                    "quotaId": violation.quota_id,
                    "quotaDimensions": {"location": "global", "model": model},
                    "quotaValue": str(violation.quota_value),
                }
            ],
        },
        {
            "@type": "type.googleapis.com/google.rpc.Help",
            "links": [{"description": "Learn more about Gemini API quotas", "url": QUOTA_HELP_URL}],
        },
    ]
    if include_retry_info:
        details.append({"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay})
    return error_body(429, "RESOURCE_EXHAUSTED", message, details)


def not_found_model_body(model: str, version: str, method: str) -> dict[str, Any]:
    return error_body(
        404,
        "NOT_FOUND",
        f"models/{model} is not found for API version {version}, or is not supported "
        f"for {method}. Call ListModels to see the list of available models and their "
        "supported methods.",
    )


def invalid_key_body() -> dict[str, Any]:
    message = "API key not valid. Please pass a valid API key."
    return error_body(
        400,
        "INVALID_ARGUMENT",
        message,
        [
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "API_KEY_INVALID",
                "domain": "googleapis.com",
                "metadata": {"service": "generativelanguage.googleapis.com"},
            },
            {
                "@type": "type.googleapis.com/google.rpc.LocalizedMessage",
                "locale": "en-US",
                "message": message,
            },
        ],
    )


def missing_key_body() -> dict[str, Any]:
    return error_body(
        403,
        "PERMISSION_DENIED",
        "Method doesn't allow unregistered callers (callers without established identity). "
        "Please use API Key or other form of API consumer identity to call this API.",
    )


def forbidden_key_body() -> dict[str, Any]:
    return error_body(
        403,
        "PERMISSION_DENIED",
        "Permission denied: this API key is not allowed to call the Generative Language API.",
        [
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "API_KEY_SERVICE_BLOCKED",
                "domain": "googleapis.com",
                "metadata": {"service": "generativelanguage.googleapis.com"},
            }
        ],
    )


SERVER_ERRORS: dict[int, tuple[str, str]] = {
    500: (
        "INTERNAL",
        "An internal error has occurred. Please retry or report in "
        "https://developers.generativeai.google/guide/troubleshooting",
    ),
    503: ("UNAVAILABLE", "The model is overloaded. Please try again later."),
    504: ("DEADLINE_EXCEEDED", "Deadline expired before operation could complete."),
}

BAD_GATEWAY_HTML = (
    b"<!DOCTYPE html>\n<html lang=en>\n<meta charset=utf-8>\n"
    b"<title>Error 502 (Server Error)!!1</title>\n"
    b"<p><b>502.</b> <ins>That\xe2\x80\x99s an error.</ins>\n"
    b"<p>The server encountered a temporary error and could not complete your request."
    b"<p>Please try again in 30 seconds.  <ins>That\xe2\x80\x99s all we know.</ins>\n"
)

"""What happened to one model call, as the quota policy and the runtime see it.

A provider adapter maps its SDK's answers and exceptions onto these types;
nothing above the adapters ever sees an SDK exception.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class RateLimitScope(StrEnum):
    """Which quota a 429 says was exceeded (Gemini's ``QuotaFailure.quotaId``)."""

    REQUESTS_PER_MINUTE = "requests_per_minute"
    TOKENS_PER_MINUTE = "tokens_per_minute"
    REQUESTS_PER_DAY = "requests_per_day"
    UNKNOWN = "unknown"

    @property
    def per_day(self) -> bool:
        return self is RateLimitScope.REQUESTS_PER_DAY


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens a call consumed, from the answer's ``usageMetadata``.

    ``input_tokens`` is ``prompt_token_count`` (cached tokens included);
    ``output_tokens`` is what is billed as output: ``candidates_token_count``
    plus ``thoughts_token_count``. ``thinking_tokens`` and ``cached_tokens``
    (``cached_content_token_count``) say how much of each was thinking and
    served from the implicit cache, which ``policies.costs`` prices apart."""

    input_tokens: int
    output_tokens: int
    thinking_tokens: int = 0
    cached_tokens: int = 0


@dataclass(frozen=True, slots=True)
class Succeeded:
    """The model answered; the answer may still be invalid for some articles."""

    usage: Usage


@dataclass(frozen=True, slots=True)
class RateLimited:
    """HTTP 429. ``retry_delay_s`` is ``RetryInfo.retryDelay``, None when absent."""

    scope: RateLimitScope
    retry_delay_s: float | None
    message: str = ""


@dataclass(frozen=True, slots=True)
class ServerError:
    """5xx or a connection failure: retryable."""

    status: int | None
    message: str = ""


@dataclass(frozen=True, slots=True)
class TimedOut:
    """No answer within the per-request timeout."""

    after_s: float


@dataclass(frozen=True, slots=True)
class BadRequest:
    """HTTP 400: this pack cannot succeed as sent."""

    message: str


@dataclass(frozen=True, slots=True)
class AuthFailed:
    """HTTP 401/403: a configuration error; the run must stop."""

    status: int
    message: str


@dataclass(frozen=True, slots=True)
class ModelNotFound:
    """HTTP 404 for the model: retired or misspelt; route around it."""

    message: str


@dataclass(frozen=True, slots=True)
class Abandoned:
    """The holder of a grant died; the request may or may not have been sent."""


@dataclass(frozen=True, slots=True)
class Cancelled:
    """The grant was never used: the request was not sent."""


CallOutcome = (
    Succeeded
    | RateLimited
    | ServerError
    | TimedOut
    | BadRequest
    | AuthFailed
    | ModelNotFound
    | Abandoned
    | Cancelled
)

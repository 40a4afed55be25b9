"""The quota policy's per-model state: what ``QuotaPolicy`` keeps for each
model and each grant, and ``quota_snapshot`` saves and restores. Internal to
``policies.quota`` and ``policies.quota_snapshot``; nothing else touches it.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final

from tierbatch.policies.config import ModelSpec
from tierbatch.policies.estimator import LimitEstimate
from tierbatch.policies.rolling_window import RollingWindow

__all__ = [
    "COUNTER_NAMES",
    "CooldownReason",
    "Held",
    "Limits",
    "ModelState",
    "WindowEntry",
    "fresh_counters",
    "scaled_limit",
]


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


def scaled_limit(limit: int, utilisation: float) -> int:
    """``limit`` scaled by ``utilisation``, floored but at least 1; 0 stays 0
    (unlimited). A relative epsilon keeps 100 * 0.29 from flooring to 28."""
    if limit <= 0:
        return 0
    scaled = limit * utilisation
    return max(1, math.floor(scaled + 1e-9 * max(1.0, scaled)))


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
    "output_tokens",  # thinking included
    "thinking_tokens",  # the part of output_tokens that was thinking
    "cached_tokens",  # the part of input_tokens served from the cache
)
"""Integer counters of every model; ``cooldown_s`` (float) is added to them:
the seconds by which cooldowns extended the model's cooldown deadline, so
overlapping 429s are not counted twice."""


def fresh_counters() -> dict[str, int | float]:
    counters: dict[str, int | float] = dict.fromkeys(COUNTER_NAMES, 0)
    counters["cooldown_s"] = 0.0
    return counters


@dataclass(frozen=True, slots=True)
class Limits:
    rpm: int
    tpm: int
    rpd: int
    max_in_flight: int
    max_input_tokens: int

    @classmethod
    def of(cls, spec: ModelSpec, utilisation: float) -> Limits:
        # max_input_tokens is the model's context size, not a quota: not scaled.
        return cls(
            rpm=scaled_limit(spec.rpm, utilisation),
            tpm=scaled_limit(spec.tpm, utilisation),
            rpd=scaled_limit(spec.rpd, utilisation),
            max_in_flight=scaled_limit(spec.max_in_flight, utilisation),
            max_input_tokens=max(spec.max_input_tokens, 0),
        )


@dataclass(slots=True, eq=False)
class WindowEntry:
    """One grant's footprint in its model's window. ``handle`` is its place
    in the model's ``RollingWindow``, None once it no longer holds one."""

    grant_id: int
    granted_at: float
    expires_at: float
    tokens: int
    day: int
    handle: int | None = None


@dataclass(slots=True, eq=False)
class ModelState:
    name: str
    limits: Limits
    estimate: LimitEstimate
    window: RollingWindow = field(default_factory=RollingWindow)
    entries: dict[int, WindowEntry] = field(default_factory=dict)  # handle -> entry
    accepted: deque[tuple[float, int]] = field(default_factory=deque)  # (sent, tokens)
    day: int | None = None  # the local day requests_today counts
    requests_today: int = 0
    in_flight: int = 0
    cooldown_until: float | None = None
    cooldown_reason: CooldownReason | None = None
    exhausted_until: float | None = None
    unavailable: str | None = None
    consecutive_429s: int = 0
    consecutive_errors: int = 0
    first_use: float | None = None  # the first grant of this process
    counters: dict[str, int | float] = field(default_factory=fresh_counters)

    def counted(self, entry: WindowEntry) -> bool:
        return entry.handle is not None and self.window.counted(entry.handle)


@dataclass(slots=True, eq=False)
class Held:
    state: ModelState
    entry: WindowEntry
    est_tokens: int
    at_edge: bool = False  # sent at the pacing burst's edge (slow start grows on it)

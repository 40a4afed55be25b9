"""What the registry has learnt of the provider, in words for people.

Configured ``rpm``/``tpm`` are ceilings; the quota policy's estimator
(``policies.estimator``) lowers a model's effective limits after 429s that
came below them, raises them again after clean windows, learns how large a
burst the provider takes at once and whether its limiter looks like a
rolling window or a token bucket. ``tierbatch status``, the live display,
the log's ``progress`` line and the end-of-run summary all show that the
same way, from ``LearntLimits``: "configured 240, learnt 120".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from tierbatch.policies.quota import ModelStatus

__all__ = ["LearntLimits", "limit_text"]


def limit_text(configured: int, learnt: int) -> str:
    """``240`` while the configured limit stands, ``configured 240, learnt
    120`` once the provider has shown it admits less; ``∞`` for no limit."""
    if not configured:
        return "∞"
    if learnt and learnt != configured:
        return f"configured {configured:,}, learnt {learnt:,}"
    return f"{configured:,}"


@dataclass(frozen=True, slots=True)
class LearntLimits:
    """One model's configured and learnt limits, learnt burst and the
    shape its limiter showed (``window``, ``bucket`` or ``unknown``)."""

    model: str
    configured_rpm: int
    learnt_rpm: int
    configured_tpm: int
    learnt_tpm: int
    burst: float
    limiter: str

    @classmethod
    def of(cls, status: ModelStatus) -> LearntLimits:
        return cls(
            status.model,
            status.configured_rpm,
            status.learnt_rpm,
            status.configured_tpm,
            status.learnt_tpm,
            status.burst,
            status.limiter,
        )

    @property
    def lowered(self) -> bool:
        """Whether a learnt limit is below its configured one."""
        return bool(
            (self.configured_rpm and self.learnt_rpm < self.configured_rpm)
            or (self.configured_tpm and self.learnt_tpm < self.configured_tpm)
        )

    @property
    def rpm_text(self) -> str:
        return limit_text(self.configured_rpm, self.learnt_rpm)

    @property
    def tpm_text(self) -> str:
        return limit_text(self.configured_tpm, self.learnt_tpm)

    @property
    def burst_text(self) -> str:
        """``6 (bucket)``: requests that may go at once, and the limiter's
        shape as far as known; ``-`` for a model without a request limit."""
        if not self.configured_rpm or not math.isfinite(self.burst):
            return "-"
        return f"{_number(self.burst)} ({self.limiter})"

    def sentence(self) -> str:
        """One line for a summary: what was learnt of this model."""
        parts = []
        if self.configured_rpm and self.learnt_rpm != self.configured_rpm:
            parts.append(f"rpm {self.rpm_text}")
        if self.configured_tpm and self.learnt_tpm != self.configured_tpm:
            parts.append(f"tpm {self.tpm_text}")
        if self.configured_rpm:
            parts.append(f"burst {_number(self.burst)} of {self.learnt_rpm:,} a window")
            parts.append(f"limiter {self.limiter}")
        return f"{self.model}: " + ", ".join(parts) if parts else self.model

    def to_json(self) -> dict[str, Any]:
        return {
            "configured_rpm": self.configured_rpm,
            "learnt_rpm": self.learnt_rpm,
            "configured_tpm": self.configured_tpm,
            "learnt_tpm": self.learnt_tpm,
            "burst": self.burst,
            "limiter": self.limiter,
        }


def _number(value: float) -> str:
    """``1,005`` for a whole number, ``2.5`` otherwise."""
    return f"{value:,.0f}" if value == int(value) else f"{value:,.1f}"

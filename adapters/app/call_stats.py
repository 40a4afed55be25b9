"""The info-level view of provider calls: one aggregate line per interval.

A log line per call is far too many at the default limits (hundreds a
second, about 4 GB a day), so per-call lines are at debug level and, at
info, a ``provider calls`` line sums up each interval (default one minute)
per model: calls, outcomes, HTTP 429s, tokens, latency p50/p95/mean, the
last error. Changes of state (a cooldown starting, the day's quota running
out, a model found unavailable, a fatal configuration error) are logged by
the registry and the runtime as they happen.

``CallStats`` is the pure part: a function of its observations and of the
``now`` it is handed, flushed when an interval has passed (there is no
timer: an idle runtime logs nothing, and whatever is left is flushed at
close). ``CallStatsProvider`` wraps a provider to feed it and log it.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog

from tierbatch.actors.ports import ExtractionRequest, PackAnswer, Provider
from tierbatch.adapters.app.metrics import outcome_label
from tierbatch.policies.outcomes import RateLimited, Succeeded

DEFAULT_INTERVAL_S = 60.0
MAX_ERROR_CHARS = 200

_log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class ModelCalls:
    """One model's calls over an interval."""

    calls: int
    outcomes: Mapping[str, int]
    rate_limited: int
    input_tokens: int
    output_tokens: int
    latency_p50_s: float
    latency_p95_s: float
    latency_mean_s: float
    last_error: str = ""

    def fields(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "calls": self.calls,
            "outcomes": dict(self.outcomes),
            "rate_limited": self.rate_limited,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "latency_p50_s": round(self.latency_p50_s, 3),
            "latency_p95_s": round(self.latency_p95_s, 3),
            "latency_mean_s": round(self.latency_mean_s, 3),
        }
        if self.last_error:
            out["last_error"] = self.last_error
        return out


@dataclass(frozen=True, slots=True)
class CallSummary:
    """Every model's calls between ``start`` and ``end`` (``now`` readings)."""

    start: float
    end: float
    models: Mapping[str, ModelCalls]

    @property
    def calls(self) -> int:
        return sum(m.calls for m in self.models.values())

    def fields(self) -> dict[str, Any]:
        return {
            "interval_s": round(self.end - self.start, 1),
            "calls": self.calls,
            "models": {name: m.fields() for name, m in sorted(self.models.items())},
        }


@dataclass(slots=True)
class _Tally:
    outcomes: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    input_tokens: int = 0
    output_tokens: int = 0
    rate_limited: int = 0
    last_error: str = ""

    def summary(self) -> ModelCalls:
        ordered = sorted(self.latencies)
        return ModelCalls(
            calls=len(ordered),
            outcomes=dict(sorted(self.outcomes.items())),
            rate_limited=self.rate_limited,
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            latency_p50_s=percentile(ordered, 50),
            latency_p95_s=percentile(ordered, 95),
            latency_mean_s=sum(ordered) / len(ordered) if ordered else 0.0,
            last_error=self.last_error,
        )


def percentile(ordered: list[float], pct: float) -> float:
    """Nearest-rank percentile of an ascending list (0.0 when empty)."""
    if not ordered:
        return 0.0
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


class CallStats:
    """Per-model call counts over intervals of ``interval_s``, from ``start``.

    Not thread-safe: one owner (``CallStatsProvider`` holds a lock)."""

    def __init__(self, interval_s: float, start: float) -> None:
        if not interval_s > 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        self.interval_s = interval_s
        self._start = start
        self._tallies: dict[str, _Tally] = {}

    def observe(self, model: str, answer: PackAnswer | str, latency_s: float) -> None:
        """One finished call: its answer, or a label for a call that ended
        without one (``cancelled``, ``raised``)."""
        tally = self._tallies.setdefault(model, _Tally())
        tally.latencies.append(max(0.0, latency_s))
        if isinstance(answer, str):
            tally.outcomes[answer] += 1
            return
        outcome = answer.outcome
        tally.outcomes[outcome_label(outcome)] += 1
        if isinstance(outcome, Succeeded):
            tally.input_tokens += outcome.usage.input_tokens
            tally.output_tokens += outcome.usage.output_tokens
            return
        if isinstance(outcome, RateLimited):
            tally.rate_limited += 1
            return
        message = getattr(outcome, "message", "")
        detail = f": {message}" if isinstance(message, str) and message else ""
        tally.last_error = f"{type(outcome).__name__}{detail}"[:MAX_ERROR_CHARS]

    def due(self, now: float) -> bool:
        return now >= self._start + self.interval_s

    def flush_if_due(self, now: float) -> CallSummary | None:
        """The interval's summary once ``interval_s`` has passed since the
        last flush (None before then, or when there were no calls)."""
        return self.flush(now) if self.due(now) else None

    def flush(self, now: float) -> CallSummary | None:
        """The summary so far (None when there were no calls); starts anew."""
        tallies, self._tallies = self._tallies, {}
        start, self._start = self._start, now
        if not tallies:
            return None
        return CallSummary(start, now, {m: t.summary() for m, t in tallies.items()})


class CallStatsProvider:
    """Wraps a provider: every call is observed, and a ``provider calls``
    line is logged at info when an interval has passed (checked as calls
    finish) and at close. ``now`` is for tests."""

    def __init__(
        self,
        inner: Provider,
        interval_s: float = DEFAULT_INTERVAL_S,
        *,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        self.inner = inner
        self._now = now
        self._stats = CallStats(interval_s, now())
        self._lock = threading.Lock()

    async def extract(self, request: ExtractionRequest) -> PackAnswer:
        started = self._now()
        try:
            answer = await self.inner.extract(request)
        except asyncio.CancelledError:
            self._observe(request.model, "cancelled", started)
            raise
        except Exception:
            self._observe(request.model, "raised", started)
            raise
        self._observe(request.model, answer, started)
        return answer

    async def aclose(self) -> None:
        try:
            await self.inner.aclose()
        finally:
            with self._lock:
                summary = self._stats.flush(self._now())
            _emit(summary)

    def _observe(self, model: str, answer: PackAnswer | str, started: float) -> None:
        now = self._now()
        with self._lock:
            self._stats.observe(model, answer, now - started)
            summary = self._stats.flush_if_due(now)
        _emit(summary)


def _emit(summary: CallSummary | None) -> None:
    if summary is not None:
        _log.info("provider calls", **summary.fields())

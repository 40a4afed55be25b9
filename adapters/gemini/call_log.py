"""The log lines both SDK adapters write per call, so they read alike.

They are all at debug level: at the default limits a line per call is
hundreds of lines a second (about 4 GB a day at ~500 bytes each). At info,
``adapters.app.call_stats`` logs a periodic aggregate per model, and the
registry and runtime log every change of state (cooldowns, exhaustion, an
unavailable model, a fatal configuration error).

Only counts, ids, reasons and already-redacted messages go in: never the
key, never a traceback (a traceback's text can hold anything).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from tierbatch.adapters.gemini.answers import ParsedAnswer
from tierbatch.policies.outcomes import CallOutcome, Usage
from tierbatch.policies.results import AnswerProblem


def log_answer(
    log: Any,
    parsed: ParsedAnswer,
    *,
    finish: str | None,
    block: str | None,
    usage: Usage,
    elapsed_s: float,
) -> None:
    """One debug line per answered call, saying so when it had stray items
    (unknown, duplicate or unusable ids)."""
    problems = Counter(str(a.kind) for a in parsed.answers.values() if isinstance(a, AnswerProblem))
    fields: dict[str, Any] = {
        "finish_reason": finish or None,
        "block_reason": block or None,
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "problems": dict(problems),
        "elapsed_s": round(elapsed_s, 3),
    }
    if parsed.unknown_ids or parsed.duplicate_ids or parsed.unusable_items:
        log.debug(
            "gemini answer has stray items",
            unknown_ids=list(parsed.unknown_ids),
            duplicate_ids=list(parsed.duplicate_ids),
            unusable_items=parsed.unusable_items,
            **fields,
        )
    else:
        log.debug("gemini answered", **fields)


def log_failure(log: Any, outcome: CallOutcome, exc: BaseException, elapsed_s: float) -> None:
    """One debug line per failed call: the outcome, the exception's type,
    the outcome's (redacted) message."""
    message = getattr(outcome, "message", "")
    log.debug(
        "gemini call failed",
        outcome=type(outcome).__name__,
        error=type(exc).__name__,
        detail=message if isinstance(message, str) else "",
        elapsed_s=round(elapsed_s, 3),
    )

"""The log lines both SDK adapters write per call, so they read alike.

Only counts, ids, reasons and already-redacted messages go in: never the
key, never a traceback (rich tracebacks print local variables, which may
hold the key).
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
    """One line per answered call; stray items (unknown ids...) at warning level."""
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
        log.warning(
            "gemini answer has stray items",
            unknown_ids=list(parsed.unknown_ids),
            duplicate_ids=list(parsed.duplicate_ids),
            unusable_items=parsed.unusable_items,
            **fields,
        )
    else:
        log.info("gemini answered", **fields)


def log_failure(log: Any, outcome: CallOutcome, exc: BaseException, elapsed_s: float) -> None:
    """One line per failed call: the outcome, the exception's type, the
    outcome's (redacted) message."""
    message = getattr(outcome, "message", "")
    log.warning(
        "gemini call failed",
        outcome=type(outcome).__name__,
        error=type(exc).__name__,
        detail=message if isinstance(message, str) else "",
        elapsed_s=round(elapsed_s, 3),
    )

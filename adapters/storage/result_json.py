"""The JSON form of a terminal result, shared by the JSONL sink and the SQLite store.

One flat object per article, the same keys for both outcomes so a reader
needs no branching to load them into a table:

=================  =========================================================
key                meaning
=================  =========================================================
``article_id``     the article's id
``status``         ``"done"`` or ``"failed"``
``entities``       list of ``{"name", "type", "salience", "mentions"}``,
                   with ``"flag"`` (the grounding outcome: ``"grounded"``,
                   ``"cross_article"`` or ``"ungrounded"``) on an entity
                   the ``[grounding]`` config flags, and ``"fields"`` (an
                   object of the task's extra fields the model gave) on an
                   entity that has any (empty when failed)
``model``          the model that answered; when failed, the last one tried
                   (or null)
``tier``           the article's tier
``attempts``       model calls the article was part of
``input_tokens``   the article's share of input tokens (null when failed)
``output_tokens``  the article's share of output tokens (null when failed)
``latency_s``      seconds from submission to the answer (null when failed)
``cost_usd``       the article's share of the cost (0 when failed)
``fallback``       true when a model other than the tier's primary answered
``reason``         a ``FailureReason`` value (null when done)
``detail``         what was tried, when failed (null when done)
``metadata``       the result's metadata (the article's extra input fields)
``grounding``      ``{"grounded", "cross_article", "ungrounded"}``: how many
                   of the answer's entities had each outcome, before any
                   drop (null when failed)
``pack_size``      articles in the request that answered (null when failed)
``task_version``   the extraction task's version (``policies.task``; null
                   when failed)
=================  =========================================================

Records written before the grounding check lack ``grounding``,
``pack_size`` and every ``flag``; they read back with ``None``, 0 and no
flags. Records written before task versions lack ``task_version`` (read
back as "").

Values that JSON cannot hold (in metadata) are written as their ``str()``
rather than failing the write: a result is never dropped for its metadata.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from tierbatch.policies.grounding import Grounding, GroundingCounts
from tierbatch.policies.results import (
    Done,
    Entity,
    Failed,
    FailureReason,
    TerminalResult,
)

DONE = "done"
FAILED = "failed"


class InvalidResultRecord(ValueError):
    """A stored record cannot be turned back into a terminal result."""


def entities_to_json(entities: tuple[Entity, ...]) -> list[dict[str, Any]]:
    """An entity without a flag has no ``flag`` key: unflagged entities are
    written as before the grounding check."""
    out: list[dict[str, Any]] = []
    for e in entities:
        item: dict[str, Any] = {
            "name": e.name,
            "type": str(e.type),
            "salience": e.salience,
            "mentions": e.mentions,
        }
        if e.flag is not None:
            item["flag"] = e.flag.value
        if e.fields:
            item["fields"] = dict(e.fields)
        out.append(item)
    return out


def grounding_to_json(counts: GroundingCounts | None) -> dict[str, int] | None:
    if counts is None:
        return None
    return {
        "grounded": counts.grounded,
        "cross_article": counts.cross_article,
        "ungrounded": counts.ungrounded,
    }


def grounding_from_json(value: object) -> GroundingCounts | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidResultRecord(f"grounding: expected an object, got {type(value).__name__}")
    try:
        return GroundingCounts(
            int(value.get("grounded") or 0),
            int(value.get("cross_article") or 0),
            int(value.get("ungrounded") or 0),
        )
    except (TypeError, ValueError) as exc:
        raise InvalidResultRecord(f"grounding: {exc!r}") from None


def entities_from_json(items: object) -> tuple[Entity, ...]:
    if not isinstance(items, list):
        raise InvalidResultRecord(f"entities: expected a list, got {type(items).__name__}")
    try:
        return tuple(
            Entity(
                name=str(item["name"]),
                type=str(item["type"]),
                salience=float(item["salience"]),
                mentions=int(item.get("mentions", 1)),
                flag=Grounding(item["flag"]) if item.get("flag") is not None else None,
                fields=_fields_from_json(item.get("fields")),
            )
            for item in items
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidResultRecord(f"entities: {exc!r}") from None


def _fields_from_json(value: object) -> tuple[tuple[str, Any], ...]:
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise InvalidResultRecord(f"entity fields: expected an object, got {type(value).__name__}")
    return tuple((str(k), v) for k, v in value.items())


def result_to_json(result: TerminalResult) -> dict[str, Any]:
    """The flat record of ``result`` (see the module docstring)."""
    if isinstance(result, Done):
        return {
            "article_id": result.article_id,
            "status": DONE,
            "entities": entities_to_json(result.entities),
            "model": result.model,
            "tier": result.tier,
            "attempts": result.attempts,
            "input_tokens": result.input_tokens,
            "output_tokens": result.output_tokens,
            "latency_s": result.latency_s,
            "cost_usd": result.cost_usd,
            "fallback": result.fallback,
            "reason": None,
            "detail": None,
            "metadata": dict(result.metadata),
            "grounding": grounding_to_json(result.grounding),
            "pack_size": result.pack_size or None,
            "task_version": result.task_version or None,
        }
    return {
        "article_id": result.article_id,
        "status": FAILED,
        "entities": [],
        "model": result.last_model,
        "tier": result.tier,
        "attempts": result.attempts,
        "input_tokens": None,
        "output_tokens": None,
        "latency_s": None,
        "cost_usd": 0.0,
        "fallback": False,
        "reason": result.reason.value,
        "detail": result.detail,
        "metadata": dict(result.metadata),
        "grounding": None,
        "pack_size": None,
        "task_version": None,
    }


def result_from_json(record: Mapping[str, Any]) -> TerminalResult:
    """The inverse of ``result_to_json``."""
    try:
        status = record["status"]
        metadata = record.get("metadata") or {}
        if status == DONE:
            return Done(
                article_id=str(record["article_id"]),
                entities=entities_from_json(record.get("entities") or []),
                model=str(record["model"]),
                tier=str(record.get("tier") or ""),
                attempts=int(record.get("attempts") or 0),
                input_tokens=int(record.get("input_tokens") or 0),
                output_tokens=int(record.get("output_tokens") or 0),
                latency_s=float(record.get("latency_s") or 0.0),
                cost_usd=float(record.get("cost_usd") or 0.0),
                fallback=bool(record.get("fallback")),
                metadata=metadata,
                grounding=grounding_from_json(record.get("grounding")),
                pack_size=int(record.get("pack_size") or 0),
                task_version=str(record.get("task_version") or ""),
            )
        if status == FAILED:
            return Failed(
                article_id=str(record["article_id"]),
                reason=FailureReason(record["reason"]),
                detail=str(record.get("detail") or ""),
                tier=str(record.get("tier") or ""),
                attempts=int(record.get("attempts") or 0),
                last_model=record.get("model"),
                metadata=metadata,
            )
    except InvalidResultRecord:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidResultRecord(f"result record: {exc!r}") from None
    raise InvalidResultRecord(f"result record: unknown status {status!r}")


_LINE_BREAKS_JSON_KEEPS = str.maketrans(
    {"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"}
)


def dumps(value: object) -> str:
    """Compact JSON that never fails on an odd metadata value."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


def dumps_line(value: object) -> str:
    """``dumps`` safe for JSON Lines: the characters that ``str.splitlines``
    and some readers treat as line breaks but JSON leaves raw (U+0085,
    U+2028, U+2029) are escaped, so one record is always one line."""
    return dumps(value).translate(_LINE_BREAKS_JSON_KEEPS)

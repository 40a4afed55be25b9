"""Turn a model's answer text into one ``ArticleAnswer`` per article of the pack.

Both SDK adapters (and anything else that receives Gemini answer text) go
through here, so the runtime sees one validation policy whatever the SDK.
The functions are pure and total: any text, any JSON, any finish reason
yields exactly one answer per expected id and never an exception, because a
model's output is untrusted input.

Decisions, so callers know what to expect:

* A safety block (``promptFeedback.blockReason`` or a safety-like
  ``finishReason``) marks every article ``SAFETY``: the block applies to the
  request as a whole and nothing in the text can be trusted.
* ``MAX_TOKENS``: complete items that precede the cut are salvaged (each is
  validated as usual) and every other article is ``TRUNCATED``. A JSON
  object whose closing brace was written is complete, so re-sending those
  articles would only spend quota; re-sending the whole pack would likely be
  cut at the same place again.
* An answer that is not JSON, or not ``{"articles": [...]}``, is
  ``MALFORMED`` for every article.
* An article id with no item is ``MISSING``; items whose id is not in the
  pack are ignored and reported in ``ParsedAnswer.unknown_ids``.
* Several items for one id: the first valid one wins (an invalid item is
  replaced by a later valid one); the extras are reported in
  ``ParsedAnswer.duplicate_ids``. Merging them could mix entities of
  articles the model confused.
* An item is ``INVALID`` as soon as one of its fields or entities is: a
  half-garbled item is a sign the model lost track, and another attempt (or
  model) is cheaper than storing wrong entities.
* Entity fields: ``name`` a non-empty string (whitespace collapsed);
  ``type`` matched case-insensitively against ``EntityType`` values and common
  synonyms (``organization``, ``org``, ``place``, ``gpe`` ...), any other
  string becomes ``other``; ``salience`` a finite number, clamped into
  [0, 1] when it is off by at most ``SALIENCE_TOLERANCE`` (rounding noise),
  invalid beyond; ``mentions`` an integer >= 1 (an integral float such as
  ``3.0`` is accepted), 1 when absent. For a configured task
  (``policies.task``) ``type`` is matched case-insensitively against the
  task's type names instead, and any other label becomes ``other``; each of
  the task's extra fields is kept when present and of its type (a JSON
  integer is a number too; an integral float is an integer), and makes the
  item invalid when present with another type; other keys are ignored.
* Entities with the same name (case-insensitive) and type are merged: the
  first spelling is kept, salience is the maximum, mentions are summed.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tierbatch.policies.results import (
    AnswerProblem,
    ArticleAnswer,
    Entity,
    EntityType,
    Extraction,
    ProblemKind,
)
from tierbatch.policies.task import ExtraField, FieldType, TaskConfig

SALIENCE_TOLERANCE = 0.05
"""How far outside [0, 1] a salience may be and still be clamped."""

SAFETY_FINISH_REASONS = frozenset(
    {"SAFETY", "PROHIBITED_CONTENT", "BLOCKLIST", "SPII", "RECITATION", "IMAGE_SAFETY"}
)
"""Finish reasons meaning a filter suppressed the answer. RECITATION is
included: like a safety block, re-sending the same text hits it again."""

TRUNCATION_FINISH_REASONS = frozenset({"MAX_TOKENS"})

_UNSET_REASONS = frozenset({"", "BLOCK_REASON_UNSPECIFIED", "NONE", "0"})

TYPE_SYNONYMS: Mapping[str, EntityType] = {
    **{t.value: t for t in EntityType},
    "per": EntityType.PERSON,
    "people": EntityType.PERSON,
    "human": EntityType.PERSON,
    "organization": EntityType.ORGANISATION,
    "organisations": EntityType.ORGANISATION,
    "organizations": EntityType.ORGANISATION,
    "org": EntityType.ORGANISATION,
    "company": EntityType.ORGANISATION,
    "institution": EntityType.ORGANISATION,
    "norp": EntityType.ORGANISATION,
    "loc": EntityType.LOCATION,
    "place": EntityType.LOCATION,
    "gpe": EntityType.LOCATION,
    "country": EntityType.LOCATION,
    "city": EntityType.LOCATION,
    "geo": EntityType.LOCATION,
    "facility": EntityType.LOCATION,
    "fac": EntityType.LOCATION,
    "evt": EntityType.EVENT,
    "prod": EntityType.PRODUCT,
    "work_of_art": EntityType.PRODUCT,
    "misc": EntityType.OTHER,
}
"""Lower-cased type labels models use, mapped onto ours (spaces and hyphens
are read as underscores). Unknown labels become ``other``."""

_FENCE = re.compile(r"^\s*```[A-Za-z0-9_-]*\s*\n?(?P<body>.*?)\n?\s*```\s*$", re.DOTALL)
_ARTICLES_OPENING = re.compile(r'\s*\{\s*"articles"\s*:\s*\[')
_WHITESPACE = re.compile(r"\s+")


@dataclass(frozen=True, slots=True)
class ParsedAnswer:
    """The per-article answers plus what was odd about the answer, for logs."""

    answers: dict[str, ArticleAnswer]
    unknown_ids: tuple[str, ...] = ()
    duplicate_ids: tuple[str, ...] = ()
    unusable_items: int = 0


class _InvalidItem(ValueError):
    """An answer item whose fields have the wrong types or values."""


def parse_answer(
    text: str | None,
    finish_reason: str | None,
    block_reason: str | None,
    expected_ids: Sequence[str],
    task: TaskConfig | None = None,
) -> dict[str, ArticleAnswer]:
    """Exactly one answer per expected id; never raises. See the module docstring."""
    return analyse_answer(text, finish_reason, block_reason, expected_ids, task).answers


def analyse_answer(
    text: str | None,
    finish_reason: str | None,
    block_reason: str | None,
    expected_ids: Sequence[str],
    task: TaskConfig | None = None,
) -> ParsedAnswer:
    """Like ``parse_answer``, also reporting unknown and duplicate ids."""
    reader = _EntityReader.of(task)
    ids = list(dict.fromkeys(expected_ids))
    block = normalise_reason(block_reason)
    finish = normalise_reason(finish_reason)
    if block not in _UNSET_REASONS:
        return _all(ids, AnswerProblem(ProblemKind.SAFETY, f"prompt blocked: {block}"))
    if finish in SAFETY_FINISH_REASONS:
        return _all(ids, AnswerProblem(ProblemKind.SAFETY, f"finishReason {finish}"))
    body = _strip_fence(text or "")
    if finish in TRUNCATION_FINISH_REASONS:
        items = _complete_items(body)
        rest = AnswerProblem(ProblemKind.TRUNCATED, "finishReason MAX_TOKENS")
        return _demultiplex(items, ids, rest, reader)
    if not body.strip():
        return _all(ids, AnswerProblem(ProblemKind.MALFORMED, "empty answer"))
    try:
        data: Any = json.loads(body)
    except (ValueError, RecursionError) as exc:
        detail = f"not JSON: {_short(exc)}"
        return _all(ids, AnswerProblem(ProblemKind.MALFORMED, detail))
    if not isinstance(data, dict) or not isinstance(data.get("articles"), list):
        detail = 'not {"articles": [...]}'
        return _all(ids, AnswerProblem(ProblemKind.MALFORMED, detail))
    missing = AnswerProblem(ProblemKind.MISSING, "no item for this id in the answer")
    return _demultiplex(data["articles"], ids, missing, reader)


def normalise_reason(reason: object) -> str:
    """``"MAX_TOKENS"``, ``FinishReason.MAX_TOKENS`` or ``"max_tokens"`` alike."""
    if reason is None:
        return ""
    name = getattr(reason, "name", None)
    raw = name if isinstance(name, str) else str(reason)
    return raw.rsplit(".", 1)[-1].strip().upper()


def entity_type_for(label: str) -> EntityType:
    """Our type for a model's type label; unknown labels are ``other``."""
    key = _WHITESPACE.sub("_", label.strip().lower()).replace("-", "_")
    return TYPE_SYNONYMS.get(key, EntityType.OTHER)


def _all(ids: Sequence[str], answer: ArticleAnswer) -> ParsedAnswer:
    return ParsedAnswer({i: answer for i in ids})


def _demultiplex(
    items: Sequence[Any], ids: Sequence[str], absent: AnswerProblem, reader: _EntityReader
) -> ParsedAnswer:
    """Match items to ids; ``absent`` is the answer for ids with no item."""
    expected = set(ids)
    found: dict[str, ArticleAnswer] = {}
    unknown: list[str] = []
    duplicates: list[str] = []
    unusable = 0
    for item in items:
        item_id = _item_id(item)
        if item_id is None:
            unusable += 1
            continue
        if item_id not in expected:
            unknown.append(item_id)
            continue
        previous = found.get(item_id)
        if previous is not None:
            duplicates.append(item_id)
            if isinstance(previous, Extraction):
                continue
        found[item_id] = _validate_item(item, reader)
    answers = {i: found.get(i, absent) for i in ids}
    return ParsedAnswer(answers, tuple(unknown), tuple(duplicates), unusable)


def _item_id(item: Any) -> str | None:
    """The item's article id; integers are accepted for numeric ids."""
    if not isinstance(item, dict):
        return None
    raw = item.get("id")
    if isinstance(raw, str):
        return raw.strip()
    if isinstance(raw, int) and not isinstance(raw, bool):
        return _short(raw, limit=10_000)
    return None


class _EntityReader:
    """How one task's entity labels and extra fields are read."""

    __slots__ = ("fields", "types")

    def __init__(self, types: Mapping[str, str] | None, fields: Sequence[ExtraField]) -> None:
        self.types = types  # casefolded label -> type name; None: the built-in types
        self.fields = tuple(fields)

    @classmethod
    def of(cls, task: TaskConfig | None) -> _EntityReader:
        if task is None or task.is_default:
            return _BUILT_IN
        return cls({name.casefold(): name for name in task.type_names}, task.extra_fields)

    def type_for(self, label: str) -> str:
        if self.types is None:
            return entity_type_for(label)
        return self.types.get(label.strip().casefold(), EntityType.OTHER.value)

    def extra(self, raw: dict[str, Any], index: int) -> tuple[tuple[str, Any], ...]:
        out: list[tuple[str, Any]] = []
        for f in self.fields:
            if f.name not in raw or raw[f.name] is None:
                continue
            value = _field_value(raw[f.name], f.type)
            if value is None:
                raise _InvalidItem(f"entity {index}: {f.name} is not {_A_TYPE[f.type]}")
            out.append((f.name, value))
        return tuple(out)


_BUILT_IN = _EntityReader(None, ())
_A_TYPE = {
    FieldType.STRING: "a string",
    FieldType.NUMBER: "a number",
    FieldType.INTEGER: "an integer",
    FieldType.BOOLEAN: "a boolean",
}


def _field_value(value: Any, kind: FieldType) -> str | float | int | bool | None:
    """``value`` as a field of ``kind``, or None when it is not one."""
    if kind is FieldType.BOOLEAN:
        return value if isinstance(value, bool) else None
    if isinstance(value, bool):
        return None
    if kind is FieldType.STRING:
        return _WHITESPACE.sub(" ", value).strip() if isinstance(value, str) else None
    if kind is FieldType.INTEGER:
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            return int(value)
        return value if isinstance(value, int) else None
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    return None


def _validate_item(item: dict[str, Any], reader: _EntityReader = _BUILT_IN) -> ArticleAnswer:
    entities = item.get("entities")
    if not isinstance(entities, list):
        return AnswerProblem(ProblemKind.INVALID, "entities is not a list")
    try:
        parsed = [_entity(e, n, reader) for n, e in enumerate(entities)]
    except _InvalidItem as exc:
        return AnswerProblem(ProblemKind.INVALID, str(exc))
    return Extraction(_merge(parsed))


def _entity(raw: Any, index: int, reader: _EntityReader = _BUILT_IN) -> Entity:
    if not isinstance(raw, dict):
        raise _InvalidItem(f"entity {index} is not an object")
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip():
        raise _InvalidItem(f"entity {index}: name is not a non-empty string")
    label = raw.get("type")
    if not isinstance(label, str):
        raise _InvalidItem(f"entity {index}: type is not a string")
    return Entity(
        name=_WHITESPACE.sub(" ", name).strip(),
        type=reader.type_for(label),
        salience=_salience(raw.get("salience"), index),
        mentions=_mentions(raw.get("mentions", 1), index),
        fields=reader.extra(raw, index),
    )


def _salience(value: Any, index: int) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _InvalidItem(f"entity {index}: salience is not a number")
    low, high = -SALIENCE_TOLERANCE, 1 + SALIENCE_TOLERANCE
    # Compare before converting: a huge JSON integer overflows float().
    if not low <= value <= high:
        raise _InvalidItem(f"entity {index}: salience {_short(value)} is outside [0, 1]")
    return min(1.0, max(0.0, float(value)))


def _mentions(value: Any, index: int) -> int:
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _InvalidItem(f"entity {index}: mentions {_short(value)} is not an integer >= 1")
    return value


def _merge(entities: Sequence[Entity]) -> tuple[Entity, ...]:
    merged: dict[tuple[str, str], Entity] = {}
    for e in entities:
        key = (e.name.casefold(), e.type)
        seen = merged.get(key)
        if seen is None:
            merged[key] = e
        else:
            merged[key] = Entity(
                seen.name,
                seen.type,
                max(seen.salience, e.salience),
                seen.mentions + e.mentions,
                fields=seen.fields or e.fields,
            )
    return tuple(merged.values())


def _strip_fence(text: str) -> str:
    """Models sometimes wrap JSON in a Markdown code fence even in JSON mode."""
    match = _FENCE.match(text)
    return match.group("body") if match else text


def _complete_items(text: str) -> list[Any]:
    """The items of ``{"articles": [...`` that were written in full before the cut."""
    opening = _ARTICLES_OPENING.match(text)
    if opening is None:
        return []
    decoder = json.JSONDecoder()
    items: list[Any] = []
    pos = opening.end()
    while True:
        pos = _skip_space(text, pos)
        if pos >= len(text) or text[pos] == "]":
            return items
        try:
            item, pos = decoder.raw_decode(text, pos)
        except (ValueError, RecursionError):
            return items
        items.append(item)
        pos = _skip_space(text, pos)
        if pos >= len(text) or text[pos] != ",":
            return items
        pos += 1


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def _short(value: object, limit: int = 80) -> str:
    try:
        text = str(value)
    except ValueError:  # an integer too long to print (sys.set_int_max_str_digits)
        return f"<{type(value).__name__} too long to show>"
    return text if len(text) <= limit else text[: limit - 3] + "..."

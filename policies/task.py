"""The extraction task: which entity types to find, what else to say, which
extra fields an entity may carry -- and the task's version.

By default tierbatch extracts the six built-in types (person, organisation,
location, event, product, other). A ``[task]`` section replaces them with the
user's own types, each with a one-line description, adds instructions and
optional per-entity fields; the prompt adapter builds the system instruction
and the response schema from it (``adapters.gemini.prompt``).

``task_version`` is a short hash of everything that shapes the answers (the
prompt format, the types and their descriptions, the instructions, the
fields). It is recorded with every result, so a results table never mixes
answers to different questions without saying so.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from tierbatch.policies.config_reader import REQUIRED, TableReader, describe_type

__all__ = [
    "DEFAULT_ENTITY_TYPES",
    "PROMPT_FORMAT",
    "EntityTypeSpec",
    "ExtraField",
    "FieldType",
    "MixedTaskVersions",
    "TaskConfig",
    "check_versions",
    "parse_task",
    "task_version",
]

PROMPT_FORMAT: Final = "entities-v1"
"""The prompt template's own version: bump it whenever the wording of the
shared instructions or the schema's shape changes (it is part of every
task's version)."""

_NAME: Final = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
# Entity properties every task has: an extra field may not reuse them.
_RESERVED_FIELDS: Final = frozenset({"name", "type", "salience", "mentions", "flag"})


class FieldType(StrEnum):
    """The JSON type of an extra field (the response schema's type)."""

    STRING = "string"
    NUMBER = "number"
    INTEGER = "integer"
    BOOLEAN = "boolean"


@dataclass(frozen=True, slots=True)
class EntityTypeSpec:
    """An entity type the model is asked for: its label and what it means."""

    name: str
    description: str


@dataclass(frozen=True, slots=True)
class ExtraField:
    """A field an entity may carry besides name, type, salience, mentions."""

    name: str
    type: FieldType
    description: str


DEFAULT_ENTITY_TYPES: Final = (
    EntityTypeSpec("person", "a named person"),
    EntityTypeSpec("organisation", "a company, institution, party, team or other body"),
    EntityTypeSpec("location", "a country, region, city, place or facility"),
    EntityTypeSpec("event", "a named event"),
    EntityTypeSpec("product", "a named product, work or service"),
    EntityTypeSpec("other", "a named entity that fits no other type"),
)


@dataclass(frozen=True, slots=True)
class TaskConfig:
    """``entity_types`` highest-level labels the model may give (the
    built-in six by default); ``instructions`` are added to the shared ones;
    ``extra_fields`` may be given per entity (none are required);
    ``allow_mixed_versions``: results of another task version may share a
    results table (default: refused)."""

    entity_types: tuple[EntityTypeSpec, ...] = DEFAULT_ENTITY_TYPES
    instructions: str = ""
    extra_fields: tuple[ExtraField, ...] = ()
    allow_mixed_versions: bool = False

    @property
    def is_default(self) -> bool:
        """The built-in task: the shipped prompt, word for word."""
        return (
            self.entity_types == DEFAULT_ENTITY_TYPES
            and not self.instructions
            and not self.extra_fields
        )

    @property
    def type_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.entity_types)


def task_version(task: TaskConfig) -> str:
    """``<PROMPT_FORMAT>-<12 hex digits>``: a hash of what shapes the answers
    (not of ``allow_mixed_versions``). Equal tasks have equal versions
    across processes and machines."""
    parts = [PROMPT_FORMAT, "types"]
    for t in task.entity_types:
        parts += [t.name, t.description]
    parts += ["instructions", task.instructions, "fields"]
    for f in task.extra_fields:
        parts += [f.name, f.type.value, f.description]
    # Length-prefixed, so no choice of text can make two tasks collide.
    canonical = "".join(f"{len(p)}:{p};" for p in parts)
    return f"{PROMPT_FORMAT}-{hashlib.sha256(canonical.encode()).hexdigest()[:12]}"


class MixedTaskVersions(Exception):
    """The results table holds results of another task version than this
    run's, and mixing was not allowed."""

    def __init__(self, current: str, others: dict[str, int], where: str) -> None:
        listed = ", ".join(f"{v} ({n} result(s))" for v, n in sorted(others.items()))
        super().__init__(
            f"{where} holds results of task version(s) {listed}; this configuration's "
            f"task is version {current}. Refusing to mix answers to different tasks in "
            "one results table: use another database, or pass --allow-mixed-versions "
            "(or set task.allow_mixed_versions = true) to mix them knowingly"
        )
        self.current = current
        self.others = dict(others)


def check_versions(stored: dict[str, int], current: str, *, allowed: bool, where: str) -> None:
    """Raise ``MixedTaskVersions`` when ``stored`` (done results per task
    version) holds a version other than ``current`` and mixing is not
    ``allowed``. Rows without a version (written before versions existed)
    do not count: their task is unknown, not known to differ."""
    others = {v: n for v, n in stored.items() if v and v != current and n}
    if others and not allowed:
        raise MixedTaskVersions(current, others, where)


def parse_task(r: TableReader) -> TaskConfig:
    """Reads ``[task]``: ``instructions``, ``allow_mixed_versions``,
    ``[[task.entity_types]]`` (name, description) and
    ``[[task.extra_fields]]`` (name, type, description)."""
    d = TaskConfig()
    raw_instructions = r.raw("instructions")
    instructions = ""
    if raw_instructions is not REQUIRED:
        if isinstance(raw_instructions, str):
            instructions = raw_instructions.strip()
        else:
            r.problems.add(
                r.key("instructions"), f"expected a string, got {describe_type(raw_instructions)}"
            )
    types = _entity_types(r)
    fields = _extra_fields(r)
    task = TaskConfig(
        entity_types=types or d.entity_types,
        instructions=instructions,
        extra_fields=fields,
        allow_mixed_versions=r.boolean("allow_mixed_versions", d.allow_mixed_versions),
    )
    r.finish()
    return task


def _items(r: TableReader, name: str, expected: str) -> list[tuple[str, TableReader]]:
    raw = r.raw(name)
    if raw is REQUIRED:
        return []
    if not isinstance(raw, list):
        r.problems.add(r.key(name), f"expected an array of tables: write each as [[task.{name}]]")
        return []
    out = []
    for index, item in enumerate(raw):
        key = f"{r.key(name)}[{index}]"
        if not isinstance(item, dict):
            r.problems.add(key, f"expected a table ({expected})")
            continue
        out.append((key, TableReader(item, key, r.problems)))
    return out


def _label(item: TableReader, key: str, what: str, seen: dict[str, str]) -> str:
    name = item.string("name", REQUIRED)
    if name and not _NAME.match(name):
        item.problems.add(
            f"{key}.name",
            f"expected a {what} name of lower-case letters, digits and _ (starting with a "
            f"letter, at most 40), got {name!r}",
        )
    elif name in seen:
        item.problems.add(f"{key}.name", f"duplicate {what} {name!r} ({seen[name]})")
    elif name:
        seen[name] = key
    return name


def _entity_types(r: TableReader) -> tuple[EntityTypeSpec, ...]:
    seen: dict[str, str] = {}
    types = []
    for key, item in _items(r, "entity_types", "name, description"):
        name = _label(item, key, "type", seen)
        description = item.string("description", REQUIRED)
        item.finish()
        types.append(EntityTypeSpec(name, " ".join(description.split())))
    if r.has("entity_types") and not types and not r.problems:
        r.problems.add(r.key("entity_types"), "expected at least one [[task.entity_types]]")
    return tuple(types)


def _extra_fields(r: TableReader) -> tuple[ExtraField, ...]:
    seen: dict[str, str] = {}
    fields = []
    for key, item in _items(r, "extra_fields", "name, type, description"):
        name = _label(item, key, "field", seen)
        if name in _RESERVED_FIELDS:
            item.problems.add(
                f"{key}.name",
                f"{name!r} is a property every entity has; choose another name",
            )
        kind = item.choice("type", FieldType.STRING.value, tuple(t.value for t in FieldType))
        description = item.string("description", REQUIRED)
        item.finish()
        fields.append(ExtraField(name, FieldType(kind), " ".join(description.split())))
    return tuple(fields)

"""The entity-extraction prompt, in one place and versioned.

Several articles of one tier travel in one request. The instructions go in
the system instruction; the user turn ends with ``ARTICLES_MARKER`` and a JSON
array of ``{"id", "title", "text"}`` objects. The model answers in JSON mode
with ``RESPONSE_SCHEMA``: ``{"articles": [{"id", "entities": [...]}]}``, keyed
by article id so the answer can be demultiplexed per article.

The built-in task (six entity types) uses ``SYSTEM_INSTRUCTION`` and
``RESPONSE_SCHEMA`` word for word. A configured task (``[task]``,
``policies.task``) gets ``task_prompt(task)``: the same shared instructions
first -- the stable prefix every request of every task starts with, which
Gemini's implicit caching can serve -- then the task's types with their
descriptions, its extra fields and its own instructions; the schema's type
enum and entity properties follow the task. Bump ``PROMPT_VERSION``
(``policies.task.PROMPT_FORMAT``) whenever the shared wording or the
schema's shape changes: it is part of the task version recorded with every
result.
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tierbatch.policies.articles import Article
from tierbatch.policies.results import EntityType
from tierbatch.policies.task import PROMPT_FORMAT, FieldType, TaskConfig, task_version

PROMPT_VERSION = PROMPT_FORMAT
ARTICLES_MARKER = "ARTICLES_JSON:"

SYSTEM_INSTRUCTION = (
    "You extract named entities from news articles. For every article you are "
    "given, list the people, organisations, locations, events and products it "
    "names. Use the most complete form of each name that appears in the text, "
    "merge repeated mentions into one entity, give each entity a salience "
    "between 0 and 1 (how central it is to the article) and the number of "
    "times it is mentioned. Use type 'other' for a named entity that fits no "
    "other type. Answer only with JSON matching the response schema, with one "
    "item per article, using the article's id exactly as given."
)

ENTITY_TYPES = tuple(t.value for t in EntityType)

RESPONSE_SCHEMA: dict[str, Any] = {
    "type": "OBJECT",
    "properties": {
        "articles": {
            "type": "ARRAY",
            "items": {
                "type": "OBJECT",
                "properties": {
                    "id": {"type": "STRING"},
                    "entities": {
                        "type": "ARRAY",
                        "items": {
                            "type": "OBJECT",
                            "properties": {
                                "name": {"type": "STRING"},
                                "type": {"type": "STRING", "enum": list(ENTITY_TYPES)},
                                "salience": {"type": "NUMBER"},
                                "mentions": {"type": "INTEGER"},
                            },
                            "required": ["name", "type", "salience", "mentions"],
                        },
                    },
                },
                "required": ["id", "entities"],
            },
        }
    },
    "required": ["articles"],
}


SHARED_INSTRUCTION = (
    "You extract named entities from news articles. For every article you are "
    "given, list the entities it names, of the types below. Use the most complete "
    "form of each name that appears in the text, merge repeated mentions into one "
    "entity, give each entity a salience between 0 and 1 (how central it is to the "
    "article) and the number of times it is mentioned. Answer only with JSON "
    "matching the response schema, with one item per article, using the article's "
    "id exactly as given."
)
"""The first paragraph of every configured task's system instruction."""

_SCHEMA_TYPES = {
    FieldType.STRING: "STRING",
    FieldType.NUMBER: "NUMBER",
    FieldType.INTEGER: "INTEGER",
    FieldType.BOOLEAN: "BOOLEAN",
}


@dataclass(frozen=True, slots=True)
class TaskPrompt:
    """What a request of one task sends: the system instruction and the
    response schema (never mutate it: copy it for an SDK that does), and
    the task version recorded with its results."""

    system_instruction: str
    response_schema: dict[str, Any]
    version: str
    task: TaskConfig


@functools.lru_cache(maxsize=16)
def task_prompt(task: TaskConfig | None = None) -> TaskPrompt:
    """The prompt of ``task`` (None: the built-in one)."""
    task = task or TaskConfig()
    if task.is_default:
        return TaskPrompt(SYSTEM_INSTRUCTION, RESPONSE_SCHEMA, task_version(task), task)
    parts = [SHARED_INSTRUCTION, "Entity types:"]
    parts.extend(f"- {t.name}: {t.description}" for t in task.entity_types)
    if task.extra_fields:
        parts.append("Extra fields of an entity (give one only when the article states it):")
        parts.extend(f"- {f.name} ({f.type.value}): {f.description}" for f in task.extra_fields)
    if task.instructions:
        parts.append(f"Further instructions: {task.instructions}")
    schema = copy.deepcopy(RESPONSE_SCHEMA)
    entity = schema["properties"]["articles"]["items"]["properties"]["entities"]["items"]
    entity["properties"]["type"]["enum"] = list(task.type_names)
    for f in task.extra_fields:
        entity["properties"][f.name] = {"type": _SCHEMA_TYPES[f.type], "description": f.description}
    return TaskPrompt("\n".join(parts), schema, task_version(task), task)


def build_user_text(articles: Sequence[Article]) -> str:
    """The user turn: a short request, the marker, then the articles as JSON."""
    payload = [{"id": a.id, "title": a.title, "text": a.text} for a in articles]
    return (
        f"Extract the entities of each of the {len(payload)} articles below.\n"
        f"{ARTICLES_MARKER}\n{json.dumps(payload, ensure_ascii=False)}"
    )


def articles_from_user_text(text: str) -> list[dict[str, str]]:
    """Recover the articles from a user turn (used by the local fake server).

    Raises ``ValueError`` when the text does not follow the template.
    """
    _head, sep, tail = text.partition(ARTICLES_MARKER)
    if not sep:
        raise ValueError(f"prompt has no {ARTICLES_MARKER} section")
    data = json.loads(tail)
    if not isinstance(data, list):
        raise ValueError("articles section is not a JSON array")
    return [
        {
            "id": str(d.get("id", "")),
            "title": str(d.get("title", "")),
            "text": str(d.get("text", "")),
        }
        for d in data
        if isinstance(d, dict)
    ]

"""The entity-extraction prompt, in one place.

Several articles of one tier travel in one request. The instructions go in
the system instruction; the user turn ends with ``ARTICLES_MARKER`` and a JSON
array of ``{"id", "title", "text"}`` objects. The model answers in JSON mode
with ``RESPONSE_SCHEMA``: ``{"articles": [{"id", "entities": [...]}]}``, keyed
by article id so the answer can be demultiplexed per article.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from tierbatch.policies.articles import Article
from tierbatch.policies.results import EntityType

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

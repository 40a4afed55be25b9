"""Reading the requests the Gemini emulator serves: the route (API version,
model, method) of a URL, the query's key and options, and the prompt of a
GenerateContentRequest body (camelCase or snake_case). Deciding and
answering them is ``gemini_emulator``'s."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from tierbatch.adapters.gemini.prompt import ARTICLES_MARKER, articles_from_user_text
from tierbatch.adapters.simulation.fake_entities import fake_prompt_token_count, task_from_schema
from tierbatch.policies.errors import TierbatchError
from tierbatch.policies.task import TaskConfig

_ROUTE = re.compile(r"/(?P<version>v1|v1beta|v1alpha)/(?P<resource>.+):(?P<method>[A-Za-z]+)")
_METHODS = frozenset({"generateContent", "countTokens"})

# Protobuf enum numbers, for the legacy SDK's ``$alt=json;enum-encoding=int``.


@dataclass(frozen=True, slots=True)
class Route:
    version: str
    model: str
    method: str


def parse_route(method: str, target: str) -> Route | None:
    """The API version, model and method of a generateContent/countTokens
    URL, tolerating an encoded ``:`` or ``/`` and a repeated ``models/``."""
    if method != "POST":
        return None
    match = _ROUTE.fullmatch(unquote(urlsplit(target).path))
    if match is None or match["method"] not in _METHODS:
        return None
    resource = match["resource"]
    while resource.startswith("models/"):
        resource = resource[len("models/") :]
    if not resource or "/" in resource:
        return None
    return Route(match["version"], resource, match["method"])


def content_texts(content: Any) -> list[str]:
    """Text parts of a Content (dict with parts), a list of them, or a string."""
    if isinstance(content, str):
        return [content]
    if isinstance(content, list):
        return [t for item in content for t in content_texts(item)]
    if isinstance(content, dict):
        if "parts" in content:
            return content_texts(content["parts"])
        text = content.get("text")
        return [text] if isinstance(text, str) else []
    return []


@dataclass(frozen=True, slots=True)
class Prompt:
    system: list[str]
    user: list[str]
    max_output_tokens: int | None
    task: TaskConfig | None = None  # what the response schema asks for

    @property
    def input_tokens(self) -> int:
        return fake_prompt_token_count([*self.system, *self.user])

    def articles(self) -> list[dict[str, str]]:
        """The articles of the prompt template; none when there is no such
        section or it does not parse."""
        for text in self.user:
            if ARTICLES_MARKER in text:
                try:
                    return articles_from_user_text(text)
                except ValueError:
                    return []
        return []


def parse_prompt(body: Mapping[str, Any]) -> Prompt:
    """Texts from a GenerateContentRequest in camelCase or snake_case; a
    countTokens body may wrap one in ``generateContentRequest``."""
    inner = body.get("generateContentRequest") or body.get("generate_content_request")
    if isinstance(inner, dict) and not body.get("contents"):
        body = inner
    system = body.get("systemInstruction", body.get("system_instruction"))
    config = body.get("generationConfig", body.get("generation_config")) or {}
    max_tokens = None
    task = None
    if isinstance(config, dict):
        raw = config.get("maxOutputTokens", config.get("max_output_tokens"))
        if isinstance(raw, int | str) and str(raw).isdigit() and int(raw) > 0:
            max_tokens = int(raw)
        task = task_from_schema(config.get("responseSchema", config.get("response_schema")))
    texts = content_texts(body.get("contents", []))
    return Prompt(content_texts(system), texts, max_tokens, task)


class BadRequestBodyError(TierbatchError, ValueError):
    """A body that is not a JSON object: Gemini answers 400."""


def json_body(raw: bytes) -> dict[str, Any]:
    try:
        document = json.loads(raw or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequestBodyError(f"Invalid JSON payload received. {exc}") from exc
    if not isinstance(document, dict):
        raise BadRequestBodyError("Invalid JSON payload received. Expected an object.")
    return document


_VERSION = r"(?P<version>v1|v1beta|v1alpha)"
_NAME = r"[^/:]+"
_RESOURCES: tuple[tuple[str, re.Pattern[str], str], ...] = tuple(
    (method, re.compile(pattern), name)
    for method, pattern, name in (
        ("GET", rf"/{_VERSION}/models", "models.list"),
        ("GET", rf"/{_VERSION}/models/(?P<model>{_NAME})", "models.get"),
        ("POST", rf"/{_VERSION}/models/(?P<model>{_NAME}):batchGenerateContent", "batches.create"),
        ("GET", rf"/{_VERSION}/batches", "batches.list"),
        ("GET", rf"/{_VERSION}/batches/(?P<id>{_NAME})", "batches.get"),
        ("DELETE", rf"/{_VERSION}/batches/(?P<id>{_NAME})", "batches.delete"),
        ("POST", rf"/{_VERSION}/batches/(?P<id>{_NAME}):cancel", "batches.cancel"),
        ("POST", rf"/upload/{_VERSION}/files", "files.upload"),
        ("GET", rf"/{_VERSION}/files/(?P<id>{_NAME})", "files.get"),
        ("DELETE", rf"/{_VERSION}/files/(?P<id>{_NAME})", "files.delete"),
        ("GET", rf"(?:/download)?/{_VERSION}/files/(?P<id>{_NAME}):download", "files.download"),
    )
)


def parse_resource(method: str, target: str) -> tuple[Route, dict[str, str]] | None:
    """The route of a catalogue, batch or file request: (route, path ids)."""
    path = unquote(urlsplit(target).path)
    for allowed, pattern, name in _RESOURCES:
        if method != allowed:
            continue
        match = pattern.fullmatch(path)
        if match is not None:
            groups = {k: v for k, v in match.groupdict().items() if v is not None}
            route = Route(groups.pop("version"), groups.pop("model", ""), name)
            return route, groups
    return None


def int_query(query: Mapping[str, list[str]], name: str) -> int | None:
    values = query.get(name)
    if not values or not values[0].isdigit():
        return None
    return int(values[0])


def query_key(target: str) -> str:
    values = parse_qs(urlsplit(target).query).get("key")
    return values[0] if values else ""


def wants_int_enums(target: str) -> bool:
    """The legacy SDK asks for integer enums with ``$alt=json;enum-encoding=int``."""
    alt = parse_qs(urlsplit(target).query).get("$alt", [""])[0]
    return "enum-encoding=int" in alt

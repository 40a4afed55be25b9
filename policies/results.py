"""Entities, per-article answers and the terminal result of every article."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from tierbatch.policies.grounding import Grounding, GroundingCounts


class EntityType(StrEnum):
    PERSON = "person"
    ORGANISATION = "organisation"
    LOCATION = "location"
    EVENT = "event"
    PRODUCT = "product"
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class Entity:
    """A named entity found in an article.

    ``type`` is one of the task's entity types (``EntityType`` values for
    the built-in task; ``policies.task``); ``salience`` is the model's
    importance estimate in [0, 1]; ``mentions`` how often the entity is
    mentioned; ``fields`` the task's extra fields the model gave, as
    (name, value) pairs in the task's order. ``flag`` is the outcome
    of the grounding check (``policies.grounding``) when the configured
    action for it is ``flag``: a downstream user filters on it; None for an
    entity kept without a flag (and for results of versions before the
    check).
    """

    name: str
    type: str
    salience: float
    mentions: int = 1
    flag: Grounding | None = None
    fields: tuple[tuple[str, str | float | int | bool], ...] = ()


class ProblemKind(StrEnum):
    """Why a model's answer could not be used for one article."""

    MALFORMED = "malformed"  # not JSON, or not the schema's shape
    TRUNCATED = "truncated"  # finishReason MAX_TOKENS
    SAFETY = "safety"  # blocked by a safety filter
    MISSING = "missing"  # the article's id is absent from the answer
    INVALID = "invalid"  # present, but wrong types or values


@dataclass(frozen=True, slots=True)
class AnswerProblem:
    kind: ProblemKind
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Extraction:
    """The entities one answer gave for one article."""

    entities: tuple[Entity, ...]


ArticleAnswer = Extraction | AnswerProblem


class FailureReason(StrEnum):
    """Why an article ended without entities."""

    RETRIES_EXHAUSTED = "retries_exhausted"
    TIMEOUT = "timeout"
    BAD_REQUEST = "bad_request"
    INVALID_ANSWER = "invalid_answer"
    NO_MODEL = "no_model"  # every model of its chain is unavailable
    POISON = "poison"  # it kept crashing extractors
    CANCELLED = "cancelled"  # the runtime was stopped without draining


@dataclass(frozen=True, slots=True)
class Done:
    """The article's entities, and how they were obtained.

    ``grounding`` counts the outcomes of the grounding check over the
    entities the model gave (before the configured drops), ``pack_size``
    the articles of the request that answered; None and 0 for results of
    versions before the check."""

    article_id: str
    entities: tuple[Entity, ...]
    model: str
    tier: str
    attempts: int
    input_tokens: int
    output_tokens: int
    latency_s: float
    cost_usd: float = 0.0
    fallback: bool = False
    metadata: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)
    grounding: GroundingCounts | None = None
    pack_size: int = 0
    # The task version that produced it (policies.task); "" before versions.
    task_version: str = ""

    @property
    def ok(self) -> bool:
        return True


@dataclass(frozen=True, slots=True)
class Failed:
    """The article could not be extracted; ``detail`` says what was tried."""

    article_id: str
    reason: FailureReason
    detail: str
    tier: str
    attempts: int
    last_model: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def ok(self) -> bool:
        return False


TerminalResult = Done | Failed

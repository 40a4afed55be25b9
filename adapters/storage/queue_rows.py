"""Pure rules both stores apply to rows: what a payload is, which leasing
candidates are taken and which fail (and why), whose result may be stored.
No database here: the stores fetch the rows and write what these decide."""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import islice
from typing import Generic, TypeVar

import structlog

from tierbatch.adapters.storage.jsonl_input import (
    InvalidArticle,
    article_from_row,
    article_to_json,
    storable_text_problem,
)
from tierbatch.adapters.storage.result_json import dumps
from tierbatch.policies.articles import Article
from tierbatch.policies.results import Failed, FailureReason, TerminalResult

log = structlog.get_logger("tierbatch.adapters.storage")

T = TypeVar("T")
K = TypeVar("K", bound=Hashable)


def batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch


def payload_of(article: Article) -> str:
    """The stored payload of ``article`` (its JSONL input line). Raises
    ``InvalidArticle`` for what the stores cannot hold back: metadata
    shadowing a field, text UTF-8 cannot encode (an unpaired surrogate), an
    id holding a NUL character (PostgreSQL text cannot)."""
    payload = dumps(article_to_json(article))
    problem = storable_text_problem(article.id) or storable_text_problem(payload)
    if "\x00" in article.id:
        problem = "id contains a NUL character (U+0000)"
    if problem:
        raise InvalidArticle(f"article {article.id!r}: {problem}")
    return payload


def usable_id(raw: str | bytes | None) -> str | None:
    """The row's id as text, or None when it is NULL, empty, blank or not UTF-8."""
    if raw is None:
        return None
    if isinstance(raw, str):
        article_id = raw
    else:
        try:
            article_id = bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            return None
    return article_id if article_id.strip() else None


def article_of(article_id: str, payload: str | bytes | None) -> tuple[Article | None, str]:
    """The row's article, or None and why it cannot be one."""
    try:
        article = article_from_row(b"" if payload is None else payload)
    except InvalidArticle as exc:
        return None, str(exc)
    except Exception as exc:  # a validation bug must not stop every lease after it
        log.exception("article_payload_check_crashed", article_id=article_id)
        return None, f"unexpected error while reading it: {exc!r}"
    if article.id != article_id:
        return None, f"payload id is {article.id!r}"
    return article, ""


def invalid_payload(article_id: str, problem: str) -> Failed:
    log.warning("invalid_article_payload", article_id=article_id, problem=problem)
    return Failed(
        article_id=article_id,
        reason=FailureReason.BAD_REQUEST,
        detail=f"invalid payload in the articles table: {problem}",
        tier="",
        attempts=0,
    )


def poisoned(article_id: str, attempts: int, poison_after: int) -> Failed:
    log.warning("poison_article_not_leased_again", article_id=article_id, leases=attempts)
    return Failed(
        article_id=article_id,
        reason=FailureReason.POISON,
        detail=f"leased {attempts} times without a result (each time the process holding it "
        f"died or stopped renewing its lease); not leased again (retry.poison_after = "
        f"{poison_after})",
        tier="",
        attempts=0,
    )


@dataclass(frozen=True, slots=True)
class Candidate(Generic[K]):
    """A row leasing may take: ``key`` addresses it (SQLite's rowid,
    PostgreSQL's id); ``article_id`` is None when the id is unusable."""

    key: K
    article_id: str | None
    payload: str | bytes | None
    attempts: int


@dataclass(slots=True)
class Triage(Generic[K]):
    """What leasing does with its candidates: take them (``leased``, in
    order), fail them with a result (``refuse`` and ``failures``, pairwise),
    or fail them without one (``nameless``: no id to carry a result)."""

    take: list[K] = field(default_factory=list)
    leased: list[Article] = field(default_factory=list)
    refuse: list[K] = field(default_factory=list)
    failures: list[Failed] = field(default_factory=list)
    nameless: list[K] = field(default_factory=list)


def triage(candidates: Iterable[Candidate[K]], poison_after: int | None) -> Triage[K]:
    """Sort leasing candidates: a row at the poison limit fails ``poison``
    (before its payload is even read), a payload that is not a valid
    article fails ``bad_request``, every other row is taken."""
    out: Triage[K] = Triage()
    for row in candidates:
        if row.article_id is None:
            out.nameless.append(row.key)
            continue
        if poison_after is not None and row.attempts >= poison_after:
            failure = poisoned(row.article_id, row.attempts, poison_after)
        else:
            article, problem = article_of(row.article_id, row.payload)
            if article is not None:
                out.leased.append(article)
                out.take.append(row.key)
                continue
            failure = invalid_payload(row.article_id, problem)
        out.refuse.append(row.key)
        out.failures.append(failure)
    return out


Holder = tuple[str, str | None]  # (state, lease owner) of an article's row


def split_by_holder(
    results: Sequence[TerminalResult], holders: Mapping[str, Holder], owner: str
) -> tuple[list[TerminalResult], list[TerminalResult]]:
    """``(accepted, stale)``: a result is accepted when its article has no
    row, or a terminal one (it then counts as a duplicate), or a row leased
    by ``owner`` -- even an expired lease nobody took over. Any other
    holder (another owner, or back in the queue) makes it stale."""
    accepted: list[TerminalResult] = []
    stale: list[TerminalResult] = []
    for result in results:
        holder = holders.get(result.article_id)
        if holder is None or holder[0] in ("done", "failed") or holder == ("leased", owner):
            accepted.append(result)
        else:
            stale.append(result)
    return accepted, stale


def epoch_of(raw: str | bytes | None) -> float | None:
    """Epoch seconds of an ISO 8601 text, or None when it is not one."""
    if raw is None:
        return None
    try:
        text = raw if isinstance(raw, str) else bytes(raw).decode("utf-8")
        stamp = datetime.fromisoformat(text.replace("Z", "+00:00"))
        if stamp.tzinfo is None:
            stamp = stamp.replace(tzinfo=UTC)
        return stamp.timestamp()
    except (ValueError, OverflowError):
        return None


def backlog_articles(rows: Iterable[Sequence[object]]) -> tuple[list[Article], int]:
    """The articles of (id, payload) rows still to be worked on, and how many
    rows are not usable articles (they fail when leased; a plan skips them)."""
    articles: list[Article] = []
    unusable = 0
    for raw_id, payload in rows:
        article_id = usable_id(raw_id if isinstance(raw_id, str | bytes) else None)
        article = None
        if article_id is not None and isinstance(payload, str | bytes | None):
            article, _ = article_of(article_id, payload)
        if article is None:
            unusable += 1
        else:
            articles.append(article)
    return articles, unusable

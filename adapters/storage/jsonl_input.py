"""Articles from JSON Lines: streaming validation with one precise reason per bad line.

Input format: one JSON object per line, UTF-8. Blank lines are skipped.

==============  ========  ====================================================
field           required  accepted values
==============  ========  ====================================================
``id``          yes       a non-empty string, or an integer (stored as its
                          decimal string: ids often come from integer keys,
                          and ``7`` and ``"7"`` then name the same article);
                          booleans and floats are rejected
``text``        yes       a non-empty string (not only white space)
``title``       no        string
``url``         no        string
``domain``      no        string; taken from ``url``'s host when absent;
                          normalised (lower case, no ``www.``, no port)
``cluster_id``  no        string or integer (stored as a string)
``published_at`` no       ISO 8601 string; a trailing ``Z`` is accepted; a
                          time without an offset is taken as UTC; stored in UTC
anything else   no        kept untouched in ``Article.metadata``
==============  ========  ====================================================

``null`` for an optional field means "absent". Every rejected line becomes a
``Rejected`` whose reason names the field, so a producer can fix its export
without guessing.

The same format is the ``payload`` column of the SQLite queue
(``article_to_json`` / ``article_from_row``), so another process can insert its
input lines there as they are.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator, Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any
from urllib.parse import urlsplit

from tierbatch.policies.articles import Article, normalise_domain

DEFAULT_MAX_BYTES_PER_LINE = 1_000_000
RAW_PREFIX_CHARS = 200
KNOWN_FIELDS = ("id", "text", "title", "url", "domain", "cluster_id", "published_at")
_READ_CHUNK = 1 << 16

Source = str | os.PathLike[str] | IO[bytes] | IO[str]


@dataclass(frozen=True, slots=True)
class Rejected:
    """A line that is not a valid article. ``raw_prefix`` is the line's start,
    so the rejects table shows what was wrong without storing huge lines."""

    line_no: int
    reason: str
    raw_prefix: str


class InvalidArticle(ValueError):
    """A JSON object is not a valid article; the message is the reason."""


def read_articles(
    source: Source,
    *,
    max_bytes_per_line: int = DEFAULT_MAX_BYTES_PER_LINE,
    seen_ids: set[str] | None = None,
) -> Iterator[Article | Rejected]:
    """Yield an ``Article`` or a ``Rejected`` for every non-blank line, in order.

    Streams: one line at a time is held in memory, and a line over
    ``max_bytes_per_line`` (not counting its line break) is measured and
    skipped without being held whole. ``source`` is a path or an open file,
    binary or text (an open file is left open).

    Duplicate ids are rejected, naming the line the id was first seen on. Pass
    ``seen_ids`` to share duplicate detection across several files: ids found
    in it are rejected as seen before, and every accepted id is added to it.
    """
    first_seen: dict[str, int] = {}
    with ExitStack() as stack:
        if isinstance(source, str | os.PathLike):
            file: IO[bytes] | IO[str] = stack.enter_context(open(source, "rb"))
        else:
            file = source
        for line_no, size, data, oversized in _physical_lines(file, max_bytes_per_line):
            prefix = data[: RAW_PREFIX_CHARS * 4].decode("utf-8", "replace")[:RAW_PREFIX_CHARS]
            if oversized:
                reason = f"line is {size} bytes, over the {max_bytes_per_line} limit"
                yield Rejected(line_no, reason, prefix)
                continue
            line = data[3:] if line_no == 1 and data.startswith(b"\xef\xbb\xbf") else data
            if not line.strip():
                continue
            try:
                article = _parse_line(line)
            except InvalidArticle as exc:
                yield Rejected(line_no, str(exc), prefix)
                continue
            duplicate = _duplicate_reason(article.id, first_seen, seen_ids)
            if duplicate:
                yield Rejected(line_no, duplicate, prefix)
                continue
            first_seen[article.id] = line_no
            if seen_ids is not None:
                seen_ids.add(article.id)
            yield article


def _duplicate_reason(
    article_id: str, first_seen: Mapping[str, int], seen_ids: set[str] | None
) -> str:
    if article_id in first_seen:
        return f"duplicate id {article_id!r} (first seen on line {first_seen[article_id]})"
    if seen_ids is not None and article_id in seen_ids:
        return f"duplicate id {article_id!r} (seen before this file)"
    return ""


def _physical_lines(
    file: IO[bytes] | IO[str], max_bytes: int
) -> Iterator[tuple[int, int, bytes, bool]]:
    """Yield ``(line_no, size, data, oversized)`` per line; ``size`` is in
    bytes without the line break. An oversized line's bytes are counted chunk
    by chunk and dropped: ``data`` then holds only its start."""
    line_no = 0
    while True:
        first = _as_bytes(file.readline(max_bytes + 1))
        if not first:
            return
        line_no += 1
        size, last = len(first), first
        while not last.endswith(b"\n") and len(first) > max_bytes:
            last = _as_bytes(file.readline(_READ_CHUNK))
            if not last:
                break
            size += len(last)
        tail = (first[-1:] + last)[-2:] if last is not first else first[-2:]
        size -= 2 if tail == b"\r\n" else 1 if tail.endswith(b"\n") else 0
        if size <= max_bytes:
            yield line_no, size, first[:size], False
        else:
            yield line_no, size, first[: RAW_PREFIX_CHARS * 4], True


def _as_bytes(chunk: bytes | str) -> bytes:
    return chunk.encode("utf-8", "surrogateescape") if isinstance(chunk, str) else chunk


def _parse_line(data: bytes, *, derive_domain: bool = True) -> Article:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidArticle(f"not UTF-8: {exc}") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidArticle(f"not JSON: {exc}") from None
    except RecursionError:
        raise InvalidArticle("not JSON: nested too deeply") from None
    return parse_article(obj, derive_domain=derive_domain)


def parse_article(obj: object, *, derive_domain: bool = True) -> Article:
    """Validate one decoded JSON value as an article (see the module docstring).

    With ``derive_domain`` False an absent domain stays empty (stored
    payloads: ``Article.source_domain`` derives it anyway, and the article
    then equals the one that was stored). Raises ``InvalidArticle`` whose
    message names the offending field.
    """
    if not isinstance(obj, dict):
        raise InvalidArticle(f"not a JSON object: got {_json_type(obj)}")
    article_id = _required_id(obj)
    text = _required_text(obj)
    title = _optional_str(obj, "title")
    url = _optional_str(obj, "url")
    domain = _optional_str(obj, "domain")
    if not domain and url and derive_domain:
        domain = urlsplit(url.strip()).hostname or ""
    return Article(
        id=article_id,
        text=text,
        title=title,
        url=url,
        domain=normalise_domain(domain) if domain else "",
        cluster_id=_optional_cluster_id(obj),
        published_at=_optional_datetime(obj, "published_at"),
        metadata={k: v for k, v in obj.items() if k not in KNOWN_FIELDS},
    )


def _required_id(obj: Mapping[str, Any]) -> str:
    if "id" not in obj or obj["id"] is None:
        raise InvalidArticle("missing field 'id'")
    value = obj["id"]
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise InvalidArticle(f"field 'id': must be a string or an integer, got {_json_type(value)}")
    if not value.strip():
        raise InvalidArticle("field 'id': must not be empty")
    return value


def _required_text(obj: Mapping[str, Any]) -> str:
    if "text" not in obj or obj["text"] is None:
        raise InvalidArticle("missing field 'text'")
    value = obj["text"]
    if not isinstance(value, str):
        raise InvalidArticle(f"field 'text': must be a string, got {_json_type(value)}")
    if not value.strip():
        raise InvalidArticle("field 'text': must not be empty")
    return value


def _optional_str(obj: Mapping[str, Any], name: str) -> str:
    value = obj.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidArticle(f"field {name!r}: must be a string, got {_json_type(value)}")
    return value


def _optional_cluster_id(obj: Mapping[str, Any]) -> str | None:
    value = obj.get("cluster_id")
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise InvalidArticle(
            f"field 'cluster_id': must be a string or an integer, got {_json_type(value)}"
        )
    return value or None


def _optional_datetime(obj: Mapping[str, Any], name: str) -> datetime | None:
    value = obj.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidArticle(f"field {name!r}: must be an ISO 8601 string, got {_json_type(value)}")
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise InvalidArticle(f"field {name!r}: not ISO 8601: {value[:80]!r}") from None
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def _json_type(value: object) -> str:
    match value:
        case None:
            return "null"
        case bool():
            return "boolean"
        case int():
            return "integer"
        case float():
            return "number"
        case str():
            return "string"
        case list():
            return "array"
        case dict():
            return "object"
        case _:
            return type(value).__name__


def article_to_json(article: Article) -> dict[str, Any]:
    """The input-line form of ``article``: known fields, then metadata at the
    top level. Empty optional fields are left out.

    Raises ``InvalidArticle`` when a metadata key collides with a known field,
    since the flat form could not tell them apart on the way back.
    """
    clash = sorted(set(article.metadata).intersection(KNOWN_FIELDS))
    if clash:
        raise InvalidArticle(
            f"article {article.id!r}: metadata key {clash[0]!r} collides with an article field"
        )
    record: dict[str, Any] = {"id": article.id, "text": article.text}
    if article.title:
        record["title"] = article.title
    if article.url:
        record["url"] = article.url
    if article.domain:
        record["domain"] = article.domain
    if article.cluster_id is not None:
        record["cluster_id"] = article.cluster_id
    if article.published_at is not None:
        published = article.published_at
        if published.tzinfo is None:
            published = published.replace(tzinfo=UTC)
        record["published_at"] = published.isoformat()
    record.update(article.metadata)
    return record


def article_from_row(payload: str | bytes) -> Article:
    """Rebuild an article from the JSON text of a stored payload; validated
    like an input line, since other processes may write payloads too."""
    data = payload.encode("utf-8") if isinstance(payload, str) else payload
    return _parse_line(data, derive_domain=False)


def articles_from_text(text: str) -> Iterator[Article | Rejected]:
    """``read_articles`` over an in-memory string (tests, small inputs)."""
    return read_articles(io.StringIO(text))

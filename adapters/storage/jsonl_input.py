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

Beyond the fields' own rules, a line is rejected when it is not UTF-8, not
JSON, not an object, over the size limit, or holds a value that could not be
stored and read back safely: a URL ``urlsplit`` refuses, a date out of
range, ``NaN``/``Infinity`` or a number too large for a float, an integer
of more than 4300 digits, an unpaired surrogate (``"\\ud800"``), values
nested more than 64 levels deep, or an id holding a NUL character
(``"\\u0000"``, which PostgreSQL text cannot hold). Parsing never raises
anything but ``InvalidArticleError``, whatever the input: one bad line or stored
row must never stop a batch or a daemon.

The same format is the ``payload`` column of the queue, SQLite or PostgreSQL
(``article_to_json`` / ``article_from_row``), so another process can insert
its input lines there as they are.

Longer than the house's ~450 lines on purpose: one validator per field of an
input line, each with its own precise reason.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterator, Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any
from urllib.parse import urlsplit

from tierbatch.policies.articles import Article, normalise_domain
from tierbatch.policies.errors import TierbatchError

DEFAULT_MAX_BYTES_PER_LINE = 1_000_000
# Deeper values are refused: encoding them again (to store the payload, to
# write the result's metadata) must not hit Python's recursion limit.
MAX_NESTING = 64
# Python's default limit for int <-> str conversion (sys.int_info).
MAX_INT_DIGITS = 4300
RAW_PREFIX_CHARS = 200
KNOWN_FIELDS = ("id", "text", "title", "url", "domain", "cluster_id", "published_at")
_READ_CHUNK = 1 << 16
_SURROGATE = re.compile("[\ud800-\udfff]")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89abcdefABCDEF]")
_JSON_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}:]')

Source = str | os.PathLike[str] | IO[bytes] | IO[str]


@dataclass(frozen=True, slots=True)
class Rejected:
    """A line that is not a valid article. ``raw_prefix`` is the line's start,
    so the rejects table shows what was wrong without storing huge lines."""

    line_no: int
    reason: str
    raw_prefix: str


class InvalidArticleError(TierbatchError, ValueError):
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
            except InvalidArticleError as exc:
                yield Rejected(line_no, str(exc), prefix)
                continue
            if "\x00" in article.id:
                yield Rejected(line_no, _NUL_ID, prefix)
                continue
            duplicate = _duplicate_reason(article.id, first_seen, seen_ids)
            if duplicate:
                yield Rejected(line_no, duplicate, prefix)
                continue
            first_seen[article.id] = line_no
            if seen_ids is not None:
                seen_ids.add(article.id)
            yield article


# Checked at input only: a row already stored with such an id stays readable.
_NUL_ID = "field 'id': contains a NUL character (U+0000), which PostgreSQL cannot store"


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
    """Bytes of a chunk read from a binary or text file. Undecodable bytes a
    text file kept as surrogate escapes come back as they were; any other
    lone surrogate is kept as invalid UTF-8, so the line is rejected as
    "not UTF-8" instead of raising here."""
    if isinstance(chunk, bytes):
        return chunk
    try:
        return chunk.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return chunk.encode("utf-8", "surrogatepass")


def _parse_line(data: bytes, *, derive_domain: bool = True) -> Article:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidArticleError(f"not UTF-8: {exc}") from None
    try:
        obj, checked = _decode_json(text)
    except RecursionError:
        field = _too_deep_field(text)
        if field is None:
            raise InvalidArticleError("not JSON: nested too deeply") from None
        raise InvalidArticleError(
            f"field {field!r}: nested more than {MAX_NESTING} levels deep"
        ) from None
    except ValueError as exc:  # JSONDecodeError and any other refusal of the decoder
        raise InvalidArticleError(f"not JSON: {exc}") from None
    if checked:
        return _article(obj, derive_domain)
    return parse_article(obj, derive_domain=derive_domain)


def _decode_json(text: str) -> tuple[object, bool]:
    """The decoded value, and whether it is known to hold nothing
    ``_check_storable`` would refuse.

    The common case costs one plain decode: a number that cannot be kept
    aborts it, and only then is the text decoded again with placeholders
    (``_RefusedError``) that let the check name the field. Surrogates can only
    come from ``\\uD800``-style escapes, deep nesting only from many
    brackets, so text without either needs no walk over the value."""
    try:
        value = _FAST_DECODER.decode(text)
    except json.JSONDecodeError:
        raise
    except (_UnstorableError, ValueError):  # NaN, 1e400, an integer over the digit limit
        return _PLACEHOLDER_DECODER.decode(text), False
    clean = (
        _SURROGATE_ESCAPE.search(text) is None and text.count("[") + text.count("{") <= MAX_NESTING
    )
    return value, clean


def parse_article(obj: object, *, derive_domain: bool = True) -> Article:
    """Validate one decoded JSON value as an article (see the module docstring).

    With ``derive_domain`` False an absent domain stays empty (stored
    payloads: ``Article.source_domain`` derives it anyway, and the article
    then equals the one that was stored). Raises ``InvalidArticleError`` whose
    message names the offending field, and nothing else.
    """
    if isinstance(obj, dict):
        _check_storable(obj)
    return _article(obj, derive_domain)


def _article(obj: object, derive_domain: bool) -> Article:
    if not isinstance(obj, dict):
        raise InvalidArticleError(f"not a JSON object: got {_json_type(obj)}")
    article_id = _required_id(obj)
    text = _required_text(obj)
    title = _optional_str(obj, "title")
    url, host = _optional_url(obj)
    domain = _optional_domain(obj)
    if not domain and derive_domain:
        domain = host
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


class _RefusedError:
    """What the JSON decoder puts in place of a number it must not hand on
    (the field is named once the whole object is known)."""

    __slots__ = ("problem",)

    def __init__(self, problem: str) -> None:
        self.problem = problem


class _UnstorableError(Exception):
    """Raised by the decoder hooks to leave the fast decode."""


def _finite_float(literal: str) -> float:
    value = float(literal)
    if not math.isfinite(value):
        raise _UnstorableError(literal)
    return value


def _no_constant(name: str) -> float:
    raise _UnstorableError(name)


def _parse_int(digits: str) -> int | _RefusedError:
    if len(digits.lstrip("-")) > MAX_INT_DIGITS:
        return _RefusedError(
            f"an integer of {len(digits.lstrip('-'))} digits (at most {MAX_INT_DIGITS})"
        )
    try:
        return int(digits)
    except ValueError:  # a lower sys.set_int_max_str_digits() limit
        return _RefusedError(f"an integer of {len(digits.lstrip('-'))} digits is too long")


def _parse_float(literal: str) -> float | _RefusedError:
    value = float(literal)
    if math.isfinite(value):
        return value
    return _RefusedError(f"the number {literal[:40]} is out of range")


def _parse_constant(name: str) -> _RefusedError:
    return _RefusedError(f"{name} is not a JSON number")


_FAST_DECODER = json.JSONDecoder(parse_float=_finite_float, parse_constant=_no_constant)
_PLACEHOLDER_DECODER = json.JSONDecoder(
    parse_int=_parse_int, parse_float=_parse_float, parse_constant=_parse_constant
)


def _check_storable(obj: Mapping[str, Any]) -> None:
    """Refuse, naming the top-level field, any value that could not be stored
    and read back: numbers the decoder refused, unpaired surrogates (SQLite
    and UTF-8 cannot hold them), and nesting deeper than ``MAX_NESTING``.
    Iterative, so no input can exhaust the stack here."""
    for key, value in obj.items():
        problem = _string_problem(key, "name") or _value_problem(value)
        if problem:
            raise InvalidArticleError(f"field {key!r}: {problem}")


def _value_problem(value: object) -> str:
    stack: list[tuple[object, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            problem = _string_problem(item, "value")
        elif isinstance(item, _RefusedError):
            problem = item.problem
        elif isinstance(item, float) and not math.isfinite(item):
            problem = f"{item} is not a JSON number"
        elif isinstance(item, list | dict):
            if depth >= MAX_NESTING:
                return f"nested more than {MAX_NESTING} levels deep"
            if isinstance(item, dict):
                for key, child in item.items():
                    problem = _string_problem(key, "key")
                    if problem:
                        return problem
                    stack.append((child, depth + 1))
            else:
                stack.extend((child, depth + 1) for child in item)
            continue
        else:
            continue
        if problem:
            return problem
    return ""


def storable_text_problem(text: str) -> str:
    """Why ``text`` cannot be stored as UTF-8 (an unpaired surrogate), or ""."""
    return _string_problem(text, "text")


def _string_problem(value: str, what: str) -> str:
    found = _SURROGATE.search(value)
    if found is None:
        return ""
    return f"{what} contains an unpaired surrogate (U+{ord(found.group()):04X})"


def _too_deep_field(text: str) -> str | None:
    """The top-level key whose value nests past ``MAX_NESTING``, found by
    scanning brackets outside strings (only after the decoder gave up)."""
    depth = 0
    last_string = ""
    field: str | None = None
    for match in _JSON_TOKEN.finditer(text):
        token = match.group()
        if token in "[{":
            depth += 1
            if depth > MAX_NESTING + 1:
                return field
        elif token in "]}":
            depth -= 1
        elif token == ":":
            if depth == 1:
                try:
                    field = str(json.loads(last_string))
                except ValueError:
                    field = last_string
        else:
            last_string = token
    return None


def _required_id(obj: Mapping[str, Any]) -> str:
    if "id" not in obj or obj["id"] is None:
        raise InvalidArticleError("missing field 'id'")
    value = obj["id"]
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise InvalidArticleError(
            f"field 'id': must be a string or an integer, got {_json_type(value)}"
        )
    if not value.strip():
        raise InvalidArticleError("field 'id': must not be empty")
    return value


def _required_text(obj: Mapping[str, Any]) -> str:
    if "text" not in obj or obj["text"] is None:
        raise InvalidArticleError("missing field 'text'")
    value = obj["text"]
    if not isinstance(value, str):
        raise InvalidArticleError(f"field 'text': must be a string, got {_json_type(value)}")
    if not value.strip():
        raise InvalidArticleError("field 'text': must not be empty")
    return value


def _optional_str(obj: Mapping[str, Any], name: str) -> str:
    value = obj.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidArticleError(f"field {name!r}: must be a string, got {_json_type(value)}")
    return value


def _optional_url(obj: Mapping[str, Any]) -> tuple[str, str]:
    """The url and its host (validated: ``urlsplit`` refuses some strings)."""
    url = _optional_str(obj, "url")
    if not url:
        return "", ""
    try:
        return url, urlsplit(url.strip()).hostname or ""
    except ValueError as exc:
        raise InvalidArticleError(f"field 'url': not a valid URL: {exc}") from None


def _optional_domain(obj: Mapping[str, Any]) -> str:
    domain = _optional_str(obj, "domain")
    if "://" in domain:
        try:
            urlsplit(domain.strip())
        except ValueError as exc:
            raise InvalidArticleError(f"field 'domain': not a valid host or URL: {exc}") from None
    return domain


def _optional_cluster_id(obj: Mapping[str, Any]) -> str | None:
    value = obj.get("cluster_id")
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise InvalidArticleError(
            f"field 'cluster_id': must be a string or an integer, got {_json_type(value)}"
        )
    return value or None


def _optional_datetime(obj: Mapping[str, Any], name: str) -> datetime | None:
    value = obj.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidArticleError(
            f"field {name!r}: must be an ISO 8601 string, got {_json_type(value)}"
        )
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise InvalidArticleError(f"field {name!r}: not ISO 8601: {value[:80]!r}") from None
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    try:
        return parsed.astimezone(UTC)
    except OverflowError:  # e.g. 0001-01-01T00:00+01:00 is before year 1 in UTC
        raise InvalidArticleError(f"field {name!r}: out of range in UTC: {value[:80]!r}") from None


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

    Raises ``InvalidArticleError`` when a metadata key collides with a known field,
    since the flat form could not tell them apart on the way back.
    """
    clash = sorted(set(article.metadata).intersection(KNOWN_FIELDS))
    if clash:
        raise InvalidArticleError(
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


def article_from_row(
    payload: str | bytes, *, max_bytes: int = DEFAULT_MAX_BYTES_PER_LINE
) -> Article:
    """Rebuild an article from a stored payload (JSON text, or its UTF-8
    bytes); validated like an input line, size limit included, since other
    processes may write payloads too. Raises only ``InvalidArticleError``."""
    if isinstance(payload, str):
        data = payload.encode("utf-8", "surrogatepass")  # a surrogate then fails as "not UTF-8"
    elif isinstance(payload, bytes):
        data = payload
    else:
        raise InvalidArticleError(f"payload is {type(payload).__name__}, not JSON text")
    if len(data) > max_bytes:
        raise InvalidArticleError(f"payload is {len(data)} bytes, over the {max_bytes} limit")
    return _parse_line(data, derive_domain=False)

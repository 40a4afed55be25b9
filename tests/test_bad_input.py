"""No input line and no queue row can stop ingest or leasing: a bad line is
rejected with its line number and a reason naming the field, a bad row gets
a ``failed`` (``bad_request``) result, and property tests feed arbitrary
JSON values, strings and bytes through both paths."""

from __future__ import annotations

import io
import json
import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tierbatch.adapters.storage.ingest import ingest_jsonl
from tierbatch.adapters.storage.jsonl_input import (
    InvalidArticle,
    Rejected,
    article_from_row,
    parse_article,
    read_articles,
)
from tierbatch.adapters.storage.sqlite_store import SqliteStore
from tierbatch.policies.articles import Article, normalise_domain
from tierbatch.policies.results import Failed, FailureReason

BAD_URL = b'{"id": "x", "text": "t", "url": "http://[::1/x"}'
DEEP = b"[" * 100_000 + b"]" * 100_000  # deeper than json's recursion limit

# (line, what the reason must say): one of each class of value that used to
# raise, or that could not be stored and read back.
BAD_VALUES: list[tuple[bytes, str]] = [
    (BAD_URL, "field 'url': not a valid URL"),
    (b'{"id": "u2", "text": "t", "domain": "http://[::1/x"}', "field 'domain'"),
    (
        b'{"id": "d1", "text": "t", "published_at": "0001-01-01T00:00:00+01:00"}',
        "field 'published_at': out of range",
    ),
    (
        b'{"id": "d2", "text": "t", "published_at": "9999-12-31T23:00:00-05:00"}',
        "field 'published_at': out of range",
    ),
    (b'{"id": "n1", "text": "t", "score": NaN}', "field 'score': NaN"),
    (b'{"id": "n2", "text": "t", "x": [1, -Infinity]}', "field 'x': -Infinity"),
    (b'{"id": "n3", "text": "t", "big": 1e400}', "field 'big': the number 1e400 is out of range"),
    (b'{"id": ' + b"9" * 5000 + b', "text": "t"}', "field 'id': an integer of 5000 digits"),
    (b'{"id": "i2", "text": "t", "n": -' + b"1" * 5000 + b"}", "field 'n': an integer"),
    (b'{"id": "s1", "text": "\\ud800"}', "field 'text': value contains an unpaired surrogate"),
    (b'{"id": "s2", "text": "t", "m": {"k\\udfff": 1}}', "field 'm': key contains an unpaired"),
    (b'{"id": "s3", "text": "t", "\\udc80": 1}', "name contains an unpaired surrogate"),
    (b'{"id": "deep1", "text": "t", "tree": ' + b"[" * 70 + b"]" * 70 + b"}", "field 'tree'"),
    (b'{"id": "deep2", "text": "t", "tree": ' + DEEP + b"}", "field 'tree': nested more than"),
    (DEEP, "not JSON: nested too deeply"),
    (b'{"id": "x", "text": "caf\xe9"}', "not UTF-8"),
    (b'{"id": "x", "text": "a\x00b"}', "not JSON"),  # a raw control character
]


def only_reject(line: bytes) -> Rejected:
    (item,) = read_articles(io.BytesIO(line + b"\n"))
    assert isinstance(item, Rejected), item
    return item


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    with SqliteStore(tmp_path / "q.sqlite", owner="me") as s:
        yield s


def insert_raw(
    db: str | Path, rows: list[tuple[object, object]], *, cast_text: bool = False
) -> None:
    """Insert rows as another process would, without any validation;
    ``cast_text`` stores bytes as TEXT (so invalid UTF-8 can be TEXT)."""
    value = "CAST(? AS TEXT)" if cast_text else "?"
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.executemany(f"INSERT INTO articles (id, payload) VALUES (?, {value})", rows)
    finally:
        conn.close()


# ---- the reported line and row ------------------------------------------------------


def test_bad_url_line_is_rejected_not_raised(store: SqliteStore) -> None:
    good = b'{"id": "g", "text": "t", "url": "https://www.example.com/a"}'
    report = ingest_jsonl(store, io.BytesIO(BAD_URL + b"\n" + good + b"\n"))
    assert (report.inserted, report.rejected) == (1, 1)
    (reject,) = store.rejects()
    assert reject.line_no == 1
    assert reject.reason == "field 'url': not a valid URL: Invalid IPv6 URL"
    assert [a.domain for a in store.lease(10, 60)] == ["example.com"]


def test_bad_url_row_fails_instead_of_stopping_every_lease(store: SqliteStore) -> None:
    insert_raw(store.path, [("x", BAD_URL.decode())])
    store.enqueue([Article(id="good", text="t")])
    assert [a.id for a in store.lease(10, 60)] == ["good"]
    (result,) = store.results()
    assert isinstance(result, Failed)
    assert result.article_id == "x"
    assert result.reason is FailureReason.BAD_REQUEST
    assert "field 'url': not a valid URL" in result.detail
    store.enqueue([Article(id="later", text="t")])
    assert [a.id for a in store.lease(10, 60)] == ["later"]  # leasing goes on
    assert store.counts() == {"queued": 0, "leased": 2, "done": 0, "failed": 1}


def test_an_article_with_an_unparseable_url_still_gets_a_domain_of_its_own() -> None:
    """The policy never raises on a URL: it only loses the host."""
    assert Article(id="a", text="t", url="http://[::1/x").domain == ""
    assert normalise_domain("http://[::1/x") == ""
    assert Article(id="a", text="t", domain="https://[::1/").domain == ""


def test_values_handed_to_parse_article_directly_are_checked_too() -> None:
    with pytest.raises(InvalidArticle, match="field 'f': nan is not a JSON number"):
        parse_article({"id": "x", "text": "t", "f": [float("nan")]})
    with pytest.raises(InvalidArticle, match="field 'id': value contains an unpaired"):
        parse_article({"id": "\ud800", "text": "t"})


# ---- every class of bad value -------------------------------------------------------


@pytest.mark.parametrize(("line", "reason"), BAD_VALUES, ids=[r for _, r in BAD_VALUES])
def test_every_class_of_bad_line_is_rejected_naming_the_field(line: bytes, reason: str) -> None:
    rejected = only_reject(line)
    assert rejected.line_no == 1
    assert reason in rejected.reason, rejected.reason


@pytest.mark.parametrize(("line", "reason"), BAD_VALUES, ids=[r for _, r in BAD_VALUES])
def test_every_class_of_bad_payload_raises_only_invalid_article(line: bytes, reason: str) -> None:
    for payload in (line, line.decode("utf-8", "surrogateescape")):
        with pytest.raises(InvalidArticle) as caught:
            article_from_row(payload)  # type: ignore[arg-type]
        assert reason in str(caught.value) or "not UTF-8" in str(caught.value)


def test_every_class_of_bad_row_fails_naming_the_field(store: SqliteStore) -> None:
    as_text = [(f"t{i}", line) for i, (line, _) in enumerate(BAD_VALUES)]
    as_blob = [(f"b{i}", line) for i, (line, _) in enumerate(BAD_VALUES)]
    insert_raw(store.path, as_text, cast_text=True)  # invalid UTF-8 stays TEXT
    insert_raw(store.path, as_blob)  # BLOBs, as a careless producer writes bytes
    huge = b'{"id": "huge", "text": "' + b"x" * 1_000_001 + b'"}'
    insert_raw(store.path, [("huge", huge)])
    insert_raw(store.path, [("alias", '{"id": "other", "text": "t"}')])
    store.enqueue([Article(id="good", text="t")])
    assert [a.id for a in store.lease(100, 60)] == ["good"]
    results = {r.article_id: r for r in store.results()}
    assert set(results) == {row for row, _ in as_text + as_blob} | {"huge", "alias"}
    for result in results.values():
        assert isinstance(result, Failed) and result.reason is FailureReason.BAD_REQUEST
    for i, (_, reason) in enumerate(BAD_VALUES):
        for row in (f"t{i}", f"b{i}"):
            assert reason in results[row].detail, (row, results[row].detail)
    assert f"payload is {len(huge)} bytes, over the 1000000 limit" in results["huge"].detail
    assert "payload id is 'other'" in results["alias"].detail
    assert store.counts()["failed"] == len(results)


def test_a_row_whose_id_is_null_or_a_blob_is_failed_not_leased_forever(
    store: SqliteStore,
) -> None:
    """SQLite lets another process put NULL or a BLOB in a TEXT primary key;
    such a row can carry no result, so it is set aside as failed."""
    insert_raw(store.path, [(None, '{"id": "n", "text": "t"}'), (b"\xff", b"{}")])
    insert_raw(store.path, [("\ufffd", b'{"id": "x", "text": "t"}')])
    store.enqueue([Article(id="good", text="t")])
    assert [a.id for a in store.lease(10, 60)] == ["good"]
    assert store.lease(10, 60) == []
    assert store.counts() == {"queued": 0, "leased": 1, "done": 0, "failed": 3}


def test_the_backlog_prewarm_skips_payloads_that_are_not_json_text(store: SqliteStore) -> None:
    insert_raw(store.path, [("blob", b'{"id": "blob", "text": "t", "cluster_id": "c"}')])
    insert_raw(store.path, [("broken", '{"cluster_id": "c",')])
    insert_raw(store.path, [("latin", b'{"id": "latin", "cluster_id": "caf\xe9"}')], cast_text=True)
    insert_raw(store.path, [("early", '{"cluster_id": 7, "published_at": "yesterday"}')])
    backlog = store.cluster_backlog(10)
    assert ("early", "7", None) in backlog
    assert {article_id for article_id, _, _ in backlog} <= {"early", "latin"}


# ---- property tests -----------------------------------------------------------------

_RAW = "\x00raw\x00"  # placeholder for a fragment json.dumps cannot produce
_FRAGMENTS = [
    "9" * 5000,
    "-" + "1" * 4400,
    "NaN",
    "-Infinity",
    "1e999",
    "[" * 3000 + "]" * 3000,
    "[" * 70 + "]" * 70,
    '"\\ud800"',
    '"\\u0000"',
    "12345678901234567890123456789",
    '"' + "x" * 300 + '"',
]
_any_char = st.characters(exclude_categories=())
_tricky_text = st.sampled_from(
    [
        "",
        " ",
        "x",
        "http://[::1/x",
        "http://[",
        "https://www.Example.com:8080/a",
        "ftp://x\uff0fy",
        "//host",
        "0001-01-01T00:00:00+01:00",
        "9999-12-31T23:00:00-05:00",
        "2026-11-27T10:15:00Z",
        "2026-02-30",
        "yesterday",
        "\ud800",
        "a\x00b",
        "\u2028",
    ]
) | st.text(_any_char, max_size=12)
_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | _tricky_text
    | st.just(_RAW)
)
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_tricky_text, inner, max_size=3),
    max_leaves=6,
)
_VALID = {
    "id": st.sampled_from(["a", "b", "7", "\u00e9t\u00e9"]) | st.integers(0, 9),
    "text": st.sampled_from(["t", "Body text.", "caf\u00e9"]),
    "title": st.sampled_from(["", "Headline"]),
    "url": st.sampled_from(["https://www.example.com/a", "http://news.site.org:8080/x?y=1", ""]),
    "domain": st.sampled_from(["reuters.com", "WWW.B.org", "https://blog.example.net/"]),
    "cluster_id": st.sampled_from(["c1", 17, ""]),
    "published_at": st.sampled_from(["2026-11-27T10:15:00Z", "2026-11-27", None]),
    "extra": st.sampled_from([1, [1, {"k": None}], "x", 1.5]),
}


@st.composite
def _article_like(draw: st.DrawFn, row_id: str | None = None) -> dict[str, object]:
    """An object with an article's fields: mostly valid, sometimes not."""
    record: dict[str, object] = {}
    for name, valid in _VALID.items():
        required = name in ("id", "text")
        if draw(st.integers(0, 9)) >= (9 if required else 5):
            continue  # absent
        if name == "id" and row_id is not None and draw(st.booleans()):
            record[name] = row_id
        elif draw(st.integers(0, 9)) < 7:
            record[name] = draw(valid)
        else:
            record[name] = draw(_values)
    return record


def _dump(draw: st.DrawFn, value: object) -> bytes:
    text = json.dumps(value, ensure_ascii=draw(st.booleans()), allow_nan=True)
    while json.dumps(_RAW) in text:
        text = text.replace(json.dumps(_RAW), draw(st.sampled_from(_FRAGMENTS)), 1)
    return text.encode("utf-8", "surrogatepass")  # a lone surrogate: invalid UTF-8


@st.composite
def _line(draw: st.DrawFn, row_id: str | None = None) -> bytes:
    kind = draw(st.sampled_from(["article", "article", "article", "value", "text", "bytes"]))
    if kind == "article":
        data = _dump(draw, draw(_article_like(row_id)))
    elif kind == "value":
        data = _dump(draw, draw(_values))
    elif kind == "text":
        data = draw(st.text(_any_char, max_size=40)).encode("utf-8", "surrogatepass")
    else:
        data = draw(st.binary(max_size=40))
    return data.replace(b"\n", b" ")


_SETTINGS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _is_blank(line_no: int, line: bytes) -> bool:
    if line_no == 1 and line.startswith(b"\xef\xbb\xbf"):
        line = line[3:]
    return not line.strip()


@_SETTINGS
@given(st.lists(_line(), min_size=1, max_size=8))
def test_arbitrary_input_lines_end_queued_or_rejected(lines: list[bytes]) -> None:
    data = b"\n".join(lines) + b"\n"
    with tempfile.TemporaryDirectory() as tmp, SqliteStore(Path(tmp) / "q.db", owner="o") as store:
        report = ingest_jsonl(store, io.BytesIO(data), batch_size=3)
        rejected = [r.line_no for r in store.rejects()]
        queued = {row_id for (row_id,) in store._read("SELECT id FROM articles")}
        nonblank = [n for n, line in enumerate(lines, 1) if not _is_blank(n, line)]
        assert len(rejected) == len(set(rejected)) == report.rejected
        assert set(rejected) <= set(nonblank)
        assert report.inserted == len(queued) == len(nonblank) - len(rejected)
        assert report.duplicates == 0
        for n in set(nonblank) - set(rejected):
            article_id = json.loads(lines[n - 1])["id"]
            assert str(article_id) in queued
        assert store.counts()["queued"] == len(queued)
        # What was queued can be leased back, every row of it.
        assert {a.id for a in store.lease(100, 60)} == queued
    # A text stream (undecodable bytes kept as surrogate escapes) reads the same.
    text = data.decode("utf-8", "surrogateescape")
    items = list(read_articles(io.StringIO(text, newline="\n")))
    assert len(items) == len(nonblank)


@st.composite
def _row(draw: st.DrawFn, row_id: str) -> tuple[str, object, str]:
    """(id, payload, how it is stored): TEXT, TEXT holding invalid UTF-8, or BLOB."""
    data = draw(_line(row_id))
    how = draw(st.sampled_from(["text", "raw-text", "blob"]))
    if how == "text":
        try:
            return row_id, data.decode("utf-8"), how
        except UnicodeDecodeError:
            how = "raw-text"
    return row_id, data, how


@_SETTINGS
@given(st.data())
def test_arbitrary_payload_rows_end_leased_or_failed(data: st.DataObject) -> None:
    rows = [data.draw(_row(f"r{i}")) for i in range(data.draw(st.integers(1, 8)))]
    with tempfile.TemporaryDirectory() as tmp, SqliteStore(Path(tmp) / "q.db", owner="o") as store:
        for row_id, payload, how in rows:
            insert_raw(store.path, [(row_id, payload)], cast_text=how == "raw-text")
        leased: list[str] = []
        while batch := store.lease(data.draw(st.integers(1, 4)), 60, poison_after=3):
            leased += [a.id for a in batch]
        failed = {r.article_id: r for r in store.results()}
        assert len(leased) == len(set(leased))
        assert set(leased).isdisjoint(failed)
        assert set(leased) | set(failed) == {row_id for row_id, _, _ in rows}
        for result in failed.values():
            assert isinstance(result, Failed)
            assert result.reason is FailureReason.BAD_REQUEST
            assert result.detail.startswith("invalid payload in the articles table: ")
        assert store.counts() == {
            "queued": 0,
            "leased": len(leased),
            "done": 0,
            "failed": len(failed),
        }

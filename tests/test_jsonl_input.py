"""JSONL input validation, the storage round trip of articles, and the shipped sample set."""

from __future__ import annotations

import importlib.util
import io
import json
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tierbatch.adapters.storage.jsonl_input import (
    KNOWN_FIELDS,
    InvalidArticleError,
    Rejected,
    article_from_row,
    article_to_json,
    read_articles,
)
from tierbatch.policies.articles import Article, normalise_domain

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "adapters" / "data" / "sample_articles.jsonl"
GENERATOR = ROOT / "bench" / "make_sample_data.py"


def lines(*records: Any) -> bytes:
    out = []
    for record in records:
        out.append(record if isinstance(record, bytes) else json.dumps(record).encode())
    return b"\n".join(out) + b"\n"


def read(data: bytes, **kwargs: Any) -> list[Article | Rejected]:
    return list(read_articles(io.BytesIO(data), **kwargs))


def only_reject(data: bytes, **kwargs: Any) -> Rejected:
    (item,) = read(data, **kwargs)
    assert isinstance(item, Rejected), item
    return item


def test_a_full_line_becomes_an_article_with_every_field() -> None:
    (article,) = read(
        lines(
            {
                "id": "a1",
                "text": "Body text.",
                "title": "Headline",
                "url": "https://www.Reuters.com:443/world/x",
                "cluster_id": 17,
                "published_at": "2026-11-27T10:15:00Z",
                "lang": "en",
                "tags": ["a", "b"],
            }
        )
    )
    assert isinstance(article, Article)
    assert article.id == "a1"
    assert article.text == "Body text."
    assert article.title == "Headline"
    assert article.domain == "reuters.com"  # taken from the url's host, normalised
    assert article.cluster_id == "17"
    assert article.published_at == datetime(2026, 11, 27, 10, 15, tzinfo=UTC)
    assert dict(article.metadata) == {"lang": "en", "tags": ["a", "b"]}


def test_an_integer_id_is_accepted_as_its_decimal_string() -> None:
    (article,) = read(lines({"id": 42, "text": "t"}))
    assert isinstance(article, Article)
    assert article.id == "42"


def test_a_given_domain_wins_over_the_url_host() -> None:
    (article,) = read(
        lines({"id": "x", "text": "t", "url": "https://a.com/", "domain": "WWW.B.org"})
    )
    assert isinstance(article, Article)
    assert article.domain == "b.org"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-11-27T10:15:00Z", datetime(2026, 11, 27, 10, 15, tzinfo=UTC)),
        ("2026-11-27T11:15:00+01:00", datetime(2026, 11, 27, 10, 15, tzinfo=UTC)),
        ("2026-11-27T10:15:00", datetime(2026, 11, 27, 10, 15, tzinfo=UTC)),  # naive -> UTC
        ("2026-11-27", datetime(2026, 11, 27, tzinfo=UTC)),
    ],
)
def test_published_at_is_parsed_into_utc(value: str, expected: datetime) -> None:
    (article,) = read(lines({"id": "x", "text": "t", "published_at": value}))
    assert isinstance(article, Article)
    assert article.published_at == expected
    assert article.published_at is not None
    assert article.published_at.utcoffset() == timedelta(0)


def test_null_optional_fields_mean_absent() -> None:
    record = {"id": "x", "text": "t", "title": None, "url": None, "cluster_id": None}
    (article,) = read(lines({**record, "published_at": None, "domain": None}))
    assert isinstance(article, Article)
    assert (article.title, article.url, article.domain) == ("", "", "")
    assert article.cluster_id is None
    assert article.published_at is None


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"{not json", "not JSON: "),
        (b'{"id": "x", "text": "t"', "not JSON: "),
        (b"[1, 2]", "not a JSON object: got array"),
        (b'"just a string"', "not a JSON object: got string"),
        (b'{"text": "t"}', "missing field 'id'"),
        (b'{"id": null, "text": "t"}', "missing field 'id'"),
        (b'{"id": "x"}', "missing field 'text'"),
        (b'{"id": 1.5, "text": "t"}', "field 'id': must be a string or an integer, got number"),
        (b'{"id": true, "text": "t"}', "field 'id': must be a string or an integer, got boolean"),
        (b'{"id": ["x"], "text": "t"}', "field 'id': must be a string or an integer, got array"),
        (b'{"id": "  ", "text": "t"}', "field 'id': must not be empty"),
        (b'{"id": "x", "text": 3}', "field 'text': must be a string, got integer"),
        (b'{"id": "x", "text": " \\n "}', "field 'text': must not be empty"),
        (b'{"id": "x", "text": "t", "title": 5}', "field 'title': must be a string, got integer"),
        (b'{"id": "x", "text": "t", "url": {}}', "field 'url': must be a string, got object"),
        (
            b'{"id": "x", "text": "t", "cluster_id": 2.0}',
            "field 'cluster_id': must be a string or an integer, got number",
        ),
        (
            b'{"id": "x", "text": "t", "published_at": "yesterday"}',
            "field 'published_at': not ISO 8601: 'yesterday'",
        ),
        (
            b'{"id": "x", "text": "t", "published_at": 1732700000}',
            "field 'published_at': must be an ISO 8601 string, got integer",
        ),
        (b'{"id": "x", "text": "caf\xe9"}', "not UTF-8: "),
    ],
)
def test_every_bad_line_is_rejected_with_a_reason_naming_the_problem(
    line: bytes, reason: str
) -> None:
    rejected = only_reject(line + b"\n")
    assert rejected.line_no == 1
    assert rejected.reason.startswith(reason), rejected.reason
    assert rejected.raw_prefix == line.decode("utf-8", "replace")


def test_a_duplicate_id_names_the_line_it_was_first_seen_on() -> None:
    data = lines({"id": "x", "text": "first"}, {"id": "y", "text": "t"}, {"id": "x", "text": "2"})
    first, second, dup = read(data)
    assert isinstance(first, Article)
    assert isinstance(second, Article)
    assert dup == Rejected(3, "duplicate id 'x' (first seen on line 1)", '{"id": "x", "text": "2"}')


def test_integer_and_string_ids_with_the_same_digits_are_duplicates() -> None:
    *_, dup = read(lines({"id": 7, "text": "a"}, {"id": "7", "text": "b"}))
    assert isinstance(dup, Rejected)
    assert dup.reason == "duplicate id '7' (first seen on line 1)"


def test_seen_ids_detect_duplicates_across_files_and_collect_accepted_ids() -> None:
    seen: set[str] = set()
    first = read(lines({"id": "a", "text": "t"}, {"id": "b", "text": "t"}), seen_ids=seen)
    assert all(isinstance(item, Article) for item in first)
    assert seen == {"a", "b"}
    second = read(lines({"id": "b", "text": "t"}, {"id": "c", "text": "t"}), seen_ids=seen)
    assert isinstance(second[0], Rejected)
    assert second[0].reason == "duplicate id 'b' (seen before this file)"
    assert isinstance(second[1], Article)
    assert seen == {"a", "b", "c"}


def test_a_rejected_line_does_not_reserve_its_id() -> None:
    items = read(lines({"id": "x"}, {"id": "x", "text": "t"}))
    assert isinstance(items[0], Rejected)
    assert isinstance(items[1], Article)


def test_blank_lines_are_skipped_but_still_counted() -> None:
    data = b'\n   \n\r\n{"id": "a", "text": "t"}\n\nnot json\n'
    items = read(data)
    assert len(items) == 2
    assert isinstance(items[0], Article)
    assert isinstance(items[1], Rejected)
    assert items[1].line_no == 6


def test_a_line_over_the_size_limit_is_rejected_with_its_size_without_holding_it() -> None:
    big = json.dumps({"id": "big", "text": "x" * 5000}).encode()
    data = lines({"id": "a", "text": "t"}, big, {"id": "b", "text": "t"})
    items = read(data, max_bytes_per_line=1000)
    assert [type(i).__name__ for i in items] == ["Article", "Rejected", "Article"]
    rejected = items[1]
    assert isinstance(rejected, Rejected)
    assert rejected.line_no == 2
    assert rejected.reason == f"line is {len(big)} bytes, over the 1000 limit"
    assert rejected.raw_prefix == big[:200].decode()


def test_the_limit_counts_bytes_without_the_line_break() -> None:
    exact = json.dumps({"id": "a", "text": "x" * 100}).encode()
    limit = len(exact)
    for ending in (b"\n", b"\r\n", b""):
        items = read(exact + ending, max_bytes_per_line=limit)
        assert isinstance(items[0], Article), ending
        rejected = only_reject(exact + b"x" + ending, max_bytes_per_line=limit)
        assert rejected.reason == f"line is {limit + 1} bytes, over the {limit} limit"


def test_the_limit_is_in_bytes_for_text_files_too() -> None:
    record = json.dumps({"id": "a", "text": "é" * 600}, ensure_ascii=False)
    assert len(record) < 1000 < len(record.encode())
    (rejected,) = list(read_articles(io.StringIO(record + "\n"), max_bytes_per_line=1000))
    assert isinstance(rejected, Rejected)
    assert rejected.reason == f"line is {len(record.encode())} bytes, over the 1000 limit"


def test_a_text_file_and_a_path_read_like_bytes(tmp_path: Path) -> None:
    data = lines({"id": "a", "text": "t"}, b"oops", {"id": "b", "text": "é"})
    path = tmp_path / "in.jsonl"
    path.write_bytes(data)
    from_path = list(read_articles(path))
    from_text = list(read_articles(io.StringIO(data.decode())))
    assert from_path == from_text == read(data)


def test_a_utf8_byte_order_mark_is_ignored() -> None:
    (article,) = read(b"\xef\xbb\xbf" + lines({"id": "a", "text": "t"}))
    assert isinstance(article, Article)


def test_reading_streams_line_by_line() -> None:
    data = lines(*({"id": str(i), "text": "t" * 100} for i in range(1000)))
    source = io.BytesIO(data)
    items = read_articles(source)
    first = next(items)
    assert isinstance(first, Article)
    assert source.tell() < len(data) / 100


def test_raw_prefix_is_short_for_long_bad_lines() -> None:
    line = b'{"id": 1.5, "text": "' + b"y" * 1000 + b'"}'
    rejected = only_reject(line)
    assert len(rejected.raw_prefix) == 200


def test_metadata_colliding_with_a_field_cannot_be_stored() -> None:
    article = Article(id="a", text="t", metadata={"title": "shadow"})
    with pytest.raises(InvalidArticleError, match="'title'"):
        article_to_json(article)


def test_a_stored_payload_is_validated_like_an_input_line() -> None:
    with pytest.raises(InvalidArticleError, match="missing field 'text'"):
        article_from_row('{"id": "a"}')


_chars = st.characters(blacklist_categories=("Cs",))
_word = st.text(_chars, min_size=1, max_size=30).filter(lambda s: s.strip() != "")
_json_value = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(_chars, max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
_articles = st.builds(
    Article,
    id=_word.filter(lambda w: "\x00" not in w),  # rejected at input (PostgreSQL cannot store it)
    text=_word,
    title=st.text(_chars, max_size=40),
    url=st.sampled_from(["", "https://www.example.com/a", "http://news.site.org:8080/x?y=1"]),
    domain=st.sampled_from(["", "reuters.com", "blog.example.net"]),
    cluster_id=st.none() | _word,
    published_at=st.none()
    | st.datetimes(
        min_value=datetime(1990, 1, 1),
        max_value=datetime(2100, 1, 1),
        timezones=st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30))]),
    ),
    metadata=st.dictionaries(
        st.text(_chars, min_size=1, max_size=10).filter(lambda k: k not in KNOWN_FIELDS),
        _json_value,
        max_size=4,
    ),
)


@given(_articles)
def test_an_article_survives_the_storage_round_trip(article: Article) -> None:
    payload = json.dumps(article_to_json(article), ensure_ascii=False)
    back = article_from_row(payload)
    assert back.id == article.id
    assert back.text == article.text
    assert back.title == article.title
    assert back.url == article.url
    assert back.domain == normalise_domain(article.domain)
    assert back.source_domain == article.source_domain
    assert back.cluster_id == article.cluster_id
    assert back.published_at == article.published_at
    assert dict(back.metadata) == dict(article.metadata)
    # and the stored form is itself a valid input line
    (again,) = read(payload.encode() + b"\n")
    assert again.id == back.id
    assert isinstance(again, Article)
    assert again.domain == back.source_domain


# -- the shipped sample data set ---------------------------------------------


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_sample_data", GENERATOR)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


@pytest.fixture(scope="module")
def sample() -> list[Article]:
    items = list(read_articles(SAMPLE))
    rejects = [item for item in items if isinstance(item, Rejected)]
    assert rejects == []
    return [item for item in items if isinstance(item, Article)]


def test_the_sample_set_has_the_promised_size_and_clusters(sample: list[Article]) -> None:
    assert 380 <= len(sample) <= 420
    assert SAMPLE.stat().st_size < 1_500_000
    sizes = Counter(a.cluster_id for a in sample if a.cluster_id is not None)
    assert 35 <= len(sizes) <= 45
    assert sum(1 for n in sizes.values() if n >= 25) >= 3  # a few hot clusters
    assert sum(1 for n in sizes.values() if n <= 5) >= 15  # many small ones
    assert 3 <= sum(1 for a in sample if a.cluster_id is None) <= 30


def test_sample_hot_clusters_are_recent_and_everything_is_within_two_days(
    sample: list[Article],
) -> None:
    reference = datetime(2026, 11, 27, 12, tzinfo=UTC)
    for article in sample:
        assert article.published_at is not None
        assert reference - timedelta(hours=48, minutes=1) <= article.published_at <= reference
    hottest, _ = Counter(a.cluster_id for a in sample if a.cluster_id).most_common(1)[0]
    hot = [a for a in sample if a.cluster_id == hottest]
    recent = [a for a in hot if a.published_at and reference - a.published_at < timedelta(hours=6)]
    assert len(recent) >= len(hot) * 0.7


def test_sample_domains_mix_known_outlets_and_blogs(sample: list[Article]) -> None:
    domains = Counter(a.source_domain for a in sample)
    for outlet in ("reuters.com", "apnews.com", "bbc.co.uk", "theguardian.com", "lemonde.fr"):
        assert domains[outlet] > 0, outlet
    assert all(d and not d.startswith("www.") for d in domains)
    assert any(d.count(".") >= 2 and not d.endswith(".co.uk") for d in domains)  # subdomains
    assert len(domains) >= 15
    raw = [json.loads(line) for line in SAMPLE.read_text().splitlines()]
    assert sum("domain" not in r for r in raw) > len(raw) / 2  # mostly taken from the url


def test_sample_texts_are_80_to_400_words_and_name_entities(sample: list[Article]) -> None:
    for article in sample:
        words = len(article.text.split())
        assert 80 <= words <= 400, (article.id, words)
        assert article.title
        assert article.metadata.get("synthetic") is True
    capitalised = sum(w[:1].isupper() for w in sample[0].text.split())
    assert capitalised >= 10


def test_the_generator_is_deterministic_and_matches_the_shipped_file() -> None:
    generator = load_generator()
    first = generator.make_records(generator.DEFAULT_SEED)
    assert first == generator.make_records(generator.DEFAULT_SEED)
    shipped = [json.loads(line) for line in SAMPLE.read_text().splitlines()]
    assert first == shipped

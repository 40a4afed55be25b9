"""No input line can stop ingest: a bad line is rejected with its line number
and a reason naming the field, and stored payloads are checked the same way.
What the stores do with bad rows (a ``failed`` result, ``bad_request``) and
the property tests over arbitrary lines and rows are store contract tests
(``test_store_contract``), run on SQLite and PostgreSQL."""

from __future__ import annotations

import io

import pytest
from bad_input_data import BAD_VALUES

from tierbatch.adapters.storage.jsonl_input import (
    InvalidArticleError,
    Rejected,
    article_from_row,
    parse_article,
    read_articles,
)
from tierbatch.policies.articles import Article, normalise_domain


def only_reject(line: bytes) -> Rejected:
    (item,) = read_articles(io.BytesIO(line + b"\n"))
    assert isinstance(item, Rejected), item
    return item


def test_an_article_with_an_unparseable_url_still_gets_a_domain_of_its_own() -> None:
    """The policy never raises on a URL: it only loses the host."""
    assert Article(id="a", text="t", url="http://[::1/x").domain == ""
    assert normalise_domain("http://[::1/x") == ""
    assert Article(id="a", text="t", domain="https://[::1/").domain == ""


def test_values_handed_to_parse_article_directly_are_checked_too() -> None:
    with pytest.raises(InvalidArticleError, match="field 'f': nan is not a JSON number"):
        parse_article({"id": "x", "text": "t", "f": [float("nan")]})
    with pytest.raises(InvalidArticleError, match="field 'id': value contains an unpaired"):
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
        with pytest.raises(InvalidArticleError) as caught:
            article_from_row(payload)  # type: ignore[arg-type]
        assert reason in str(caught.value) or "not UTF-8" in str(caught.value)


def test_an_id_holding_a_nul_character_is_rejected_at_input() -> None:
    """PostgreSQL text cannot hold U+0000: such an id made the whole batch's
    enqueue fail there. It is rejected at input, for both stores alike."""
    rejected = only_reject(b'{"id": "a\\u0000b", "text": "t"}')
    assert rejected.reason.startswith("field 'id': contains a NUL character")
    # In the text or metadata it is only an escape inside the payload: fine.
    (article,) = read_articles(io.BytesIO(b'{"id": "a", "text": "x\\u0000y", "m": "\\u0000"}\n'))
    assert isinstance(article, Article) and article.text == "x\x00y"

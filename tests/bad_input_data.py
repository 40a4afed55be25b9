"""Input that used to break ingest or leasing, shared by the parsing tests
(``test_bad_input``) and the store contract tests: one line of each class
of bad value, and hypothesis strategies for arbitrary lines and rows."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

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
def article_like(draw: st.DrawFn, row_id: str | None = None) -> dict[str, object]:
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
def input_line(draw: st.DrawFn, row_id: str | None = None) -> bytes:
    kind = draw(st.sampled_from(["article", "article", "article", "value", "text", "bytes"]))
    if kind == "article":
        data = _dump(draw, draw(article_like(row_id)))
    elif kind == "value":
        data = _dump(draw, draw(_values))
    elif kind == "text":
        data = draw(st.text(_any_char, max_size=40)).encode("utf-8", "surrogatepass")
    else:
        data = draw(st.binary(max_size=40))
    return data.replace(b"\n", b" ")


SETTINGS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def is_blank(line_no: int, line: bytes) -> bool:
    if line_no == 1 and line.startswith(b"\xef\xbb\xbf"):
        line = line[3:]
    return not line.strip()


@st.composite
def payload_row(
    draw: st.DrawFn, row_id: str, kinds: tuple[str, ...] = ("text", "raw-text", "blob")
) -> tuple[str, bytes, str]:
    """(id, payload, how it is stored): TEXT, TEXT holding invalid UTF-8, or
    BLOB, among ``kinds`` -- the ways another process can store a payload
    (PostgreSQL: valid UTF-8 text without NUL characters only)."""
    data = draw(input_line(row_id))
    kind = draw(st.sampled_from(kinds))
    if kind == "text":
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            if "raw-text" in kinds:
                return row_id, data, "raw-text"
            data = data.decode("utf-8", "replace").encode("utf-8")
        if "raw-text" not in kinds:
            data = data.replace(b"\x00", b"")
    return row_id, data, kind

"""Origins: what counts as 'the configured base URL' for the API key."""

from __future__ import annotations

import pytest

from tierbatch.adapters.gemini.origin import (
    ForeignOriginError,
    InvalidBaseUrlError,
    Origin,
    base_origin,
    origin_of,
    redirect_target,
    require_origin,
)


def test_origin_is_scheme_host_and_effective_port() -> None:
    assert origin_of("https://Generativelanguage.googleapis.com/v1beta/x?key=1") == Origin(
        "https", "generativelanguage.googleapis.com", 443
    )
    assert origin_of("http://127.0.0.1/a") == origin_of("http://127.0.0.1:80/b")
    assert origin_of("http://[::1]:8080/") == origin_of("http://[0:0:0:0:0:0:0:1]:8080/")
    assert str(origin_of("http://[::1]:8080/")) == "http://[::1]:8080"


@pytest.mark.parametrize(
    "other",
    [
        "http://localhost:8765/x",  # the same address, another origin
        "http://127.0.0.1:8766/x",
        "https://127.0.0.1:8765/x",
        "/relative",
        "not a url",
    ],
)
def test_anything_but_the_allowed_origin_is_refused(other: str) -> None:
    allowed = base_origin("http://127.0.0.1:8765")
    require_origin("http://127.0.0.1:8765/v1beta/models/m:generateContent", allowed)
    with pytest.raises(ForeignOriginError):
        require_origin(other, allowed)


def test_redirect_target_resolves_relative_locations() -> None:
    base = "http://127.0.0.1:8765/v1beta/models/m:generateContent"
    assert redirect_target(base, "/elsewhere?key=x") == Origin("http", "127.0.0.1", 8765)
    assert redirect_target(base, "https://evil.example/") == Origin("https", "evil.example", 443)
    assert redirect_target(base, None) is None


@pytest.mark.parametrize("url", ["127.0.0.1:8765", "ftp://host/", "", "http://"])
def test_base_url_must_be_absolute_http(url: str) -> None:
    with pytest.raises(InvalidBaseUrlError):
        base_origin(url)

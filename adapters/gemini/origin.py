"""Where the API key may go: the configured base URL's origin, and nowhere else.

Both SDK adapters refuse to follow redirects (a redirect to another host
would carry the ``x-goog-api-key`` header there: httpx and requests strip
``Authorization`` across hosts, but not custom headers), and both check every
request they send against this origin, so even a redirect followed by some
other layer cannot take the key elsewhere. An origin is scheme, host and
effective port (RFC 9110 4.3.1): ``http://localhost:80`` and
``http://127.0.0.1:80`` are different origins.
"""

from __future__ import annotations

import contextlib
import ipaddress
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

from tierbatch.policies.errors import ProviderError

_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True, slots=True)
class Origin:
    scheme: str
    host: str
    port: int | None

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        port = "" if self.port is None else f":{self.port}"
        return f"{self.scheme}://{host}{port}"


class InvalidBaseUrlError(ProviderError, ValueError):
    """The endpoint to call is not an absolute http(s) URL."""


class ForeignOriginError(ProviderError):
    """A request was about to leave for an origin other than the configured
    one; it was not sent."""

    def __init__(self, target: Origin | None, allowed: Origin) -> None:
        where = "an unreadable address" if target is None else str(target)
        super().__init__(f"refused to send a request to {where}: not the configured {allowed}")
        self.target = target
        self.allowed = allowed


def origin_of(url: str) -> Origin | None:
    """The origin of an absolute URL; None for a relative or unreadable one."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if not scheme or not host:
        return None
    with contextlib.suppress(ValueError):
        host = str(ipaddress.ip_address(host))  # one spelling per address
    return Origin(scheme, host, port if port is not None else _DEFAULT_PORTS.get(scheme))


def redirect_target(request_url: str, location: str | None) -> Origin | None:
    """The origin a ``Location`` header (possibly relative) points at."""
    if not location:
        return None
    try:
        return origin_of(urljoin(request_url, location))
    except ValueError:
        return None


def require_origin(url: str, allowed: Origin) -> None:
    """Raise ``ForeignOriginError`` unless ``url`` is on the ``allowed`` origin."""
    target = origin_of(url)
    if target != allowed:
        raise ForeignOriginError(target, allowed)


def base_origin(base_url: str) -> Origin:
    """The one origin the key may be sent to; ``InvalidBaseUrlError`` when none."""
    origin = origin_of(base_url)
    if origin is None or origin.scheme not in ("http", "https"):
        raise InvalidBaseUrlError(
            f"Gemini base URL {base_url!r} (provider.base_url or GOOGLE_GEMINI_BASE_URL): "
            "expected an http:// or https:// URL, e.g. 'http://127.0.0.1:8080'"
        )
    return origin

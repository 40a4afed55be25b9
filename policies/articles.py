"""The article: the unit of work that tierbatch schedules and never loses."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit


@dataclass(frozen=True, slots=True)
class Article:
    """One news article to extract entities from.

    ``id`` is the caller's key and the identity tierbatch deduplicates on;
    ``metadata`` carries any extra input fields through to the results
    untouched (it is excluded from equality and hashing).
    """

    id: str
    text: str
    title: str = ""
    url: str = ""
    domain: str = ""  # normalised at construction; taken from ``url`` when empty""
    cluster_id: str | None = None
    published_at: datetime | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        # Normalised once here rather than on every priority computation.
        if self.domain:
            domain = normalise_domain(self.domain)
        elif self.url:
            domain = normalise_domain(url_host(self.url))
        else:
            domain = ""
        if domain != self.domain:
            object.__setattr__(self, "domain", domain)

    @property
    def source_domain(self) -> str:
        """The normalised domain, or the host of ``url`` when no domain was
        given (``domain`` itself is normalised at construction)."""
        return self.domain


def url_host(url: str) -> str:
    """The host of ``url``, or "" when it has none or cannot be parsed.

    Never raises: ``urlsplit`` refuses some strings (an unclosed IPv6
    bracket, a netloc that changes under NFKC normalisation), and an
    article whose URL is odd must still be scheduled -- it only loses its
    domain's goodness. Input validation rejects such URLs before they get
    here (``tierbatch.adapters.storage.jsonl_input``)."""
    try:
        return urlsplit(url.strip()).hostname or ""
    except ValueError:
        return ""


def normalise_domain(domain: str) -> str:
    """Lower-case, strip a port, a trailing dot and a leading ``www.``; a
    value with a scheme is read as a URL and gives its host. Never raises
    (an unparseable URL gives "")."""
    host = domain.strip().lower().rstrip(".")
    if "://" in host:
        host = url_host(host)
    host = host.split(":", 1)[0]
    if host.startswith("www."):
        host = host[4:]
    return host

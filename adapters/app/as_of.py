"""``--as-of``: the instant hotness is computed against, for backfills.

Hotness decays with the time since a story was last seen; a replay of last
week's feed scored against the wall clock is all cold. ``newest`` takes the
newest publication time of the input instead, an ISO 8601 instant takes
that instant (a naive one is UTC, as publication times are read).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

from tierbatch.policies.articles import Article

NEWEST = "newest"


class AsOfError(ValueError):
    """``--as-of`` is neither ``newest`` nor an ISO 8601 instant."""


def parse_as_of(text: str) -> float | None:
    """Epoch seconds of an explicit instant; None for ``newest`` (the
    caller reads it from the input)."""
    if text.strip().lower() == NEWEST:
        return None
    try:
        instant = datetime.fromisoformat(text.strip())
    except ValueError:
        raise AsOfError(
            f"--as-of {text}: expected 'newest' or an ISO 8601 instant such as 2026-11-24T12:00:00Z"
        ) from None
    if instant.tzinfo is None:
        instant = instant.replace(tzinfo=UTC)
    return instant.timestamp()


def newest_published(articles: Iterable[Article]) -> float | None:
    """The newest ``published_at`` (epoch seconds), None when none is dated."""
    newest: float | None = None
    for article in articles:
        published = article.published_at
        if published is None:
            continue
        if published.tzinfo is None:
            published = published.replace(tzinfo=UTC)
        at = published.timestamp()
        if newest is None or at > newest:
            newest = at
    return newest


def describe(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

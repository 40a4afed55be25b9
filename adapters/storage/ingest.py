"""Streaming a JSONL file into a store's queue: good lines enqueued, bad lines
recorded as rejects with their line numbers."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from tierbatch.adapters.storage.jsonl_input import (
    DEFAULT_MAX_BYTES_PER_LINE,
    Rejected,
    Source,
    read_articles,
)
from tierbatch.adapters.storage.store import EnqueueReport
from tierbatch.policies.articles import Article


@dataclass(frozen=True, slots=True)
class IngestReport:
    inserted: int
    duplicates: int
    rejected: int


class QueueWriter(Protocol):
    """What ingesting needs of a store."""

    def enqueue(self, articles: Iterable[Article]) -> EnqueueReport: ...

    def add_rejects(self, source: str, rejects: Iterable[Rejected]) -> int: ...


def ingest_jsonl(
    store: QueueWriter,
    source: Source,
    *,
    source_name: str | None = None,
    max_bytes_per_line: int = DEFAULT_MAX_BYTES_PER_LINE,
    batch_size: int = 2000,
) -> IngestReport:
    """Stream a JSONL file into the queue: valid articles are enqueued, bad
    lines recorded in ``rejects`` under ``source_name`` (default: the path)."""
    name = _text(
        source_name or (os.fspath(source) if isinstance(source, str | os.PathLike) else "-")
    )
    inserted = duplicates = rejected = 0
    articles: list[Article] = []
    bad: list[Rejected] = []

    def drain() -> None:
        nonlocal inserted, duplicates, rejected
        if articles:
            report = store.enqueue(articles)
            inserted += report.inserted
            duplicates += report.duplicates
            articles.clear()
        if bad:
            rejected += store.add_rejects(name, bad)
            bad.clear()

    for item in read_articles(source, max_bytes_per_line=max_bytes_per_line):
        if isinstance(item, Rejected):
            bad.append(item)
        else:
            articles.append(item)
        if len(articles) + len(bad) >= batch_size:
            drain()
    drain()
    return IngestReport(inserted=inserted, duplicates=duplicates, rejected=rejected)


def _text(name: str) -> str:
    """``name`` as storable text: a path with undecodable bytes keeps them as
    surrogate escapes, which SQLite cannot hold."""
    try:
        data = name.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        data = name.encode("utf-8", "surrogatepass")
    return data.decode("utf-8", "replace")

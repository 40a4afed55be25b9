"""An in-memory sink for embedding and tests (file, database and callback
sinks live in ``tierbatch.adapters``)."""

from __future__ import annotations

from collections.abc import Sequence

from tierbatch.policies.results import TerminalResult


class CollectingSink:
    """Keeps every terminal result in a list, in arrival order."""

    def __init__(self) -> None:
        self.results: list[TerminalResult] = []

    def write(self, results: Sequence[TerminalResult]) -> None:
        self.results.extend(results)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    def by_id(self) -> dict[str, TerminalResult]:
        return {r.article_id: r for r in self.results}

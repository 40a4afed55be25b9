"""Sinks of the runtime's own: the counting one every result passes, and an
in-memory one for embedding and tests (file, database and callback sinks
live in ``tierbatch.adapters``)."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from tierbatch.actors.ports import Sink
from tierbatch.policies.results import TerminalResult
from tierbatch.policies.tally import ResultTally, TallySnapshot


class CountingSink:
    """The runtime's one count of terminal results (``policies.tally``):
    counts each result once, then hands it on to ``inner``.

    The composer writes to it from its own thread; ``counts`` may be read
    from any thread, at any time -- before start, while running, after a
    failure or ``stop`` -- without asking an actor. A result is counted
    when the runtime hands it over, even if ``inner.write`` then raises
    (``inner`` owns its retries)."""

    def __init__(self, inner: Sink) -> None:
        self.inner = inner
        self._lock = threading.Lock()
        self._tally = ResultTally()

    def write(self, results: Sequence[TerminalResult]) -> None:
        with self._lock:
            self._tally.record(results)
        self.inner.write(results)

    def count(self, results: Sequence[TerminalResult]) -> None:
        """Count results settled elsewhere (and written by whoever settled
        them), without handing them to ``inner``."""
        with self._lock:
            self._tally.record(results)

    def flush(self) -> None:
        self.inner.flush()

    def close(self) -> None:
        self.inner.close()

    def counts(self) -> TallySnapshot:
        with self._lock:
            return self._tally.snapshot()


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

"""``ResultsSink``: the runtime's ``Sink`` over a store, buffered and flushed
in the background."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import structlog

from tierbatch.adapters.storage.sqlite_store import SqliteStore, StorageError
from tierbatch.policies.results import TerminalResult

log = structlog.get_logger(__name__)


class ResultsSink:
    """The runtime's ``Sink`` writing into a ``SqliteStore``.

    ``write`` only appends to a buffer (it runs on the runtime's composer
    thread); the buffer is written in one transaction when it reaches
    ``flush_every`` results (on the caller's thread, so a persistent failure
    surfaces as ``StorageError`` there), and a background thread writes it
    when its oldest result is ``flush_interval_s`` old, so results reach disk
    promptly even when the stream pauses. A failed background write keeps the
    results buffered and is retried; nothing is dropped silently. ``close``
    stops the thread and flushes; it does not close the store (close the
    sink first, then the store).
    """

    def __init__(
        self, store: SqliteStore, flush_every: int = 256, flush_interval_s: float = 0.5
    ) -> None:
        self._store = store
        self._flush_every = max(1, flush_every)
        self._interval = max(0.001, flush_interval_s)
        self._buffer: list[TerminalResult] = []
        self._oldest: float | None = None
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._closed = False
        self.written = 0
        self._thread = threading.Thread(
            target=self._flush_in_background, name="tierbatch-results-flusher", daemon=True
        )
        self._thread.start()

    def write(self, results: Sequence[TerminalResult]) -> None:
        if not results:
            return
        with self._lock:
            if self._closed:
                raise StorageError("ResultsSink is closed")
            self._buffer.extend(results)
            if self._oldest is None:
                self._oldest = time.monotonic()
            full = len(self._buffer) >= self._flush_every
        self._wake.set()
        if full:
            self.flush()

    def flush(self) -> None:
        """Write everything buffered so far; raises ``StorageError`` (keeping
        the results buffered) when the database cannot be written."""
        with self._flush_lock:
            with self._lock:
                batch, self._buffer = self._buffer, []
                self._oldest = None
            if not batch:
                return
            try:
                self.written += self._store.write_results(batch)
            except StorageError:
                with self._lock:
                    self._buffer[:0] = batch
                    self._oldest = time.monotonic()
                raise

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self._stopping.set()
        self._wake.set()
        self._thread.join()
        self.flush()

    def _flush_in_background(self) -> None:
        while True:
            self._wake.wait()
            if self._stopping.is_set():
                return
            with self._lock:
                if self._oldest is None:
                    self._wake.clear()
                    continue
                due_in = self._oldest + self._interval - time.monotonic()
            if due_in > 0:
                if self._stopping.wait(due_in):
                    return
                continue
            try:
                self.flush()
            except StorageError as exc:
                log.error("results_flush_failed_will_retry", error=str(exc))
            except Exception:  # keep flushing: close() will surface the error
                log.exception("results_flush_crashed_will_retry")

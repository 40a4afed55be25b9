"""``ResultsSink``: the runtime's ``Sink`` over a store, buffered, flushed and
retried in the background."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import structlog

from tierbatch.adapters.storage.store import Store
from tierbatch.policies.errors import StorageError
from tierbatch.policies.results import TerminalResult

_log = structlog.get_logger(__name__)


class ResultsNotWrittenError(StorageError):
    """``close`` could not write the last results; ``count`` of them are
    still buffered (nothing was written twice, nothing dropped)."""

    def __init__(self, message: str, count: int) -> None:
        super().__init__(message)
        self.count = count


class ResultsSink:
    """The runtime's ``Sink`` writing into a ``Store`` (SQLite or PostgreSQL).

    The sink owns retries, so that a result is written once -- never
    twice, never dropped -- whatever the database does:

    * ``write`` buffers and never raises for a database failure (only when
      the sink is closed). When the buffer reaches ``flush_every`` results
      it is written at once on the caller's thread (the runtime's composer),
      unless a failed write is waiting for its retry.
    * A background thread writes the buffer when its oldest result is
      ``flush_interval_s`` old, so results reach disk when the stream pauses,
      and retries a failed write with exponential backoff (``retry_s`` up
      to ``max_retry_s``) -- the same results, once per attempt, in order,
      until one succeeds. Nothing else has to come along for the retry.
    * ``flush`` writes everything buffered now and raises ``StorageError``
      when it cannot (the results stay buffered and the retries go on).
    * ``close`` stops the thread and makes one last attempt; when that fails
      it raises ``ResultsNotWrittenError`` naming the database, the problem and
      how many results were not written. It does not close the store
      (close the sink first, then the store).
    """

    def __init__(
        self,
        store: Store,
        flush_every: int = 256,
        flush_interval_s: float = 0.5,
        *,
        retry_s: float = 0.05,
        max_retry_s: float = 5.0,
    ) -> None:
        self._store = store
        self._flush_every = max(1, flush_every)
        self._interval = max(0.001, flush_interval_s)
        self._retry_s = max(0.001, retry_s)
        self._max_retry_s = max(self._retry_s, max_retry_s)
        self._buffer: list[TerminalResult] = []
        self._oldest: float | None = None
        self._retry_at: float | None = None  # set while a failed write waits
        self._failures = 0  # consecutive failed writes
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

    @property
    def unwritten(self) -> int:
        """Results handed to the sink and not written yet."""
        with self._lock:
            return len(self._buffer)

    def write(self, results: Sequence[TerminalResult]) -> None:
        if not results:
            return
        with self._lock:
            if self._closed:
                raise StorageError(f"{self._store.path}: ResultsSink is closed")
            self._buffer.extend(results)
            if self._oldest is None:
                self._oldest = time.monotonic()
            full = len(self._buffer) >= self._flush_every and self._retry_at is None
        self._wake.set()
        if full:
            try:
                self._write_buffer()
            except StorageError as exc:
                self._log_failure(exc)

    def flush(self) -> None:
        """Write everything buffered so far; raises ``StorageError`` (the
        results stay buffered and are retried) when the database cannot be
        written."""
        self._write_buffer()

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self._stopping.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join()
        try:
            self._write_buffer()
        except StorageError as exc:
            count = self.unwritten
            raise ResultsNotWrittenError(
                f"{count} result(s) could not be written: {exc}", count
            ) from exc

    def _write_buffer(self) -> None:
        """Write the buffer in one transaction; on failure put it back in
        front of anything buffered meanwhile and arm the retry."""
        with self._flush_lock:
            with self._lock:
                batch, self._buffer = self._buffer, []
                oldest, self._oldest = self._oldest, None
            if not batch:
                return
            try:
                self.written += self._store.write_results(batch)
            except StorageError:
                self._keep_for_retry(batch, oldest)
                raise
            except Exception as exc:  # a bug, not the database: still never drop them
                self._keep_for_retry(batch, oldest)
                _log.exception("results write crashed", path=self._store.path)
                raise StorageError(f"{self._store.path}: results write failed: {exc!r}") from exc
            except BaseException:
                self._keep_for_retry(batch, oldest)
                raise
            with self._lock:
                self._failures = 0
                self._retry_at = None

    def _keep_for_retry(self, batch: list[TerminalResult], oldest: float | None) -> None:
        with self._lock:
            self._buffer[:0] = batch
            self._oldest = oldest
            self._failures += 1
            delay = min(self._retry_s * 2 ** min(self._failures - 1, 30), self._max_retry_s)
            self._retry_at = time.monotonic() + delay
        self._wake.set()

    def _log_failure(self, exc: StorageError) -> None:
        with self._lock:
            pending, failures = len(self._buffer), self._failures
            retry_in = None if self._retry_at is None else self._retry_at - time.monotonic()
        _log.error(
            "results write failed; retrying",
            error=str(exc),
            pending=pending,
            failures=failures,
            retry_in_s=None if retry_in is None else round(max(0.0, retry_in), 3),
        )

    def _next_due(self) -> float | None:
        """When the background thread should write next (monotonic), or None
        when the buffer is empty."""
        with self._lock:
            if not self._buffer:
                return None
            if self._retry_at is not None:
                return self._retry_at
            assert self._oldest is not None
            return self._oldest + self._interval

    def _flush_in_background(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()  # before reading the state: a later write sets it again
            due = self._next_due()
            if due is None:
                self._wake.wait()
                continue
            delay = due - time.monotonic()
            if delay > 0:
                self._wake.wait(delay)
                continue
            try:
                self._write_buffer()
            except StorageError as exc:
                self._log_failure(exc)

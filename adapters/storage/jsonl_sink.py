"""Sinks without a database: results as JSON Lines, or handed to a callable.

``JsonlSink`` writes one object per terminal result, with the keys documented
in ``tierbatch.adapters.storage.result_json`` plus ``finished_at`` (Unix epoch
seconds when the sink received it). A path is opened for appending, so a
restarted run adds to the file instead of truncating earlier results.

Both are called from one thread (the runtime's composer); they do no locking.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from typing import IO, Any

from tierbatch.adapters.storage.result_json import dumps_line, result_to_json
from tierbatch.policies.results import TerminalResult


class JsonlSink:
    """Buffers results and writes them as JSONL on ``flush``/``close``, or
    whenever ``flush_every`` results are buffered.

    ``flush`` also fsyncs when the sink opened the file itself (``fsync``
    True), so what was flushed survives a crash. An open file passed in is
    flushed but never closed: its owner closes it.
    """

    def __init__(
        self,
        target: str | os.PathLike[str] | IO[str],
        *,
        flush_every: int = 256,
        fsync: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if isinstance(target, str | os.PathLike):
            self._file: IO[str] = open(target, "a", encoding="utf-8")  # noqa: SIM115
            self._owns_file = True
        else:
            self._file = target
            self._owns_file = False
        self._fsync = fsync and self._owns_file
        self._flush_every = max(1, flush_every)
        self._clock = clock
        self._buffer: list[tuple[TerminalResult, float]] = []
        self._closed = False
        self.written = 0

    def write(self, results: Sequence[TerminalResult]) -> None:
        if self._closed:
            raise ValueError("JsonlSink is closed")
        now = self._clock()
        self._buffer.extend((result, now) for result in results)
        if len(self._buffer) >= self._flush_every:
            self.flush()

    def flush(self) -> None:
        if self._buffer:
            lines = [_line(result, at) for result, at in self._buffer]
            self._file.write("".join(lines))
            self.written += len(lines)
            self._buffer.clear()
        self._file.flush()
        if self._fsync:
            os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._closed:
            return
        try:
            self.flush()
        finally:
            self._closed = True
            if self._owns_file:
                self._file.close()


def _line(result: TerminalResult, finished_at: float) -> str:
    record: dict[str, Any] = result_to_json(result)
    record["finished_at"] = finished_at
    return dumps_line(record) + "\n"


class CallbackSink:
    """Hands every result, one at a time and in order, to ``on_result``.

    For daemons that embed the runtime and keep results themselves. The
    callback runs on the runtime's composer thread: keep it quick (put the
    result on a queue). An exception from it propagates to the runtime.
    ``on_flush`` and ``on_close``, when given, are called on flush and close.
    """

    def __init__(
        self,
        on_result: Callable[[TerminalResult], None],
        *,
        on_flush: Callable[[], None] | None = None,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self._on_result = on_result
        self._on_flush = on_flush
        self._on_close = on_close

    def write(self, results: Sequence[TerminalResult]) -> None:
        for result in results:
            self._on_result(result)

    def flush(self) -> None:
        if self._on_flush is not None:
            self._on_flush()

    def close(self) -> None:
        if self._on_close is not None:
            self._on_close()

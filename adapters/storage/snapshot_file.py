"""Durable snapshots of the model registry's state, so quota spent survives a restart.

Requests-per-day is counted by us, not reported by Gemini: a daemon that
restarts without its counters would spend a day's quota twice. The registry's
state is saved as msgpack behind a small header::

    offset  size  field
    0       8     magic  b"TBSNAP\\r\\n" (the CR LF catches text-mode mangling)
    8       2     format version, unsigned big-endian (currently 1)
    10      4     payload length in bytes, unsigned big-endian
    14      4     CRC-32 of the payload, unsigned big-endian
    18      n     msgpack payload: one map

A save never leaves a half-written file: the bytes go to a temporary file in
the same directory, are flushed and fsynced, renamed over the old snapshot,
and the directory is fsynced so the rename itself is durable.

A file that is corrupt or written by an incompatible format version is not
fatal: ``load`` moves it aside to ``<path>.corrupt-<UTC timestamp>``, logs a
warning naming the file and the problem, and returns None so the daemon
starts fresh (counting from zero is safer than refusing to run; the file is
kept for inspection).

Never put a secret in the state: it is written to disk as is.
"""

from __future__ import annotations

import contextlib
import os
import struct
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import msgpack
import structlog

log = structlog.get_logger(__name__)

MAGIC = b"TBSNAP\r\n"
FORMAT_VERSION = 1
_HEADER = struct.Struct(">8sHII")


class SnapshotError(Exception):
    """The state could not be saved (not encodable, or the disk write failed)."""


class CorruptSnapshot(ValueError):
    """A snapshot file's bytes are not a snapshot this version can read."""


class SnapshotFile:
    """One snapshot file. Safe to use from several threads (saves are serialised)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    def save(self, state: Mapping[str, Any]) -> None:
        """Write ``state`` atomically and durably. Raises ``SnapshotError``."""
        try:
            payload = msgpack.packb(dict(state), use_bin_type=True)
        except (TypeError, ValueError, OverflowError) as exc:
            raise SnapshotError(f"{self.path}: state cannot be encoded: {exc}") from exc
        data = encode(payload)
        with self._lock:
            try:
                _write_atomically(self.path, data)
            except OSError as exc:
                raise SnapshotError(f"{self.path}: cannot save: {exc}") from exc

    def load(self) -> dict[str, Any] | None:
        """The saved state, or None when there is none or it was unusable
        (then set aside, see the module docstring). I/O errors other than
        absence propagate: an unreadable disk is not a reason to start fresh."""
        with self._lock:
            try:
                data = self.path.read_bytes()
            except FileNotFoundError:
                return None
            try:
                return decode(data)
            except CorruptSnapshot as exc:
                aside = self._set_aside()
                log.warning(
                    "snapshot_unusable_starting_fresh",
                    path=str(self.path),
                    problem=str(exc),
                    moved_to=str(aside),
                )
                return None

    def set_aside(self, problem: str) -> Path:
        """Move the file aside as unusable (see the module docstring) and log
        why: for a snapshot whose bytes decode but whose content the caller
        found unusable (say, a quota state of another version)."""
        with self._lock:
            aside = self._set_aside()
        log.warning(
            "snapshot_unusable_starting_fresh",
            path=str(self.path),
            problem=problem,
            moved_to=str(aside),
        )
        return aside

    def _set_aside(self) -> Path:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        suffix = 1
        while aside.exists():
            aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{suffix}")
            suffix += 1
        os.replace(self.path, aside)
        return aside


def encode(payload: bytes) -> bytes:
    """Header plus payload."""
    return _HEADER.pack(MAGIC, FORMAT_VERSION, len(payload), zlib.crc32(payload)) + payload


def decode(data: bytes) -> dict[str, Any]:
    """Check the header and unpack the state; raises ``CorruptSnapshot``."""
    if len(data) < _HEADER.size:
        raise CorruptSnapshot(f"truncated: {len(data)} bytes, shorter than the header")
    magic, version, length, crc = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise CorruptSnapshot(f"not a tierbatch snapshot (magic {magic!r})")
    if version != FORMAT_VERSION:
        raise CorruptSnapshot(
            f"incompatible format version {version} (this tierbatch reads {FORMAT_VERSION})"
        )
    payload = data[_HEADER.size :]
    if len(payload) != length:
        raise CorruptSnapshot(f"payload is {len(payload)} bytes, header says {length}")
    if zlib.crc32(payload) != crc:
        raise CorruptSnapshot("checksum mismatch")
    try:
        state = msgpack.unpackb(payload, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types
        raise CorruptSnapshot(f"payload is not msgpack: {exc}") from None
    if not isinstance(state, dict):
        raise CorruptSnapshot(f"payload is a {type(state).__name__}, not a map")
    return state


def _write_atomically(path: Path, data: bytes) -> None:
    directory = path.parent
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as tmp:
            tmp.write(data)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    _fsync_directory(directory)


def _fsync_directory(directory: Path) -> None:
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory handles
        return
    try:
        os.fsync(dir_fd)
    except OSError:  # pragma: no cover - some file systems refuse directory fsync
        pass
    finally:
        os.close(dir_fd)


class SnapshotTarget(Protocol):
    """Where a ``DebouncedSaver`` saves: a ``SnapshotFile``, or anything that
    saves a state (raising ``SnapshotError``) and names where."""

    @property
    def path(self) -> Path: ...

    def save(self, state: Mapping[str, Any]) -> None: ...


class DebouncedSaver:
    """Saves a snapshot at most every ``min_interval_s``, from its own thread.

    ``mark_dirty`` is cheap (sets a flag), so the registry can call it on
    every quota change. The first change after a quiet period is saved at
    once, later ones are coalesced until the interval has passed; an
    ``urgent`` one (a cooldown began) is saved at once.
    ``get_state`` is called on the saver's thread: it must be safe to call
    from there (for a pykka actor, ask the actor for its state). A failed
    save is logged and retried after the interval. ``close`` saves once more
    (raising if that fails) and joins the thread.
    """

    def __init__(
        self,
        snapshot_file: SnapshotTarget,
        get_state: Callable[[], Mapping[str, Any]],
        min_interval_s: float = 5.0,
    ) -> None:
        self._file = snapshot_file
        self._get_state = get_state
        self._interval = min_interval_s
        self._dirty = threading.Event()
        self._stopping = threading.Event()
        self._nudge = threading.Event()
        self._urgent = False
        self._last_save = float("-inf")
        self._closed = False
        self.saves = 0
        self._thread = threading.Thread(
            target=self._run, name="tierbatch-snapshot-saver", daemon=True
        )
        self._thread.start()

    def mark_dirty(self, *, urgent: bool = False) -> None:
        if urgent:
            self._urgent = True
            self._nudge.set()
        self._dirty.set()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stopping.set()
        self._nudge.set()
        self._dirty.set()
        self._thread.join()
        self._save()

    def __enter__(self) -> DebouncedSaver:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _run(self) -> None:
        while True:
            self._dirty.wait()
            if self._stopping.is_set():
                return
            wait = self._last_save + self._interval - time.monotonic()
            if wait > 0 and not self._urgent:
                self._nudge.wait(wait)
                self._nudge.clear()
                if self._stopping.is_set():
                    return
                continue
            self._urgent = False
            self._dirty.clear()
            try:
                self._save()
            except Exception:
                log.exception("snapshot_save_failed_will_retry", path=str(self._file.path))
                self._last_save = time.monotonic()
                self._dirty.set()

    def _save(self) -> None:
        self._file.save(self._get_state())
        self._last_save = time.monotonic()
        self.saves += 1

"""The daemon's quota snapshot file: where it lives, reading it (bytes that
are not a snapshot are set aside), and the observer that has it saved after
every registry decision. The ``Runtime`` restores the content, once."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tierbatch.adapters.storage.open_store import file_stem, is_postgres_url
from tierbatch.adapters.storage.snapshot_file import DebouncedSaver, SnapshotFile, decode
from tierbatch.policies.errors import SnapshotError
from tierbatch.policies.outcomes import CallOutcome
from tierbatch.policies.quota import Grant

SNAPSHOT_SUFFIX = ".quota.msgpack"


def default_snapshot_path(db_path: str | os.PathLike[str]) -> Path:
    """``<db>.quota.msgpack``, next to an SQLite database; for a PostgreSQL
    URL, ``postgresql-HOST-PORT-DBNAME.quota.msgpack`` in the current folder."""
    if is_postgres_url(db_path):
        return Path(f"{file_stem(db_path)}{SNAPSHOT_SUFFIX}")
    return Path(f"{os.fspath(db_path)}{SNAPSHOT_SUFFIX}")


@dataclass(frozen=True, slots=True)
class QuotaStateLoad:
    """The restored quota state (None: start fresh) and, when the snapshot
    could not be used, why and where it was moved."""

    state: dict[str, Any] | None
    problem: str | None = None
    moved_to: Path | None = None


def load_quota_state(snapshot: SnapshotFile) -> QuotaStateLoad:
    """Read the snapshot's bytes. Bytes that are not a snapshot are set aside
    with the reason logged (counting from zero is safer than not running);
    whether the registry can use the content is the ``Runtime``'s to say
    (it restores it, once: see ``set_aside``)."""
    try:
        data = snapshot.path.read_bytes()
    except FileNotFoundError:
        return QuotaStateLoad(None)
    try:
        return QuotaStateLoad(decode(data))
    except SnapshotError as exc:
        return set_aside(snapshot, exc)


def set_aside(snapshot: SnapshotFile, problem: SnapshotError) -> QuotaStateLoad:
    """Move an unusable snapshot aside: counting starts fresh."""
    return QuotaStateLoad(None, str(problem), snapshot.set_aside(str(problem)))


class SnapshotTrigger:
    """Marks the debounced saver dirty on every registry decision."""

    def __init__(self) -> None:
        self.saver: DebouncedSaver | None = None

    def _dirty(self) -> None:
        saver = self.saver
        if saver is not None:
            saver.mark_dirty()

    def on_grant(self, grant: Grant, tier_rank: int) -> None:
        self._dirty()

    def on_sent(self, grant_id: int, model: str, at: float) -> None:
        self._dirty()

    def on_outcome(self, model: str, outcome: CallOutcome, at: float) -> None:
        self._dirty()

    def on_cooldown(self, model: str, start: float, until: float, reason: str) -> None:
        self._dirty()

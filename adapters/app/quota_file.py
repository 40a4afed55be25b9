"""The daemon's quota snapshot file: where it lives, and reading it (a file
that is not a snapshot, or one the quota policy cannot restore, is set
aside). The quota's owner (``quota_link``) restores from it when the
database holds no quota state yet, and saves to it while it owns the quota."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tierbatch.adapters.storage.open_store import file_stem, is_postgres_url
from tierbatch.adapters.storage.snapshot_file import SnapshotFile, decode
from tierbatch.policies.config import Config
from tierbatch.policies.errors import SnapshotError
from tierbatch.policies.quota import QuotaPolicy

SNAPSHOT_SUFFIX = ".quota.msgpack"


def default_snapshot_path(db_path: str | os.PathLike[str]) -> Path:
    """``<db>.quota.msgpack``, next to an SQLite database; for a PostgreSQL
    URL, ``postgresql-HOST-PORT-DBNAME.quota.msgpack`` in the current folder."""
    if is_postgres_url(db_path):
        return Path(f"{file_stem(db_path)}{SNAPSHOT_SUFFIX}")
    return Path(f"{os.fspath(db_path)}{SNAPSHOT_SUFFIX}")


@dataclass(frozen=True, slots=True)
class QuotaStateLoad:
    """The restored quota state (None: start fresh) and, when a snapshot
    could not be used, why and where it was moved (None: a database row,
    which the next save replaces)."""

    state: dict[str, Any] | None
    problem: str | None = None
    moved_to: Path | None = None
    source: str = "fresh"  # "database", "file", "fresh", or "owner" (a follower's)


def load_quota_state(snapshot: SnapshotFile, config: Config) -> QuotaStateLoad:
    """Read the snapshot file and check that the registry can restore it.

    Bytes that are not a snapshot, and a snapshot the quota policy refuses
    (another version, inconsistent content), are both set aside with the
    reason logged: counting from zero is safer than not running.
    """
    try:
        data = snapshot.path.read_bytes()
    except FileNotFoundError:
        return QuotaStateLoad(None)
    try:
        state = decode(data)
        QuotaPolicy.restore(config.models, config.quota, state)
    except SnapshotError as exc:
        return set_aside(snapshot, exc)
    return QuotaStateLoad(state, source="file")


def set_aside(snapshot: SnapshotFile, problem: SnapshotError) -> QuotaStateLoad:
    """Move an unusable snapshot aside: counting starts fresh."""
    return QuotaStateLoad(None, str(problem), snapshot.set_aside(str(problem)))

"""The tier thresholds a running daemon uses, for ``tierbatch status``.

A tier with a ``share`` has no threshold in the config: it moves with the
window of recent priorities inside the running process. The daemon writes
what it uses now to a small JSON file beside the database
(``<db>.tiers.json``), replaced atomically, and ``status`` reads it: a
read-only look, like the quota snapshot. Nothing depends on the file for
correctness; a missing or unreadable one only means status cannot say.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tierbatch.adapters.storage.open_store import file_stem, is_postgres_url
from tierbatch.policies.tier_assignment import TierSplit

TIERS_SUFFIX = ".tiers.json"
SNAPSHOT_SUFFIX = ".quota.msgpack"  # as adapters.app.daemon names the quota snapshot
FORMAT = 1


def tiers_path_beside(snapshot: str | os.PathLike[str]) -> Path:
    """The tiers file kept with a quota snapshot: ``X.quota.msgpack`` ->
    ``X.tiers.json`` (any other name gets ``.tiers.json`` appended), so
    ``--snapshot`` places both, and the default is ``<db>.tiers.json``."""
    path = Path(snapshot)
    name = path.name
    stem = name[: -len(SNAPSHOT_SUFFIX)] if name.endswith(SNAPSHOT_SUFFIX) else name
    return path.with_name(stem + TIERS_SUFFIX)


def default_tiers_path(db_path: str | os.PathLike[str]) -> Path:
    """``<db>.tiers.json`` beside an SQLite database; for a PostgreSQL URL,
    ``postgresql-HOST-PORT-DBNAME.tiers.json`` in the current folder."""
    if is_postgres_url(db_path):
        return Path(f"{file_stem(db_path)}{TIERS_SUFFIX}")
    return Path(f"{os.fspath(db_path)}{TIERS_SUFFIX}")


@dataclass(frozen=True, slots=True)
class SavedThreshold:
    tier: str
    share: float | None
    min_priority: float


@dataclass(frozen=True, slots=True)
class SavedTiers:
    """What a daemon saved: thresholds highest tier first, the number of
    priorities the share window held, the ``as_of`` instant (None: the wall
    clock) and when it was saved (epoch seconds)."""

    tiers: tuple[SavedThreshold, ...]
    window: int
    as_of: float | None
    saved_at: float


def encode(split: TierSplit, *, as_of: float | None, saved_at: float) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "saved_at": saved_at,
        "as_of": as_of,
        "window": split.window,
        "tiers": [
            {"tier": t.tier, "share": t.share, "min_priority": t.min_priority} for t in split.tiers
        ],
    }


def write_tiers(path: Path, split: TierSplit, *, as_of: float | None, saved_at: float) -> None:
    """Replace ``path`` atomically (a reader sees the old file or the new)."""
    data = json.dumps(encode(split, as_of=as_of, saved_at=saved_at), indent=1).encode()
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent or ".")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class TiersFileError(ValueError):
    """The file is not a tiers file this version can read."""


def read_tiers(path: Path) -> SavedTiers | None:
    """The saved thresholds, or None when no daemon saved any. Raises
    ``OSError`` when unreadable and ``TiersFileError`` when malformed."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        data = json.loads(raw)
        if data.get("format") != FORMAT:
            raise TiersFileError(f"format {data.get('format')!r}, expected {FORMAT}")
        tiers = tuple(
            SavedThreshold(
                str(t["tier"]),
                None if t["share"] is None else float(t["share"]),
                float(t["min_priority"]),
            )
            for t in data["tiers"]
        )
        as_of = data.get("as_of")
        return SavedTiers(
            tiers,
            int(data["window"]),
            None if as_of is None else float(as_of),
            float(data["saved_at"]),
        )
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        if isinstance(exc, TiersFileError):
            raise
        raise TiersFileError(f"not a tiers file ({exc})") from None

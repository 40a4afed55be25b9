"""Where the registry actor keeps its quota state, and how a restarted one
reads it back.

The state is saved to the cluster's key-value store (the GCS, which
outlives any worker node) and, when the creator gave a path, to a snapshot
file on the actor's node. It is the registry's quota snapshot with two keys
of the actor's own: when it was saved (wall time) and the daemons it served
then -- a restarted actor holds its calls until those have handed their
grants over (``hand_over``), and knows which of their reports its state
already counts.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack
import structlog

from tierbatch.adapters.ray.wire import NAMESPACE, kv_key
from tierbatch.adapters.storage.snapshot_file import SnapshotFile
from tierbatch.policies.config import Config
from tierbatch.policies.errors import SnapshotError
from tierbatch.policies.outcomes import CallOutcome
from tierbatch.policies.quota import Grant, QuotaPolicy

__all__ = ["GRANT_ID_GAP", "Dirty", "Restored", "kv_get", "restore", "save"]

_log = structlog.get_logger(__name__)

# After a restart, new grant ids start this far past the snapshot's, so a
# report of a grant made after the last save cannot settle a new grant.
GRANT_ID_GAP = 1_000_000_000
SAVED_AT = "ray_saved_at"
CLIENTS = "ray_clients"


@dataclass(frozen=True, slots=True)
class Restored:
    """A policy taken over from a saved state: ``source`` (``cluster`` or
    ``file``), the state itself (for the daily budget), when it was saved
    (wall time; None: not known) and the clients then."""

    policy: QuotaPolicy
    source: str
    state: Mapping[str, Any]
    saved_at: float | None
    clients: tuple[str, ...]


class Dirty:
    """A registry observer that only notes that the state changed, so the
    actor saves it (on the registry's thread; the actor's loop waits on
    ``flag``)."""

    def __init__(self) -> None:
        self.flag: asyncio.Event | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.early = True  # a change before the loop was known: save once it is

    def _set(self) -> None:
        loop, flag = self.loop, self.flag
        if loop is None or flag is None:
            self.early = True
            return
        with contextlib.suppress(RuntimeError):  # the loop closed: nothing to save any more
            loop.call_soon_threadsafe(flag.set)

    def on_grant(self, grant: Grant, tier_rank: int) -> None:
        self._set()

    def on_sent(self, grant_id: int, model: str, at: float) -> None:
        pass

    def on_outcome(self, model: str, outcome: CallOutcome, at: float) -> None:
        self._set()

    def on_cooldown(self, model: str, start: float, until: float, reason: str) -> None:
        self._set()


def restore(
    project: str, config: Config, file: SnapshotFile | None, *, use_kv: bool, wall_offset: float
) -> Restored | None:
    """The quota policy from the first usable saved state (None: none).
    It takes over from its predecessor: grants in flight are set aside for
    the daemons' hand-over to claim, ids jump ahead (``GRANT_ID_GAP``)."""
    for source, state in _saved_states(project, file, use_kv=use_kv):
        try:
            data = dict(state)
            data["next_grant_id"] = int(data.get("next_grant_id", 1)) + GRANT_ID_GAP
            policy = QuotaPolicy.restore(config.models, config.quota, data, wall_offset=wall_offset)
            saved_at = data.get(SAVED_AT)
            saved_at = None if saved_at is None else float(saved_at)
            clients = tuple(str(c) for c in data.get(CLIENTS, ()))
        except (SnapshotError, TypeError, ValueError) as exc:
            _log.warning("quota state unusable; ignored", source=source, error=str(exc))
            continue
        # (first_grant_id 0: the ids jumped ahead already.)
        policy.take_over(
            saved_at=None if saved_at is None else saved_at - wall_offset, first_grant_id=0
        )
        policy.clear_unavailable()
        return Restored(policy, source, state, saved_at, clients)
    return None


def save(
    project: str,
    snapshot: Mapping[str, Any],
    *,
    saved_at: float,
    clients: Sequence[str],
    use_kv: bool,
) -> dict[str, Any]:
    """Save ``snapshot`` (taken at or after ``saved_at``) to the cluster
    when ``use_kv``; returns what was saved, for the snapshot file."""
    state = dict(snapshot)
    state[SAVED_AT] = saved_at
    state[CLIENTS] = sorted(clients)
    if use_kv:
        try:
            _kv_put(kv_key(project), msgpack.packb(state, use_bin_type=True))
        except Exception as exc:
            _log.error("could not save the quota state to the cluster", error=str(exc))
    return state


def _saved_states(
    project: str, file: SnapshotFile | None, *, use_kv: bool
) -> list[tuple[str, Mapping[str, Any]]]:
    found: list[tuple[str, Mapping[str, Any]]] = []
    if use_kv:
        with contextlib.suppress(Exception):
            raw = kv_get(kv_key(project))
            if raw:
                found.append(("cluster", msgpack.unpackb(raw, raw=False)))
    if file is not None:
        state = file.load()
        if state is not None:
            found.append(("file", state))
    return found


def kv_get(key: bytes) -> bytes | None:
    from ray.experimental import internal_kv

    value: bytes | None = internal_kv._internal_kv_get(key, namespace=NAMESPACE)
    return value


def _kv_put(key: bytes, value: bytes) -> None:
    from ray.experimental import internal_kv

    internal_kv._internal_kv_put(key, value, overwrite=True, namespace=NAMESPACE)

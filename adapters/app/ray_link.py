"""RayLink: what the daemon's loop asks of its quota link, for ``--ray``.

With ``--ray`` the quota lives in the project's registry actor on Ray, so
there is nothing to elect and the actor saves its own state. What is left
for the link is the daemon's row in the queue's ``daemons`` table: without
it ``tierbatch status`` would not know the daemon exists. It heartbeats
the row every ``lease_s / 3`` (live until ``lease_s`` after the last beat,
so a killed daemon's row goes stale within one lease), with role ``ray``,
the registry that serves it as its address, its backlog, its waiting
requests and its grants; ``close`` deletes the row and leaves the registry.
"""

from __future__ import annotations

import threading
from typing import Any

import structlog

from tierbatch.adapters.app.daemon_beat import DaemonBeat
from tierbatch.adapters.app.quota_file import QuotaStateLoad
from tierbatch.adapters.storage.quota_lease import ROLE_RAY
from tierbatch.adapters.storage.store import Store
from tierbatch.policies.errors import StorageError

__all__ = ["RayLink"]

_log = structlog.get_logger(__name__)


class RayLink:
    """``handle`` is the daemon's ``RemoteRegistryRef`` (its ``granted``,
    ``waiting`` and ``where`` fill the row); ``backlog`` is set by the
    daemon's loop."""

    role = ROLE_RAY
    epoch = 0

    def __init__(self, handle: Any, store: Store, lease_s: float) -> None:
        self._handle = handle
        self._lease_s = lease_s
        self._beat = DaemonBeat(store, ROLE_RAY, lease_s)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.address: str = handle.where
        self.backlog = 0
        self.quota_load = QuotaStateLoad(None)

    def start(self) -> None:
        """The first beat now (``status`` sees the daemon once it is ready),
        then one every ``lease_s / 3`` on a thread of its own."""
        self._guarded_beat()
        self._thread = threading.Thread(target=self._run, name="tierbatch-ray-link", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10.0)
        try:
            self._beat.forget()
        except StorageError as exc:
            _log.error("could not forget this daemon's row; it expires", error=str(exc))
        self._handle.stop()

    def _run(self) -> None:
        while not self._stop.wait(self._lease_s / 3):
            self._guarded_beat()

    def _guarded_beat(self) -> None:
        try:
            self._beat.beat(
                role=ROLE_RAY,
                address=self.address,
                backlog=self.backlog,
                waiting=self._handle.waiting,
                granted=self._handle.granted,
            )
        except StorageError as exc:
            _log.warning("daemon heartbeat failed; retrying", error=str(exc))

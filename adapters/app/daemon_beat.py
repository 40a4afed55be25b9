"""A daemon's row in the queue's ``daemons`` table, for ``tierbatch status``.

Every daemon on a queue heartbeats one row -- its role in the shared quota,
where that quota is served, the articles it holds, its requests waiting for
quota, the grants it received and their rate lately -- however it reaches
its quota: through the database-elected owner (``quota_link``) or a
registry actor on Ray (``ray_link``). One writer of the row for both, so
the two ways show up in ``status`` alike.
"""

from __future__ import annotations

import time
from dataclasses import replace

from tierbatch.adapters.storage.quota_lease import DaemonInfo
from tierbatch.adapters.storage.store import Store

__all__ = ["DaemonBeat"]


class DaemonBeat:
    """Writes this daemon's row; the grant rate is the grants since the
    previous beat over the time since it (one caller at a time)."""

    def __init__(self, store: Store, role: str, lease_s: float) -> None:
        self._store = store
        self._lease_s = lease_s
        self._info = DaemonInfo.of_this_process(store.owner, role, time.time())
        self._last = (time.monotonic(), 0)

    def beat(
        self, *, role: str, address: str | None, backlog: int, waiting: int, granted: int
    ) -> None:
        """Record this daemon as live for one more lease. Raises
        ``StorageError`` when the database cannot be written."""
        now = time.monotonic()
        then, before = self._last
        rate = (granted - before) / (now - then) if now > then else 0.0
        self._last = (now, granted)
        info = replace(
            self._info,
            role=role,
            address=address,
            backlog=backlog,
            waiting=waiting,
            grants=granted,
            grant_rate=rate,
        )
        self._store.heartbeat(info, self._lease_s)

    def forget(self) -> None:
        """This daemon stops: its row goes (``StorageError`` when it cannot)."""
        self._store.forget_daemon()

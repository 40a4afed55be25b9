"""The shared quota's rows in the queue database: who owns the quota now,
the owner's last quota snapshot, and every live daemon.

Several daemons on one queue spend one provider quota. One of them at a time
*owns* it: it runs the registry and serves grants to the others (see
``tierbatch.adapters.app.quota_link``). The database elects that owner and
keeps what a successor needs::

    CREATE TABLE quota_owner (         -- one row (id = 1)
        id            INTEGER PRIMARY KEY CHECK (id = 1),
        owner         TEXT NOT NULL,    -- the owning daemon (its lease owner id)
        address       TEXT NOT NULL,    -- where it serves grants: HOST:PORT
        lease_expires REAL NOT NULL,    -- epoch seconds; renewed every lease/3
        epoch         BIGINT NOT NULL,  -- +1 at every change of owner
        updated_at    REAL NOT NULL);
    CREATE TABLE quota_state (         -- one row (id = 1): the owner's last snapshot
        id INTEGER PRIMARY KEY CHECK (id = 1),
        owner TEXT NOT NULL, epoch BIGINT NOT NULL,
        saved_at REAL NOT NULL,         -- the saving daemon's wall clock
        state BLOB NOT NULL);           -- a snapshot file's bytes (header + msgpack)
    CREATE TABLE daemons (             -- one row per daemon, for tierbatch status
        owner TEXT PRIMARY KEY, host TEXT, pid INTEGER,
        role TEXT,                      -- 'owner' | 'follower' | 'ray'
        address TEXT,                   -- an owner's HOST:PORT; a 'ray' daemon's registry
        started_at REAL, heartbeat_at REAL,
        expires_at REAL,                -- live until then (heartbeat + lease)
        backlog INTEGER, waiting INTEGER,   -- articles it holds; its requests waiting for quota
        grants BIGINT, grant_rate REAL);    -- grants it received; per second lately

(``REAL`` is ``DOUBLE PRECISION`` and ``BLOB`` ``BYTEA`` in PostgreSQL.)

A daemon started with ``--ray`` takes its quota from a registry actor on
Ray, not from an elected owner: it heartbeats its row all the same, with
role ``'ray'`` and the registry that serves it as its address,
``ray://CLUSTER/NAMESPACE/ACTOR`` (``RayRegistryAddress``), so
``tierbatch status`` shows every daemon of the queue and where its quota
comes from, whichever way they share it.

The rules, each one statement or one transaction, so they hold across
processes and machines:

* **Claim** (``claim_quota``): take the row only when its lease has expired
  (or there is none); the epoch goes up by one. Two daemons claiming at once
  cannot both win: the conditional update serialises on the row.
* **Take over** (``take_over_quota``): the owner's process is known to be
  gone (it ran on this host and its pid is free): take the row at once,
  only while it still names that owner in that epoch -- a daemon restarted
  after a crash does not wait out its predecessor's lease.
* **Renew** (``renew_quota``) and **release** (``release_quota``, on a
  graceful stop: the lease expires at once) only by the owner of that epoch.
* **Save** (``save_quota_state``): the snapshot row is written only by the
  current owner of that epoch, checked inside the write transaction with the
  owner row locked, so a stalled former owner can never overwrite its
  successor's snapshot.
* Lease deadlines are on the store's clock (PostgreSQL: the server's).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

__all__ = [
    "ROLE_FOLLOWER",
    "ROLE_OWNER",
    "ROLE_RAY",
    "DaemonInfo",
    "QuotaLeaseStore",
    "QuotaOwner",
    "RayRegistryAddress",
    "SavedQuota",
    "quota_schema",
    "read_sharing",
]

ROLE_OWNER = "owner"
ROLE_FOLLOWER = "follower"
ROLE_RAY = "ray"  # the quota comes from a registry actor on Ray (``daemon --ray``)
_RAY_SCHEME = "ray://"
# Rows of daemons that stopped heartbeating this long ago are deleted.
_FORGET_AFTER_S = 3600.0


def quota_schema(*, real: str, bigint: str, blob: str) -> list[str]:
    """The three tables in a dialect's types."""
    return [
        f"""CREATE TABLE IF NOT EXISTS quota_owner (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        owner TEXT NOT NULL,
        address TEXT NOT NULL,
        lease_expires {real} NOT NULL,
        epoch {bigint} NOT NULL,
        updated_at {real} NOT NULL
    )""",
        f"""CREATE TABLE IF NOT EXISTS quota_state (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        owner TEXT NOT NULL,
        epoch {bigint} NOT NULL,
        saved_at {real} NOT NULL,
        state {blob} NOT NULL
    )""",
        f"""CREATE TABLE IF NOT EXISTS daemons (
        owner TEXT PRIMARY KEY,
        host TEXT NOT NULL,
        pid INTEGER NOT NULL,
        role TEXT NOT NULL,
        address TEXT,
        started_at {real} NOT NULL,
        heartbeat_at {real} NOT NULL,
        expires_at {real} NOT NULL,
        backlog INTEGER NOT NULL DEFAULT 0,
        waiting INTEGER NOT NULL DEFAULT 0,
        grants {bigint} NOT NULL DEFAULT 0,
        grant_rate {real} NOT NULL DEFAULT 0
    )""",
    ]


@dataclass(frozen=True, slots=True)
class QuotaOwner:
    """The ``quota_owner`` row as read at ``read_at`` (the store's clock)."""

    owner: str
    address: str
    lease_expires: float
    epoch: int
    read_at: float

    @property
    def live(self) -> bool:
        return self.lease_expires >= self.read_at


@dataclass(frozen=True, slots=True)
class SavedQuota:
    """The ``quota_state`` row: ``state`` is a snapshot file's bytes."""

    owner: str
    epoch: int
    saved_at: float
    state: bytes


@dataclass(frozen=True, slots=True)
class RayRegistryAddress:
    """Which registry actor serves a ``'ray'`` daemon: the Ray cluster
    (its GCS address, HOST:PORT), the actor's namespace and name."""

    cluster: str
    namespace: str
    actor: str

    def __str__(self) -> str:
        return f"{_RAY_SCHEME}{self.cluster}/{self.namespace}/{self.actor}"

    @classmethod
    def parse(cls, text: str) -> RayRegistryAddress | None:
        """The address in a ``'ray'`` row; None for anything else."""
        if not text.startswith(_RAY_SCHEME):
            return None
        parts = text.removeprefix(_RAY_SCHEME).split("/")
        if len(parts) != 3 or not all(parts[1:]):
            return None
        return cls(*parts)


@dataclass(frozen=True, slots=True)
class DaemonInfo:
    """One daemon's ``daemons`` row. ``backlog``: articles it holds;
    ``waiting``: its requests waiting for quota; ``grants``: grants it
    received since it started, ``grant_rate`` per second lately."""

    owner: str
    host: str
    pid: int
    role: str
    address: str | None
    started_at: float
    heartbeat_at: float = 0.0
    expires_at: float = 0.0
    backlog: int = 0
    waiting: int = 0
    grants: int = 0
    grant_rate: float = 0.0

    @classmethod
    def of_this_process(cls, owner: str, role: str, started_at: float) -> DaemonInfo:
        return cls(owner, socket.gethostname(), os.getpid(), role, None, started_at)


_OWNER_COLUMNS = "owner, address, lease_expires, epoch"
_DAEMON_COLUMNS = (
    "owner, host, pid, role, address, started_at, heartbeat_at, expires_at,"
    " backlog, waiting, grants, grant_rate"
)
CLAIM = """INSERT INTO quota_owner (id, owner, address, lease_expires, epoch, updated_at)
    VALUES (1, ?, ?, ?, 1, ?)
    ON CONFLICT (id) DO UPDATE SET owner = excluded.owner, address = excluded.address,
        lease_expires = excluded.lease_expires, epoch = quota_owner.epoch + 1,
        updated_at = excluded.updated_at
    WHERE quota_owner.lease_expires < excluded.updated_at"""
TAKE_OVER = """UPDATE quota_owner SET owner = ?, address = ?, lease_expires = ?, epoch = epoch + 1,
        updated_at = ?
    WHERE id = 1 AND owner = ? AND epoch = ?"""
RENEW_QUOTA = """UPDATE quota_owner SET lease_expires = ?, updated_at = ?
    WHERE id = 1 AND owner = ? AND epoch = ?"""
OWNER_SQL = f"SELECT {_OWNER_COLUMNS} FROM quota_owner WHERE id = 1"
SAVE_STATE = """INSERT INTO quota_state (id, owner, epoch, saved_at, state) VALUES (1, ?, ?, ?, ?)
    ON CONFLICT (id) DO UPDATE SET owner = excluded.owner, epoch = excluded.epoch,
        saved_at = excluded.saved_at, state = excluded.state"""
STATE_SQL = "SELECT owner, epoch, saved_at, state FROM quota_state WHERE id = 1"
HEARTBEAT = f"""INSERT INTO daemons ({_DAEMON_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (owner) DO UPDATE SET role = excluded.role, address = excluded.address,
        heartbeat_at = excluded.heartbeat_at, expires_at = excluded.expires_at,
        backlog = excluded.backlog, waiting = excluded.waiting, grants = excluded.grants,
        grant_rate = excluded.grant_rate"""
FORGET_OLD = "DELETE FROM daemons WHERE expires_at < ?"
FORGET_DAEMON = "DELETE FROM daemons WHERE owner = ?"
DAEMONS_SQL = f"SELECT {_DAEMON_COLUMNS} FROM daemons ORDER BY started_at, owner"

Query = Callable[[str, Sequence[Any]], list[Any]]
T = TypeVar("T")


class QuotaLeaseStore:
    """The quota election, snapshot and heartbeat operations of a
    ``SqlQueueStore`` (mixed into it): ``owner`` is this process, the
    store's clock times the leases. ``_LOCK_OWNER_ROW`` is how the dialect
    locks the owner row in a save (SQLite's write transaction locks it all)."""

    _LOCK_OWNER_ROW: ClassVar[str] = ""

    owner: str
    _clock: Callable[[], float]

    # Provided by the store it is mixed into.
    def _transact(self, work: Callable[[Any], T]) -> T:
        raise NotImplementedError

    def _execute(self, conn: Any, sql: str, params: Sequence[Any] = ()) -> Any:
        raise NotImplementedError

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        raise NotImplementedError

    def claim_quota(self, address: str, lease_s: float) -> QuotaOwner:
        """Become the quota's owner, serving at ``address``, if nobody holds a
        live lease on it; returns the owner row as it stands afterwards
        (whoever won: compare its ``owner`` with this store's)."""

        def claim(conn: Any) -> QuotaOwner:
            now = self._clock()
            self._execute(conn, CLAIM, (self.owner, address, now + lease_s, now))
            owner = _owner_row(self._execute(conn, OWNER_SQL).fetchone(), now)
            assert owner is not None
            return owner

        return self._transact(claim)

    def take_over_quota(self, dead: QuotaOwner, address: str, lease_s: float) -> QuotaOwner:
        """Become the owner in place of ``dead``, whose process is known to be
        gone, without waiting for its lease: only while the row still names
        it in the same epoch (so of two daemons taking over, one wins).
        Returns the owner row as it stands afterwards."""

        def take(conn: Any) -> QuotaOwner:
            now = self._clock()
            params = (self.owner, address, now + lease_s, now, dead.owner, dead.epoch)
            self._execute(conn, TAKE_OVER, params)
            owner = _owner_row(self._execute(conn, OWNER_SQL).fetchone(), now)
            assert owner is not None
            return owner

        return self._transact(take)

    def renew_quota(self, epoch: int, lease_s: float) -> bool:
        """Push this owner's lease of ``epoch`` to now + ``lease_s``; False when
        it is not the owner of that epoch any more (another took over)."""
        now = self._clock()
        params = (now + lease_s, now, self.owner, epoch)
        return (
            self._transact(lambda conn: int(self._execute(conn, RENEW_QUOTA, params).rowcount)) == 1
        )

    def release_quota(self, epoch: int) -> bool:
        """Hand the quota back (a graceful stop): the lease expires now, so
        the next daemon takes over at once. Only by the owner of ``epoch``."""
        now = self._clock()
        params = (0.0, now, self.owner, epoch)
        return (
            self._transact(lambda conn: int(self._execute(conn, RENEW_QUOTA, params).rowcount)) == 1
        )

    def quota_owner(self) -> QuotaOwner | None:
        now = self._clock()
        rows = self._read(OWNER_SQL)
        return _owner_row(rows[0], now) if rows else None

    def save_quota_state(self, epoch: int, state: bytes, saved_at: float) -> bool:
        """Store the quota snapshot, only if this store's owner still owns the
        quota in ``epoch`` (checked with the owner row locked, in the same
        transaction); False, and nothing written, otherwise."""

        def save(conn: Any) -> bool:
            row = self._execute(conn, OWNER_SQL + self._LOCK_OWNER_ROW).fetchone()
            if row is None or row[0] != self.owner or int(row[3]) != epoch:
                return False
            self._execute(conn, SAVE_STATE, (self.owner, epoch, saved_at, state))
            return True

        return self._transact(save)

    def load_quota_state(self) -> SavedQuota | None:
        rows = self._read(STATE_SQL)
        return _state_row(rows[0]) if rows else None

    def heartbeat(self, info: DaemonInfo, lease_s: float) -> None:
        """Record this daemon as live until now + ``lease_s``; rows of daemons
        long gone are deleted on the way."""
        now = self._clock()
        row = (
            self.owner,
            info.host,
            info.pid,
            info.role,
            info.address,
            info.started_at,
            now,
            now + lease_s,
            info.backlog,
            info.waiting,
            info.grants,
            info.grant_rate,
        )

        def beat(conn: Any) -> None:
            self._execute(conn, HEARTBEAT, row)
            self._execute(conn, FORGET_OLD, (now - _FORGET_AFTER_S,))

        self._transact(beat)

    def forget_daemon(self) -> None:
        """This daemon stops: its row goes."""
        self._transact(lambda conn: self._execute(conn, FORGET_DAEMON, (self.owner,)))

    def daemons(self) -> list[DaemonInfo]:
        """Every daemon's row (live or not: compare ``expires_at`` with now)."""
        return [_daemon_row(row) for row in self._read(DAEMONS_SQL)]


def read_sharing(
    query: Query, now: float, has_table: Callable[[str], bool]
) -> tuple[QuotaOwner | None, tuple[DaemonInfo, ...], SavedQuota | None]:
    """The owner row, the daemons and the saved snapshot, read through
    ``query`` (read-only; a database from before the shared quota has none
    of the tables, which ``has_table`` tells)."""
    if not has_table("daemons"):
        return None, (), None
    owners = query(OWNER_SQL, ())
    states = query(STATE_SQL, ())
    return (
        _owner_row(owners[0], now) if owners else None,
        tuple(_daemon_row(row) for row in query(DAEMONS_SQL, ())),
        _state_row(states[0]) if states else None,
    )


def _owner_row(row: Sequence[Any] | None, now: float) -> QuotaOwner | None:
    if row is None:
        return None
    owner, address, lease_expires, epoch = row
    return QuotaOwner(str(owner), str(address), float(lease_expires), int(epoch), now)


def _state_row(row: Sequence[Any]) -> SavedQuota:
    owner, epoch, saved_at, state = row
    return SavedQuota(str(owner), int(epoch), float(saved_at), bytes(state))


def _daemon_row(row: Sequence[Any]) -> DaemonInfo:
    (owner, host, pid, role, address, started, beat, expires, backlog, waiting, grants, rate) = row
    return DaemonInfo(
        str(owner),
        str(host),
        int(pid),
        str(role),
        None if address is None else str(address),
        float(started),
        float(beat),
        float(expires),
        int(backlog),
        int(waiting),
        int(grants),
        float(rate),
    )

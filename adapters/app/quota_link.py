"""QuotaLink: one provider quota for every daemon on a queue.

A Gemini project has one quota however many processes spend it, so the
daemons on one queue (SQLite, or PostgreSQL across machines) share one
``ModelRegistry``. Exactly one daemon at a time *owns* the quota state; the
database elects it (``adapters.storage.quota_lease``):

* **Owner.** It holds a lease on the ``quota_owner`` row, renewed every
  lease/3, and the address where it serves grants (``QuotaServer``); it runs
  the one real registry, and saves the quota snapshot to the ``quota_state``
  row -- every ``save_interval_s`` while granting, at once when a cooldown
  starts or a 429 arrives -- only while it still owns the quota in its epoch
  (checked inside the write). The snapshot file (``--snapshot``) is written
  too, so a lone daemon keeps its file as before.
* **Followers** reach the owner through a ``QuotaClient``. Their runtime
  holds a ``RegistryHandle`` that forwards to the current target and keeps
  what a change of owner needs.
* **A follower dies**: its connection drops, and the owner releases its
  holders at once -- its waits end, its grants count as spent -- so its
  share of the quota is back immediately (its articles' leases expire as
  usual and the others take them).
* **The owner dies**: followers lose their connection; the first to claim
  the row once the lease has expired (at most one lease later) restores the
  quota from the ``quota_state`` row (``QuotaPolicy.take_over``: the day's
  usage, windows and cooldowns, grant ids above any its predecessor can
  have handed out), starts a registry and the server, and points its handle
  at it; every follower connects to the new owner, hands over its
  outstanding and recent grants (same ids, window places kept, reports
  accounted) and sends its pending requests again. Only what the dead owner
  itself granted after its last save is unknown to its successor -- at most
  ``save_interval_s`` of its own grants.
* **A graceful stop** of the owner drops its followers, saves once more,
  and releases the lease (it expires at once), so a follower takes over
  without waiting.

Every daemon heartbeats its ``daemons`` row (role, backlog, grants, grant
rate), which ``tierbatch status`` shows.

Longer than the house's ~450 lines on purpose: the election, the owner's and
the follower's roles share one lease loop and its take-over.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import pykka
import structlog

from tierbatch.actors.clock import Clock, WallStepWatch, wall_offset
from tierbatch.actors.messages import GetQuotaSnapshot
from tierbatch.actors.observer import FanOutObserver, RegistryObserver
from tierbatch.actors.registry import ModelRegistry
from tierbatch.actors.registry_handle import RegistryHandle
from tierbatch.actors.runtime import make_budget, tier_shapes
from tierbatch.adapters.app.daemon_beat import DaemonBeat
from tierbatch.adapters.app.quota_client import QuotaClient
from tierbatch.adapters.app.quota_file import QuotaStateLoad, load_quota_state
from tierbatch.adapters.app.quota_server import QuotaServer
from tierbatch.adapters.app.quota_wire import FrameError
from tierbatch.adapters.storage.quota_lease import ROLE_FOLLOWER, ROLE_OWNER
from tierbatch.adapters.storage.snapshot_file import (
    DebouncedSaver,
    SnapshotFile,
    decode,
    encode,
)
from tierbatch.adapters.storage.store import Store, owner_process_gone
from tierbatch.policies.config import Config
from tierbatch.policies.errors import RuntimeStateError, SnapshotError, StorageError
from tierbatch.policies.outcomes import CallOutcome, RateLimited
from tierbatch.policies.quota import Grant, QuotaPolicy
from tierbatch.policies.tiers import TierLadder

__all__ = [
    "QuotaLink",
    "QuotaStateLoad",
    "QuotaUnavailableError",
    "SharingOptions",
    "load_quota_state",
]

_log = structlog.get_logger(__name__)

_REGISTRY_STOP_S = 10.0


class QuotaUnavailableError(RuntimeStateError, RuntimeError):
    """No owner of the quota could be reached or become one in time."""


@dataclass(frozen=True, slots=True)
class SharingOptions:
    """``host``/``port``: where this daemon serves grants when it owns the
    quota (port 0: any free port; the address goes into the database).
    ``lease_s``: how long a dead owner can strand the quota. ``save_interval_s``:
    the most time between two saves of the quota state while granting."""

    host: str = "127.0.0.1"
    port: int = 0
    lease_s: float = 10.0
    save_interval_s: float = 1.0

    def __post_init__(self) -> None:
        for name in ("lease_s", "save_interval_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {self.port}")

    @property
    def poll_s(self) -> float:
        """How often a daemon without an owner looks again."""
        return min(self.lease_s / 10, 0.25)


class NotTheOwnerError(SnapshotError):
    """The quota state was not saved: another daemon owns the quota now."""


class _Saves:
    """What the owner's ``DebouncedSaver`` saves to: the database row (only
    while it owns the quota in ``epoch``) and the snapshot file."""

    def __init__(
        self,
        store: Store,
        epoch: int,
        file: SnapshotFile | None,
        clock: Clock,
        registry: pykka.ActorRef[Any],
    ) -> None:
        self._store = store
        self._epoch = epoch
        self._file = file
        self._clock = clock
        self._registry = registry
        self._taken_at = 0.0
        self.path = file.path if file is not None else Path(store.path)

    def take(self) -> Mapping[str, Any]:
        """The registry's state now (on the saver's thread)."""
        self._taken_at = self._clock.wall()
        state: Any = self._registry.ask(GetQuotaSnapshot(), block=True, timeout=10.0)
        return dict(state)

    def save(self, state: Mapping[str, Any]) -> None:
        try:
            data = encode(msgpack.packb(dict(state), use_bin_type=True))
        except (TypeError, ValueError, OverflowError) as exc:
            raise SnapshotError(f"quota state cannot be encoded: {exc}") from exc
        try:
            saved = self._store.save_quota_state(self._epoch, data, self._taken_at)
        except StorageError as exc:
            raise SnapshotError(str(exc)) from exc
        if not saved:
            raise NotTheOwnerError(f"{self._store.path}: another daemon owns the quota now")
        if self._file is not None:
            self._file.save(state)


class _SaveTrigger:
    """Marks the owner's saver dirty on every registry decision; a 429 or a
    cooldown (the learnt limits and the deadlines change) is saved at once."""

    def __init__(self) -> None:
        self.saver: DebouncedSaver | None = None

    def _dirty(self, urgent: bool = False) -> None:
        saver = self.saver
        if saver is not None:
            saver.mark_dirty(urgent=urgent)

    def on_grant(self, grant: Grant, tier_rank: int) -> None:
        self._dirty()

    def on_sent(self, grant_id: int, model: str, at: float) -> None:
        self._dirty()

    def on_outcome(self, model: str, outcome: CallOutcome, at: float) -> None:
        self._dirty(isinstance(outcome, RateLimited))

    def on_cooldown(self, model: str, start: float, until: float, reason: str) -> None:
        self._dirty(True)


class QuotaLink:
    """Keeps ``handle`` pointed at the quota's owner -- this daemon or
    another -- for as long as it runs (see the module docstring).

    ``snapshot`` is the file an owner also saves to (and restores from when
    the database has no quota state yet); ``observer`` watches the registry
    when this daemon owns it; ``unavailable_models`` are routed around by a
    registry this daemon starts. Raises ``OSError`` when the address cannot
    be bound.
    """

    def __init__(
        self,
        config: Config,
        store: Store,
        clock: Clock,
        handle: RegistryHandle,
        *,
        options: SharingOptions | None = None,
        snapshot: SnapshotFile | None = None,
        observer: RegistryObserver | None = None,
        unavailable_models: Mapping[str, str] | None = None,
    ) -> None:
        self.config = config
        self.options = options or SharingOptions()
        self._store = store
        self._clock = clock
        self._handle = handle
        self._snapshot = snapshot
        self._observer = observer
        self._unavailable = dict(unavailable_models or {})
        self._server = QuotaServer(clock, self.options.host, self.options.port)
        self.address = self._server.address
        self._lock = threading.RLock()
        self._role: str | None = None  # None: looking for an owner
        self._epoch = 0
        self._registry: pykka.ActorRef[Any] | None = None
        self._saver: DebouncedSaver | None = None
        self._client: QuotaClient | None = None
        self._old_clients: list[QuotaClient] = []
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loaded: QuotaStateLoad | None = None
        self._next_renew = 0.0
        self._wall_steps = WallStepWatch(clock)
        self._silent: tuple[str, int] | None = None  # an owner that did not answer
        self._beat = DaemonBeat(store, ROLE_FOLLOWER, self.options.lease_s)
        self.backlog = 0  # articles this daemon holds, for its heartbeat

    # ---- lifecycle ---------------------------------------------------------------

    def start(self, timeout: float | None = None) -> None:
        """Join the quota's owner or become it; returns once the handle has
        a target. ``timeout`` (default: two leases and a bit) bounds the wait
        for a dead owner's lease to expire; raises ``QuotaUnavailableError``."""
        limit = 2 * self.options.lease_s + 5.0 if timeout is None else timeout
        deadline = time.monotonic() + limit
        while True:
            try:
                if self._step():
                    break
            except StorageError as exc:
                _log.error("the quota election failed; retrying", error=str(exc))
            if time.monotonic() > deadline:
                raise QuotaUnavailableError(
                    f"{self._store.path}: no owner of the quota could be reached in {limit:g} s"
                )
            self._wake.wait(self.options.poll_s)
            self._wake.clear()
        self._guarded_heartbeat()
        self._thread = threading.Thread(target=self._run, name="tierbatch-quota-link", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Leave: an owner drops its followers (they elect the next), saves
        once more and hands the lease back; a follower disconnects."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10.0)
        with self._lock:
            role, epoch = self._role, self._epoch
            registry, saver, client = self._registry, self._saver, self._client
            self._role, self._registry, self._saver, self._client = None, None, None, None
            self._handle.retarget(None)
        if role == ROLE_OWNER:
            self._server.stop_serving()
            if saver is not None:
                _guarded("final quota snapshot", saver.close)
            _guarded("hand the quota back", lambda: self._store.release_quota(epoch))
            if registry is not None:
                _guarded("stop the registry", lambda: registry.stop(timeout=_REGISTRY_STOP_S))
            _log.info("quota handed back", epoch=epoch)
        if client is not None:
            client.close()
        for old in self._old_clients:
            old.close()
        self._server.close()
        _guarded("forget this daemon", self._beat.forget)

    @property
    def role(self) -> str | None:
        """``"owner"``, ``"follower"``, or None while looking for an owner."""
        with self._lock:
            return self._role

    @property
    def epoch(self) -> int:
        with self._lock:
            return self._epoch

    @property
    def quota_load(self) -> QuotaStateLoad:
        """What this daemon restored when it first owned the quota (a
        follower's: ``source="owner"``, nothing restored here)."""
        return self._loaded or QuotaStateLoad(None, source="owner")

    # ---- the election ----------------------------------------------------------------

    def _run(self) -> None:
        beat_every = self.options.lease_s / 3
        next_beat = time.monotonic() + beat_every
        while not self._stop.is_set():
            try:
                self._step()
            except StorageError as exc:
                _log.error("the quota election failed; retrying", error=str(exc))
            except Exception:
                _log.exception("the quota link failed a step; retrying")
            if time.monotonic() >= next_beat:
                self._guarded_heartbeat()
                next_beat = time.monotonic() + beat_every
            with self._lock:
                old, self._old_clients = self._old_clients, []
            for client in old:
                client.close()
            looking = self.role is None
            self._wake.wait(self.options.poll_s if looking else min(beat_every, 0.5))
            self._wake.clear()

    def _step(self) -> bool:
        """One turn: renew (an owner), or find or become the owner. Whether
        the handle has a target now."""
        with self._lock:
            role = self._role
        if role == ROLE_OWNER:
            stepped = self._wall_steps.step() is not None
            if stepped or time.monotonic() >= self._next_renew:
                if not self._store.renew_quota(self._epoch, self.options.lease_s):
                    self._demote("another daemon took the quota over")
                    return False
                self._next_renew = time.monotonic() + self.options.lease_s / 3
            return True
        if role == ROLE_FOLLOWER:
            return True
        owner = self._store.quota_owner()
        if owner is None or not owner.live:
            owner = self._store.claim_quota(self.address, self.options.lease_s)
        elif owner.owner != self._store.owner and owner_process_gone(owner.owner):
            _log.warning(
                "the quota's owner died on this host; taking the quota over without "
                "waiting for its lease",
                dead_owner=owner.owner,
                epoch=owner.epoch,
            )
            owner = self._store.take_over_quota(owner, self.address, self.options.lease_s)
        if owner.owner == self._store.owner:
            self._become_owner(owner.epoch)
            return True
        return self._join(owner.address, owner.epoch)

    def _join(self, address: str, epoch: int) -> bool:
        client = QuotaClient(address, self._clock, daemon=self._store.owner, on_lost=self._lost)
        try:
            client.connect()
        except (OSError, FrameError) as exc:
            if self._silent != (address, epoch):
                self._silent = (address, epoch)
                _log.warning(
                    "the quota's owner does not answer; waiting for its lease to expire",
                    owner=address,
                    epoch=epoch,
                    error=str(exc),
                )
            return False
        with self._lock:
            self._client = client
            self._role = ROLE_FOLLOWER
            self._handle.retarget(client)
            if client.lost:  # it went away at once: look again
                self._client, self._role = None, None
                self._handle.retarget(None)
                self._old_clients.append(client)
                return False
        self._silent = None
        _log.info("following the quota's owner", owner=address, epoch=client.epoch)
        return True

    def _lost(self) -> None:
        """The owner's connection dropped (the client's reader thread)."""
        with self._lock:
            client = self._client
            if client is None or not client.lost or self._role != ROLE_FOLLOWER:
                return
            self._client, self._role = None, None
            self._handle.retarget(None)
            self._old_clients.append(client)
        self._wake.set()

    def _become_owner(self, epoch: int) -> None:
        policy, load, saved_at = self._restore()
        offset = wall_offset(self._clock)
        policy.take_over(
            saved_at=None if saved_at is None else saved_at - offset,
            first_grant_id=epoch << 32,
        )
        trigger = _SaveTrigger()
        observers: list[RegistryObserver] = [trigger]
        if self._observer is not None:
            observers.append(self._observer)
        config = self.config
        ladder = TierLadder(config.tiers, config.global_fallback)
        registry = ModelRegistry.start(
            policy,
            self._clock,
            FanOutObserver(observers),
            self._handle.registry_died,
            tiers=tier_shapes(config, ladder) if config.quota.plan else (),
            # The daily budget is the quota's too: one for every daemon, saved
            # with the quota state (calls the dead owner had in flight count
            # as spent).
            budget=make_budget(config, load.state),
        )
        self._server.serve(registry, owner=self._store.owner, epoch=epoch)
        saves = _Saves(self._store, epoch, self._snapshot, self._clock, registry)
        saver = DebouncedSaver(saves, saves.take, self.options.save_interval_s)
        trigger.saver = saver
        with self._lock:
            self._role, self._epoch = ROLE_OWNER, epoch
            self._registry, self._saver = registry, saver
            self._next_renew = time.monotonic() + self.options.lease_s / 3
            self._handle.retarget(self._server.local(registry))
        saver.mark_dirty()
        if self._loaded is None:
            self._loaded = load
        now = self._clock.now()
        statuses = policy.status(now, wall_offset=offset)
        _log.info(
            "owning the quota",
            epoch=epoch,
            address=self.address,
            restored=load.source,
            saved_s_ago=None if saved_at is None else round(self._clock.wall() - saved_at, 3),
            requests_today={s.model: s.requests_today for s in statuses},
            exhausted=[s.model for s in statuses if s.exhausted_until is not None],
            cooling=[s.model for s in statuses if s.cooldown_until is not None],
        )

    def _restore(self) -> tuple[QuotaPolicy, QuotaStateLoad, float | None]:
        """The policy to own: from the database's quota state, else (no row
        yet) from the snapshot file, else fresh; and when that was saved
        (wall clock)."""
        config = self.config
        offset = wall_offset(self._clock)
        load = QuotaStateLoad(None)
        saved_at: float | None = None
        row = self._store.load_quota_state()
        if row is not None:
            try:
                state = decode(row.state)
                QuotaPolicy.restore(config.models, config.quota, state)
            except SnapshotError as exc:
                _log.warning(
                    "the database's quota state is unusable; starting fresh",
                    db=self._store.path,
                    problem=str(exc),
                )
                load = QuotaStateLoad(None, str(exc))
            else:
                load, saved_at = QuotaStateLoad(state, source="database"), row.saved_at
        elif self._snapshot is not None:
            load = load_quota_state(self._snapshot, config)
            if load.state is not None:
                with contextlib.suppress(OSError):
                    saved_at = self._snapshot.path.stat().st_mtime
        if load.state is not None:
            policy = QuotaPolicy.restore(
                config.models, config.quota, load.state, wall_offset=offset
            )
            policy.clear_unavailable()  # a new owner probes 404ed models again
        else:
            policy = QuotaPolicy(config.models, config.quota)
        for model, reason in self._unavailable.items():
            policy.mark_unavailable(model, reason)
        return policy, load, saved_at

    def _demote(self, reason: str) -> None:
        """This daemon lost the quota (it stalled past its lease and another
        took over): stop serving and look for the new owner."""
        with self._lock:
            registry, saver = self._registry, self._saver
            self._role, self._registry, self._saver = None, None, None
            self._handle.retarget(None)
        _log.warning("no longer owning the quota", reason=reason, epoch=self._epoch)
        self._server.stop_serving()
        if saver is not None:
            with contextlib.suppress(Exception):
                saver.close()  # fails: not the owner (nothing is written)
        if registry is not None:
            _guarded("stop the registry", lambda: registry.stop(timeout=_REGISTRY_STOP_S))

    # ---- heartbeat ---------------------------------------------------------------------

    def _guarded_heartbeat(self) -> None:
        try:
            self._heartbeat()
        except StorageError as exc:
            _log.warning("daemon heartbeat failed; retrying", error=str(exc))

    def _heartbeat(self) -> None:
        role = self.role
        self._beat.beat(
            role=role or ROLE_FOLLOWER,
            address=self.address if role == ROLE_OWNER else None,
            backlog=self.backlog,
            waiting=self._handle.waiting,
            granted=self._handle.granted,
        )


def _guarded(what: str, step: Any) -> Any:
    try:
        return step()
    except (StorageError, SnapshotError) as exc:
        _log.error("quota link step failed; going on", step=what, error=str(exc))
    except Exception:
        _log.exception("quota link step failed; going on", step=what)
    return None

"""The ModelRegistry as one named, detached Ray actor per Gemini project.

A thin shell, not a second registry: the actor hosts the very same pykka
``ModelRegistry`` (and so the same ``QuotaPolicy``, ``WaitingList`` and
dispatch plan) on a thread of its own process, and only translates:

* **Replies into return values.** A local ``Acquire`` carries a reply
  callable; over Ray, one ``acquire`` call *is* the request, and its return
  value is the answer (``Granted``/``AcquireFailed``; None when it was
  withdrawn or its holder released). A waiting request is a pending call.
* **Clocks.** Steady clocks of different machines share no origin, so every
  time crosses the wire as wall-clock time and each side converts with its
  own wall offset (``Acquire.enqueued_at``/``deadline``, ``Sent.at``,
  ``Grant.granted_at``, a status's deadlines).
* **Clients.** Every daemon (a ``RemoteRegistryRef``) is a client with
  holder ids of its own; it heartbeats, and one that goes silent for
  ``client_timeout_s`` (killed, its node lost) has its waits dropped and its
  grants abandoned, as a crashed extractor's are locally.
* **State.** The quota state is saved (debounced) to the cluster's key-value
  store (the GCS, which outlives any worker node) and, when the creator gave
  a path, to a snapshot file on the actor's node. A restarted actor (Ray
  restarts it, on any node, after its process or node died) restores from
  there: the day's usage and cooldowns survive, in-flight grants are
  forgotten as spent, and grant ids jump ahead so a late report of an old
  grant never settles a new one.

Only this package imports ``ray``; the rest of tierbatch runs without it.

Longer than the house's ~450 lines on purpose: the one shell around the
registry, its four translations (replies, clocks, clients, state) side by
side, so every message is translated the same way in both directions.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import msgpack
import structlog

from tierbatch.actors.clock import SystemClock, wall_offset
from tierbatch.actors.messages import (
    Acquire,
    AcquireFailed,
    Backlog,
    GetBudgetState,
    GetPlan,
    GetQuotaSnapshot,
    GetQuotaStatus,
    Granted,
    ReleaseHolder,
    Report,
    Sent,
    Wake,
    Withdraw,
)
from tierbatch.actors.registry import ModelRegistry
from tierbatch.actors.runtime import make_budget, tier_shapes
from tierbatch.adapters.ray.in_order import ClientOrder
from tierbatch.adapters.storage.snapshot_file import SnapshotFile
from tierbatch.policies.backlog import TierBacklog
from tierbatch.policies.config import Config
from tierbatch.policies.errors import SnapshotError
from tierbatch.policies.outcomes import CallOutcome
from tierbatch.policies.quota import Grant, ModelStatus, QuotaPolicy
from tierbatch.policies.tiers import TierLadder

_log = structlog.get_logger(__name__)

NAMESPACE = "tierbatch"
# After a restart, new grant ids start this far past the snapshot's, so a
# report of a grant made after the last save cannot settle a new grant.
GRANT_ID_GAP = 1_000_000_000
# ModelStatus fields that are steady-clock times.
_STATUS_TIMES = ("cooldown_until", "exhausted_until")


def config_fingerprint(config: Config) -> str:
    """What the registry's decisions depend on -- models, quota settings,
    tiers -- in a few hex digits, so a daemon can tell that its config is
    not the one the shared registry was created with."""
    relevant = (sorted(config.models.items()), config.quota, config.tiers, config.global_fallback)
    return hashlib.sha256(repr(relevant).encode()).hexdigest()[:12]


def actor_name(project: str) -> str:
    return f"tierbatch-registry-{project}"


def kv_key(project: str) -> bytes:
    return f"tierbatch/quota/{project}".encode()


def shift_status(statuses: Sequence[ModelStatus], delta: float) -> tuple[ModelStatus, ...]:
    """``statuses`` with their deadlines moved by ``delta`` seconds (steady
    to wall: + the wall offset; wall to steady: - it)."""
    shifted = []
    for status in statuses:
        changes = {
            name: getattr(status, name) + delta
            for name in _STATUS_TIMES
            if getattr(status, name) is not None
        }
        shifted.append(dataclasses.replace(status, **changes) if changes else status)
    return tuple(shifted)


def merged_backlog(by_client: Mapping[str, tuple[TierBacklog, ...]]) -> Backlog:
    """One backlog from every client's. Daemons on one queue each count the
    whole store's backlog, so a sum would count it once per daemon: per tier
    the largest report stands for all of them."""
    tiers: dict[str, TierBacklog] = {}
    for backlog in by_client.values():
        for tier in backlog:
            known = tiers.get(tier.tier)
            if known is None or tier.articles > known.articles:
                tiers[tier.tier] = tier
    return Backlog(tuple(tiers.values()))


class _Dirty:
    """A registry observer that only notes that the state changed (on the
    registry's thread; the actor's loop waits on ``flag``)."""

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


def _settle(future: asyncio.Future[Any], answer: Any) -> None:
    if not future.done():
        future.set_result(answer)


class RegistryActor:
    """The actor's class (``ray.remote`` is applied in ``cluster``). Runs on
    an asyncio loop, so thousands of waiting ``acquire`` calls cost one
    pending future each."""

    def __init__(
        self,
        project: str,
        config: Config,
        snapshot_path: str | None = None,
        *,
        snapshot_interval_s: float = 2.0,
        client_timeout_s: float = 15.0,
        use_kv: bool = True,
    ) -> None:
        self._project = project
        self._config = config
        self._clock = SystemClock()
        self._file = SnapshotFile(snapshot_path) if snapshot_path else None
        self._use_kv = use_kv
        self._interval = snapshot_interval_s
        self._client_timeout = client_timeout_s
        self._pending: dict[tuple[int, int], asyncio.Future[Any]] = {}
        self._holders: dict[str, set[int]] = {}
        self._seen: dict[str, float] = {}
        self._backlogs: dict[str, tuple[TierBacklog, ...]] = {}
        self._order: dict[str, ClientOrder] = {}
        self.restored_from = "fresh"
        policy, state = self._restore()
        ladder = TierLadder(config.tiers, config.global_fallback)
        self._dirty = _Dirty()
        self._tasks: list[asyncio.Task[None]] = []
        self._registry = ModelRegistry.start(
            policy,
            self._clock,
            self._dirty,
            _registry_died,
            tiers=tier_shapes(config, ladder) if config.quota.plan else (),
            budget=make_budget(config, state),
        )
        _log.info("registry actor started", project=project, quota_state=self.restored_from)

    def _ensure_running(self) -> None:
        """Start the save and reap loops on the actor's event loop (not
        running yet while ``__init__`` runs), on the first call."""
        if self._tasks:
            return
        loop = asyncio.get_running_loop()
        self._dirty.flag = asyncio.Event()
        self._dirty.loop = loop
        if self._dirty.early:
            self._dirty.flag.set()
        self._tasks = [loop.create_task(self._save_loop()), loop.create_task(self._reap_loop())]

    # ---- state -------------------------------------------------------------------

    def _restore(self) -> tuple[QuotaPolicy, Mapping[str, Any] | None]:
        """The quota policy from the first usable saved state (and that
        state, for the daily budget), else a fresh one."""
        cfg = self._config
        for source, state in self._saved_states():
            try:
                data = dict(state)
                data["next_grant_id"] = int(data.get("next_grant_id", 1)) + GRANT_ID_GAP
                policy = QuotaPolicy.restore(
                    cfg.models, cfg.quota, data, wall_offset=wall_offset(self._clock)
                )
            except (SnapshotError, TypeError, ValueError) as exc:
                _log.warning("quota state unusable; ignored", source=source, error=str(exc))
                continue
            policy.forget_in_flight()
            policy.clear_unavailable()
            self.restored_from = source
            return policy, state
        return QuotaPolicy(cfg.models, cfg.quota), None

    def _saved_states(self) -> list[tuple[str, Mapping[str, Any]]]:
        found: list[tuple[str, Mapping[str, Any]]] = []
        if self._use_kv:
            with contextlib.suppress(Exception):
                raw = _kv_get(kv_key(self._project))
                if raw:
                    found.append(("cluster", msgpack.unpackb(raw, raw=False)))
        if self._file is not None:
            state = self._file.load()
            if state is not None:
                found.append(("file", state))
        return found

    async def _save(self) -> None:
        state = await self._ask(GetQuotaSnapshot())
        if self._use_kv:
            try:
                _kv_put(kv_key(self._project), msgpack.packb(state, use_bin_type=True))
            except Exception as exc:
                _log.error("could not save the quota state to the cluster", error=str(exc))
        if self._file is not None:
            try:
                await asyncio.to_thread(self._file.save, state)
            except SnapshotError as exc:
                _log.error("could not save the quota snapshot", error=str(exc))

    async def _save_loop(self) -> None:
        while True:
            flag = self._dirty.flag
            assert flag is not None
            await flag.wait()
            flag.clear()
            await self._save()
            await asyncio.sleep(self._interval)

    async def _reap_loop(self) -> None:
        while True:
            await asyncio.sleep(max(0.05, self._client_timeout / 3))
            cutoff = time.monotonic() - self._client_timeout
            for client, seen in list(self._seen.items()):
                if seen < cutoff:
                    _log.warning(
                        "registry client went silent; its waits and grants are dropped",
                        client=client,
                        silent_s=round(time.monotonic() - seen, 1),
                    )
                    await self.leave(client)

    # ---- the registry's messages -------------------------------------------------------

    async def _ask(self, message: Any) -> Any:
        return await self._answer_of(self._registry.ask(message, block=False))

    @staticmethod
    async def _answer_of(future: Any) -> Any:
        return await asyncio.to_thread(future.get)

    def _order_of(self, client: str, seq: int) -> ClientOrder:
        """The client's call order; a client this actor never saw join (it
        was restarted since) starts its order at the first call that comes."""
        order = self._order.get(client)
        if order is None:
            order = self._order[client] = ClientOrder(client, seq)
        return order

    def _steady(self, wall: float | None) -> float | None:
        return None if wall is None else wall - wall_offset(self._clock)

    def _touch(self, client: str) -> None:
        self._ensure_running()
        self._seen[client] = time.monotonic()

    async def acquire(self, client: str, seq: int, msg: Acquire) -> Granted | AcquireFailed | None:
        """One request for quota; returns when it is answered (None: it was
        withdrawn or its holder released first). Times in ``msg`` are wall
        times; so is the answer's ``granted_at``. It reaches the registry
        after every call the client made before it (``seq``)."""
        order = self._order_of(client, seq)
        await order.turn(seq)
        try:
            future = self._register(client, msg)
        finally:
            order.done(seq)
        key = (msg.holder, msg.request_id)
        try:
            answer: Granted | AcquireFailed | None = await future
        finally:
            if self._pending.get(key) is future:
                del self._pending[key]
        if isinstance(answer, Granted):
            grant = answer.grant
            wall = grant.granted_at + wall_offset(self._clock)
            answer = Granted(answer.request_id, dataclasses.replace(grant, granted_at=wall))
        return answer

    def _register(self, client: str, msg: Acquire) -> asyncio.Future[Any]:
        self._touch(client)
        self._holders.setdefault(client, set()).add(msg.holder)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        key = (msg.holder, msg.request_id)
        self._pending[key] = future

        def reply(answer: Any) -> None:
            loop.call_soon_threadsafe(_settle, future, answer)

        self._registry.tell(
            dataclasses.replace(
                msg,
                reply=reply,
                enqueued_at=msg.enqueued_at - wall_offset(self._clock),
                deadline=self._steady(msg.deadline),
            )
        )
        return future

    async def _tell(self, client: str, message: Any) -> None:
        """Every other message a client sends, in the client's order."""
        self._touch(client)
        match message:
            case Report() | Wake():  # a Wake: serve now (a daemon saw the wall clock step)
                self._registry.tell(message)
            case Sent(grant_id, at):
                self._registry.tell(Sent(grant_id, at - wall_offset(self._clock)))
            case Withdraw(request_id, holder):
                await self._ask(message)
                self._drop_pending(lambda key: key == (holder, request_id))
            case ReleaseHolder(holder):
                await self._ask(message)
                self._drop_holder(holder)
                self._holders.get(client, set()).discard(holder)
            case Backlog(tiers):
                self._backlogs[client] = tiers
                self._registry.tell(merged_backlog(self._backlogs))
            case _:
                raise TypeError(f"RegistryActor: unexpected message {message!r}")

    async def tell_many(self, client: str, seq: int, messages: Sequence[Any]) -> None:
        """Several one-way messages in one call, in order, after every call
        the client made before (``seq``)."""
        order = self._order_of(client, seq)
        await order.turn(seq)
        try:
            for message in messages:
                await self._tell(client, message)
        finally:
            order.done(seq)

    def _drop_holder(self, holder: int) -> None:
        self._drop_pending(lambda key: key[0] == holder)

    def _drop_pending(self, match: Callable[[tuple[int, int]], bool]) -> None:
        """Answer None to the pending calls the registry dropped unanswered
        (a withdrawn request, a released holder's waits). A grant decided
        before the drop was already settled: its reply was queued first."""
        for key in [key for key in self._pending if match(key)]:
            _settle(self._pending.pop(key), None)

    async def ask(self, message: Any, client: str | None = None, seq: int | None = None) -> Any:
        """A question: quota status (deadlines as wall times), the snapshot,
        the plan, or the daily budget (its times are wall times already).
        A client's question (``client``, ``seq``) is answered after what
        it told before."""
        self._ensure_running()
        if not isinstance(message, GetQuotaStatus | GetQuotaSnapshot | GetPlan | GetBudgetState):
            raise TypeError(f"RegistryActor: unexpected question {message!r}")
        if client is None or seq is None:
            pending = self._registry.ask(message, block=False)
        else:
            order = self._order_of(client, seq)
            await order.turn(seq)
            try:
                pending = self._registry.ask(message, block=False)
            finally:
                order.done(seq)
        answer = await self._answer_of(pending)
        if isinstance(message, GetQuotaStatus):
            return shift_status(answer, wall_offset(self._clock))
        return answer

    # ---- clients -----------------------------------------------------------------------

    async def join(self, client: str) -> str:
        """A new client, before its first call: its calls are numbered from 0."""
        self._order.setdefault(client, ClientOrder(client, 0))
        return await self.heartbeat(client)

    async def heartbeat(self, client: str) -> str:
        self._touch(client)
        return self.restored_from

    async def leave(self, client: str, seq: int | None = None) -> None:
        """A client is gone (stopped, or silent too long): drop its waits,
        abandon its grants, forget its backlog. A client leaving (``seq``)
        leaves after its last calls."""
        if seq is not None:
            await self._order_of(client, seq).turn(seq)
        self._seen.pop(client, None)
        self._order.pop(client, None)
        for holder in sorted(self._holders.pop(client, set())):
            await self._ask(ReleaseHolder(holder))
            self._drop_holder(holder)
        if self._backlogs.pop(client, None) is not None:
            self._registry.tell(merged_backlog(self._backlogs))

    async def clients(self) -> list[str]:
        return sorted(self._seen)

    async def save_now(self) -> None:
        """Save the state at once (tests, and an operator before a planned stop)."""
        self._ensure_running()
        await self._save()

    async def info(self) -> dict[str, Any]:
        self._ensure_running()
        return {
            "project": self._project,
            "config": config_fingerprint(self._config),
            "restored_from": self.restored_from,
            "clients": sorted(self._seen),
            "waiting": len(self._pending),
        }


def _registry_died(actor: str, error: BaseException) -> None:
    """The hosted registry raised (a bug): end this process, so Ray restarts
    the actor from the last saved state instead of leaving a registry that
    answers nothing."""
    _log.error("the registry died; restarting the actor", error=repr(error))
    os._exit(70)


def _kv_get(key: bytes) -> bytes | None:
    from ray.experimental import internal_kv

    value: bytes | None = internal_kv._internal_kv_get(key, namespace=NAMESPACE)
    return value


def _kv_put(key: bytes, value: bytes) -> None:
    from ray.experimental import internal_kv

    internal_kv._internal_kv_put(key, value, overwrite=True, namespace=NAMESPACE)


__all__ = ["NAMESPACE", "RegistryActor", "actor_name", "merged_backlog", "shift_status"]

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
* **State.** The quota state is saved (debounced) to the cluster's
  key-value store (the GCS, which outlives any worker node) and, when the
  creator gave a path, to a snapshot file on the actor's node
  (``saved_state``). A restarted actor (Ray restarts it, on any node,
  after its process or node died) restores from there: the day's usage
  and cooldowns survive, grant ids jump ahead so a late report of an old
  grant never settles a new one, and what it granted after its last save
  comes back from the daemons (``hand_over``): until the daemons it knew
  have handed over their grants, it holds every call back. Grants in
  flight that no daemon claims stay spent.

Only this package imports ``ray``; the rest of tierbatch runs without it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import secrets
import time
from collections.abc import Callable, Sequence
from typing import Any

import structlog

from tierbatch.actors.clock import SystemClock, wall_offset
from tierbatch.actors.messages import (
    Acquire,
    AcquireFailed,
    AdoptGrants,
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
from tierbatch.adapters.ray import saved_state
from tierbatch.adapters.ray.hand_over import HandOver, HandOverGate, Incarnation
from tierbatch.adapters.ray.in_order import ClientOrder
from tierbatch.adapters.ray.wire import (
    config_fingerprint,
    merged_backlog,
    shift_status,
)
from tierbatch.adapters.storage.snapshot_file import SnapshotFile
from tierbatch.policies.backlog import TierBacklog
from tierbatch.policies.config import Config
from tierbatch.policies.errors import SnapshotError
from tierbatch.policies.quota import QuotaPolicy
from tierbatch.policies.tiers import TierLadder

_log = structlog.get_logger(__name__)

# How often, at most, the actor saves its state while it changes.
SNAPSHOT_INTERVAL_S = 2.0


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
        snapshot_interval_s: float = SNAPSHOT_INTERVAL_S,
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
        restored = saved_state.restore(
            project, config, self._file, use_kv=use_kv, wall_offset=wall_offset(self._clock)
        )
        if restored is None:
            policy, state, saved_at = QuotaPolicy(config.models, config.quota), None, None
            self.restored_from = "fresh"
            self._gate: HandOverGate | None = None
        else:
            policy, state, saved_at = restored.policy, restored.state, restored.saved_at
            self.restored_from = restored.source
            self._gate = HandOverGate(restored.clients)
        self.incarnation = Incarnation(secrets.token_hex(8), self.restored_from, saved_at)
        ladder = TierLadder(config.tiers, config.global_fallback)
        self._dirty = saved_state.Dirty()
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

    async def _save(self) -> None:
        saved_at = time.time()  # before the snapshot: a report sent after may be missing
        snapshot = await self._ask(GetQuotaSnapshot())
        state = saved_state.save(
            self._project,
            snapshot,
            saved_at=saved_at,
            clients=list(self._seen),
            use_kv=self._use_kv,
        )
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
        await self._handed_over()
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
            case Sent(grant_id, at, tokens):
                self._registry.tell(Sent(grant_id, at - wall_offset(self._clock), tokens))
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

    async def tell_many(self, client: str, seq: int, messages: Sequence[Any]) -> Incarnation:
        """Several one-way messages in one call, in order, after every call
        the client made before (``seq``). Returns this incarnation, so a
        client learns of a restart at its next message."""
        await self._handed_over()
        order = self._order_of(client, seq)
        await order.turn(seq)
        try:
            for message in messages:
                await self._tell(client, message)
        finally:
            order.done(seq)
        return self.incarnation

    async def _handed_over(self) -> None:
        """After a restart: wait for the daemons' hand-over (see
        ``hand_over``), before a call takes its turn in its client's order
        (which the hand-over says where to resume)."""
        gate = self._gate
        if gate is not None:
            self._ensure_running()
            await gate.passed()
            self._gate = None

    async def hand_over(self, client: str, ledger: HandOver) -> bool:
        """A client's grants and recent reports, for a restarted actor: its
        grants in flight keep their ids and window places and their reports
        are accounted here; those finished since the restored state was
        saved count, and their reports are accounted again; older ones keep
        their window places. Runs ahead of the client's other calls (they
        wait at the gate). False: it was meant for another incarnation."""
        if ledger.token != self.incarnation.token:
            return False
        self._touch(client)
        self._order_of(client, ledger.next_seq).skip_to(ledger.next_seq)
        offset = wall_offset(self._clock)
        holders = self._holders.setdefault(client, set())
        adopted = 0
        for holder, grants in ledger.grants:
            holders.add(holder)
            steady = tuple(
                dataclasses.replace(
                    g,
                    granted_at=g.granted_at - offset,
                    sent_at=None if g.sent_at is None else g.sent_at - offset,
                )
                for g in grants
            )
            adopted += len(steady)
            self._registry.tell(AdoptGrants(holder, steady))
        for report in ledger.reports:
            self._registry.tell(report)
        _log.info(
            "a client handed its grants over",
            client=client,
            grants=adopted,
            reports=len(ledger.reports),
        )
        if self._gate is not None:
            self._gate.arrived(client)
        return True

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
            await self._handed_over()
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

    async def join(self, client: str) -> Incarnation:
        """A new client, before its first call: its calls are numbered from 0."""
        self._order.setdefault(client, ClientOrder(client, 0))
        if self._gate is not None:
            self._gate.arrived(client)  # it holds nothing of a predecessor's
        return await self.heartbeat(client)

    async def heartbeat(self, client: str) -> Incarnation:
        self._touch(client)
        return self.incarnation

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
            "pid": os.getpid(),  # the process that hosts it (the bench kills it)
        }


def _registry_died(actor: str, error: BaseException) -> None:
    """The hosted registry raised (a bug): end this process, so Ray restarts
    the actor from the last saved state instead of leaving a registry that
    answers nothing."""
    _log.error("the registry died; restarting the actor", error=repr(error))
    os._exit(70)


__all__ = ["RegistryActor"]

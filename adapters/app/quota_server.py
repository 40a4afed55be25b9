"""The quota's owner serves its registry to the other daemons over TCP.

The owner runs the one real ``ModelRegistry``; this server forwards what
followers send (``quota_wire``) to it, with replies that write back to the
follower's connection. Each connection has a reader thread and a writer
thread (a registry reply only queues a frame: a slow follower never stalls
the registry). Holder ids are the follower's own, so each connection maps
them to ids of its own range; a connection that drops releases every holder
it brought (``ReleaseHolder``: their waits end, their grants count as spent,
as for a crashed extractor). The backlog the dispatch plan sees is the sum
of every daemon's: each connection's last one, plus the owner's own (sent
through ``local()``).

The listening socket is bound at construction (its address goes into the
database when this daemon claims the quota), and serving starts with
``serve``; connections that arrive before wait in the listen backlog.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import queue
import socket
import threading
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any

import pykka
import structlog

from tierbatch.actors.clock import Clock, wall_offset
from tierbatch.actors.messages import (
    Acquire,
    AcquireFailed,
    AdoptGrants,
    Backlog,
    CommitBatch,
    Granted,
    ReleaseHolder,
    Withdraw,
)
from tierbatch.adapters.app.quota_wire import (
    PROTOCOL_VERSION,
    FrameError,
    decode_from_follower,
    encode_answer,
    encode_reply,
    pack_frame,
    read_frame,
)
from tierbatch.policies.backlog import TierBacklog

__all__ = ["QuotaServer", "merge_backlogs", "parse_address"]

_log = structlog.get_logger(__name__)

# Holder ids of remote extractors start here (local extractors count from 1).
_REMOTE_HOLDERS = 1 << 40
_ASK_TIMEOUT_S = 10.0
_ACCEPT_POLL_S = 0.2


def parse_address(text: str) -> tuple[str, int]:
    """``HOST`` or ``HOST:PORT`` (port 0 or none: any free port); raises
    ``ValueError`` naming the problem."""
    host, sep, port_text = text.strip().rpartition(":")
    if not sep:
        host, port_text = text.strip(), "0"
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host:
        raise ValueError(f"quota address {text!r}: no host")
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"quota address {text!r}: port {port_text!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"quota address {text!r}: port {port} is outside 0..65535")
    return host, port


class QuotaServer:
    """Listens on ``host``:``port`` (0: a free port) for followers."""

    def __init__(self, clock: Clock, host: str = "127.0.0.1", port: int = 0) -> None:
        self._clock = clock
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._sock.bind((host, port))
            self._sock.listen(64)
        except OSError:
            self._sock.close()
            raise
        self._sock.settimeout(_ACCEPT_POLL_S)
        bound_host, bound_port = self._sock.getsockname()[:2]
        self.address = (
            f"[{bound_host}]:{bound_port}"
            if family == socket.AF_INET6
            else (f"{bound_host}:{bound_port}")
        )
        self._lock = threading.Lock()
        self._registry: pykka.ActorRef[Any] | None = None
        self._owner = ""
        self._epoch = 0
        self._connections: dict[int, _Connection] = {}
        self._backlogs: dict[object, tuple[TierBacklog, ...]] = {}
        self._ids = itertools.count(1)
        self._holders = itertools.count(_REMOTE_HOLDERS)
        self._accepting = threading.Event()
        self._closed = False
        self._acceptor: threading.Thread | None = None

    # ---- lifecycle -------------------------------------------------------------

    def serve(self, registry: pykka.ActorRef[Any], *, owner: str, epoch: int) -> None:
        """Start answering followers for ``registry`` (this daemon owns the
        quota in ``epoch``). Again after ``stop_serving``: a new registry."""
        with self._lock:
            self._registry = registry
            self._owner = owner
            self._epoch = epoch
            self._backlogs.clear()
        self._accepting.set()
        if self._acceptor is None:
            self._acceptor = threading.Thread(
                target=self._accept_loop, name="tierbatch-quota-server", daemon=True
            )
            self._acceptor.start()

    def stop_serving(self) -> None:
        """Drop every follower (each then looks for the next owner) and stop
        accepting; the socket stays bound for a later ``serve``."""
        self._accepting.clear()
        with self._lock:
            connections = list(self._connections.values())
        for connection in connections:
            connection.close()
        for connection in connections:
            connection.join()
        with self._lock:
            self._registry = None

    def close(self) -> None:
        self.stop_serving()
        self._closed = True
        with contextlib.suppress(OSError):
            self._sock.close()
        if self._acceptor is not None:
            self._acceptor.join(timeout=5.0)

    @property
    def followers(self) -> int:
        with self._lock:
            return len(self._connections)

    def local(self, registry: pykka.ActorRef[Any]) -> _LocalPort:
        """The owner's own way to the registry: everything goes straight to
        it, but its backlog is summed with the followers'."""
        return _LocalPort(self, registry)

    # ---- connections -------------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                sock, peer = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if not self._accepting.is_set():
                # Not the owner now: refuse, so the follower looks again.
                with contextlib.suppress(OSError):
                    sock.close()
                continue
            sock.settimeout(None)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            connection_id = next(self._ids)
            connection = _Connection(self, connection_id, sock, f"{peer[0]}:{peer[1]}")
            with self._lock:
                self._connections[connection_id] = connection
            connection.start()

    def _registry_ref(self) -> pykka.ActorRef[Any] | None:
        with self._lock:
            return self._registry

    def _new_holder(self) -> int:
        with self._lock:
            return next(self._holders)

    def _welcome(self) -> dict[str, Any]:
        with self._lock:
            return {"k": "welcome", "owner": self._owner, "epoch": self._epoch}

    def merge_backlog(self, source: object, tiers: Sequence[TierBacklog] | None) -> None:
        """Source ``source``'s backlog (None: it left); the registry is told the sum."""
        with self._lock:
            if tiers is None:
                if self._backlogs.pop(source, None) is None:
                    return
            else:
                self._backlogs[source] = tuple(tiers)
            merged = merge_backlogs(self._backlogs.values())
            registry = self._registry
        if registry is not None and merged:
            with contextlib.suppress(pykka.ActorDeadError):
                registry.tell(Backlog(merged))

    def _dropped(self, connection: _Connection) -> None:
        with self._lock:
            self._connections.pop(connection.connection_id, None)
            registry = self._registry
        holders = connection.take_holders()
        if registry is not None:
            with contextlib.suppress(pykka.ActorDeadError):
                for holder in holders:
                    registry.tell(ReleaseHolder(holder))
        self.merge_backlog(connection.connection_id, None)
        _log.info(
            "quota follower left; its waits dropped and its grants counted as spent",
            follower=connection.daemon or connection.peer,
            holders=len(holders),
        )


class _LocalPort:
    """What the owner's own ``RegistryHandle`` points at."""

    def __init__(self, server: QuotaServer, registry: pykka.ActorRef[Any]) -> None:
        self._server = server
        self._registry = registry

    def tell(self, message: Any) -> None:
        if isinstance(message, Backlog):
            self._server.merge_backlog("local", message.tiers)
        else:
            self._registry.tell(message)

    def ask(self, message: Any, block: bool = False, timeout: float | None = None) -> Any:
        return self._registry.ask(message, block=block, timeout=timeout)

    def is_alive(self) -> bool:
        return bool(self._registry.is_alive())


class _Connection:
    """One follower: a reader thread decoding its frames into registry
    messages, a writer thread sending the registry's answers."""

    def __init__(self, server: QuotaServer, connection_id: int, sock: socket.socket, peer: str):
        self._server = server
        self.connection_id = connection_id
        self._sock = sock
        self.peer = peer
        self.daemon = ""
        self._out: queue.SimpleQueue[dict[str, Any] | None] = queue.SimpleQueue()
        self._holders: dict[int, int] = {}  # the follower's holder id -> ours
        self._lock = threading.Lock()
        self._reader = threading.Thread(
            target=self._read, name=f"tierbatch-quota-conn-{connection_id}", daemon=True
        )
        self._writer = threading.Thread(
            target=self._write, name=f"tierbatch-quota-send-{connection_id}", daemon=True
        )

    def start(self) -> None:
        self._writer.start()
        self._reader.start()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)

    def join(self) -> None:
        self._reader.join(timeout=5.0)
        self._writer.join(timeout=5.0)

    def send(self, frame: dict[str, Any]) -> None:
        self._out.put(frame)

    def take_holders(self) -> list[int]:
        with self._lock:
            holders = list(self._holders.values())
            self._holders.clear()
        return holders

    def _holder(self, theirs: int) -> int:
        with self._lock:
            ours = self._holders.get(theirs)
            if ours is None:
                ours = self._holders[theirs] = self._server._new_holder()
            return ours

    def _write(self) -> None:
        while True:
            frame = self._out.get()
            if frame is None:
                return
            try:
                self._sock.sendall(pack_frame(frame))
            except OSError:
                self.close()
                return

    def _read(self) -> None:
        stream = self._sock.makefile("rb")
        try:
            hello = read_frame(stream)
            if hello is None or hello.get("k") != "hello":
                raise FrameError("the first frame is not a hello")
            if hello.get("version") != PROTOCOL_VERSION:
                raise FrameError(
                    f"protocol version {hello.get('version')!r}, this tierbatch speaks "
                    f"{PROTOCOL_VERSION}"
                )
            self.daemon = str(hello.get("daemon", ""))
            self.send(self._server._welcome())
            _log.info("quota follower joined", follower=self.daemon, peer=self.peer)
            while (frame := read_frame(stream)) is not None:
                self._handle(frame)
        except FrameError as exc:
            _log.warning("quota follower sent a bad frame; dropped", peer=self.peer, error=str(exc))
        except (OSError, ValueError):
            pass  # the connection went away
        except pykka.ActorDeadError:
            pass  # the registry died: the owner's runtime fails on its own
        finally:
            with contextlib.suppress(OSError):
                stream.close()
            self.close()
            self._out.put(None)
            self._server._dropped(self)
            with contextlib.suppress(OSError):
                self._sock.close()

    def _handle(self, frame: dict[str, Any]) -> None:
        offset = wall_offset(self._server._clock)
        message = decode_from_follower(frame, offset)
        registry = self._server._registry_ref()
        if registry is None:
            raise OSError("not serving")
        match message:
            case Acquire():
                reply = functools.partial(self._reply, message.holder)
                registry.tell(replace(message, holder=self._holder(message.holder), reply=reply))
            case Withdraw(request_id, holder):
                registry.tell(Withdraw(request_id, self._holder(holder)))
            case ReleaseHolder(holder):
                with self._lock:
                    ours = self._holders.pop(holder, None)
                if ours is not None:
                    registry.tell(ReleaseHolder(ours))
            case AdoptGrants(holder, grants):
                registry.tell(AdoptGrants(self._holder(holder), grants))
            case Backlog(tiers):
                self._server.merge_backlog(self.connection_id, tiers)
            case type() | CommitBatch():
                self._answer(registry, frame["id"], message)
            case _:
                registry.tell(message)  # Report, Sent: grant ids are the registry's own

    def _reply(self, holder: int, answer: Granted | AcquireFailed) -> None:
        """The registry's answer to this follower's Acquire (registry thread)."""
        self.send(encode_reply(holder, answer, wall_offset(self._server._clock)))

    def _answer(self, registry: pykka.ActorRef[Any], ask_id: Any, asked: Any) -> None:
        """``asked``: a question's type (one without fields) or the question."""
        question = asked() if isinstance(asked, type) else asked
        try:
            value = registry.ask(question, block=True, timeout=_ASK_TIMEOUT_S)
            frame = encode_answer(ask_id, type(question), value, wall_offset(self._server._clock))
        except pykka.ActorDeadError:
            raise
        except Exception as exc:  # the follower gets the error, the connection lives
            frame = {"k": "answer", "id": ask_id, "error": f"{type(exc).__name__}: {exc}"}
        self.send(frame)


def merge_backlogs(sources: Iterable[Sequence[TierBacklog]]) -> tuple[TierBacklog, ...]:
    """Every daemon's backlog as one: articles and arrival rates add up, the
    tokens per article is their mean weighted by articles."""
    order: list[str] = []
    articles: dict[str, int] = {}
    tokens: dict[str, float] = {}
    weights: dict[str, float] = {}
    arrivals: dict[str, float] = {}
    for backlog in sources:
        for tier in backlog:
            if tier.tier not in articles:
                order.append(tier.tier)
                articles[tier.tier] = 0
                tokens[tier.tier] = weights[tier.tier] = arrivals[tier.tier] = 0.0
            articles[tier.tier] += tier.articles
            weight = max(tier.articles, 0) or (1e-9 if tier.tokens_per_article else 0.0)
            tokens[tier.tier] += tier.tokens_per_article * weight
            weights[tier.tier] += weight
            arrivals[tier.tier] += tier.arrivals_per_s
    return tuple(
        TierBacklog(
            name,
            articles[name],
            tokens[name] / weights[name] if weights[name] else 0.0,
            arrivals[name],
        )
        for name in order
    )

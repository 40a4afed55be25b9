"""A follower's connection to the quota's owner: a remote registry.

``QuotaClient`` is what a follower's ``RegistryHandle`` points at: ``tell``
encodes a registry message (``quota_wire``) and queues it for its writer
thread, ``ask`` returns a future its reader thread fulfils, and the owner's
answers to Acquires go to the replies registered with them. When the
connection drops -- the owner stopped or died -- every question still open
fails with ``LinkLost`` (the handle answers it from what it last saw) and
``on_lost`` is called once, on the reader thread: the quota link then looks
for the next owner.
"""

from __future__ import annotations

import contextlib
import itertools
import queue
import socket
import threading
from collections.abc import Callable
from typing import Any

import pykka
import structlog

from tierbatch.actors.clock import Clock, wall_offset
from tierbatch.actors.messages import Acquire, Granted, ReleaseHolder, Report, Withdraw
from tierbatch.actors.registry_handle import LinkLost
from tierbatch.adapters.app.quota_server import parse_address
from tierbatch.adapters.app.quota_wire import (
    ASKS,
    PROTOCOL_VERSION,
    FrameError,
    decode_answer,
    decode_grant,
    encode_ask,
    encode_to_owner,
    pack_frame,
    read_frame,
)
from tierbatch.policies.outcomes import Cancelled

__all__ = ["QuotaClient"]

_log = structlog.get_logger("tierbatch.quota_client")


class QuotaClient:
    """``address`` is the owner's ``HOST:PORT``; ``daemon`` names this
    process to it. ``connect`` raises ``OSError`` when the owner does not
    answer (or ``FrameError`` when it is not one)."""

    def __init__(
        self,
        address: str,
        clock: Clock,
        *,
        daemon: str,
        on_lost: Callable[[], None],
        connect_timeout_s: float = 2.0,
    ) -> None:
        self.address = address
        self._clock = clock
        self._daemon = daemon
        self._on_lost = on_lost
        self._timeout = connect_timeout_s
        self._sock: socket.socket | None = None
        self._out: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._replies: dict[tuple[int, int], Callable[[Any], None]] = {}
        self._asks: dict[int, tuple[type, pykka.ThreadingFuture[Any]]] = {}
        self._ask_ids = itertools.count(1)
        self._lost = False
        self._closed = False
        self.owner = ""
        self.epoch = 0
        self._threads: list[threading.Thread] = []

    def connect(self) -> None:
        host, port = parse_address(self.address)
        sock = socket.create_connection((host, port), timeout=self._timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(
                pack_frame({"k": "hello", "daemon": self._daemon, "version": PROTOCOL_VERSION})
            )
            stream = sock.makefile("rb")
            welcome = read_frame(stream)
            if welcome is None or welcome.get("k") != "welcome":
                raise FrameError("the owner did not answer the hello")
        except BaseException:
            sock.close()
            raise
        sock.settimeout(None)
        self.owner = str(welcome.get("owner", ""))
        self.epoch = int(welcome.get("epoch", 0))
        self._sock = sock
        self._threads = [
            threading.Thread(
                target=self._read, args=(stream,), name="tierbatch-quota-client", daemon=True
            ),
            threading.Thread(target=self._write, name="tierbatch-quota-client-send", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    # ---- the ActorRef face ---------------------------------------------------------

    def tell(self, message: Any) -> None:
        frame = pack_frame(encode_to_owner(message, wall_offset(self._clock)))
        with self._lock:
            if self._lost or self._closed:
                return
            match message:
                case Acquire():
                    self._replies[(message.holder, message.request_id)] = message.reply
                case Withdraw(request_id, holder):
                    self._replies.pop((holder, request_id), None)
                case ReleaseHolder(holder):
                    for key in [k for k in self._replies if k[0] == holder]:
                        del self._replies[key]
            self._out.put(frame)

    def ask(self, message: Any, block: bool = False, timeout: float | None = None) -> Any:
        future: pykka.ThreadingFuture[Any] = pykka.ThreadingFuture()
        with self._lock:
            if self._lost or self._closed:
                _fail(future)
            else:
                ask_id = next(self._ask_ids)
                self._asks[ask_id] = (type(message), future)
                self._out.put(pack_frame(encode_ask(ask_id, message)))
        return future.get(timeout=timeout) if block else future

    @property
    def lost(self) -> bool:
        """The connection dropped (or was closed)."""
        with self._lock:
            return self._lost or self._closed

    def is_alive(self) -> bool:
        """Alive until closed: a lost connection is the link's to handle."""
        return not self._closed

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self._shutdown()
        for thread in self._threads:
            thread.join(timeout=5.0)

    # ---- threads ---------------------------------------------------------------------

    def _shutdown(self) -> None:
        sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _write(self) -> None:
        sock = self._sock
        assert sock is not None
        while True:
            data = self._out.get()
            if data is None:
                return
            try:
                sock.sendall(data)
            except OSError:
                self._shutdown()
                return

    def _read(self, stream: Any) -> None:
        try:
            while (frame := read_frame(stream)) is not None:
                self._handle(frame)
        except FrameError as exc:
            _log.warning("the quota's owner sent a bad frame", owner=self.address, error=str(exc))
        except (OSError, ValueError):
            pass
        finally:
            with contextlib.suppress(OSError):
                stream.close()
            self._gone()

    def _handle(self, frame: dict[str, Any]) -> None:
        kind = frame["k"]
        offset = wall_offset(self._clock)
        if kind in ("granted", "failed"):
            answer = decode_grant(frame, offset)
            with self._lock:
                reply = self._replies.pop((int(frame["holder"]), answer.request_id), None)
            if reply is not None:
                reply(answer)
            elif isinstance(answer, Granted):  # withdrawn meanwhile: give it back
                self.tell(Report(answer.grant.grant_id, Cancelled()))
        elif kind == "answer":
            with self._lock:
                asked = self._asks.pop(frame.get("id"), None)  # type: ignore[arg-type]
            if asked is None:
                return
            what, future = asked
            if "error" in frame:
                future.set_exception((RuntimeError, RuntimeError(str(frame["error"])), None))
            else:
                future.set(decode_answer(what, frame.get("value"), offset))
        elif kind not in ASKS:
            _log.debug("unknown frame from the quota's owner", kind=kind)

    def _gone(self) -> None:
        with self._lock:
            first = not self._lost
            self._lost = True
            closed = self._closed
            asks = list(self._asks.values())
            self._asks.clear()
            self._replies.clear()
        self._out.put(None)
        self._shutdown()
        for _what, future in asks:
            _fail(future)
        if first and not closed:
            _log.info("lost the quota's owner", owner=self.address)
            self._on_lost()


def _fail(future: pykka.ThreadingFuture[Any]) -> None:
    error = LinkLost("the connection to the quota's owner dropped")
    future.set_exception((LinkLost, error, None))

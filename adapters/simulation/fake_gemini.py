"""A local Gemini-compatible HTTP server, for testing the SDK adapters and
rehearsing whole runs without the real API.

It serves ``GeminiEmulator`` (``gemini_emulator``: every decision and every
body; the model catalogue in ``model_catalog``, batch jobs and files in
``batch_emulator``) over HTTP/1.1 from a background thread with its own
event loop, on loopback by default.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any

import structlog

from tierbatch.actors.clock import Clock, SystemClock
from tierbatch.adapters.simulation.gemini_emulator import (
    FakeGeminiConfig,
    GeminiEmulator,
    ServedRequest,
    summarize,
)
from tierbatch.adapters.simulation.http_transport import serve_connection
from tierbatch.policies.errors import TierbatchError

__all__ = ["FakeGeminiServer", "ServerNotRunningError", "serve_forever"]

_log = structlog.get_logger(__name__)


class ServerNotRunningError(TierbatchError, RuntimeError):
    """The operation needs a started server."""


class FakeGeminiServer:
    """The fake Gemini API on ``host:port`` (loopback, ephemeral port by
    default), served from a background thread with its own event loop.

    Use as a context manager, or ``start()`` / ``stop()``.
    """

    def __init__(
        self,
        config: FakeGeminiConfig,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Clock | None = None,
    ) -> None:
        self.config = config
        self._host = host
        self._port = port
        self._emulator = GeminiEmulator(config, clock or SystemClock())
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[Any]] = set()
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._base_url = ""

    @property
    def base_url(self) -> str:
        if not self._base_url:
            raise ServerNotRunningError("the fake Gemini server is not started")
        return self._base_url

    @property
    def log(self) -> list[ServedRequest]:
        """Every request so far, in decision order (a copy)."""
        return list(self._emulator.log)

    def now(self) -> float:
        """The server's time, the clock its log's ``at`` is on."""
        return self._emulator.now()

    def log_summary(self) -> dict[str, Any]:
        return summarize(self.log)

    def start(self) -> str:
        if self._thread is not None:
            return self.base_url
        self._ready.clear()
        self._startup_error = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="fake-gemini", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._startup_error is not None:
            self._thread.join()
            self._thread = None
            raise self._startup_error
        return self._base_url

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        asyncio.run_coroutine_threadsafe(self._close(), loop).result()
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        self._thread = None
        self._loop = None

    def spend(self, key: str, model: str, requests: int, tokens: int) -> None:
        """Another client spends ``key``'s quota of ``model`` now."""
        loop = self._loop
        if loop is None:
            raise ServerNotRunningError("spend() needs a started server")

        async def spend() -> None:
            self._emulator.quota.spend(key, model, requests, tokens, self._emulator.now())

        asyncio.run_coroutine_threadsafe(spend(), loop).result()

    def __enter__(self) -> FakeGeminiServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _run(self) -> None:
        loop = self._loop
        assert loop is not None
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._open())
        except BaseException as exc:
            self._startup_error = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _open(self) -> None:
        self._server = await asyncio.start_server(
            self._connection, self._host, self._port, backlog=2048
        )
        port = self._server.sockets[0].getsockname()[1]
        host = f"[{self._host}]" if ":" in self._host else self._host
        self._base_url = f"http://{host}:{port}"
        self._emulator.restart_clock()
        _log.info("fake gemini listening", base_url=self._base_url)

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await serve_connection(self._emulator.handle, reader, writer)
        except asyncio.CancelledError:
            # Only stop() cancels these tasks. Ending normally keeps Python
            # 3.11's start_server callback from logging the cancellation.
            pass
        finally:
            self._connections.discard(task)


def serve_forever(
    config: FakeGeminiConfig,
    host: str = "127.0.0.1",
    port: int = 8765,
    *,
    on_ready: Callable[[str], None] | None = None,
    stop: threading.Event | None = None,
) -> None:
    """Serve until ``stop`` is set or the process is interrupted (Ctrl-C),
    for ``tierbatch serve-fake-gemini``. ``on_ready`` receives the base URL.
    Binds to loopback unless told otherwise: it has no real authentication."""
    if host not in ("127.0.0.1", "localhost", "::1"):
        _log.warning("fake gemini bound beyond loopback", host=host)
    server = FakeGeminiServer(config, host=host, port=port)
    base_url = server.start()
    if on_ready is not None:
        on_ready(base_url)
    stop = stop or threading.Event()
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()

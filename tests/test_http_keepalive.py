"""google-genai's HTTP pool keeps a connection across a rate window: under
a per-minute limit the calls come in bursts a window apart, and a pool that
closes connections idle for 5 s (httpx's default) opened every burst's
connections again, which held the burst's first call back by the whole
burst's preparation time (see ``adapters/gemini/http_client.py``)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tierbatch.adapters.gemini.http_client import new_async_client
from tierbatch.adapters.gemini.origin import base_origin


class _Clock:
    def __init__(self, real: Any) -> None:
        self._real = real
        self.skipped = 0.0

    def __call__(self) -> float:
        return float(self._real()) + self.skipped


def test_a_connection_idle_for_a_rate_window_is_reused_by_the_next_burst(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    httpx2 = pytest.importorskip("httpx2")
    from httpcore2._async import http11

    clock = _Clock(http11.time.monotonic)
    monkeypatch.setattr(http11.time, "monotonic", clock)
    connections = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client closed the connection
        finally:
            writer.close()

    async def scenario() -> int:
        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        url = f"http://127.0.0.1:{port}/v1beta/models"
        client = new_async_client(httpx2, base_origin(url), max_connections=4)
        try:
            assert (await client.get(url)).status_code == 200
            clock.skipped += 65.0  # a Gemini rate window (60 s) and a bit, idle
            assert (await client.get(url)).status_code == 200
        finally:
            await client.aclose()
            server.close()
        return connections

    assert asyncio.run(scenario()) == 1

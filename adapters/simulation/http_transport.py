"""The small part of HTTP/1.1 the Gemini SDKs use, served with asyncio streams.

Request line, headers, a Content-Length or chunked body, keep-alive: enough
for httpx (google-genai) and requests (google-generativeai), and light
enough that one event loop holds hundreds of concurrent connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any

import structlog

from tierbatch.policies.errors import TierbatchError

_log = structlog.get_logger(__name__)

MAX_BODY_BYTES = 64 * 1024 * 1024


class HttpProtocolError(TierbatchError):
    """The client sent something that is not the HTTP/1.1 we understand."""


@dataclass(frozen=True, slots=True)
class HttpRequest:
    method: str
    target: str
    version: str
    headers: Mapping[str, str]
    body: bytes

    @property
    def keep_alive(self) -> bool:
        connection = self.headers.get("connection", "").lower()
        if self.version == "HTTP/1.0":
            return connection == "keep-alive"
        return connection != "close"


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """An answer; ``headers`` are extra ones (the upload protocol's
    ``X-Goog-Upload-*``), written after the standard ones."""

    status: int
    body: bytes
    content_type: str = "application/json; charset=UTF-8"
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of_json(
        cls,
        status: int,
        document: Mapping[str, Any],
        headers: tuple[tuple[str, str], ...] = (),
    ) -> HttpResponse:
        body = json.dumps(document, ensure_ascii=False).encode()
        return cls(status, body, headers=headers)

    def encode(self, keep_alive: bool) -> bytes:
        phrase = http.HTTPStatus(self.status).phrase
        extra = "".join(f"{name}: {value}\r\n" for name, value in self.headers)
        head = (
            f"HTTP/1.1 {self.status} {phrase}\r\n"
            f"Content-Type: {self.content_type}\r\n"
            f"Content-Length: {len(self.body)}\r\n"
            f"{extra}"
            "Vary: Origin\r\nVary: X-Origin\r\nVary: Referer\r\n"
            f"Date: {formatdate(usegmt=True)}\r\n"
            "Server: scaffolding on HTTPServer2\r\n"
            f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n"
        )
        return head.encode("latin-1") + self.body


async def read_http_request(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> HttpRequest | None:
    """One request from a keep-alive connection; None when the client
    closed it cleanly between requests."""
    line = await reader.readline()
    if not line:
        return None
    try:
        method, target, version = line.decode("latin-1").rstrip("\r\n").split(" ")
    except ValueError as exc:
        raise HttpProtocolError(f"bad request line {line[:80]!r}") from exc
    if not version.startswith("HTTP/1."):
        raise HttpProtocolError(f"unsupported version {version!r}")
    headers: dict[str, str] = {}
    while True:
        raw = await reader.readline()
        if not raw:
            raise HttpProtocolError("connection closed inside the headers")
        if raw in (b"\r\n", b"\n"):
            break
        name, sep, value = raw.decode("latin-1").partition(":")
        if not sep:
            raise HttpProtocolError(f"bad header line {raw[:80]!r}")
        headers[name.strip().lower()] = value.strip()
    if headers.get("expect", "").lower() == "100-continue":
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = await _read_chunked(reader)
    else:
        try:
            length = int(headers.get("content-length", "0"))
        except ValueError as exc:
            raise HttpProtocolError("bad Content-Length") from exc
        if not 0 <= length <= MAX_BODY_BYTES:
            raise HttpProtocolError(f"Content-Length {length} out of range")
        body = await reader.readexactly(length)
    return HttpRequest(method.upper(), target, version, headers, body)


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    total = 0
    while True:
        size_line = await reader.readline()
        try:
            size = int(size_line.split(b";", 1)[0].strip(), 16)
        except ValueError as exc:
            raise HttpProtocolError("bad chunk size") from exc
        if size == 0:
            while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return b"".join(parts)
        total += size
        if total > MAX_BODY_BYTES:
            raise HttpProtocolError("chunked body too large")
        parts.append(await reader.readexactly(size))
        await reader.readline()


async def _linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Half-close and discard what the client is still sending, briefly, so
    closing with unread input does not reset the connection (RST) before the
    client has read our answer."""
    if writer.can_write_eof():
        writer.write_eof()
    with contextlib.suppress(TimeoutError, ConnectionError, ValueError):
        async with asyncio.timeout(1.0):
            discarded = 0
            while discarded < MAX_BODY_BYTES and (chunk := await reader.read(65536)):
                discarded += len(chunk)


Handler = Callable[[HttpRequest], Awaitable[HttpResponse]]


async def serve_connection(
    handle: Handler, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """Answer requests on one keep-alive connection until it closes. A
    request that is not HTTP gets a 400 in Google's error shape."""
    try:
        while True:
            try:
                request = await read_http_request(reader, writer)
            except (HttpProtocolError, ValueError) as exc:
                # ValueError: a line longer than the stream's limit.
                error = {"code": 400, "message": str(exc), "status": "INVALID_ARGUMENT"}
                response = HttpResponse.of_json(400, {"error": error})
                writer.write(response.encode(keep_alive=False))
                await writer.drain()
                await _linger(reader, writer)
                return
            if request is None:
                return
            try:
                response = await handle(request)
            except Exception:
                # A bug in the handler must not look like a dropped connection.
                _log.exception("fake server handler failed", target=request.target)
                error = {"code": 500, "message": "Internal error", "status": "INTERNAL"}
                response = HttpResponse.of_json(500, {"error": error})
            writer.write(response.encode(request.keep_alive))
            await writer.drain()
            if not request.keep_alive:
                return
    except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        return  # the client went away; nothing to answer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, asyncio.CancelledError):
            await writer.wait_closed()

"""Loopback HTTP servers for the redirect tests: one answers every Gemini
call with a redirect, any of them records every request it is sent (path,
query string, headers, body), so a test can check who ever saw the key."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

LANDING = "/landing/models/x:generateContent"


@dataclass(frozen=True, slots=True)
class Seen:
    """One request a server received."""

    method: str
    target: str
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def text(self) -> str:
        lines = [f"{self.method} {self.target}", *(f"{k}: {v}" for k, v in self.headers)]
        return "\n".join(lines) + "\n" + self.body.decode("utf-8", "replace")


class RecordingServer:
    """On 127.0.0.1, an ephemeral port. A request to ``LANDING`` is answered
    200 with an empty JSON object; any other is answered ``status`` (with
    ``Location: location`` when that is set)."""

    def __init__(self) -> None:
        self.status = 200
        self.location = ""
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with owner._lock:
                    owner.seen.append(
                        Seen(self.command, self.path, tuple(self.headers.items()), body)
                    )
                if owner.status != 200 and not self.path.startswith("/landing"):
                    self.send_response(owner.status)
                    if owner.location:
                        self.send_header("Location", owner.location)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                payload = b"{}"
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = _answer

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def requests(self) -> list[Seen]:
        with self._lock:
            return list(self.seen)

    def __enter__(self) -> RecordingServer:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

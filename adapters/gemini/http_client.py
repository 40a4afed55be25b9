"""The httpx client google-genai sends through, and what it tells the runtime.

* **No redirects, one origin.** ``follow_redirects=False`` (the SDK's own
  clients follow them, and a redirect to another host would carry the
  ``x-goog-api-key`` header there), and a request hook refuses any request
  to an origin other than the configured base URL's (``ForeignOriginError``).
* **A pool as large as the calls in flight.** httpx's default pool holds
  100 connections (20 kept alive); the runtime may have more calls out, and
  the rest would queue for a connection. The provider factory passes the
  runtime's limit; idle connections are kept up to the same number.
* **Idle connections outlive a rate window** (``KEEPALIVE_S``). Under a
  per-minute limit the calls come in bursts a window apart, idle in
  between; httpx closes a connection idle for 5 s, so every window's burst
  opened all its connections again, and the first call of the burst left
  only once the whole burst had been prepared (each task awaiting its
  connect let the next one's preparation run first) -- late by the burst's
  CPU time, which the next window then inherits. Kept for two minutes, the
  next burst reuses them and its first call leaves at once.
* **When the call has a connection, and when its request is written.**
  httpcore's ``trace`` request extension reports each step on the call's
  own task: ``connection.connect_tcp.started`` (a new connection, so the
  pool has handed one out) or ``http11.send_request_headers.started`` (a
  reused one) restarts the call's deadline (``CallTiming``), and
  ``http11.send_request_body.complete`` is when the request has left, which
  is when the runtime's rate window should count it from
  (``mark_request_sent``). An httpx request hook would be too early: it
  runs before the pool hands out a connection.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from tierbatch.actors.ports import mark_request_sent
from tierbatch.adapters.gemini.call_timing import CallTiming
from tierbatch.adapters.gemini.origin import Origin, require_origin

_CONNECTED = (
    ".connect_tcp.started",
    ".connect_unix_socket.started",
    ".send_request_headers.started",
)
_WRITTEN = (".send_request_body.complete", ".send_request_body.failed")

# Longer than Gemini's 60 s rate window (with room), so a burst's connections
# are still pooled when the next window opens.
KEEPALIVE_S = 120.0

_timing: ContextVar[CallTiming | None] = ContextVar("tierbatch_gemini_call_timing", default=None)


@contextmanager
def timing_of_this_call(timing: CallTiming) -> Iterator[None]:
    """What the trace events of requests sent from this context report to."""
    token = _timing.set(timing)
    try:
        yield
    finally:
        _timing.reset(token)


async def _trace(event: str, _info: dict[str, Any]) -> None:
    if event.endswith(_CONNECTED):
        timing = _timing.get()
        if timing is not None:
            timing.connected()
    elif event.endswith(_WRITTEN):
        mark_request_sent()


def new_async_client(
    httpx: Any, allowed: Origin, max_connections: int, ssl_context: Any = None
) -> Any:
    """An ``AsyncClient`` of the ``httpx`` module given (httpx2 or httpx).
    ``ssl_context``: one to share (building one costs ~25 ms of CPU, and a
    provider opens a client per pool shard); None: the module's default."""

    async def prepare(request: Any) -> None:
        require_origin(str(request.url), allowed)
        request.extensions["trace"] = _trace

    return httpx.AsyncClient(
        verify=True if ssl_context is None else ssl_context,
        follow_redirects=False,
        limits=httpx.Limits(
            max_connections=max_connections,
            max_keepalive_connections=max_connections,
            keepalive_expiry=KEEPALIVE_S,
        ),
        event_hooks={"request": [prepare]},
    )

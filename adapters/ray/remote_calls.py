"""The model calls of a daemon's extractors, in async Ray actors on any node.

A second shell, not a second extractor: the daemon's own ``Extractor``
actors still pack, walk the fallback chain through the (shared) registry,
check the answers' grounding and hand results to the composer, exactly as
without Ray. What moves is the ``Provider`` call -- building the request,
the HTTP round trip, parsing and validating the answer: the part that
costs the CPU (a few milliseconds a call in google-genai) and holds the
connections. ``RayProvider`` is a ``Provider`` whose ``extract`` runs on one
of a pool of ``CallerActor``\\ s, async Ray actors spread over the cluster's
nodes (``SPREAD``), each with a provider client of its own built on its
node by the factory it was given (a picklable callable: the app's
provider factory with the config). The API key is read there, from the
node's own environment (``ray start`` with ``GEMINI_API_KEY`` set): it
never travels through Ray.

What crosses the wire is the plain data of the port: an
``ExtractionRequest`` goes, the ``PackAnswer`` comes back. A call is a
streaming generator so that the moment its request has left (the
provider's ``mark_request_sent`` on the actor's node) is told back before
the answer: the daemon's runtime marks it then, and the registry's rate
window counts the request from there -- a Ray hop after the real send, so
never earlier than the provider sees it.

Failures are outcomes, never crashes: an actor that died (its node lost)
answers the call ``ServerError`` and the runtime retries the pack, on the
next actor; Ray restarts the actor but never retries a call itself (a
retried call could send the same request twice and spend its quota twice).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import structlog

from tierbatch.actors.ports import (
    ExtractionRequest,
    PackAnswer,
    Provider,
    bind_request_sent,
    mark_request_sent,
)
from tierbatch.policies.outcomes import ServerError

__all__ = ["CallerActor", "RayProvider", "start_callers"]

_log = structlog.get_logger(__name__)

SENT = "sent"
ANSWER = "answer"
# Calls one actor may have out at once (each is one pending coroutine).
MAX_CALLS_PER_ACTOR = 10_000


class CallerActor:
    """The actor's class (``ray.remote`` is applied in ``start_callers``):
    one provider client, built on first use on this actor's node."""

    def __init__(self, make_provider: Callable[[], tuple[Provider, str]]) -> None:
        self._make = make_provider
        self._provider: Provider | None = None
        self._description = ""

    def _the_provider(self) -> Provider:
        if self._provider is None:
            self._provider, self._description = self._make()
        return self._provider

    async def extract(self, request: ExtractionRequest) -> AsyncIterator[tuple[str, Any]]:
        """Yields ``("sent", None)`` when the request has left (if the
        provider marks it), then ``("answer", PackAnswer)``."""
        provider = self._the_provider()
        loop = asyncio.get_running_loop()
        sent = asyncio.Event()

        def on_sent() -> None:  # any thread: the provider may send from a worker
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(sent.set)

        async def call() -> PackAnswer:
            bind_request_sent(on_sent)  # this task's context only
            return await provider.extract(request)

        task = asyncio.ensure_future(call())
        marked = asyncio.ensure_future(sent.wait())
        try:
            await asyncio.wait({task, marked}, return_when=asyncio.FIRST_COMPLETED)
            if sent.is_set():
                yield SENT, None
            answer = await task
        finally:
            marked.cancel()
            if not task.done():
                task.cancel()
        yield ANSWER, answer

    async def aclose(self) -> None:
        if self._provider is not None:
            await self._provider.aclose()
            self._provider = None

    async def start(self) -> str:
        """Build the provider now, so a node without the API key fails the
        daemon's start, not its calls; its description."""
        self._the_provider()
        return self._description


class RayProvider:
    """A ``Provider`` whose calls run on ``actors`` (handles on
    ``CallerActor``\\ s), taken in turn."""

    def __init__(self, actors: Sequence[Any], *, description: str = "") -> None:
        if not actors:
            raise ValueError("RayProvider needs at least one caller actor")
        self._actors = list(actors)
        self._turn = itertools.cycle(range(len(self._actors)))
        self.description = description or f"{len(self._actors)} caller actors on Ray"

    async def extract(self, request: ExtractionRequest) -> PackAnswer:
        actor = self._actors[next(self._turn)]
        calls = actor.extract.options(num_returns="streaming").remote(request)
        try:
            async for ref in calls:
                kind, value = await ref
                if kind == SENT:
                    mark_request_sent()
                elif kind == ANSWER and isinstance(value, PackAnswer):
                    return value
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                _ray().cancel(calls)
            raise
        except Exception as exc:  # the actor died, its node was lost, ...
            _log.warning("a caller actor failed a call", error=repr(exc), model=request.model)
            return PackAnswer(
                ServerError(None, f"caller actor on Ray failed: {type(exc).__name__}")
            )
        return PackAnswer(ServerError(None, "caller actor on Ray answered nothing"))

    async def aclose(self) -> None:
        """Close every actor's provider client, then end the actors."""
        ray = _ray()
        closing = [actor.aclose.remote() for actor in self._actors]
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.gather(*closing, return_exceptions=True), 10.0)
        for actor in self._actors:
            with contextlib.suppress(Exception):
                ray.kill(actor, no_restart=True)


def _ray() -> Any:
    import ray

    return ray


def start_callers(count: int, make_provider: Callable[[], tuple[Provider, str]]) -> RayProvider:
    """``count`` caller actors spread over the cluster's nodes (this process
    must have joined it), each building its provider with ``make_provider``
    on its node (the provider and its description); waits until every one
    has built it (the error of one
    that cannot -- no API key on its node -- is raised, and none is left).
    They belong to this daemon (not detached): they end when it does."""
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    ray = _ray()
    remote = ray.remote(
        max_restarts=-1,
        max_task_retries=0,
        max_concurrency=MAX_CALLS_PER_ACTOR,
        num_cpus=0,
        scheduling_strategy="SPREAD",
    )(CallerActor)
    actors = [remote.remote(make_provider) for _ in range(count)]
    try:
        described = ray.get([actor.start.remote() for actor in actors], timeout=120)
    except Exception:
        for actor in actors:
            with contextlib.suppress(Exception):
                ray.kill(actor, no_restart=True)
        raise
    return RayProvider(actors, description=f"{count} caller actors on Ray ({described[0]})")

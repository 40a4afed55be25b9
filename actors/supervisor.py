"""Supervisor: keeps the extractor pool at strength.

pykka has no supervision, so this is ours. When an extractor dies, the
registry abandons its grants and drops its waits, the composer takes back
the articles it held (counting the crash against each, so an article that
keeps killing extractors ends as poison instead of looping), and a fresh
extractor with a new id takes its place. Too many crashes in a short time
stop the restarts: something is systematically wrong, and the runtime is
told (``ExtractorsKeepCrashingError``) rather than left with an empty pool.
"""

from __future__ import annotations

import contextlib
import itertools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pykka
import structlog

from tierbatch.actors.clock import Clock
from tierbatch.actors.messages import ExtractorDied, ReleaseHolder
from tierbatch.actors.threads import ThreadLedger
from tierbatch.policies.errors import ExtractorsKeepCrashingError

_log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class ExtractorCrashed:
    extractor: int
    error: str
    blamed: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class StopPool:
    pass


@dataclass(frozen=True, slots=True)
class StopRestarting:
    """The runtime failed or is stopping: crashed extractors are cleaned up
    after but no longer replaced."""


class Supervisor(pykka.ThreadingActor):
    """``on_give_up`` is told when restarts stop; ``on_died`` (on this
    actor's thread) if one of its own handlers raises."""

    # A stuck actor thread must never keep the process from exiting.
    use_daemon_thread = True

    def __init__(
        self,
        size: int,
        start_extractor: Callable[[int], pykka.ActorRef[Any]],
        registry: pykka.ActorRef[Any],
        composer: pykka.ActorRef[Any],
        clock: Clock,
        on_give_up: Callable[[ExtractorsKeepCrashingError], None],
        max_restarts: int = 20,
        restart_window_s: float = 60.0,
        on_died: Callable[[str, BaseException], None] | None = None,
        threads: ThreadLedger | None = None,
    ) -> None:
        super().__init__()
        self._on_died = on_died
        self._threads = threads
        self._size = size
        self._start_extractor = start_extractor
        self._registry = registry
        self._composer = composer
        self._clock = clock
        self._on_give_up = on_give_up
        self._max_restarts = max_restarts
        self._window = restart_window_s
        self._ids = itertools.count(1)
        self._pool: dict[int, pykka.ActorRef[Any]] = {}
        self._restarts: deque[float] = deque()
        self._stopping = False

    def on_start(self) -> None:
        if self._threads is not None:
            self._threads.add_current("supervisor")
        for _ in range(self._size):
            self._spawn()

    def on_failure(self, exception_type: Any, exception_value: Any, traceback: Any) -> None:
        if self._on_died is not None:
            self._on_died("supervisor", exception_value)

    def _spawn(self) -> None:
        extractor_id = next(self._ids)
        self._pool[extractor_id] = self._start_extractor(extractor_id)

    def on_receive(self, message: Any) -> Any:
        match message:
            case ExtractorCrashed(extractor, error, blamed):
                self._on_crash(extractor, error, blamed)
            case StopRestarting():
                self._stopping = True
            case StopPool():
                self._stopping = True
                refs = list(self._pool.values())
                self._pool.clear()
                return refs
            case _:
                raise TypeError(f"Supervisor: unexpected message {message!r}")
        return None

    def _on_crash(self, extractor: int, error: str, blamed: tuple[str, ...]) -> None:
        if self._pool.pop(extractor, None) is None:
            return
        # A dead registry or composer has already failed the runtime.
        with contextlib.suppress(pykka.ActorDeadError):
            self._registry.tell(ReleaseHolder(extractor))
        with contextlib.suppress(pykka.ActorDeadError):
            self._composer.tell(ExtractorDied(extractor, error, blamed))
        if self._stopping:
            return
        now = self._clock.now()
        self._restarts.append(now)
        while self._restarts and self._restarts[0] < now - self._window:
            self._restarts.popleft()
        if len(self._restarts) > self._max_restarts:
            _log.error(
                "extractors keep crashing; not restarting",
                crashes=len(self._restarts),
                window_s=self._window,
                error=error,
            )
            self._stopping = True
            self._on_give_up(ExtractorsKeepCrashingError(len(self._restarts), self._window, error))
            return
        _log.warning("extractor crashed; restarting", extractor=extractor, error=error)
        self._spawn()

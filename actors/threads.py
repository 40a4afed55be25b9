"""The threads a runtime's actors run on, so ``stop`` can wait for them.

pykka keeps no handle on an actor's thread, and an actor that died is no
longer alive to pykka while its thread may still be running its failure
handler. Each actor adds its own thread here when it starts; ``join``
waits, bounded, for all of them to end.
"""

from __future__ import annotations

import threading
import time


class ThreadLedger:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._threads: list[tuple[str, threading.Thread]] = []

    def add_current(self, role: str) -> None:
        """Called by an actor from its ``on_start``, on its own thread;
        ``role`` names it ("registry", "composer", ...)."""
        thread = threading.current_thread()
        with self._lock:
            self._threads = [(r, t) for r, t in self._threads if t.is_alive()]
            self._threads.append((role, thread))

    def join(self, timeout: float, role: str | None = None) -> list[str]:
        """Wait up to ``timeout`` seconds in all for every thread (of
        ``role``, when given) to end; returns the names of those still
        running."""
        deadline = time.monotonic() + timeout
        with self._lock:
            threads = [t for r, t in self._threads if role is None or r == role]
        current = threading.current_thread()
        for thread in threads:
            if thread is not current:
                thread.join(max(0.0, deadline - time.monotonic()))
        return [t.name for t in threads if t.is_alive() and t is not current]

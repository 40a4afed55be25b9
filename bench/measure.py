"""What the harness measures inside the process of the system under test:
terminal results as they happen, CPU time per thread, peak memory."""

from __future__ import annotations

import os
import resource
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

# Thread-name prefixes of the runtime's own actors (pykka names a thread
# after its actor class) and timer, and of its event-loop thread, where the
# provider SDK runs.
ACTOR_THREADS = (
    "ModelRegistry",
    "BatchComposer",
    "Extractor",
    "Supervisor",
    "tierbatch-registry-waker",
)
IO_THREADS = ("tierbatch-io",)


@dataclass(frozen=True, slots=True)
class Completion:
    article_id: str
    ok: bool
    model: str | None
    at: float


@dataclass
class Recorder:
    """Terminal results, once per report, with the wall-clock time they
    reached the application. Thread-safe: systems report from any thread."""

    completions: list[Completion] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, article_id: str, ok: bool, model: str | None, at: float | None = None) -> None:
        entry = Completion(article_id, ok, model, time.time() if at is None else at)
        with self._lock:
            self.completions.append(entry)
            self.counts[article_id] += 1

    def terminal_ids(self) -> set[str]:
        with self._lock:
            return set(self.counts)

    def duplicates(self) -> int:
        with self._lock:
            return sum(1 for n in self.counts.values() if n > 1)


def thread_cpu_seconds() -> dict[str, float]:
    """CPU seconds (user + system) of every live thread of this process, by
    thread name, read from /proc (Linux). Empty elsewhere."""
    names = {t.native_id: t.name for t in threading.enumerate() if t.native_id is not None}
    out: dict[str, float] = {}
    task_dir = Path(f"/proc/{os.getpid()}/task")
    if not task_dir.exists():
        return out
    for task in task_dir.iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        cpu = (int(fields[11]) + int(fields[12])) / _TICKS
        tid = int(task.name)
        name = names.get(tid, f"native-{tid}")
        out[name] = out.get(name, 0.0) + cpu
    return out


def classify_cpu(per_thread: dict[str, float]) -> dict[str, float]:
    """Per-thread CPU folded into: the runtime's actors, its I/O loop (SDK and
    HTTP), the main thread, and other threads."""
    out = {"actors": 0.0, "io": 0.0, "main": 0.0, "other": 0.0}
    for name, cpu in per_thread.items():
        if name.startswith(ACTOR_THREADS):
            out["actors"] += cpu
        elif name.startswith(IO_THREADS):
            out["io"] += cpu
        elif name == "MainThread":
            out["main"] += cpu
        else:
            out["other"] += cpu
    return out


def process_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def peak_rss_mb() -> float:
    """This process's peak resident set size (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0

"""Shared builders for the CLI and daemon tests: config files pointing at the
fake Gemini server, sample input, read-only looks into a database, and a
daemon subprocess whose JSON log lines can be waited on."""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

SAMPLE = resources.files("tierbatch.adapters") / "data" / "sample_articles.jsonl"
TEST_KEY = "test-key-0123456789"


def sample_lines(n: int | None = None) -> list[str]:
    lines = [line for line in SAMPLE.read_text(encoding="utf-8").splitlines() if line.strip()]
    return lines if n is None else lines[:n]


def sample_ids(n: int | None = None) -> list[str]:
    return [json.loads(line)["id"] for line in sample_lines(n)]


def write_jsonl(path: Path, lines: Sequence[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def write_config(
    path: Path,
    *,
    base_url: str | None = None,
    pro_rpd: int = 0,
    extractors: int = 2,
    max_packs: int = 4,
    window_s: float = 2.0,
    hot_per_request: int = 2,
    poison_after: int = 3,
    pro_rpm: int = 6000,
    lite_rpm: int = 6000,
    margin_s: float = 0.0,
) -> Path:
    """Two models, two tiers; every sample article is 'hot' (goodness 0.5
    reaches min_priority 0.5), served by m-pro then m-lite. With
    ``base_url`` the provider is google-genai against the fake server,
    otherwise the simulation."""
    provider = (
        f'[provider]\nkind = "genai"\nbase_url = "{base_url}"\n'
        if base_url
        else '[provider]\nkind = "simulated"\n'
    )
    path.write_text(
        f"""global_fallback = "m-lite"

[models."m-pro"]
rpm = {pro_rpm}
tpm = 100_000_000
rpd = {pro_rpd}
price_in_per_m = 1.0
price_out_per_m = 2.0

[models."m-lite"]
rpm = {lite_rpm}
tpm = 100_000_000
rpd = 0
price_in_per_m = 0.1
price_out_per_m = 0.2

[[tiers]]
name = "hot"
min_priority = 0.5
model = "m-pro"
fallback_model = "m-lite"
max_articles_per_request = {hot_per_request}

[[tiers]]
name = "cold"
min_priority = 0.0
model = "m-lite"
max_articles_per_request = 4

[composer]
mix = {{ hot = 2, cold = 4 }}

[priority]
hotness_weight = 0.0
goodness_weight = 1.0

[quota]
window_s = {window_s}
margin_s = {margin_s}

[retry]
request_timeout_s = 10.0
poison_after = {poison_after}

[runtime]
extractors = {extractors}
max_packs_in_flight = {max_packs}

{provider}""",
        encoding="utf-8",
    )
    return path


def query(db: Path, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    """Read the database with a connection of its own, closed at once."""
    conn = sqlite3.connect(db, timeout=10.0)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def states(db: Path) -> dict[str, int]:
    return dict(query(db, "SELECT state, COUNT(*) FROM articles GROUP BY state"))


def ids_in_state(db: Path, state: str) -> set[str]:
    return {row[0] for row in query(db, "SELECT id FROM articles WHERE state = ?", (state,))}


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    """Wait for a condition another process or thread brings about."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        pause.wait(0.05)


def tierbatch_command() -> list[str]:
    """The installed console script, else ``python -m``."""
    script = Path(sys.executable).with_name("tierbatch")
    if script.exists():
        return [str(script)]
    found = shutil.which("tierbatch")
    return [found] if found else [sys.executable, "-m", "tierbatch.adapters.app.cli"]


def child_env(key: str | None = TEST_KEY) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("GEMINI_API_KEY", "GOOGLE_API_KEY")}
    if key is not None:
        env["GEMINI_API_KEY"] = key
    return env


class DaemonProcess:
    """``tierbatch daemon`` (or any subcommand) in a child process; its
    stderr JSON log lines are collected by a thread and can be waited on."""

    def __init__(
        self, args: Sequence[str], env: dict[str, str], command: Sequence[str] | None = None
    ) -> None:
        self.proc = subprocess.Popen(
            [*(tierbatch_command() if command is None else command), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            # a hang shows every thread's stack: ``wait`` aborts a child
            # that outlives its timeout, and faulthandler prints them
            env={**env, "PYTHONFAULTHANDLER": "1"},
        )
        self.events: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self._lines: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.raw.append(line)
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(event, dict):
                self.events.append(event)
                self._lines.put(event)
        self._lines.put(None)

    def wait_for_event(self, name: str, timeout: float = 30.0) -> dict[str, Any]:
        for event in self.events:
            if event.get("event") == name:
                return event
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {name!r} log line in {timeout} s:\n{self.stderr()}")
            try:
                event = self._lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if event is None:
                raise AssertionError(f"process ended before {name!r}:\n{self.stderr()}")
            if event.get("event") == name:
                return event

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 60.0) -> int:
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGABRT)  # faulthandler dumps the threads
            self.proc.wait(timeout=10.0)
            self._reader.join(timeout=10.0)
            raise AssertionError(
                f"still running after {timeout} s; its threads and log:\n{self.stderr()}"
            ) from None
        self._reader.join(timeout=10.0)
        return code

    def stdout(self) -> str:
        assert self.proc.stdout is not None
        return self.proc.stdout.read()

    def stderr(self) -> str:
        return "".join(self.raw)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10.0)

    def __enter__(self) -> DaemonProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


def called_ids(log: Sequence[Any], *, status: int | None = None) -> Iterator[str]:
    """Article ids of every generateContent request in a fake server log."""
    for entry in log:
        if entry.method == "generateContent" and (status is None or entry.status == status):
            yield from entry.article_ids

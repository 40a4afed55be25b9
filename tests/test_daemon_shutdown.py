"""How the daemon stops: SIGTERM starts no new call and hands back at once
what is not in flight; a runtime that fails (an actor died, extractors
keep crashing) still releases every lease, saves the quota state and exits
with its own code. Waits are bounded; faults are injected by monkeypatching
an actor's handler to raise."""

from __future__ import annotations

import io
import signal
import threading
import time
from collections import Counter
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import (
    DaemonProcess,
    child_env,
    ids_in_state,
    query,
    sample_ids,
    sample_lines,
    states,
    wait_until,
    write_config,
    write_jsonl,
)
from runtime_helpers import Gate, answer_all

from tierbatch.actors.composer import BatchComposer
from tierbatch.actors.extractor import Extractor
from tierbatch.actors.ports import ExtractionRequest, PackAnswer
from tierbatch.actors.registry import ModelRegistry
from tierbatch.adapters.app.cli import EXIT_OK, EXIT_RUNTIME_FAILED, main
from tierbatch.adapters.app.daemon import Daemon, DaemonOptions, StopReason
from tierbatch.adapters.app.quota_file import default_snapshot_path
from tierbatch.adapters.simulation.fake_gemini import FakeGeminiServer
from tierbatch.adapters.simulation.gemini_emulator import FakeGeminiConfig
from tierbatch.adapters.storage.config_file import load_config
from tierbatch.adapters.storage.ingest import ingest_jsonl
from tierbatch.adapters.storage.snapshot_file import SnapshotFile, decode
from tierbatch.adapters.storage.sqlite_store import SqliteStore, default_owner
from tierbatch.policies.config import ModelSpec


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    return main(list(argv), stdout=out, stderr=err), out.getvalue(), err.getvalue()


def enqueue(db: Path, lines: list[str]) -> None:
    with SqliteStore(db, owner=default_owner()) as store:
        report = ingest_jsonl(store, io.BytesIO("\n".join(lines).encode()), source_name="test")
    assert report.inserted == len(lines)


def inject_fault(monkeypatch: pytest.MonkeyPatch, cls: type, method: str) -> None:
    def boom(self: Any, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"injected fault in {cls.__name__}.{method}")

    monkeypatch.setattr(cls, method, boom)


@pytest.fixture
def simulated(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    return monkeypatch


class GatedProvider:
    """Every call waits for the gate; remembers the articles of every call."""

    def __init__(self) -> None:
        self.gate = Gate()
        self.called = threading.Event()
        self._lock = threading.Lock()
        self._ids: list[str] = []

    async def extract(self, request: ExtractionRequest) -> PackAnswer:
        with self._lock:
            self._ids.extend(a.id for a in request.articles)
        self.called.set()
        await self.gate.wait()
        return answer_all(request)

    async def aclose(self) -> None:
        self.gate.open()

    def ids(self) -> list[str]:
        with self._lock:
            return list(self._ids)


# ---- SIGTERM ----------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_sigterm_releases_leases_not_in_flight_at_once(tmp_path: Path) -> None:
    """While the calls in flight still hang, the stop request already hands
    back every other lease; then the calls finish, and nothing else was
    called."""
    base = load_config(write_config(tmp_path / "c.toml", extractors=1, max_packs=2))
    tight = {name: replace(spec, rpm=3) for name, spec in base.models.items()}
    config = replace(base, models=tight)
    db = tmp_path / "q.sqlite"
    enqueue(db, sample_lines(120))
    provider = GatedProvider()
    store = SqliteStore(db, owner=default_owner())
    daemon = Daemon(
        config,
        store,
        provider=provider,
        snapshot=SnapshotFile(default_snapshot_path(db)),
        options=DaemonOptions(poll_interval_s=0.02, lease_s=30.0, drain_timeout_s=60.0),
    )
    report: list[Any] = []
    thread = threading.Thread(target=lambda: report.append(daemon.run()), daemon=True)
    thread.start()
    try:
        assert provider.called.wait(20)
        wait_until(lambda: states(db).get("leased", 0) > len(provider.ids()), 20, "a backlog")
        daemon.request_stop()
        # The calls still hang, yet only their articles stay leased.
        wait_until(
            lambda: states(db).get("leased", 0) == len(provider.ids()),
            20,
            "the leases of work not in flight to be released",
        )
        in_flight = provider.ids()
        provider.gate.open()
        thread.join(30)
        assert not thread.is_alive(), "the daemon did not stop"
    finally:
        provider.gate.open()
        store.close()
    assert report and report[0].reason is StopReason.SIGNAL
    assert provider.ids() == in_flight, "a call started after the stop request"
    assert ids_in_state(db, "done") == set(in_flight)
    assert states(db) == {"done": len(in_flight), "queued": 120 - len(in_flight)}


@pytest.mark.timeout(120)
def test_sigterm_starts_no_new_call(tmp_path: Path) -> None:
    """SIGTERM in a 429 storm: the server admits three requests per model
    and 2 s window while the config claims thousands, so the runtime keeps
    being refused and retrying. After the signal no call starts (the only
    requests the server sees afterwards are those already on their way),
    the daemon exits 0 well within the drain timeout, every unfinished
    article is queued again and every finished one has exactly one result."""
    drain_timeout = 8.0
    limits = {name: ModelSpec(name, rpm=3, tpm=100_000_000, rpd=0) for name in ("m-pro", "m-lite")}
    fake = FakeGeminiConfig(models=limits, window_s=2.0, latency_s=0.05, seed=3)
    with FakeGeminiServer(fake) as server:
        config = write_config(
            tmp_path / "c.toml", base_url=server.base_url, extractors=2, max_packs=4
        )
        db = tmp_path / "storm.sqlite"
        enqueue(db, sample_lines(200))
        args = ["daemon", "--db", str(db), "--config", str(config)]
        with DaemonProcess([*args, "--drain-timeout", str(drain_timeout)], child_env()) as daemon:
            daemon.wait_for_event("daemon ready")
            wait_until(
                lambda: (
                    sum(r.status == 429 for r in server.log) >= 20
                    and states(db).get("done", 0) >= 4
                ),
                60,
                "a 429 storm with some results",
            )
            signalled = time.time()
            daemon.signal(signal.SIGTERM)
            code = daemon.wait(drain_timeout + 5)
            exited = time.time()
        log = server.log
    assert code == EXIT_OK, daemon.stderr()
    assert exited - signalled < drain_timeout + 5
    # When the daemon acted on the signal, by its own log.
    stopping = [e for e in daemon.events if e["event"].startswith("stopping: no more leasing")]
    assert stopping, daemon.stderr()
    stopped_at = datetime.fromisoformat(stopping[0]["timestamp"]).timestamp()
    assert signalled <= stopped_at + 0.05  # (the two clocks are the same wall clock)
    # The calls in flight then were already on their way and arrive within
    # moments; a retry or a new call would keep coming for the whole drain.
    calls = [r for r in log if r.method == "generateContent"]
    late = [r for r in calls if r.at > stopped_at + 1.0]
    assert not late, (
        f"{len(late)} call(s) started after the signal, the last "
        f"{late[-1].at - signalled:.1f} s after it"
    )
    assert len([r for r in calls if r.at > signalled]) <= 2 * 4  # at most those in flight
    counts = states(db)
    assert counts.get("leased", 0) == 0
    assert counts.get("queued", 0) > 0
    assert sum(counts.values()) == 200
    rows = query(db, "SELECT article_id, COUNT(*) FROM results GROUP BY article_id")
    assert all(count == 1 for _, count in rows)
    assert {r[0] for r in rows} == ids_in_state(db, "done") | ids_in_state(db, "failed")


# ---- the runtime failing ------------------------------------------------------------


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("actor", "cls", "method"),
    [
        ("registry", ModelRegistry, "_on_report"),
        ("composer", BatchComposer, "_on_finished"),
    ],
)
def test_actor_death_in_daemon_releases_leases_and_exits_non_zero(
    tmp_path: Path, simulated: pytest.MonkeyPatch, actor: str, cls: type, method: str
) -> None:
    inject_fault(simulated, cls, method)
    config = write_config(tmp_path / "c.toml")
    articles = write_jsonl(tmp_path / "in.jsonl", sample_lines(40))
    db = tmp_path / "r.sqlite"
    before = set(threading.enumerate())
    code, _out, err = run_cli(
        "run", str(articles), "--db", str(db), "--config", str(config), "--no-progress"
    )
    assert code == EXIT_RUNTIME_FAILED, err
    assert f"the {actor} died" in err and "API key" not in err.split("\n")[0]
    assert "stay queued" in err
    counts = states(db)
    assert counts.get("leased", 0) == 0
    assert sum(counts.values()) == 40
    rows = query(db, "SELECT article_id, COUNT(*) FROM results GROUP BY article_id")
    assert all(count == 1 for _, count in rows)
    assert {r[0] for r in rows} == ids_in_state(db, "done") | ids_in_state(db, "failed")
    assert decode(default_snapshot_path(db).read_bytes())["format"] == "tierbatch.quota"
    leaked = {t for t in set(threading.enumerate()) - before if t.is_alive()}
    assert not leaked, leaked


@pytest.mark.timeout(120)
def test_supervisor_give_up_has_its_own_exit_code(
    tmp_path: Path, simulated: pytest.MonkeyPatch
) -> None:
    """Extractors that crash on every batch: the supervisor gives up, and
    that is reported as what it is -- not as a refused API key (exit 4)."""
    inject_fault(simulated, Extractor, "_take")
    config = write_config(tmp_path / "c.toml")
    articles = write_jsonl(tmp_path / "in.jsonl", sample_lines(60))
    db = tmp_path / "r.sqlite"
    code, out, err = run_cli(
        "run", str(articles), "--db", str(db), "--config", str(config), "--no-progress"
    )
    assert code == EXIT_RUNTIME_FAILED, err
    assert "extractors keep crashing" in err
    assert "injected fault in Extractor._take" in err  # the last error
    assert "refused" not in err and "GEMINI_API_KEY" not in err
    assert "stopped: the runtime failed: extractors keep crashing" in out
    counts = states(db)
    assert counts.get("leased", 0) == 0
    assert sum(counts.values()) == 60
    poisoned = Counter(row[0] for row in query(db, "SELECT reason FROM results"))
    assert set(poisoned) <= {"poison"}
    assert set(sample_ids(60)) == ids_in_state(db, "queued") | ids_in_state(db, "failed")

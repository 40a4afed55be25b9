"""The ingest daemon: rows inserted while it runs, SIGTERM draining, SIGKILL
and restart without losing or repeating work, per-day quota carried over a
restart, bounded leasing, and an unusable quota snapshot."""

from __future__ import annotations

import asyncio
import io
import json
import random
import signal
import sqlite3
import struct
import sys
import threading
import zlib
from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import msgpack
import pytest
from cli_helpers import (
    TEST_KEY,
    DaemonProcess,
    called_ids,
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
from runtime_helpers import answer_all

from tierbatch.actors.clock import ScaledClock
from tierbatch.actors.ports import ExtractionRequest, PackAnswer
from tierbatch.adapters.app.cli import EXIT_OK, EXIT_STORAGE, main
from tierbatch.adapters.app.daemon import (
    Daemon,
    DaemonOptions,
    DaemonReport,
    StopReason,
)
from tierbatch.adapters.app.progress import ProgressView
from tierbatch.adapters.app.provider_factory import make_provider
from tierbatch.adapters.app.quota_file import default_snapshot_path
from tierbatch.adapters.simulation.fake_gemini import FakeGeminiServer
from tierbatch.adapters.simulation.gemini_emulator import FakeGeminiConfig
from tierbatch.adapters.storage.config_file import load_config
from tierbatch.adapters.storage.ingest import ingest_jsonl
from tierbatch.adapters.storage.snapshot_file import MAGIC, SnapshotFile, decode
from tierbatch.adapters.storage.sqlite_store import SqliteStore, default_owner
from tierbatch.policies.quota import QuotaPolicy
from tierbatch.policies.results import TerminalResult


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    return main(list(argv), stdout=out, stderr=err), out.getvalue(), err.getvalue()


def enqueue(db: Path, lines: list[str]) -> None:
    with SqliteStore(db, owner=default_owner()) as store:
        report = ingest_jsonl(store, io.BytesIO("\n".join(lines).encode()), source_name="test")
    assert report.inserted == len(lines)


class DaemonThread:
    """An in-process daemon on its own thread, stopped by ``request_stop``."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.report: DaemonReport | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.report = self.daemon.run()
        except BaseException as exc:
            self.error = exc

    def start(self) -> DaemonThread:
        self._thread.start()
        return self

    def stop(self, *, immediate: bool = False, timeout: float = 30.0) -> DaemonReport:
        self.daemon.request_stop(immediate=immediate)
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "daemon did not stop"
        if self.error is not None:
            raise self.error
        assert self.report is not None
        return self.report


class CountingProgress:
    """Counts the loop's turns, so a test can wait for the loop to go round."""

    def __init__(self) -> None:
        self.turns = 0
        self.last: ProgressView | None = None
        self._cond = threading.Condition()

    def start(self) -> None:
        pass

    def update(self, view: ProgressView) -> None:
        with self._cond:
            self.turns += 1
            self.last = view
            self._cond.notify_all()

    def stop(self) -> None:
        pass

    def wait_turns(self, n: int, timeout: float = 10.0) -> None:
        with self._cond:
            target = self.turns + n
            assert self._cond.wait_for(lambda: self.turns >= target, timeout)


class HangingProvider:
    """Never answers; counts calls. Stopping the runtime cancels the calls."""

    def __init__(self) -> None:
        self.calls = 0
        self.called = threading.Event()

    async def extract(self, request: ExtractionRequest) -> PackAnswer:
        self.calls += 1
        self.called.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        pass


# ---- in-process -------------------------------------------------------------------


def test_rows_inserted_by_another_process_are_picked_up(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path / "c.toml"))
    clock = ScaledClock(speed=50.0)
    provider, _ = make_provider(config, clock)
    db = tmp_path / "ingest.sqlite"
    store = SqliteStore(db, owner=default_owner())
    daemon = Daemon(
        config,
        store,
        provider=provider,
        snapshot=SnapshotFile(default_snapshot_path(db)),
        options=DaemonOptions(poll_interval_s=0.05, lease_s=10.0),
        clock=clock,
    )
    running = DaemonThread(daemon).start()
    try:
        lines = sample_lines(40)
        other = sqlite3.connect(db)
        try:
            for batch, total in ((lines[:15], 15), (lines[15:], 40)):
                with other:  # the documented insert, from another connection
                    other.executemany(
                        "INSERT INTO articles (id, payload) VALUES (?, ?)"
                        " ON CONFLICT (id) DO NOTHING",
                        [(json.loads(line)["id"], line) for line in batch],
                    )
                wait_until(
                    lambda total=total: states(db).get("done", 0) == total,
                    30,
                    f"{total} inserted rows to be processed",
                )
        finally:
            other.close()
        report = running.stop()
    finally:
        store.close()
    assert report.reason is StopReason.SIGNAL
    assert report.tally.done_total == 40
    assert states(db) == {"done": 40}
    assert {r[0] for r in query(db, "SELECT article_id FROM results")} == set(sample_ids(40))


def test_leasing_stays_a_few_batches_ahead_and_a_second_stop_is_immediate(
    tmp_path: Path,
) -> None:
    config = load_config(write_config(tmp_path / "c.toml", extractors=1, max_packs=2))
    db = tmp_path / "big.sqlite"
    enqueue(db, sample_lines(400))
    provider = HangingProvider()
    progress = CountingProgress()
    store = SqliteStore(db, owner=default_owner())
    options = DaemonOptions(poll_interval_s=0.02, lease_s=30.0, drain_timeout_s=60.0)
    daemon = Daemon(
        config,
        store,
        provider=provider,
        snapshot=SnapshotFile(default_snapshot_path(db)),
        options=options,
        progress=progress,
    )
    running = DaemonThread(daemon).start()
    try:
        assert provider.called.wait(10)
        progress.wait_turns(30)  # every turn would lease more if it were unbounded
        leased = states(db).get("leased", 0)
        target = options.queue_batches * config.composer.batch_size
        held = progress.last.stats.in_extractors if progress.last else 0
        assert target <= leased <= target + held + config.composer.batch_size
        assert held <= 2 * config.composer.batch_size
        assert states(db)["queued"] == 400 - leased
        daemon.request_stop()  # would drain for up to 60 s: nothing ever answers
        report = running.stop()  # the second request stops at once
    finally:
        store.close()
    assert report.reason is StopReason.IMMEDIATE
    assert report.released == leased
    assert states(db) == {"queued": 400}
    assert query(db, "SELECT COUNT(*) FROM results") == [(0,)]


class AnswersThenHangs:
    """Answers the first ``answer`` requests, then never answers again."""

    def __init__(self, answer: int) -> None:
        self.answer = answer
        self.answered: list[str] = []
        self.hanging = threading.Event()

    async def extract(self, request: ExtractionRequest) -> PackAnswer:
        if self.answer > 0:
            self.answer -= 1
            self.answered += [a.id for a in request.articles]
            return answer_all(request)
        self.hanging.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        pass


class DiskFullStore(SqliteStore):
    """Leasing and releasing work; SQLite reports the disk full on every
    results write once ``full`` is set."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.full = threading.Event()

    def _write_results(
        self, conn: sqlite3.Connection, results: Sequence[TerminalResult], now: float
    ) -> int:
        if self.full.is_set():
            raise sqlite3.OperationalError("database or disk is full")
        return super()._write_results(conn, results, now)


def test_disk_full_at_shutdown_still_releases_leases(tmp_path: Path) -> None:
    """The last results cannot be written: the unfinished leases are handed
    back anyway, and so are the rows whose results were lost with the write
    (the next daemon does them again); the report names the problem."""
    config = load_config(write_config(tmp_path / "c.toml", extractors=1, max_packs=2))
    db = tmp_path / "full.sqlite"
    # Fewer than one lease chunk (4 batches of 6): the first lease takes them
    # all, so what is leased cannot change between reading it and the stop.
    enqueue(db, sample_lines(20))
    provider = AnswersThenHangs(answer=3)
    store = DiskFullStore(db, owner=default_owner())
    store.full.set()
    daemon = Daemon(
        config,
        store,
        provider=provider,
        snapshot=SnapshotFile(default_snapshot_path(db)),
        options=DaemonOptions(poll_interval_s=0.02, lease_s=30.0),
    )
    running = DaemonThread(daemon).start()
    try:
        assert provider.hanging.wait(10)
        wait_until(
            lambda: daemon.tally.terminal == len(provider.answered) > 0,
            10,
            "the answered articles handed to the sink",
        )
        leased = states(db)["leased"]
        report = running.stop(immediate=True)
    finally:
        store.close()
    assert report.reason is StopReason.STORAGE
    assert report.storage_error is not None
    assert str(db) in report.storage_error
    assert "database or disk is full" in report.storage_error
    assert f"{len(provider.answered)} result(s) could not be written" in report.storage_error
    assert report.released == leased == 20
    assert states(db) == {"queued": 20}
    assert query(db, "SELECT COUNT(*) FROM results") == [(0,)]
    assert query(db, "SELECT MAX(attempts) FROM articles") == [(0,)]  # no strikes


def test_the_daemon_poisons_a_row_its_predecessors_died_holding(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path / "c.toml"))
    clock = ScaledClock(speed=50.0)
    provider, _ = make_provider(config, clock)
    db = tmp_path / "q.sqlite"
    enqueue(db, sample_lines(5))
    (victim,) = sample_ids(1)
    with sqlite3.connect(db) as other:  # three daemons died holding it
        other.execute(
            "UPDATE articles SET state = 'leased', lease_owner = 'dead', lease_expires = 1,"
            " attempts = ? WHERE id = ?",
            (config.retry.poison_after, victim),
        )
    store = SqliteStore(db, owner=default_owner())
    daemon = Daemon(
        config,
        store,
        provider=provider,
        snapshot=SnapshotFile(default_snapshot_path(db)),
        options=DaemonOptions(poll_interval_s=0.05, exit_when_done=True),
        clock=clock,
    )
    try:
        report = daemon.run()
    finally:
        store.close()
    assert report.reason is StopReason.FINISHED
    assert states(db) == {"done": 4, "failed": 1}
    ((reason, detail),) = query(
        db, "SELECT reason, detail FROM results WHERE article_id = ?", (victim,)
    )
    assert reason == "poison"
    assert f"leased {config.retry.poison_after} times without a result" in detail


# ---- subprocesses against the fake Gemini server ----------------------------------


def test_sigterm_drains_in_flight_work_saves_state_and_exits_0(tmp_path: Path) -> None:
    with FakeGeminiServer(FakeGeminiConfig(latency_s=0.2)) as server:
        config = write_config(
            tmp_path / "c.toml", base_url=server.base_url, extractors=1, max_packs=2
        )
        db = tmp_path / "ingest.sqlite"
        enqueue(db, sample_lines(200))
        with DaemonProcess(
            ["daemon", "--db", str(db), "--config", str(config), "--drain-timeout", "30"],
            child_env(),
        ) as daemon:
            daemon.wait_for_event("daemon ready")
            wait_until(lambda: states(db).get("done", 0) >= 10, 30, "some results")
            daemon.signal(signal.SIGTERM)
            assert daemon.wait(60) == 0, daemon.stderr()
            stopped = daemon.wait_for_event("daemon stopped")
        log = server.log
    assert stopped["reason"] == "signal"
    counts = states(db)
    assert counts.get("leased", 0) == 0
    assert counts["queued"] > 0  # it stopped taking work
    done = ids_in_state(db, "done")
    assert {r[0] for r in query(db, "SELECT article_id FROM results")} == done
    # Every request that was answered (in flight at the signal included) has
    # its articles' results written: the drain lost nothing.
    assert set(called_ids(log, status=200)) <= done
    state = decode(default_snapshot_path(db).read_bytes())
    sent = Counter(r.model for r in log if r.method == "generateContent")
    assert state["models"]["m-pro"]["requests_today"] == sent["m-pro"]
    assert TEST_KEY not in daemon.stderr()


def test_sigkill_then_restart_finishes_every_article_exactly_once(tmp_path: Path) -> None:
    n = 150
    with FakeGeminiServer(FakeGeminiConfig(latency_s=0.05)) as server:
        config = write_config(
            tmp_path / "c.toml", base_url=server.base_url, extractors=2, max_packs=2
        )
        db = tmp_path / "ingest.sqlite"
        enqueue(db, sample_lines(n))
        args = ["daemon", "--db", str(db), "--config", str(config), "--lease-s", "1.0"]
        with DaemonProcess(args, child_env()) as first:
            first.wait_for_event("daemon ready")
            wait_until(lambda: states(db).get("done", 0) >= 40, 30, "40 results")
            first.proc.send_signal(signal.SIGKILL)
            first.wait(10)
        calls_before = len(server.log)
        done_at_kill = ids_in_state(db, "done")
        leased_at_kill = ids_in_state(db, "leased")
        with DaemonProcess(args, child_env()) as second:
            ready = second.wait_for_event("daemon ready")
            # The killed daemon owned the quota; its successor on this host
            # sees its process gone and owns it at once, not a lease later.
            assert ready["quota_role"] == "owner"
            assert any(
                e["event"].startswith("the quota's owner died on this host") for e in second.events
            )
            wait_until(lambda: states(db).get("done", 0) == n, 60, "every article done")
            second.signal(signal.SIGTERM)
            assert second.wait(30) == 0, second.stderr()
        log = server.log
    first_calls = Counter(called_ids(log[:calls_before]))
    second_calls = Counter(called_ids(log[calls_before:]))
    both = set(first_calls) & set(second_calls)
    print(
        f"\nkill-and-restart: {n} articles; at the kill {len(done_at_kill)} done, "
        f"{len(leased_at_kill)} leased by the killed daemon; provider calls: "
        f"{sum(first_calls.values())} before the kill, {sum(second_calls.values())} after; "
        f"{len(both)} article(s) called by both (all of them among the leased)"
    )
    assert states(db) == {"done": n}
    rows = query(db, "SELECT article_id, COUNT(*) FROM results GROUP BY article_id")
    assert len(rows) == n and all(count == 1 for _, count in rows)
    # Neither process sent an article twice (no faults are injected).
    assert max(first_calls.values()) == 1 and max(second_calls.values()) == 1
    # What was finished before the kill was never sent again; only articles
    # whose lease the killed daemon held were sent by both processes.
    assert not done_at_kill & set(second_calls)
    assert both <= leased_at_kill
    assert set(first_calls) | set(second_calls) == set(sample_ids(n))


def test_sigkill_ten_times_in_a_row_then_a_restart_loses_and_doubles_nothing(
    tmp_path: Path,
) -> None:
    """Killed at (seeded) random moments ten times, the daemon restarts each
    time where the leases say; every article ends with exactly one result."""
    n = 400  # nearly the whole shipped sample
    rng = random.Random(20261201)
    with FakeGeminiServer(FakeGeminiConfig(latency_s=0.3)) as server:
        config = write_config(
            tmp_path / "c.toml",
            base_url=server.base_url,
            extractors=2,
            max_packs=2,
            poison_after=50,  # ten kills are not a poison article
        )
        db = tmp_path / "ingest.sqlite"
        enqueue(db, sample_lines(n))
        args = ["daemon", "--db", str(db), "--config", str(config), "--lease-s", "1.0"]
        kills = []
        for _ in range(10):
            before = states(db).get("done", 0)
            more = rng.randint(1, 25)
            with DaemonProcess(args, child_env()) as victim:
                victim.wait_for_event("daemon ready")
                wait_until(
                    lambda before=before, more=more: (
                        states(db).get("done", 0) >= min(n, before + more)
                    ),
                    30,
                    f"{more} more results",
                )
                victim.proc.send_signal(signal.SIGKILL)
                victim.wait(10)
            kills.append(states(db))
        with DaemonProcess(args, child_env()) as last:
            last.wait_for_event("daemon ready")
            wait_until(lambda: states(db).get("done", 0) == n, 60, "every article done")
            last.signal(signal.SIGTERM)
            assert last.wait(30) == 0, last.stderr()
    print(f"\nten kills: states at each kill {kills}")
    assert states(db) == {"done": n}
    rows = query(db, "SELECT article_id, COUNT(*) FROM results GROUP BY article_id")
    assert len(rows) == n and all(count == 1 for _, count in rows)
    assert {row[0] for row in rows} == set(sample_ids(n))


# Rows another process inserts, one of each class of bad payload (stored as
# TEXT, as TEXT that is not UTF-8, or as a BLOB), with what the failure must name.
BAD_ROWS: list[tuple[str, bytes, str, str]] = [
    ("not-json", b"not json", "text", "not JSON"),
    ("array", b"[1, 2]", "text", "not a JSON object"),
    ("no-text", b'{"id": "no-text"}', "text", "missing field 'text'"),
    ("num-id", b'{"id": true, "text": "t"}', "text", "field 'id'"),
    ("bad-url", b'{"id": "bad-url", "text": "t", "url": "http://[::1/x"}', "text", "field 'url'"),
    ("bad-date", b'{"id": "bad-date", "text": "t", "published_at": "x"}', "text", "published_at"),
    ("nan", b'{"id": "nan", "text": "t", "score": NaN}', "text", "field 'score'"),
    (
        "deep",
        b'{"id": "deep", "text": "t", "t": ' + b"[" * 9000 + b"]" * 9000 + b"}",
        "text",
        "'t'",
    ),
    ("huge", b'{"id": "huge", "text": "' + b"x" * 1_000_001 + b'"}', "text", "over the"),
    ("latin1", b'{"id": "latin1", "text": "caf\xe9"}', "raw-text", "not UTF-8"),
    ("blob-url", b'{"id": "blob-url", "text": "t", "url": "http://[x"}', "blob", "field 'url'"),
    ("blob-junk", b"\xff\x00\x01", "blob", "not UTF-8"),
    ("alias", b'{"id": "other", "text": "t"}', "text", "payload id is 'other'"),
]


def insert_rows(db: Path, rows: list[tuple[str, bytes, str]]) -> None:
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        for row_id, payload, how in rows:
            value: object = payload.decode() if how == "text" else payload
            sql = "CAST(? AS TEXT)" if how == "raw-text" else "?"
            conn.execute(f"INSERT INTO articles (id, payload) VALUES (?, {sql})", (row_id, value))
    finally:
        conn.close()


def test_bad_rows_fail_naming_the_field_and_the_daemon_keeps_running(tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.toml")  # the simulated provider
    db = tmp_path / "ingest.sqlite"
    SqliteStore(db, owner=default_owner()).close()  # the schema, as the producer expects it
    lines = sample_lines(12)
    good = [(json.loads(line)["id"], line.encode(), "text") for line in lines]
    args = ["daemon", "--db", str(db), "--config", str(config), "--poll-interval", "0.05"]
    with DaemonProcess(args, child_env(key=None)) as daemon:
        daemon.wait_for_event("daemon ready")
        insert_rows(db, [*good[:6], *((r, p, how) for r, p, how, _ in BAD_ROWS)])
        wait_until(
            lambda: states(db).get("done", 0) == 6 and states(db).get("failed", 0) == len(BAD_ROWS),
            30,
            "the good rows done and the bad ones failed",
        )
        insert_rows(db, good[6:])  # and it goes on leasing
        wait_until(lambda: states(db).get("done", 0) == 12, 30, "the later rows done")
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(30) == 0, daemon.stderr()
    assert "Traceback" not in daemon.stderr()
    failed = {
        row[0]: row[1:]
        for row in query(
            db, "SELECT article_id, reason, detail FROM results WHERE status = 'failed'"
        )
    }
    assert set(failed) == {row_id for row_id, _, _, _ in BAD_ROWS}
    for row_id, _, _, names in BAD_ROWS:
        reason, detail = failed[row_id]
        assert reason == "bad_request"
        assert names in detail, (row_id, detail)
    assert states(db) == {"done": 12, "failed": len(BAD_ROWS)}


# ``tierbatch`` itself (signals, logging, exit code), with a store whose
# results writes fail once FLAG exists, as when the disk fills up.
DISK_FULL_CHILD = """
import os, sqlite3, sys
from tierbatch.adapters.app import cli
from tierbatch.adapters.storage import sqlite_store
from tierbatch.adapters.storage.sqlite_store import SqliteStore

FLAG = sys.argv.pop(1)

class FillingUp(SqliteStore):
    def _write_results(self, conn, results, now):
        if os.path.exists(FLAG):
            raise sqlite3.OperationalError("database or disk is full")
        return super()._write_results(conn, results, now)

sqlite_store.SqliteStore = FillingUp  # what --db opens
sys.exit(cli.main(sys.argv[1:]))
"""


def test_disk_full_at_shutdown_exits_6_with_one_error_line(tmp_path: Path) -> None:
    flag = tmp_path / "disk-is-full"
    with FakeGeminiServer(FakeGeminiConfig(latency_s=0.1)) as server:
        config = write_config(
            tmp_path / "c.toml", base_url=server.base_url, extractors=1, max_packs=2
        )
        db = tmp_path / "ingest.sqlite"
        enqueue(db, sample_lines(200))
        args = [str(flag), "daemon", "--db", str(db), "--config", str(config)]
        command = [sys.executable, "-c", DISK_FULL_CHILD]
        with DaemonProcess(args, child_env(), command=command) as daemon:
            daemon.wait_for_event("daemon ready")
            wait_until(lambda: states(db).get("done", 0) >= 10, 30, "some results")
            flag.touch()
            daemon.wait_for_event("results write failed; retrying")
            daemon.signal(signal.SIGTERM)
            code = daemon.wait(60)
    stderr = daemon.stderr()
    assert code == EXIT_STORAGE, stderr
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("tierbatch: error:")]
    assert len(errors) == 1, stderr
    assert str(db) in errors[0] and "database or disk is full" in errors[0]
    assert "result(s) could not be written" in errors[0]
    counts = states(db)
    assert counts.get("leased", 0) == 0  # every lease handed back
    done = ids_in_state(db, "done")
    assert {r[0] for r in query(db, "SELECT article_id FROM results")} == done
    assert counts["queued"] + len(done) == 200


def test_daily_quota_holds_across_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pacific = datetime.now(ZoneInfo("America/Los_Angeles"))
    if pacific.hour == 23 and pacific.minute >= 58:
        pytest.skip("too close to the Pacific midnight quota reset")
    rpd = 5
    monkeypatch.setenv("GEMINI_API_KEY", TEST_KEY)
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    with FakeGeminiServer(FakeGeminiConfig()) as server:  # the server does not enforce it
        config = write_config(
            tmp_path / "c.toml", base_url=server.base_url, pro_rpd=rpd, hot_per_request=1
        )
        db = tmp_path / "r.sqlite"
        lines = sample_lines(24)
        for index, part in enumerate((lines[:12], lines[12:])):
            path = write_jsonl(tmp_path / f"part{index}.jsonl", part)
            code, out, err = run_cli(
                "run", str(path), "--db", str(db), "--config", str(config), "--no-progress"
            )
            assert code == EXIT_OK, err
            sent = Counter(r.model for r in server.log if r.method == "generateContent")
            assert sent["m-pro"] == rpd, out
        assert sent["m-lite"] == len(lines) - rpd
    assert states(db) == {"done": len(lines)}
    code, out, _ = run_cli("status", "--db", str(db), "--config", str(config), "--json")
    quota = {q["model"]: q for q in json.loads(out)["quota"]}
    assert quota["m-pro"]["requests_today"] == rpd
    assert quota["m-pro"]["exhausted_s"] > 0


def snapshot_with_payload(payload: bytes) -> bytes:
    return struct.pack(">8sHII", MAGIC, 1, len(payload), zlib.crc32(payload)) + payload


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"\x00garbage, not a snapshot at all", "not a tierbatch snapshot"),
        (
            snapshot_with_payload(msgpack.packb({"format": "tierbatch.quota", "version": 99})),
            "unsupported quota snapshot version 99",
        ),
    ],
)
def test_unusable_snapshot_is_reported_set_aside_and_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: bytes, problem: str
) -> None:
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    config = write_config(tmp_path / "c.toml")
    db = tmp_path / "r.sqlite"
    snapshot = default_snapshot_path(db)
    snapshot.write_bytes(content)
    articles = write_jsonl(tmp_path / "in.jsonl", sample_lines(8))
    code, _out, err = run_cli(
        "run", str(articles), "--db", str(db), "--config", str(config), "--no-progress"
    )
    assert code == EXIT_OK, err
    assert "the quota snapshot could not be used" in err and problem in err
    aside = list(tmp_path.glob(f"{snapshot.name}.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == content
    fresh = decode(snapshot.read_bytes())
    assert fresh["format"] == "tierbatch.quota"
    settings = load_config(config)
    QuotaPolicy.restore(settings.models, settings.quota, fresh)  # usable: raises nothing


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match="lease_s"):
        DaemonOptions(lease_s=0)
    with pytest.raises(ValueError, match="queue_batches"):
        DaemonOptions(queue_batches=0)


HOTNESS_ONLY = """global_fallback = "m-lite"
[models."m-pro"]
rpm = 6000
tpm = 100_000_000
rpd = 0
[models."m-lite"]
rpm = 6000
tpm = 100_000_000
rpd = 0
[[tiers]]
name = "hot"
min_priority = 0.5
model = "m-pro"
fallback_model = "m-lite"
max_articles_per_request = 2
[[tiers]]
name = "cold"
min_priority = 0.0
model = "m-lite"
max_articles_per_request = 4
[composer]
mix = { hot = 2, cold = 4 }
[priority]
hotness_weight = 1.0
goodness_weight = 0.0
[provider]
kind = "simulated"
"""


@pytest.mark.parametrize("prewarm", [200_000, 0])
def test_backlog_counts_towards_cluster_hotness_before_leasing(
    tmp_path: Path, prewarm: int
) -> None:
    """Forty queued articles of one story: with the backlog prewarm every one
    of them is scored as part of a 40-article cluster (hot); without it the
    first ones leased are scored while the cluster still looks small."""
    path = tmp_path / "hot.toml"
    path.write_text(HOTNESS_ONLY, encoding="utf-8")
    config = load_config(path)
    clock = ScaledClock(speed=50.0)
    provider, _ = make_provider(config, clock)
    db = tmp_path / "q.sqlite"
    store = SqliteStore(db, owner=default_owner())
    now = datetime.now(ZoneInfo("UTC")).isoformat()
    lines = [
        json.dumps(
            {"id": f"s{i}", "text": f"Story {i} text.", "cluster_id": "big", "published_at": now}
        )
        for i in range(40)
    ]
    with sqlite3.connect(db) as other:
        other.executemany(
            "INSERT INTO articles (id, payload) VALUES (?, ?)",
            [(json.loads(line)["id"], line) for line in lines],
        )
    daemon = Daemon(
        config,
        store,
        provider=provider,
        snapshot=SnapshotFile(default_snapshot_path(db)),
        options=DaemonOptions(
            poll_interval_s=0.05, queue_batches=1, exit_when_done=True, prewarm_clusters=prewarm
        ),
        clock=clock,
    )
    try:
        report = daemon.run()
    finally:
        store.close()
    assert report.tally.done_total == 40
    tiers = Counter(row[0] for row in query(db, "SELECT tier FROM results"))
    if prewarm:
        assert tiers == {"hot": 40}
    else:
        assert tiers["cold"] > 0

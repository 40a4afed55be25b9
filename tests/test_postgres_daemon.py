"""``tierbatch`` over a PostgreSQL queue, from the outside: ``run``,
``enqueue`` and ``status`` with ``--db postgresql://...`` (or
``TIERBATCH_DB``), and two ``tierbatch daemon`` processes sharing one queue
against the fake Gemini server -- every article gets exactly one result,
none is sent by both while its lease is valid, and when one daemon is
killed with SIGKILL the other finishes its articles once their leases
expire. (The quota is not shared between daemons yet, so 429s are not
asserted on.)"""

from __future__ import annotations

import io
import json
import signal
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import (
    DaemonProcess,
    called_ids,
    child_env,
    sample_ids,
    sample_lines,
    wait_until,
    write_config,
    write_jsonl,
)

from tierbatch.adapters.app.cli import EXIT_OK, main
from tierbatch.adapters.simulation.fake_gemini import FakeGeminiServer
from tierbatch.adapters.simulation.gemini_emulator import FakeGeminiConfig, key_fingerprint
from tierbatch.adapters.storage.ingest import ingest_jsonl
from tierbatch.adapters.storage.open_store import file_stem


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    return main(list(argv), stdout=out, stderr=err), out.getvalue(), err.getvalue()


def query(url: str, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(sql, params).fetchall()


def states(url: str) -> dict[str, int]:
    return dict(query(url, "SELECT state, COUNT(*) FROM articles GROUP BY state"))


def enqueue(url: str, lines: list[str]) -> None:
    from tierbatch.adapters.storage.postgres_store import PostgresStore

    with PostgresStore(url, owner="producer") as store:
        report = ingest_jsonl(store, io.BytesIO("\n".join(lines).encode()), source_name="test")
    assert report.inserted == len(lines)


@pytest.fixture
def fake_gemini() -> Iterator[FakeGeminiServer]:
    with FakeGeminiServer(FakeGeminiConfig(latency_s=0.05)) as server:
        yield server


def test_run_enqueue_and_status_on_a_postgres_queue(
    postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the default quota snapshot lands here
    config = write_config(tmp_path / "c.toml")  # the simulated provider
    articles = write_jsonl(tmp_path / "in.jsonl", [*sample_lines(30), "not json"])
    code, out, err = run_cli("run", str(articles), "--db", postgres_url, "--config", str(config))
    assert code == 3, err  # every article done; one line rejected
    assert "30 article(s) queued, 1 line(s) rejected" in out
    assert states(postgres_url) == {"done": 30}
    assert (tmp_path / f"{file_stem(postgres_url)}.quota.msgpack").is_file()
    more = write_jsonl(tmp_path / "more.jsonl", sample_lines(40)[30:])
    monkeypatch.setenv("TIERBATCH_DB", postgres_url)
    code, out, _ = run_cli("enqueue", str(more))
    assert code == EXIT_OK and "10 article(s) queued" in out
    code, out, _ = run_cli("status", "--json")
    assert code == EXIT_OK
    status = json.loads(out)
    assert status["db"] == postgres_url
    assert status["states"] == {"queued": 10, "leased": 0, "done": 30, "failed": 0}
    assert status["rejects"] == 1
    assert sum(g["count"] for g in status["results"]) == 30
    code, out, _ = run_cli("status")
    assert code == EXIT_OK and "10 queued, 0 leased, 30 done, 0 failed" in out


def daemon_args(url: str, config: Path, snapshot: Path, *extra: str) -> list[str]:
    return [
        "daemon",
        "--db",
        url,
        "--config",
        str(config),
        "--snapshot",
        str(snapshot),
        "--poll-interval",
        "0.05",
        *extra,
    ]


KEYS = ("test-key-daemon-a", "test-key-daemon-b")


def calls_by_daemon(log: list[Any]) -> list[Counter[str]]:
    """Article ids each daemon sent (told apart by their API keys)."""
    sent = [Counter[str]() for _ in KEYS]
    for n, key in enumerate(KEYS):
        mine = [entry for entry in log if entry.key_fingerprint == key_fingerprint(key)]
        sent[n].update(called_ids(mine))
    return sent


def test_two_daemons_share_one_queue_and_each_article_gets_one_result(
    postgres_url: str, tmp_path: Path, fake_gemini: FakeGeminiServer
) -> None:
    n = 200
    config = write_config(tmp_path / "c.toml", base_url=fake_gemini.base_url)
    daemons = [
        DaemonProcess(
            daemon_args(postgres_url, config, tmp_path / f"{i}.msgpack"), child_env(key=key)
        )
        for i, key in enumerate(KEYS)
    ]
    try:
        for daemon in daemons:
            daemon.wait_for_event("daemon ready")
        enqueue(postgres_url, sample_lines(n))  # both are polling: they lease side by side
        wait_until(lambda: states(postgres_url).get("done", 0) == n, 90, "every article done")
        for daemon in daemons:
            daemon.signal(signal.SIGTERM)
        for daemon in daemons:
            assert daemon.wait(60) == 0, daemon.stderr()
    finally:
        for daemon in daemons:
            daemon.kill()
    sent = calls_by_daemon(fake_gemini.log)
    print(f"\ntwo daemons, {n} articles: {[sum(c.values()) for c in sent]} sent by each")
    assert states(postgres_url) == {"done": n}
    assert query(postgres_url, "SELECT COUNT(DISTINCT article_id), COUNT(*) FROM results") == [
        (n, n)
    ]
    # No faults are injected: an article sent twice would have been leased twice.
    together = sent[0] + sent[1]
    assert set(together) == set(sample_ids(n)) and max(together.values()) == 1
    assert all(sent), "both daemons took work"
    refused = dict(query(postgres_url, "SELECT key, value FROM meta WHERE key LIKE '%_results'"))
    assert refused.get("stale_results", "0") == refused.get("duplicate_results", "0") == "0"


def leases_of(url: str, pid: int) -> set[str]:
    """Ids whose lease the daemon with process id ``pid`` holds (owner host:pid:random)."""
    rows = query(
        url,
        "SELECT id FROM articles WHERE state = 'leased' AND split_part(lease_owner, ':', 2) = %s",
        (str(pid),),
    )
    return {row[0] for row in rows}


def test_sigkill_of_one_daemon_and_the_other_finishes_its_articles(
    postgres_url: str, tmp_path: Path
) -> None:
    n = 300
    # Few packs in flight and answers slow enough that each daemon holds a
    # small share of the queue at a time, and the kill comes mid-run; leases
    # of 2 s renewed every 0.67 s, so none of the killed daemon's leases can
    # expire (and be taken over) before the test has read them.
    fake_gemini = FakeGeminiServer(FakeGeminiConfig(latency_s=0.1))
    fake_gemini.start()
    config = write_config(
        tmp_path / "c.toml", base_url=fake_gemini.base_url, extractors=1, max_packs=2
    )
    daemons = [
        DaemonProcess(
            daemon_args(postgres_url, config, tmp_path / f"{i}.msgpack", "--lease-s", "2.0"),
            child_env(key=key),
        )
        for i, key in enumerate(KEYS)
    ]
    victim, survivor = daemons
    try:
        pid = victim.wait_for_event("daemon ready")["pid"]
        survivor.wait_for_event("daemon ready")
        enqueue(postgres_url, sample_lines(n))
        wait_until(
            lambda: states(postgres_url).get("done", 0) >= 40 and leases_of(postgres_url, pid),
            60,
            "40 results, and leases held by the daemon to kill",
        )
        victim.proc.send_signal(signal.SIGKILL)
        victim.wait(10)
        held = leases_of(postgres_url, pid)
        done_at_kill = {r[0] for r in query(postgres_url, "SELECT article_id FROM results")}
        calls_at_kill = len(fake_gemini.log)
        wait_until(lambda: states(postgres_url).get("done", 0) == n, 90, "every article done")
        survivor.signal(signal.SIGTERM)
        assert survivor.wait(60) == 0, survivor.stderr()
    finally:
        for daemon in daemons:
            daemon.kill()
        fake_gemini.stop()
    log = fake_gemini.log
    before = calls_by_daemon(log[:calls_at_kill])
    after = calls_by_daemon(log[calls_at_kill:])
    by_victim, by_survivor = before[0] + after[0], before[1] + after[1]
    both = set(by_victim) & set(by_survivor)
    print(
        f"\nSIGKILL of one of two daemons: {n} articles; at the kill {len(done_at_kill)} done, "
        f"{len(held)} held by the killed daemon; {len(both)} sent by both (all among those held)"
    )
    assert held, "the killed daemon held leases"
    assert states(postgres_url) == {"done": n}
    assert query(postgres_url, "SELECT COUNT(DISTINCT article_id), COUNT(*) FROM results") == [
        (n, n)
    ]
    assert set(by_victim) | set(by_survivor) == set(sample_ids(n))
    assert max(by_victim.values()) == 1 and max(by_survivor.values()) == 1
    # Only the articles whose leases the killed daemon held were sent again,
    # by the survivor, once those leases expired; nothing finished was resent.
    assert both <= held
    assert held - done_at_kill <= set(after[1])
    assert not done_at_kill & set(after[1])

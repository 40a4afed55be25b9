"""Scale: the runtime over a backlog of 10k, 100k and 1M articles in SQLite.

The point is that the backlog's size changes neither the CPU an article
costs nor the memory the process needs: a daemon leases a bounded number of
articles at a time from the store (``SqliteStore.lease``), the runtime's
composer pulls from its bounded queue, and results go back to the store
(``ResultsSink``). Every scale processes the same first ``process`` articles
(the oldest), against the local server with no quota (so the run measures
the runtime, not the quota), and measures CPU time per article and the
process's peak memory.

    python -m bench.scale generate DB ROWS PROCESS   # fill a store, fast
    python -m bench.scale run DB PROCESS OUT.json    # process, measure

Both steps run in their own processes (``run_scale`` starts them), so the
generator's memory never counts against the run.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench.corpus import make_articles
from bench.logs import quiet_logs
from bench.measure import classify_cpu, peak_rss_mb, process_cpu_seconds, thread_cpu_seconds
from bench.server_proc import REPO_ROOT, ServerProcess, unlimited_spec
from bench.settings import BenchSettings, ModelQuota, settings_for

INSERT_CHUNK = 50_000
LEASE_CHUNK = 200
LEASE_S = 3600.0
FILLER_TEXT = (
    "A short item kept in the backlog to make it large; the scale run never reaches it. " * 2
)


def _scale_settings() -> BenchSettings:
    """Quotas far above what one process can send: the runtime is the limit."""
    base = settings_for("tiny")
    big = tuple(ModelQuota(m.name, rpm=1_000_000, tpm=1_000_000_000) for m in base.models)
    return replace(base, models=big)


def generate(db: Path, rows: int, process: int) -> dict[str, Any]:
    """A store with ``rows`` queued articles: the first ``process`` are real
    bench articles (the same at every scale), the rest short fillers."""
    from tierbatch.adapters.storage.jsonl_input import article_to_json
    from tierbatch.adapters.storage.result_json import dumps
    from tierbatch.adapters.storage.sqlite_store import SqliteStore

    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    started = time.time()
    SqliteStore(db, owner="bench-generator").close()
    settings = _scale_settings()
    head = make_articles(settings, min(process, rows), "scale")
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA synchronous = OFF")
    sql = "INSERT INTO articles (id, payload, enqueued_at, updated_at) VALUES (?, ?, ?, ?)"
    base = time.time() - rows
    batch: list[tuple[str, str, float, float]] = []

    def flush() -> None:
        conn.execute("BEGIN")
        conn.executemany(sql, batch)
        conn.execute("COMMIT")
        batch.clear()

    for i in range(rows):
        if i < len(head):
            payload = dumps(article_to_json(head[i].article))
            article_id = head[i].article.id
        else:
            article_id = f"filler-{i:08d}"
            payload = dumps({"id": article_id, "text": FILLER_TEXT, "domain": "example.org"})
        batch.append((article_id, payload, base + i, base + i))
        if len(batch) >= INSERT_CHUNK:
            flush()
    if batch:
        flush()
    conn.close()
    return {"rows": rows, "seconds": time.time() - started, "bytes": db.stat().st_size}


def run(db: Path, process: int, workdir: Path) -> dict[str, Any]:
    from bench.tierbatch_system import bench_config
    from tierbatch.actors.runtime import Runtime
    from tierbatch.adapters.gemini.genai_provider import GenaiProvider
    from tierbatch.adapters.storage.results_sink import ResultsSink
    from tierbatch.adapters.storage.sqlite_store import SqliteStore

    settings = _scale_settings()
    spec = unlimited_spec(settings.window_s, 0.02, workdir / "server_log.jsonl")
    server = ServerProcess(spec, workdir)
    try:
        base_url = server.start()
        config = bench_config(settings, base_url, packed=True)
        provider = GenaiProvider(config.provider, api_key=spec["key"])
        store = SqliteStore(db, owner="bench-scale")
        sink = ResultsSink(store)
        runtime = Runtime(config, provider, sink).start()
        cpu_threads_before = thread_cpu_seconds()
        cpu_before = process_cpu_seconds()
        started = time.time()
        leased = 0
        lease_s = 0.0
        while leased < process:
            t = time.perf_counter()
            articles = store.lease(min(LEASE_CHUNK, process - leased), LEASE_S)
            lease_s += time.perf_counter() - t
            if not articles:
                break
            runtime.submit(articles)
            leased += len(articles)
        runtime.drain()
        cpu_threads = {
            name: cpu - cpu_threads_before.get(name, 0.0)
            for name, cpu in thread_cpu_seconds().items()
        }
        runtime.stop()
        sink.close()
        elapsed = time.time() - started
        cpu = process_cpu_seconds() - cpu_before
        counts = store.counts()
        duplicates = store.duplicate_results
        store.close()
        log = server.stop()
    finally:
        server.close()
    requests = len(log.entries)
    classes = classify_cpu(cpu_threads)
    return {
        "processed": leased,
        "elapsed_s": elapsed,
        "cpu_s": cpu,
        "cpu_per_article_us": cpu / leased * 1e6 if leased else None,
        "actors_per_article_us": classes["actors"] / leased * 1e6 if leased else None,
        "actors_per_request_us": classes["actors"] / requests * 1e6 if requests else None,
        "lease_per_article_us": lease_s / leased * 1e6 if leased else None,
        "threads": classes,
        "requests": requests,
        "peak_rss_mb": peak_rss_mb(),
        "store_counts": counts,
        "duplicate_results": duplicates,
    }


def run_scale(
    rows: int, process: int, workdir: Path, *, timeout_s: float = 900.0
) -> dict[str, Any]:
    """Generate then run, each in a fresh process; the result as a dict."""
    workdir.mkdir(parents=True, exist_ok=True)
    db = workdir / f"backlog-{rows}.sqlite"
    out = workdir / f"scale-{rows}.json"
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))

    def step(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "bench.scale", *args],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"bench.scale {args[0]} failed:\n{done.stderr[-3000:]}")
        return done.stdout

    generated = json.loads(step("generate", str(db), str(rows), str(process)).splitlines()[-1])
    step("run", str(db), str(process), str(out))
    result: dict[str, Any] = json.loads(out.read_text())
    result["backlog"] = rows
    result["generate"] = generated
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    return result


def main() -> None:
    quiet_logs()
    command = sys.argv[1]
    if command == "generate":
        info = generate(Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
        print(json.dumps(info))
    elif command == "run":
        out = Path(sys.argv[4])
        result = run(Path(sys.argv[2]), int(sys.argv[3]), out.parent / (out.stem + "-work"))
        out.write_text(json.dumps(result, indent=1))
    else:
        raise SystemExit(f"unknown command {command!r}: expected generate or run")


if __name__ == "__main__":
    main()

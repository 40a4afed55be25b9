"""One daemon against three on one SQLite queue, sharing one quota.

Starts the fake Gemini server (in this process) with a strict rolling
window of ``--rpm`` requests per ``--window-s`` seconds for one model, puts
``--articles`` articles on a fresh SQLite queue (one article per request),
then runs ``tierbatch daemon`` processes on it -- first one, then three --
until every article has its result, and reports for each:

* the requests the server saw and the share it answered 429;
* throughput as a share of the one-quota bound: the least time a strict
  window allows from the first admitted request to the last,
  ``(ceil(n / rpm) - 1) * window_s``, divided by the time the daemons took;
* the daemons' shares of the grants (from ``tierbatch status --json``);
* whether every article got exactly one result.

    .venv/bin/python -m bench.shared [--articles 400 --rpm 100 --window-s 10]

It takes about ``2 x (ceil(n / rpm) - 1) x window_s`` plus start-up.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from bench.logs import quiet_logs
from tierbatch.adapters.app.cli import main as cli_main
from tierbatch.adapters.simulation.fake_gemini import FakeGeminiServer
from tierbatch.adapters.simulation.gemini_emulator import FakeGeminiConfig
from tierbatch.adapters.storage.ingest import ingest_jsonl
from tierbatch.adapters.storage.open_store import open_store
from tierbatch.policies.config import ModelSpec

_KEY = "bench-key-0123456789"
_MODEL = "m-lite"


@dataclass(frozen=True, slots=True)
class Row:
    daemons: int
    requests: int
    refused: int
    span_s: float
    bound_s: float
    shares: tuple[float, ...]
    exactly_once: bool

    @property
    def of_bound(self) -> float:
        return self.bound_s / self.span_s if self.span_s > 0 else 1.0


def articles(n: int) -> list[str]:
    """``n`` input lines: the shipped sample, cycled with fresh ids."""
    sample = resources.files("tierbatch.adapters") / "data" / "sample_articles.jsonl"
    base = [json.loads(line) for line in sample.read_text("utf-8").splitlines() if line.strip()]
    lines = []
    for i in range(n):
        item = dict(base[i % len(base)])
        item["id"] = f"{item['id']}-{i // len(base)}"
        lines.append(json.dumps(item))
    return lines


def config_text(base_url: str, rpm: int, window_s: float, margin_s: float) -> str:
    return f"""global_fallback = "{_MODEL}"

[models."{_MODEL}"]
rpm = {rpm}
tpm = 1_000_000_000
rpd = 0

[[tiers]]
name = "hot"
min_priority = 0.5
model = "{_MODEL}"
max_articles_per_request = 1

[[tiers]]
name = "cold"
min_priority = 0.0
model = "{_MODEL}"
max_articles_per_request = 1

[composer]
mix = {{ hot = 2, cold = 4 }}

[quota]
window_s = {window_s}
margin_s = {margin_s}
limiter = "window"

[retry]
request_timeout_s = 30.0

[runtime]
extractors = 2
max_packs_in_flight = 32

[provider]
kind = "genai"
base_url = "{base_url}"
"""


def tierbatch() -> list[str]:
    script = Path(sys.executable).with_name("tierbatch")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "tierbatch.adapters.app.cli"]


def run_once(daemons: int, n: int, rpm: int, window_s: float, margin_s: float) -> Row:
    folder = Path(tempfile.mkdtemp(prefix="tierbatch-shared-"))
    db = folder / "queue.sqlite"
    models = {_MODEL: ModelSpec(_MODEL, rpm=rpm, tpm=1_000_000_000, rpd=0)}
    server = FakeGeminiServer(FakeGeminiConfig(models=models, window_s=window_s, latency_s=0.05))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with server:
            config = folder / "c.toml"
            config.write_text(config_text(server.base_url, rpm, window_s, margin_s), "utf-8")
            store = open_store(str(db), owner="bench")
            try:
                lines = articles(n)
                ingest_jsonl(store, io.BytesIO("\n".join(lines).encode()), source_name="bench")
                # The queue is full before the daemons start: the first one
                # up leases first and the others join, as in production.
                env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
                env["GEMINI_API_KEY"] = _KEY
                for i in range(daemons):
                    procs.append(
                        subprocess.Popen(
                            [
                                *tierbatch(),
                                "daemon",
                                "--db",
                                str(db),
                                "--config",
                                str(config),
                                "--snapshot",
                                str(folder / f"quota-{i}.msgpack"),
                                "--poll-interval",
                                "0.1",
                            ],
                            stdout=subprocess.DEVNULL,
                            stderr=(folder / f"daemon-{i}.log").open("wb"),
                            env=env,
                        )
                    )
                deadline = time.monotonic() + 60 + 3 * math.ceil(n / rpm) * window_s
                while store.counts().get("done", 0) + store.counts().get("failed", 0) < n:
                    if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                        tail = (folder / "daemon-0.log").read_text("utf-8", "replace")[-3000:]
                        raise SystemExit(f"{daemons} daemon(s): not done in time\n{tail}")
                    time.sleep(0.2)
                status = _status(str(db))
                ids = [r.article_id for r in store.results()]
            finally:
                store.close()
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
            for proc in procs:
                proc.wait(timeout=60)
            log = [e for e in server.log if e.method == "generateContent"]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        shutil.rmtree(folder, ignore_errors=True)
    admitted = sorted(e.at for e in log if e.status == 200)
    answered = Counter(a for e in log if e.status == 200 for a in e.article_ids)
    grants = [d["grants"] for d in status["daemons"]]
    total = sum(grants) or 1
    return Row(
        daemons=daemons,
        requests=len(log),
        refused=sum(1 for e in log if e.status == 429),
        span_s=admitted[-1] - admitted[0] if admitted else 0.0,
        bound_s=(math.ceil(n / rpm) - 1) * window_s,
        shares=tuple(sorted((g / total for g in grants), reverse=True)),
        exactly_once=len(ids) == len(set(ids)) == n
        and len(answered) == n
        and max(answered.values()) == 1,
    )


def _status(db: str) -> dict[str, object]:
    out, err = io.StringIO(), io.StringIO()
    code = cli_main(["status", "--db", db, "--json"], stdout=out, stderr=err)
    if code != 0:
        raise SystemExit(f"tierbatch status failed: {err.getvalue()}")
    status: dict[str, object] = json.loads(out.getvalue())
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--articles", type=int, default=400)
    parser.add_argument("--rpm", type=int, default=100, help="requests per window")
    parser.add_argument("--window-s", type=float, default=10.0)
    parser.add_argument("--margin-s", type=float, default=0.25)
    parser.add_argument("--daemons", type=int, nargs="+", default=[1, 3])
    args = parser.parse_args(argv)
    quiet_logs()
    print(
        f"{args.articles} articles, one request each; one quota of {args.rpm} requests "
        f"per {args.window_s:g} s (server side, strict rolling window); margin {args.margin_s} s"
    )
    print(
        "| daemons | requests | 429s | first to last | bound | of bound | shares | exactly once |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for count in args.daemons:
        row = run_once(count, args.articles, args.rpm, args.window_s, args.margin_s)
        shares = " / ".join(f"{s:.0%}" for s in row.shares)
        print(
            f"| {row.daemons} | {row.requests} | {row.refused} ({row.refused / row.requests:.2%}) "
            f"| {row.span_s:.2f} s | {row.bound_s:.2f} s | {row.of_bound:.1%} | {shares} "
            f"| {'yes' if row.exactly_once else 'NO'} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

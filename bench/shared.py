"""One daemon against three on one queue, sharing one quota: on SQLite, on
PostgreSQL, and joined through a Ray cluster on PostgreSQL.

Starts the fake Gemini server (in this process) with a strict rolling
window of ``--rpm`` requests per ``--window-s`` seconds for one model, and
for each setup puts ``--articles`` articles on a fresh queue (one article
per request), runs ``tierbatch daemon`` processes on it until every article
has its result, and reports:

* the requests the server saw and the share it answered 429;
* throughput as a share of the one-quota bound: the least time a strict
  window allows from the first admitted request to the last,
  ``(ceil(n / rpm) - 1) * window_s``, divided by the time the daemons took;
* the seconds from the daemons' start to the last result;
* the daemons' shares of the grants (from ``tierbatch status --json``);
* whether every article got exactly one result (one row in the results
  table, one answered request at the server).

Then the per-request cost of a grant from the registry on Ray against the
in-process one (``bench.ray_grant``'s measurement, on the same Ray head).

The setups: ``sqlite:N`` (N daemons on one SQLite file, one quota through
the database-elected owner), ``postgresql:N`` (the same on a PostgreSQL
database) and ``ray:N`` (N daemons with ``--ray`` on a PostgreSQL
database: the quota in the registry actor). PostgreSQL is a throwaway
server started here (Debian's binaries, ``initdb`` in a temporary folder,
a free port on 127.0.0.1), Ray a throwaway head (``ray start --head``);
both are stopped by their process group at the end. ``ray-calls:N`` (not
among the defaults) is ``ray:N`` with each daemon's model calls on a
caller actor of its own (``--ray-extractors 1``).

``--kill daemon`` and ``--kill owner`` run each setup again with a
``kill -9`` in the middle of the drain (once the server has admitted a
window and a half of requests): of one daemon that does not host the quota
(a follower; on Ray any daemon), or of the process that hosts the quota
(the database-elected owner daemon; on Ray the registry actor's worker,
which Ray restarts from the cluster's store). The row then also says when
the kill came, the 429s after it, and how much later than the bound the
last request went: the kill may cost at most one lease -- the dead
daemon's articles come back when their lease (``--lease-s``, here one
window) runs out, a dead owner's quota when its lease (``--quota-lease-s``)
does -- and must cost no burst of 429s and no article lost or doubled.
"Re-sent" counts the articles the server answered twice: the calls the
dead daemon had in flight, answered after it died.

    .venv/bin/python -m bench.shared            # every setup: about 4 minutes on 2 cores
    .venv/bin/python -m bench.shared --setups sqlite:1 sqlite:3 --articles 400
    .venv/bin/python -m bench.shared --setups sqlite:3 postgresql:3 ray:3 --kill daemon owner

Each setup takes about ``(ceil(n / rpm) - 1) x window_s`` plus start-up.
"""

from __future__ import annotations

import argparse
import contextlib
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
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from bench.logs import quiet_logs
from bench.services import LocalPostgres, LocalRayHead
from tierbatch.adapters.app.cli import main as cli_main
from tierbatch.adapters.simulation.fake_gemini import FakeGeminiServer
from tierbatch.adapters.simulation.gemini_emulator import FakeGeminiConfig
from tierbatch.adapters.storage.ingest import ingest_jsonl
from tierbatch.adapters.storage.open_store import open_store
from tierbatch.adapters.storage.quota_lease import ROLE_OWNER
from tierbatch.policies.config import ModelSpec

_KEY = "bench-key-0123456789"
_MODEL = "m-lite"
DEFAULT_SETUPS = ("sqlite:1", "sqlite:3", "postgresql:1", "postgresql:3", "ray:3")
KILLS = ("none", "daemon", "owner")
_LABELS = {
    "sqlite": "SQLite",
    "postgresql": "PostgreSQL",
    "ray": "PostgreSQL + Ray",
    "ray-calls": "PostgreSQL + Ray, calls on actors",
}
# The targets of issue 12 for three daemons on one quota.
MAX_REFUSED_SHARE = 0.005
MIN_OF_BOUND = 0.95
KILL_SLACK = 0.1


@dataclass(frozen=True, slots=True)
class Setup:
    """``kind``: ``sqlite``, ``postgresql``, ``ray`` (PostgreSQL and Ray) or
    ``ray-calls`` (the same, each daemon's calls on a caller actor on Ray)."""

    kind: str
    daemons: int

    @classmethod
    def parse(cls, text: str) -> Setup:
        kind, sep, count = text.partition(":")
        if kind not in _LABELS or not sep or not count.isdigit():
            raise argparse.ArgumentTypeError(
                f"--setups {text!r}: expected sqlite:N, postgresql:N, ray:N or ray-calls:N"
            )
        if int(count) < 1:
            raise argparse.ArgumentTypeError(f"--setups {text!r}: N must be at least 1")
        return cls(kind, int(count))

    @property
    def label(self) -> str:
        return _LABELS[self.kind]

    @property
    def on_ray(self) -> bool:
        return self.kind.startswith("ray")


@dataclass(frozen=True, slots=True)
class Row:
    setup: Setup
    requests: int
    refused: int
    span_s: float
    bound_s: float
    wall_s: float
    shares: tuple[float, ...]
    exactly_once: bool
    admitted: tuple[float, ...] = field(default=(), repr=False)
    # Articles the server answered more than once: a kill's calls in flight,
    # whose answers died with their daemon (their results never written).
    resent: int = 0
    # With a kill: what was killed, when (seconds after the first admitted
    # request), the 429s after it, the longest the quota then stood idle
    # past its window, and the lease that may cost at most.
    killed: str = ""
    killed_at_s: float = 0.0
    refused_after_kill: int = 0
    stall_s: float = 0.0
    lease_s: float = 0.0

    @property
    def of_bound(self) -> float:
        return self.bound_s / self.span_s if self.span_s > 0 else 1.0

    @property
    def refused_share(self) -> float:
        return self.refused / self.requests if self.requests else 0.0


class Services:
    """The PostgreSQL server and the Ray head, started when first needed."""

    def __init__(self) -> None:
        self.postgres: LocalPostgres | None = None
        self.ray: LocalRayHead | None = None

    def database(self) -> str:
        if self.postgres is None:
            self.postgres = LocalPostgres().start()
        return self.postgres.new_database()

    def ray_head(self) -> LocalRayHead:
        if self.ray is None:
            # The key caller actors read on their node (a bench key, no secret).
            self.ray = LocalRayHead({"GEMINI_API_KEY": _KEY}).start()
            os.environ.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
            from tierbatch.adapters.ray.cluster import connect

            connect(self.ray.address)  # this process too: it kills the registries after
        return self.ray

    def close(self) -> None:
        if self.ray is not None:
            with contextlib.suppress(Exception):
                import ray

                ray.shutdown()
            self.ray.stop()
        if self.postgres is not None:
            self.postgres.stop()


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
max_packs_in_flight = 64

[provider]
kind = "genai"
base_url = "{base_url}"
"""


def tierbatch() -> list[str]:
    script = Path(sys.executable).with_name("tierbatch")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "tierbatch.adapters.app.cli"]


@contextlib.contextmanager
def _daemons(
    setup: Setup, db: str, config: Path, folder: Path, services: Services, lease_s: float
) -> Iterator[tuple[list[subprocess.Popen[bytes]], str]]:
    """The setup's daemon processes on ``db`` and their Ray project;
    SIGTERMed (and the Ray registry killed) at the end."""
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    env["GEMINI_API_KEY"] = _KEY
    extra: list[str] = []
    project = f"bench-{uuid.uuid4().hex[:8]}"
    if setup.on_ray:
        head = services.ray_head()
        env.update(head.env)
        extra = ["--ray", head.address, "--ray-project", project]
        if setup.kind == "ray-calls":
            extra += ["--ray-extractors", "1"]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for i in range(setup.daemons):
            argv = [*tierbatch(), "daemon", "--db", db, "--config", str(config)]
            argv += ["--snapshot", str(folder / f"quota-{i}.msgpack"), "--poll-interval", "0.1"]
            argv += ["--lease-s", f"{lease_s:g}"]
            procs.append(
                subprocess.Popen(
                    [*argv, *extra],
                    stdout=subprocess.DEVNULL,
                    stderr=(folder / f"daemon-{i}.log").open("wb"),
                    env=env,
                )
            )
        yield procs, project
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(timeout=60)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        if setup.on_ray:
            from tierbatch.adapters.ray.cluster import kill_registry

            with contextlib.suppress(Exception):
                kill_registry(project)


def run_once(
    setup: Setup,
    n: int,
    rpm: int,
    window_s: float,
    margin_s: float,
    services: Services,
    *,
    kill: str = "none",
    lease_s: float | None = None,
    keep: bool = False,
) -> Row:
    """One setup's drain; ``kill``: ``none``, ``daemon`` or ``owner`` (see
    the module's docstring); ``lease_s``: the daemons' article lease
    (default one window); ``keep``: leave the run's folder (the daemons'
    logs) in place and say where."""
    lease_s = window_s if lease_s is None else lease_s
    folder = Path(tempfile.mkdtemp(prefix="tierbatch-shared-"))
    db = str(folder / "queue.sqlite") if setup.kind == "sqlite" else services.database()
    models = {_MODEL: ModelSpec(_MODEL, rpm=rpm, tpm=1_000_000_000, rpd=0)}
    server = FakeGeminiServer(FakeGeminiConfig(models=models, window_s=window_s, latency_s=0.05))
    try:
        with server:
            config = folder / "c.toml"
            config.write_text(config_text(server.base_url, rpm, window_s, margin_s), "utf-8")
            store = open_store(db, owner="bench")
            try:
                ingest_jsonl(store, io.BytesIO("\n".join(articles(n)).encode()), source_name="b")
                # The queue is full before the daemons start: the first one
                # up leases first and the others join, as in production.
                started = time.monotonic()
                killed_at: float | None = None
                victim: subprocess.Popen[bytes] | None = None
                with _daemons(setup, db, config, folder, services, lease_s) as (procs, project):
                    deadline = started + 90 + 3 * math.ceil(n / rpm) * window_s
                    while _finished(store) < n:
                        live = [p for p in procs if p is not victim]
                        if time.monotonic() > deadline or any(p.poll() is not None for p in live):
                            tail = (folder / "daemon-0.log").read_text("utf-8", "replace")
                            raise SystemExit(f"{setup}: not done in time\n{tail[-3000:]}")
                        if kill != "none" and killed_at is None and _admitted(server) >= 1.5 * rpm:
                            victim = _kill(kill, setup, db, procs, project)
                            killed_at = server.now()
                        time.sleep(0.1)
                    wall_s = time.monotonic() - started
                    sent = sum(1 for e in server.log if e.method == "generateContent")
                    grants = _grants(db, sent, deadline=time.monotonic() + 10)
                ids = [r.article_id for r in store.results()]
            finally:
                store.close()
            log = [e for e in server.log if e.method == "generateContent"]
    finally:
        if keep:
            print(f"{setup.kind}:{setup.daemons} kill {kill}: logs in {folder}", file=sys.stderr)
        else:
            shutil.rmtree(folder, ignore_errors=True)
    admitted = sorted(e.at for e in log if e.status == 200)
    answered = Counter(a for e in log if e.status == 200 for a in e.article_ids)
    total = sum(grants) or 1
    after_kill = [] if killed_at is None else [e for e in log if e.at >= killed_at]
    return Row(
        setup=setup,
        requests=len(log),
        refused=sum(1 for e in log if e.status == 429),
        span_s=admitted[-1] - admitted[0] if admitted else 0.0,
        bound_s=(math.ceil(n / rpm) - 1) * window_s,
        wall_s=wall_s,
        shares=tuple(sorted((g / total for g in grants), reverse=True)),
        exactly_once=len(ids) == len(set(ids)) == n and len(answered) == n,
        admitted=tuple(admitted),
        resent=sum(1 for count in answered.values() if count > 1),
        killed="" if killed_at is None else kill,
        killed_at_s=0.0 if killed_at is None or not admitted else killed_at - admitted[0],
        refused_after_kill=sum(1 for e in after_kill if e.status == 429),
        stall_s=0.0 if killed_at is None else stall_after(admitted, killed_at, rpm, window_s),
        lease_s=lease_s,
    )


def stall_after(admitted: Sequence[float], at: float, rpm: int, window_s: float) -> float:
    """The longest the quota stood idle past its window after ``at``: each
    admitted request frees its place a window later, and a full quota
    reuses it then; a share stranded by a dead daemon (or a dead owner)
    shows as a request whose place was taken back late. Measured on the
    rpm-th request before each one admitted after ``at``."""
    times = sorted(admitted)
    worst = 0.0
    for k in range(rpm, len(times)):
        if times[k] >= at:
            worst = max(worst, times[k] - times[k - rpm] - window_s)
    return worst


def _admitted(server: FakeGeminiServer) -> int:
    return sum(1 for e in server.log if e.method == "generateContent" and e.status == 200)


def _kill(
    kill: str, setup: Setup, db: str, procs: list[subprocess.Popen[bytes]], project: str
) -> subprocess.Popen[bytes] | None:
    """``kill -9`` of one daemon (``daemon``: one that does not host the
    quota) or of the quota's host (``owner``); returns the daemon killed
    (None: the Ray registry actor's worker, which Ray restarts)."""
    if kill == "owner" and setup.on_ray:
        import ray

        from tierbatch.adapters.ray.wire import NAMESPACE, actor_name

        actor = ray.get_actor(actor_name(project), namespace=NAMESPACE)
        os.kill(int(ray.get(actor.info.remote(), timeout=30)["pid"]), signal.SIGKILL)
        return None
    by_pid = {p.pid: p for p in procs}
    want_owner = kill == "owner"
    for daemon in sorted(_status(db)["daemons"], key=lambda d: int(d["pid"])):
        proc = by_pid.get(int(daemon["pid"]))
        if proc is not None and (daemon["role"] == ROLE_OWNER) == want_owner:
            proc.send_signal(signal.SIGKILL)
            return proc
    raise SystemExit(f"{setup}: no daemon to --kill {kill} among {sorted(by_pid)}")


def _finished(store: Any) -> int:
    counts = store.counts()
    return int(counts.get("done", 0) + counts.get("failed", 0))


def _grants(db: str, sent: int, *, deadline: float) -> list[int]:
    """Each live daemon's grants, once their heartbeats (every third of the
    quota lease) have caught up with the ``sent`` requests, or at
    ``deadline``."""
    while True:
        status = _status(db)
        grants = [int(d["grants"]) for d in status["daemons"]]
        if sum(grants) >= sent or time.monotonic() > deadline:
            return grants
        time.sleep(0.2)


def _status(db: str) -> dict[str, Any]:
    out, err = io.StringIO(), io.StringIO()
    code = cli_main(["status", "--db", db, "--json"], stdout=out, stderr=err)
    if code != 0:
        raise SystemExit(f"tierbatch status failed: {err.getvalue()}")
    status: dict[str, Any] = json.loads(out.getvalue())
    return status


def rounds(row: Row, rpm: int) -> list[tuple[float, float]]:
    """Per round of ``rpm`` admitted requests: when its first one came
    (seconds after the run's first) and how long the round took to send."""
    times = row.admitted
    if not times:
        return []
    out = []
    for k in range(0, len(times), rpm):
        chunk = times[k : k + rpm]
        out.append((chunk[0] - times[0], chunk[-1] - chunk[0]))
    return out


def grant_overhead(services: Services, requests: int, concurrency: int) -> list[str]:
    """``bench.ray_grant``'s table: the local registry, then the registry
    actor on this bench's Ray head."""
    from bench.ray_grant import bench_config, grant_costs, local_registry
    from tierbatch.actors.clock import SystemClock
    from tierbatch.adapters.ray.cluster import kill_registry, registry_for

    services.ray_head()
    config = bench_config()
    local = local_registry(config)
    try:
        local_costs = grant_costs(local, requests, concurrency)
    finally:
        local.stop()
    project = f"bench-grant-{uuid.uuid4().hex[:8]}"
    handle = registry_for(project, config, SystemClock())
    try:
        remote_costs = grant_costs(handle, requests, concurrency)
    finally:
        handle.stop()
        kill_registry(project)
    lines = [
        f"cost of a grant, {requests} requests (microseconds per request; "
        f"wall/request with {concurrency} outstanding):",
        "| registry | what | median | p95 | wall/request |",
        "|---|---|---:|---:|---:|",
    ]
    for name, costs in (("local pykka", local_costs), ("Ray actor", remote_costs)):
        lines += [
            f"| {name} | {c.what} | {c.median_us:.0f} | {c.p95_us:.0f} | {c.concurrent_us:.0f} |"
            for c in costs
        ]
    extra = [r.median_us - lo.median_us for lo, r in zip(local_costs, remote_costs, strict=True)]
    lines.append(
        f"per-request overhead of a remote grant (median, Ray - local): "
        f"{extra[0] / 1000:.2f} ms for the grant, {extra[1] / 1000:.2f} ms for the whole cycle"
    )
    return lines


def _print_row(row: Row) -> None:
    shares = " / ".join(f"{s:.0%}" for s in row.shares)
    print(
        f"| {row.setup.label} | {row.setup.daemons} | {row.requests} "
        f"| {row.refused} ({row.refused_share:.2%}) | {row.span_s:.2f} s | {row.bound_s:.2f} s "
        f"| {row.of_bound:.1%} | {row.wall_s:.1f} s | {shares} "
        f"| {'yes' if row.exactly_once else 'NO'} |",
        flush=True,
    )


def _print_kill_row(row: Row) -> None:
    print(
        f"| {row.setup.label} | {row.setup.daemons} | {row.killed} | +{row.killed_at_s:.1f} s "
        f"| {row.requests} | {row.refused} ({row.refused_share:.2%}) | {row.refused_after_kill} "
        f"| {row.resent} | {row.span_s:.2f} s | {row.stall_s:.2f} s | {row.lease_s:g} s "
        f"| {'yes' if row.exactly_once else 'NO'} |",
        flush=True,
    )


def missed_targets(row: Row, window_s: float) -> bool:
    """Whether a row misses issue 12's targets: 429s, one result per
    article, and either the share of the bound (no article answered twice)
    or, with a kill, the quota idle past its window for at most one lease
    and ``KILL_SLACK`` of a window (the margin, and the round trips of an
    election or a hand-over)."""
    if row.refused_share > MAX_REFUSED_SHARE or not row.exactly_once:
        return True
    if row.killed:
        return row.stall_s > row.lease_s + window_s * KILL_SLACK
    return row.of_bound < MIN_OF_BOUND or row.resent > 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--articles", type=int, default=400)
    parser.add_argument("--rpm", type=int, default=100, help="requests per window")
    parser.add_argument("--window-s", type=float, default=10.0)
    parser.add_argument("--margin-s", type=float, default=0.25)
    parser.add_argument(
        "--setups", type=Setup.parse, nargs="+", default=[Setup.parse(s) for s in DEFAULT_SETUPS]
    )
    parser.add_argument(
        "--grant-requests",
        type=int,
        default=300,
        help="requests for the grant cost (0: skip it)",
    )
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument(
        "--rounds", action="store_true", help="also print when each round of rpm requests went"
    )
    parser.add_argument(
        "--kill",
        choices=KILLS,
        nargs="+",
        default=["none"],
        help="kill -9 mid-drain: none, a daemon that does not host the quota, or the quota's "
        "host (each given runs every setup once)",
    )
    parser.add_argument(
        "--lease-s", type=float, default=None, help="the daemons' article lease (default: a window)"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep each run's folder (the daemons' logs)"
    )
    args = parser.parse_args(argv)
    quiet_logs()
    print(
        f"{args.articles} articles, one request each; one quota of {args.rpm} requests "
        f"per {args.window_s:g} s (server side, strict rolling window); margin {args.margin_s} s"
    )
    services = Services()
    rows: list[Row] = []
    try:
        for kill in args.kill:
            if kill == "none":
                print(
                    "| queue | daemons | requests | 429s | first to last | bound | of bound "
                    "| seconds | shares | exactly once |"
                )
                print("|---|---|---|---|---|---|---|---|---|---|")
            else:
                print()
                print(f"kill -9 of the {'quota host' if kill == 'owner' else 'daemon'} mid-drain:")
                print(
                    "| queue | daemons | killed | at | requests | 429s | 429s after | re-sent "
                    "| first to last | longest stall | lease | exactly once |"
                )
                print("|---|---|---|---|---|---|---|---|---|---|---|---|")
            for setup in args.setups:
                if kill != "none" and setup.daemons < 2:
                    continue  # a kill needs survivors to finish the work
                row = run_once(
                    setup,
                    args.articles,
                    args.rpm,
                    args.window_s,
                    args.margin_s,
                    services,
                    kill=kill,
                    lease_s=args.lease_s,
                    keep=args.keep,
                )
                rows.append(row)
                (_print_kill_row if row.killed else _print_row)(row)
        if args.rounds:
            for row in rows:
                spans = ", ".join(
                    f"+{at:.2f} s in {took:.2f} s" for at, took in rounds(row, args.rpm)
                )
                print(f"{row.setup.label} x{row.setup.daemons} rounds: {spans}")
        if args.grant_requests > 0:
            print()
            for line in grant_overhead(services, args.grant_requests, args.concurrency):
                print(line, flush=True)
    finally:
        services.close()
    missed = [
        f"{r.setup.label} x{r.setup.daemons}" + (f" (kill {r.killed})" if r.killed else "")
        for r in rows
        if missed_targets(r, args.window_s)
    ]
    print()
    print(
        f"targets: 429s <= {MAX_REFUSED_SHARE:.1%}, >= {MIN_OF_BOUND:.0%} of the bound "
        f"(with a kill: the quota idle past its window at most a lease and "
        f"{KILL_SLACK:.0%} of a window), "
        f"every article exactly once: "
        + ("all met" if not missed else "missed by " + ", ".join(missed))
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

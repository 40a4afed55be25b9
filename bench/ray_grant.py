"""What a grant costs when the registry is a Ray actor, against the local
pykka registry: the same ``Acquire`` -> ``Granted`` round trip, and the full
per-request cycle an extractor runs (acquire, ``Sent``, ``Report``), with
limits high enough that nothing ever waits for quota.

    python -m bench.ray_grant                  # starts a throwaway local Ray
    python -m bench.ray_grant --address HOST:PORT
    python -m bench.ray_grant --requests 2000 --concurrency 32

It prints one table (microseconds per request: median and 95th percentile
of sequential round trips, and the wall time per request with
``--concurrency`` requests outstanding at once).
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from tierbatch.actors.clock import SystemClock
from tierbatch.actors.messages import Acquire, Granted, Report, Sent
from tierbatch.actors.registry import ModelRegistry
from tierbatch.policies.config import Config, ModelSpec, QuotaConfig
from tierbatch.policies.outcomes import Succeeded, Usage
from tierbatch.policies.quota import QuotaPolicy

MODEL = "m-bench"


def bench_config() -> Config:
    from dataclasses import replace

    from tierbatch.adapters.storage.config_file import load_config

    base = load_config(None)
    spec = ModelSpec(name=MODEL, rpm=10_000_000, tpm=0, rpd=0)
    quota = replace(base.quota, plan=False) if isinstance(base.quota, QuotaConfig) else base.quota
    return replace(base, models={**base.models, MODEL: spec}, quota=quota)


def _cycle(ref: Any, clock: SystemClock, request_id: int, *, full: bool) -> None:
    answer: Future[Any] = Future()
    ref.tell(
        Acquire(
            request_id=request_id,
            holder=1,
            chain=(MODEL,),
            est_tokens=100,
            tier_rank=0,
            enqueued_at=clock.now(),
            reply=answer.set_result,
            tier="bench",
        )
    )
    granted = answer.result(timeout=60)
    assert isinstance(granted, Granted), granted
    if full:
        ref.tell(Sent(granted.grant.grant_id, clock.now()))
        ref.tell(Report(granted.grant.grant_id, Succeeded(Usage(100, 10))))


def _sequential(run: Callable[[int], None], n: int) -> list[float]:
    times = []
    for i in range(n):
        started = time.perf_counter()
        run(i)
        times.append((time.perf_counter() - started) * 1e6)
    return times


def _concurrent(run: Callable[[int], None], n: int, concurrency: int) -> float:
    """Wall microseconds per request with ``concurrency`` threads asking."""
    ids = iter(range(n))
    lock = threading.Lock()

    def worker() -> None:
        while True:
            with lock:
                i = next(ids, None)
            if i is None:
                return
            run(i)

    started = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return (time.perf_counter() - started) * 1e6 / n


@dataclass(frozen=True, slots=True)
class GrantCost:
    """Microseconds per request: ``what`` is the acquire round trip alone or
    the whole cycle; median and p95 sequentially, wall time per request with
    ``concurrency`` requests outstanding."""

    what: str
    median_us: float
    p95_us: float
    concurrent_us: float


def grant_costs(ref: Any, n: int, concurrency: int) -> list[GrantCost]:
    """The two cycles timed against ``ref`` (a local registry or a handle on
    a remote one), ``n`` requests each."""
    clock = SystemClock()
    base = [0]

    def runner(full: bool) -> Callable[[int], None]:
        def run(i: int) -> None:
            _cycle(ref, clock, base[0] + i, full=full)

        return run

    costs = []
    for full, label in ((False, "acquire -> granted"), (True, "acquire + sent + report")):
        _sequential(runner(full), min(50, n))  # warm up
        base[0] += 1_000_000
        times = _sequential(runner(full), n)
        base[0] += 1_000_000
        per = _concurrent(runner(full), n, concurrency)
        base[0] += 1_000_000
        p95 = statistics.quantiles(times, n=20)[-1]
        costs.append(GrantCost(label, statistics.median(times), p95, per))
    return costs


def local_registry(config: Config | None = None) -> Any:
    """The in-process pykka registry on the bench's model (stop it after)."""
    config = config or bench_config()
    return ModelRegistry.start(QuotaPolicy(config.models, config.quota), SystemClock())


def measure(name: str, ref: Any, n: int, concurrency: int) -> list[str]:
    return [
        f"| {name} | {c.what} | {c.median_us:.0f} | {c.p95_us:.0f} | {c.concurrent_us:.0f} |"
        for c in grant_costs(ref, n, concurrency)
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--address", help="an existing Ray cluster (default: start one here)")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args(argv)
    import ray

    from tierbatch.adapters.ray.cluster import kill_registry, registry_for
    from tierbatch.adapters.ray.wire import NAMESPACE

    config = bench_config()
    clock = SystemClock()
    rows = []
    local = local_registry(config)
    try:
        rows += measure("local pykka", local, args.requests, args.concurrency)
    finally:
        local.stop()
    if args.address:
        ray.init(address=args.address, namespace=NAMESPACE, logging_level="WARNING")
    else:
        # A throwaway cluster on loopback: no auth token written to ~/.ray.
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        ray.init(
            namespace=NAMESPACE,
            num_cpus=2,
            include_dashboard=False,
            logging_level="WARNING",
            _node_ip_address="127.0.0.1",
        )
    project = f"bench-{uuid.uuid4().hex[:8]}"
    handle = registry_for(project, config, clock)
    try:
        rows += measure("Ray actor", handle, args.requests, args.concurrency)

        @ray.remote(num_cpus=0)
        class Echo:
            async def ping(self, x: int) -> int:
                return x

        echo = Echo.remote()  # type: ignore[attr-defined]
        ray.get(echo.ping.remote(0))
        times = _sequential(lambda i: ray.get(echo.ping.remote(i)), args.requests)
        p95 = statistics.quantiles(times, n=20)[-1]
        rows.append(
            f"| Ray, bare | one empty async actor call | {statistics.median(times):.0f} "
            f"| {p95:.0f} | - |"
        )
    finally:
        handle.stop()
        kill_registry(project)
        ray.shutdown()
    print(f"{args.requests} requests, concurrency {args.concurrency}; microseconds per request")
    print("| registry | what | median | p95 | wall/request at concurrency |")
    print("|---|---|---:|---:|---:|")
    for row in rows:
        print(row)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

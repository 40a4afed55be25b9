"""One system on one workload, in a process of its own (so its CPU time and
peak memory are its own), against a fresh server process.

    python -m bench.run_one SPEC.json OUT.json

SPEC holds the settings, the workload name and the system name. The run:
build the workload; build the system (imports, router construction) on a
known base URL; start the server; start the clock; run until done or the
deadline; stop the server; compute the metrics; write them to OUT.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from bench.bound import Bound, BoundUnavailableError, compute_bound
from bench.harness import RunContext, System
from bench.logs import quiet_logs
from bench.measure import Recorder, peak_rss_mb, process_cpu_seconds
from bench.metrics import compute_metrics
from bench.server_proc import ServerProcess, server_spec
from bench.settings import BenchSettings
from bench.workloads import Workload, build_workload


class SystemUnavailableError(RuntimeError):
    """An optional system whose package is not installed."""


def make_system(name: str) -> System:
    if name in ("tierbatch-packed", "tierbatch-unpacked"):
        from bench.tierbatch_system import TierbatchSystem

        return TierbatchSystem(packed=name == "tierbatch-packed")
    if name == "seed-taskmanager":
        from bench.baselines.seed_taskmanager import SeedTaskManagerSystem

        return SeedTaskManagerSystem()
    if name == "openai-parallel":
        from bench.baselines.openai_parallel import OpenAIParallelSystem

        return OpenAIParallelSystem()
    if name == "litellm-router":
        try:
            from bench.baselines.litellm_router import LiteLLMRouterSystem, import_litellm

            import_litellm()
        except ImportError as exc:
            raise SystemUnavailableError(f"litellm is not installed ({exc})") from exc
        return LiteLLMRouterSystem()
    raise ValueError(f"unknown system {name!r}")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def bounds_for(settings: BenchSettings, workload: Workload) -> dict[str, Bound | None]:
    try:
        return {
            "packed": compute_bound(settings, workload, packed=True),
            "unpacked": compute_bound(settings, workload, packed=False),
        }
    except BoundUnavailableError:
        return {"packed": None, "unpacked": None}


def run_one(
    settings: BenchSettings, workload_name: str, system_name: str, workdir: Path
) -> dict[str, Any]:
    workload = build_workload(settings, workload_name)
    system = make_system(system_name)
    port = free_port()
    recorder = Recorder()
    ctx = RunContext(
        settings=settings,
        workload=workload,
        base_url=f"http://127.0.0.1:{port}",
        t0=0.0,
        deadline=0.0,
        recorder=recorder,
    )
    spec = server_spec(settings, workload, workdir / "server_log.jsonl")
    spec["port"] = port
    server = ServerProcess(spec, workdir)
    prepare = getattr(system, "prepare", None)
    if prepare is not None:
        prepare(ctx)
    try:
        server.start()
        cpu_start = process_cpu_seconds()
        ctx.t0 = time.time()
        ctx.deadline = ctx.t0 + settings.horizon_s
        result = system.run(ctx)
        cpu = process_cpu_seconds() - cpu_start
        rss = peak_rss_mb()
        log = server.stop()
    finally:
        server.close()
    metrics = compute_metrics(
        settings=settings,
        workload=workload,
        system=system_name,
        t0=ctx.t0,
        deadline=ctx.deadline,
        recorder=recorder,
        result=result,
        server_log=log.entries,
        server_started_at=log.started_at,
        process_cpu_s=cpu,
        peak_rss_mb=rss,
        bounds=bounds_for(settings, workload),
    )
    metrics["server_cpu_s"] = log.cpu_s
    metrics["description"] = workload.description
    metrics["wall_s"] = time.time() - ctx.t0
    return metrics


def main() -> None:
    quiet_logs(int(os.environ.get("BENCH_LOG_LEVEL", "30")))
    spec = json.loads(Path(sys.argv[1]).read_text())
    out = Path(sys.argv[2])
    settings = BenchSettings.from_dict(spec["settings"])
    try:
        metrics = run_one(settings, spec["workload"], spec["system"], out.parent / out.stem)
    except SystemUnavailableError as exc:
        metrics = {
            "system": spec["system"],
            "workload": spec["workload"],
            "skipped": str(exc),
        }
    out.write_text(json.dumps(metrics, indent=1))


if __name__ == "__main__":
    main()

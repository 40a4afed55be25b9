"""Run the bench: every workload x every system, then the SQLite scale runs.

    python -m bench.run --quick     # a smoke run, under a minute
    python -m bench.run --medium    # every workload, 3 s windows (~12 min)
    python -m bench.run --full      # every workload, 12 windows of 6 s, scale to 1M (~30 min)
    python -m bench.run --real --systems tierbatch-packed,litellm-router
                                    # steady at the real 60 s window (~11 min per system)

Each run is a process of its own (``bench.run_one``) with a server process of
its own, so CPU time and peak memory are the system's alone. Results go to
``bench/results/<run-id>/`` (one JSON per run, the settings, the machine);
the report is rendered there at the end (``python -m bench.report`` renders
it again). Progress is printed as runs finish.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.logs import quiet_logs
from bench.machine import describe
from bench.scale import run_scale
from bench.server_proc import REPO_ROOT
from bench.settings import SYSTEMS, WORKLOADS, BenchSettings, settings_for

RESULTS_DIR = REPO_ROOT / "bench" / "results"
RUN_OVERHEAD_S = 120.0


def run_system(
    settings: BenchSettings, workload: str, system: str, run_dir: Path
) -> dict[str, Any]:
    """One run in a fresh process; its metrics (or why it failed)."""
    runs = run_dir / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    stem = f"{workload}__{system}"
    spec_path = runs / f"{stem}.spec.json"
    out = runs / f"{stem}.json"
    spec_path.write_text(
        json.dumps({"settings": settings.to_dict(), "workload": workload, "system": system})
    )
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    with (runs / f"{stem}.stderr.txt").open("w") as err:
        try:
            done = subprocess.run(
                [sys.executable, "-m", "bench.run_one", str(spec_path), str(out)],
                cwd=REPO_ROOT,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=err,
                timeout=settings.horizon_s + RUN_OVERHEAD_S,
                check=False,
            )
            code: int | str = done.returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
    if code != 0 or not out.exists():
        failure = {"system": system, "workload": workload, "error": f"exit {code}; see {err.name}"}
        out.write_text(json.dumps(failure))
        return failure
    metrics: dict[str, Any] = json.loads(out.read_text())
    return metrics


def progress_line(m: dict[str, Any]) -> str:
    if "skipped" in m:
        return f"skipped ({m['skipped']})"
    if "error" in m:
        return f"FAILED ({m['error']})"
    ratio = m.get("bound_ratio")
    ratio_text = f"{ratio:.0%} of bound" if ratio is not None else "bound n/a"
    return (
        f"{m['articles_per_window']:.0f} art/qmin ({ratio_text}), "
        f"{m['rate_limited_per_1000']:.0f} 429/1k req, done {m['done']}/{m['articles']}, "
        f"lost {m['lost']}, dup {m['duplicated']}"
    )


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_const", const="quick", dest="mode")
    mode.add_argument("--medium", action="store_const", const="medium", dest="mode")
    mode.add_argument("--full", action="store_const", const="full", dest="mode")
    mode.add_argument("--real", action="store_const", const="real", dest="mode")
    mode.add_argument("--mode", dest="mode", help=argparse.SUPPRESS)
    parser.add_argument("--systems", help=f"comma-separated subset of {','.join(SYSTEMS)}")
    parser.add_argument("--workloads", help=f"comma-separated subset of {','.join(WORKLOADS)}")
    parser.add_argument("--no-scale", action="store_true", help="skip the SQLite scale runs")
    parser.add_argument("--no-report", action="store_true", help="do not render the report")
    parser.add_argument("--out", type=Path, help="results folder (default bench/results/<id>)")
    args = parser.parse_args(argv)
    quiet_logs()
    settings = settings_for(args.mode or "quick")
    if args.systems:
        settings = _replace(settings, systems=tuple(args.systems.split(",")))
    if args.workloads:
        settings = _replace(settings, workloads=tuple(args.workloads.split(",")))
    if args.no_scale:
        settings = _replace(settings, scale_backlogs=())
    run_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + f"-{settings.mode}"
    run_dir = args.out or RESULTS_DIR / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "settings.json").write_text(json.dumps(settings.to_dict(), indent=1))
    (run_dir / "machine.json").write_text(json.dumps(describe(), indent=1))
    started = time.time()
    total = len(settings.workloads) * len(settings.systems) + len(settings.scale_backlogs)
    step = 0
    print(f"bench {settings.mode}: {total} runs, results in {run_dir}", flush=True)
    for workload in settings.workloads:
        for system in settings.systems:
            step += 1
            t = time.time()
            metrics = run_system(settings, workload, system, run_dir)
            print(
                f"[{step}/{total} {time.time() - started:5.0f}s] {workload:7s} {system:18s} "
                f"{progress_line(metrics)} ({time.time() - t:.0f}s)",
                flush=True,
            )
    scale_dir = run_dir / "scale"
    for rows in settings.scale_backlogs:
        step += 1
        t = time.time()
        try:
            result = run_scale(rows, settings.scale_process, scale_dir)
            line = (
                f"{result['cpu_per_article_us']:.0f} us CPU/article, "
                f"{result['peak_rss_mb']:.0f} MB peak"
            )
        except Exception as exc:  # report and go on: the other runs stand
            result = {"backlog": rows, "error": str(exc)[-2000:]}
            line = f"FAILED ({str(exc).splitlines()[0]})"
        (scale_dir / f"scale-{rows}.json").write_text(json.dumps(result, indent=1))
        print(
            f"[{step}/{total} {time.time() - started:5.0f}s] scale   backlog {rows:>9,} "
            f"{line} ({time.time() - t:.0f}s)",
            flush=True,
        )
    print(f"bench done in {time.time() - started:.0f}s", flush=True)
    if not args.no_report:
        from bench.report import render

        report = render(run_dir)
        print(f"report: {report}")
    print(f"render again with: python -m bench.report {run_dir}")
    return run_dir


def _replace(settings: BenchSettings, **changes: Any) -> BenchSettings:
    data = settings.to_dict()
    data.update(changes)
    return BenchSettings.from_dict(data)


if __name__ == "__main__":
    main()

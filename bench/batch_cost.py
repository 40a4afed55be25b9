"""The cost row: USD per 1,000 articles, interactive only vs ``auto`` with
the Batch API for the cold tier, at the same deadline.

    python -m bench.batch_cost [--deadline-s 4] [--window-s 2]

Both runs are ``tierbatch run --sample`` (the shipped 405 articles, replayed
to end now) over real HTTP against the local Gemini-compatible server, on
the shipped default config at list prices, with time scaled: one quota
minute is ``--window-s`` seconds, every model admits a tenth of its
published requests per minute, and the cold tier's model ``--cold-rpm``,
so the cold tier's backlog does not fit in the deadline interactively.
The only difference between the two runs is the cold tier's ``mode``
(``interactive`` vs ``auto`` with
``max_latency_s = --deadline-s``). The server's batch jobs run for
``--turnaround-s`` (a day, scaled). Costs are the results table's
``cost_usd`` (a batch result's is its share of its request at the batch
price). Prints a Markdown table and writes ``bench/results/batch-cost-*.json``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sqlite3
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tierbatch.adapters.app.cli import main as cli_main
from tierbatch.adapters.simulation.batch_emulator import BatchSettings
from tierbatch.adapters.simulation.fake_gemini import FakeGeminiServer
from tierbatch.adapters.simulation.gemini_emulator import FakeGeminiConfig
from tierbatch.adapters.storage.config_file import default_config, render_config
from tierbatch.policies.config import (
    BatchConfig,
    Config,
    ProviderConfig,
    ProviderKind,
    QuotaConfig,
    TierMode,
)

KEY = "bench-batch-cost-KEY-0123456789"
RESULTS = Path(__file__).resolve().parent / "results"


def scenario_config(
    base_url: str, *, cold_mode: TierMode, deadline_s: float, window_s: float, cold_rpm: int
) -> Config:
    config = default_config()
    cold_model = next(t.model for t in config.tiers if t.name == "cold")
    models = {
        name: replace(
            spec, rpm=cold_rpm if name == cold_model else max(1, spec.rpm // 10), tpm=0, rpd=0
        )
        for name, spec in config.models.items()
    }
    tiers = tuple(
        replace(t, mode=cold_mode, max_latency_s=deadline_s) if t.name == "cold" else t
        for t in config.tiers
    )
    return replace(
        config,
        models=models,
        tiers=tiers,
        quota=QuotaConfig(window_s=window_s, margin_s=0.0),
        provider=ProviderConfig(kind=ProviderKind.GENAI, base_url=base_url),
        batch=BatchConfig(poll_interval_s=0.2, collect_s=0.5),
    )


def run_scenario(
    name: str,
    cold_mode: TierMode,
    *,
    deadline_s: float,
    window_s: float,
    turnaround_s: float,
    cold_rpm: int,
) -> dict[str, Any]:
    settings = BatchSettings(pending_s=min(0.2, turnaround_s), turnaround_s=turnaround_s)
    with (
        tempfile.TemporaryDirectory() as tmp,
        FakeGeminiServer(FakeGeminiConfig(batch=settings)) as server,
    ):
        config_path = Path(tmp) / "c.toml"
        config = scenario_config(
            server.base_url,
            cold_mode=cold_mode,
            deadline_s=deadline_s,
            window_s=window_s,
            cold_rpm=cold_rpm,
        )
        config_path.write_text(render_config(config), encoding="utf-8")
        db = Path(tmp) / "r.sqlite"
        previous = os.environ.get("GEMINI_API_KEY")
        os.environ["GEMINI_API_KEY"] = KEY
        out, err = io.StringIO(), io.StringIO()
        started = time.monotonic()
        try:
            code = cli_main(
                ["run", "--sample", "--db", str(db), "--config", str(config_path), "--no-progress"],
                stdout=out,
                stderr=err,
            )
        finally:
            if previous is None:
                del os.environ["GEMINI_API_KEY"]
            else:
                os.environ["GEMINI_API_KEY"] = previous
        elapsed = time.monotonic() - started
        if code != 0:
            raise RuntimeError(f"{name}: tierbatch run exited {code}: {err.getvalue()[-2000:]}")
        conn = sqlite3.connect(db)
        try:
            rows = conn.execute(
                "SELECT tier, COUNT(*), COALESCE(SUM(cost_usd), 0) FROM results GROUP BY tier"
            ).fetchall()
            batch = conn.execute(
                "SELECT COALESCE(SUM(articles), 0) FROM batch_jobs WHERE phase = 'settled'"
            ).fetchone()[0]
        finally:
            conn.close()
        calls = sum(r.method == "generateContent" for r in server.log)
    articles = sum(int(n) for _, n, _ in rows)
    cost = sum(float(c) for _, _, c in rows)
    return {
        "scenario": name,
        "articles": articles,
        "by_tier": {tier: {"articles": int(n), "cost_usd": float(c)} for tier, n, c in rows},
        "usd_per_1000_articles": 1000 * cost / articles if articles else 0.0,
        "articles_by_batch": int(batch),
        "interactive_calls": calls,
        "elapsed_s": elapsed,
    }


def table(rows: list[dict[str, Any]], deadline_s: float) -> str:
    lines = [
        f"| scenario (deadline {deadline_s:g} s) | USD / 1,000 articles | articles by batch"
        " | interactive calls | wall s | tiers (articles) |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        split = ", ".join(f"{t} {v['articles']}" for t, v in sorted(r["by_tier"].items()))
        lines.append(
            f"| {r['scenario']} | {r['usd_per_1000_articles']:.4f} | {r['articles_by_batch']}"
            f" | {r['interactive_calls']} | {r['elapsed_s']:.1f} | {split} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(prog="python -m bench.batch_cost")
    parser.add_argument("--deadline-s", type=float, default=4.0)
    parser.add_argument("--window-s", type=float, default=2.0)
    parser.add_argument("--turnaround-s", type=float, default=2.0)
    parser.add_argument("--cold-rpm", type=int, default=4)
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args(argv)
    common = {
        "deadline_s": args.deadline_s,
        "window_s": args.window_s,
        "turnaround_s": args.turnaround_s,
        "cold_rpm": args.cold_rpm,
    }
    rows = [
        run_scenario("interactive only", TierMode.INTERACTIVE, **common),
        run_scenario("auto: Batch API for cold", TierMode.AUTO, **common),
    ]
    print(table(rows, args.deadline_s))
    if not args.no_save:
        RESULTS.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        path = RESULTS / f"batch-cost-{stamp}.json"
        path.write_text(json.dumps({"settings": common, "rows": rows}, indent=2))
        print(f"written: {path}")
    return rows


if __name__ == "__main__":
    main()

"""The local Gemini-compatible server in a process of its own.

The system under test and the server share two cores; running the server
in another process keeps its CPU time out of the system's measurements.
``ServerProcess`` (used by the harness) starts ``python -m bench.server_proc
SPEC.json``, which serves on 127.0.0.1, prints one JSON line with its base
URL, runs the workload's "other client" (``server.spend`` on the same key)
on schedule, and on a line on its standard input stops, writes every
request it decided to ``log_path`` as JSON lines, and exits.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from bench.logs import quiet_logs
from bench.settings import API_KEY, BenchSettings
from bench.workloads import Workload

READY_TIMEOUT_S = 60.0
REPO_ROOT = Path(__file__).resolve().parent.parent


def server_spec(
    settings: BenchSettings, workload: Workload | None, log_path: Path
) -> dict[str, Any]:
    """What the server process needs: quotas, latencies, faults, the storm."""
    enforced = workload.enforced if workload else 1.0
    return {
        "window_s": settings.window_s,
        "models": {
            m.name: {
                "rpm": max(1, round(m.rpm * enforced)),
                "tpm": max(1, round(m.tpm * enforced)),
                "rpd": max(1, round(m.rpd * enforced)) if m.rpd else 0,
            }
            for m in settings.models
        },
        "limiter": workload.limiter if workload else "window",
        "bucket_s": settings.real(workload.bucket_s) if workload else 1.0,
        "latency_s": {m.name: settings.real(m.latency_s) for m in settings.models},
        "retired": list(workload.retired) if workload else [],
        "outages": {k: list(v) for k, v in workload.outages.items()} if workload else {},
        "storm": [[s.at_s, s.model, s.requests, s.tokens] for s in workload.storm]
        if workload
        else [],
        "key": API_KEY,
        "log_path": str(log_path),
        "seed": settings.seed,
    }


def unlimited_spec(window_s: float, latency_s: float, log_path: Path) -> dict[str, Any]:
    """A server without quotas, for the scale runs (models not listed are unlimited)."""
    return {
        "window_s": window_s,
        "models": {},
        "latency_s": latency_s,
        "retired": [],
        "outages": {},
        "storm": [],
        "key": API_KEY,
        "log_path": str(log_path),
        "seed": 0,
    }


@dataclass(frozen=True, slots=True)
class ServerLog:
    entries: list[dict[str, Any]]
    started_at: float
    cpu_s: float


class ServerProcess:
    def __init__(self, spec: dict[str, Any], workdir: Path) -> None:
        self._spec = spec
        self._workdir = workdir
        self._proc: subprocess.Popen[str] | None = None
        self._stderr: IO[str] | None = None
        self.base_url = ""
        self.started_at = 0.0

    def start(self) -> str:
        self._workdir.mkdir(parents=True, exist_ok=True)
        spec_path = self._workdir / "server_spec.json"
        spec_path.write_text(json.dumps(self._spec))
        self._stderr = (self._workdir / "server_stderr.txt").open("w")
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "bench.server_proc", str(spec_path)],
            cwd=REPO_ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            env=env,
        )
        assert self._proc.stdout is not None
        ready = _read_json_line(self._proc.stdout, READY_TIMEOUT_S)
        if ready is None or "base_url" not in ready:
            self._kill()
            raise RuntimeError(f"fake server did not start; see {self._workdir}/server_stderr.txt")
        self.base_url = ready["base_url"]
        self.started_at = float(ready["started_at"])
        return self.base_url

    def stop(self) -> ServerLog:
        proc = self._proc
        if proc is None:
            raise RuntimeError("server not started")
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write("stop\n")
        proc.stdin.flush()
        done = _read_json_line(proc.stdout, READY_TIMEOUT_S) or {}
        proc.wait(timeout=READY_TIMEOUT_S)
        self._proc = None
        if self._stderr is not None:
            self._stderr.close()
        entries = []
        with Path(self._spec["log_path"]).open() as f:
            entries = [json.loads(line) for line in f if line.strip()]
        return ServerLog(entries, self.started_at, float(done.get("cpu_s", 0.0)))

    def _kill(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            self._proc = None

    def close(self) -> None:
        """Kill the server if it is still running (after an error)."""
        if self._proc is not None:
            self._kill()
        if self._stderr is not None and not self._stderr.closed:
            self._stderr.close()


def _read_json_line(stream: IO[str], timeout_s: float) -> dict[str, Any] | None:
    """The first line of ``stream`` that is a JSON object, within ``timeout_s``."""
    result: list[dict[str, Any]] = []

    def read() -> None:
        for line in stream:
            with contextlib.suppress(json.JSONDecodeError):
                value = json.loads(line)
                if isinstance(value, dict):
                    result.append(value)
                    return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout_s)
    return result[0] if result else None


# ---------------------------------------------------------------------------
# The server side


def _serve(spec: dict[str, Any]) -> None:
    from tierbatch.adapters.simulation.fake_gemini import FakeGeminiServer
    from tierbatch.adapters.simulation.gemini_emulator import FakeGeminiConfig
    from tierbatch.policies.config import ModelSpec

    models = {
        name: ModelSpec(name, int(q["rpm"]), int(q["tpm"]), int(q["rpd"]))
        for name, q in spec["models"].items()
    }
    latency = spec["latency_s"]
    limiter = spec.get("limiter", "window")
    shape = {} if limiter == "window" else {"limiter": limiter, "bucket_s": spec["bucket_s"]}
    config = FakeGeminiConfig(
        models=models,
        window_s=float(spec["window_s"]),
        latency_s=dict(latency) if isinstance(latency, dict) else float(latency),
        retired=frozenset(spec["retired"]),
        outages={k: (float(v[0]), float(v[1])) for k, v in spec["outages"].items()},
        seed=int(spec["seed"]),
        **shape,
    )
    server = FakeGeminiServer(config, port=int(spec.get("port", 0)))
    base_url = server.start()
    started = time.time()
    print(json.dumps({"base_url": base_url, "started_at": started}), flush=True)
    stop = threading.Event()
    storm = threading.Thread(
        target=_other_client, args=(server, spec, started, stop), name="storm", daemon=True
    )
    storm.start()
    sys.stdin.readline()
    stop.set()
    storm.join()
    log = server.log
    server.stop()
    with Path(spec["log_path"]).open("w") as f:
        for r in log:
            if r.method != "generateContent":
                continue
            f.write(
                json.dumps(
                    {
                        "at": r.at,
                        "model": r.model,
                        "status": r.status,
                        "ids": list(r.article_ids),
                        "tokens": r.input_tokens,
                        "retry_delay_s": r.retry_delay_s,
                        "quota_id": r.quota_id,
                        "fault": r.fault,
                    }
                )
                + "\n"
            )
    cpu = os.times()
    print(json.dumps({"stopped": True, "cpu_s": cpu.user + cpu.system}), flush=True)


def _other_client(server: Any, spec: dict[str, Any], started: float, stop: threading.Event) -> None:
    """Another client of the same key, spending quota on a schedule."""
    for at_s, model, requests, tokens in spec["storm"]:
        delay = started + float(at_s) - time.time()
        if delay > 0 and stop.wait(delay):
            return
        if stop.is_set():
            return
        server.spend(spec["key"], model, int(requests), int(tokens))


def main() -> None:
    quiet_logs()
    spec = json.loads(Path(sys.argv[1]).read_text())
    _serve(spec)


if __name__ == "__main__":
    main()

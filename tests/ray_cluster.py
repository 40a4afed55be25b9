"""A throwaway local Ray head for the tests: ``ray start --head --block``
in a temporary folder, on free loopback ports, 2 CPUs, no dashboard, in a
session of its own so that stopping it (the whole process group) touches no
other Ray on this machine (``ray stop`` would stop them all)."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.services import free_ports

START_TIMEOUT_S = 90.0


def missing_reason() -> str | None:
    if importlib.util.find_spec("ray") is None:
        return "ray is not installed (pip install -e '.[ray]')"
    if _ray_command() is None:
        return "the ray command is not installed next to this Python"
    return None


def _ray_command() -> str | None:
    script = Path(sys.executable).with_name("ray")
    if script.exists():
        return str(script)
    return shutil.which("ray")


class RayHead:
    def __init__(self) -> None:
        # Short: Ray's unix socket paths must fit in 107 bytes.
        self.temp_dir = Path(tempfile.mkdtemp(prefix="tbray-", dir="/tmp"))
        self._ports = free_ports(8)
        self.port = self._ports[0]
        self.address = f"127.0.0.1:{self.port}"
        self._proc: subprocess.Popen[str] | None = None
        self._output: list[str] = []

    def start(self) -> RayHead:
        command = _ray_command()
        assert command is not None
        flags = (
            "--port",
            "--ray-client-server-port",
            "--node-manager-port",
            "--object-manager-port",
            "--dashboard-agent-grpc-port",
            "--dashboard-agent-listen-port",
            "--metrics-export-port",
            "--runtime-env-agent-port",
        )
        ports = dict(zip(flags, self._ports, strict=True))
        argv = [
            command,
            "start",
            "--head",
            "--block",
            "--num-cpus",
            "2",
            "--include-dashboard=false",
            "--disable-usage-stats",
            "--node-ip-address",
            "127.0.0.1",
            "--temp-dir",
            str(self.temp_dir),
        ]
        for flag, port in ports.items():
            argv += [flag, str(port)]
        # A loopback-only throwaway: no auth token (Ray would otherwise write
        # one to ~/.ray for the next cluster to trip over).
        os.environ["RAY_AUTH_MODE"] = "disabled"
        os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
        env = dict(os.environ)
        self._proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            start_new_session=True,
        )
        ready = threading.Event()

        def read() -> None:
            assert self._proc is not None and self._proc.stdout is not None
            for line in self._proc.stdout:
                self._output.append(line)
                if "Ray runtime started" in line:
                    ready.set()
            ready.set()

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(START_TIMEOUT_S) or self._proc.poll() is not None:
            output = "".join(self._output)
            self.stop()
            raise RuntimeError(f"ray start --head failed:\n{output}")
        return self

    def stop(self) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        if proc is not None:
            # What ray start left in its group (the GCS, the raylet) once it exited.
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    break
                time.sleep(0.1)
        self._proc = None
        shutil.rmtree(self.temp_dir, ignore_errors=True)

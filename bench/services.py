"""Throwaway local servers for a bench: a PostgreSQL server and a Ray head.

Both the way the test suite starts its own (``tests/postgres_server.py``,
``tests/ray_cluster.py``; a bench never imports the tests): in a temporary
folder, on free ports of 127.0.0.1 only, in a process group of their own,
and stopped by that group's id -- never ``ray stop``, which stops every Ray
on the machine, the tests' among them.

* ``LocalPostgres``: ``initdb`` (trust authentication, durability off: a
  bench server, disposable), ``postgres`` as ``nobody`` when run as root
  (PostgreSQL refuses root); ``new_database()`` hands out fresh databases.
* ``LocalRayHead``: ``ray start --head --block``, 2 CPUs, no dashboard, no
  auth token (loopback only).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

__all__ = ["LocalPostgres", "LocalRayHead", "free_port", "postgres_bindir"]

_PG_SETTINGS = (
    "fsync=off",
    "synchronous_commit=off",
    "full_page_writes=off",
    "max_connections=200",
    "shared_buffers=32MB",
    "unix_socket_directories=",
    "listen_addresses=127.0.0.1",
    "log_min_messages=warning",
)
_START_TIMEOUT_S = 90.0


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports, every socket bound until all are chosen
    (one at a time the system may hand a port out twice; Ray then refuses
    two components on one port)."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket())
            sock.bind(("127.0.0.1", 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


def postgres_bindir() -> Path | None:
    """Debian's newest ``/usr/lib/postgresql/<version>/bin``, else the folder
    of ``initdb`` on PATH; None when neither has the server."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    on_path = shutil.which("initdb")
    if on_path:
        found.append(str(Path(os.path.realpath(on_path)).parent))
    for folder in map(Path, found):
        if (folder / "initdb").is_file() and (folder / "postgres").is_file():
            return folder
    return None


def _stop_group(proc: subprocess.Popen[Any] | None, sig: int = signal.SIGTERM) -> None:
    """Stop ``proc`` and whatever it started in its process group."""
    if proc is None:
        return
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # what the leader left in its group
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        time.sleep(0.1)


class LocalPostgres:
    def __init__(self) -> None:
        bindir = postgres_bindir()
        if bindir is None:
            raise RuntimeError("no PostgreSQL server binaries (Debian's 'postgresql' package)")
        self._bindir = bindir
        self._folder = Path(tempfile.mkdtemp(prefix="tierbatch-bench-pg-"))
        self._proc: subprocess.Popen[bytes] | None = None
        self._count = 0
        self.port = 0
        user = pwd.getpwnam("nobody") if os.geteuid() == 0 else None
        self._as: dict[str, Any] = (
            {} if user is None else {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
        )
        if user is not None:
            os.chown(self._folder, user.pw_uid, user.pw_gid)

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> LocalPostgres:
        import psycopg

        data = self._folder / "data"
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"}
        env["HOME"] = str(self._folder)
        initdb = [str(self._bindir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust"]
        subprocess.run(
            [*initdb, "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions"],
            check=True,
            capture_output=True,
            env=env,
            cwd=self._folder,
            **self._as,
        )
        self.port = free_port()
        settings = [a for s in (*_PG_SETTINGS, f"port={self.port}") for a in ("-c", s)]
        log = (self._folder / "server.log").open("ab")
        self._proc = subprocess.Popen(
            [str(self._bindir / "postgres"), "-D", str(data), *settings],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=self._folder,
            start_new_session=True,
            **self._as,
        )
        deadline = time.monotonic() + _START_TIMEOUT_S
        while True:
            try:
                psycopg.connect(self.url("postgres"), connect_timeout=2).close()
                return self
            except psycopg.OperationalError:
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("PostgreSQL did not start") from None
                time.sleep(0.05)

    def new_database(self) -> str:
        import psycopg

        self._count += 1
        name = f"bench{self._count}"
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')  # type: ignore[arg-type]
        return self.url(name)

    def stop(self) -> None:
        # SIGINT: PostgreSQL's fast shutdown (disconnects clients, no wait).
        _stop_group(self._proc, signal.SIGINT)
        self._proc = None
        shutil.rmtree(self._folder, ignore_errors=True)


class LocalRayHead:
    """``extra_env``: set for the head and so for every actor it starts
    (e.g. the API key caller actors read on their node)."""

    def __init__(self, extra_env: dict[str, str] | None = None) -> None:
        # Short: Ray's unix socket paths must fit in 107 bytes.
        self._folder = Path(tempfile.mkdtemp(prefix="tbbray-", dir="/tmp"))
        self._ports = free_ports(8)
        self.port = self._ports[0]
        self.address = f"127.0.0.1:{self.port}"
        self._proc: subprocess.Popen[str] | None = None
        # A loopback-only throwaway: no token (Ray would write one to ~/.ray).
        self.env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
        self.env.update(extra_env or {})

    def start(self) -> LocalRayHead:
        ray = Path(sys.executable).with_name("ray")
        command = str(ray) if ray.exists() else shutil.which("ray")
        if command is None:
            raise RuntimeError("the ray command is not installed (pip install -e '.[ray]')")
        argv = [command, "start", "--head", "--block", "--num-cpus", "2"]
        argv += ["--include-dashboard=false", "--disable-usage-stats"]
        argv += ["--node-ip-address", "127.0.0.1", "--temp-dir", str(self._folder)]
        argv += ["--port", str(self.port)]
        flags = (
            "--ray-client-server-port",
            "--node-manager-port",
            "--object-manager-port",
            "--dashboard-agent-grpc-port",
            "--dashboard-agent-listen-port",
            "--metrics-export-port",
            "--runtime-env-agent-port",
        )
        for flag, port in zip(flags, self._ports[1:], strict=True):
            argv += [flag, str(port)]
        self._proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=self.env,
            start_new_session=True,
        )
        ready = threading.Event()
        output: list[str] = []

        def read() -> None:
            assert self._proc is not None and self._proc.stdout is not None
            for line in self._proc.stdout:
                output.append(line)
                if "Ray runtime started" in line:
                    ready.set()
            ready.set()

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(_START_TIMEOUT_S) or self._proc.poll() is not None:
            self.stop()
            raise RuntimeError("ray start --head failed:\n" + "".join(output)[-3000:])
        return self

    def stop(self) -> None:
        _stop_group(self._proc)
        self._proc = None
        shutil.rmtree(self._folder, ignore_errors=True)

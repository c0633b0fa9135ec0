"""Stopping processes at any moment, measured.

- A worker that gets SIGTERM while a send is in flight finishes it (the bridge answers, the
  delivery is recorded as sent) or, when the bridge hangs, gives it up when the bridge call times
  out (the delivery goes back to pending, to be retried with the same idempotency key); either way
  it exits 0 within about one bridge call (DISPATCH_BRIDGE_TIMEOUT_S), and nothing stays `sending`.
- A real `whatsched api` process that gets SIGTERM closes its sockets at once with 1001 (going
  away: clients reconnect, to another process), refuses new connections, lets requests in flight
  finish, cancels (and so rolls back) any still running after --graceful-timeout, and exits.

Each test prints a `MEASURED` line (`pytest -s` shows them); README "Running it in production"
quotes them. The bounds asserted are generous (a loaded 2-core machine), the printed figures exact.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import psutil
import pytest
from api_processes import ApiProcess
from bridge_process import (
    BridgeProcess,
    WorkerProcess,
    delivery_states,
    eventually,
    new_message,
    new_owner,
    numbers,
    schedule,
    sent_for,
)
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from whatsched.config import Settings
from whatsched.db.setup import Prepared

pytestmark = pytest.mark.slow

GUARD_S = 30  # hang guards, never speed assertions
SLACK_S = 5.0  # what a busy 2-core machine may add to a measured stop


def measured(what: str, seconds: float) -> None:
    print(f"\nMEASURED {what}: {seconds:.2f} s")


def assert_stopped_cleanly(code: int | None, api: ApiProcess) -> None:
    """uvicorn finishes its shutdown, then re-raises the SIGTERM it caught, so a single process ends
    "killed by SIGTERM" (systemd counts that as a clean stop); the --workers parent exits 0."""
    log = api.log()
    assert code in (0, -signal.SIGTERM), f"exit code {code}:\n{log}"
    assert "Application shutdown complete" in log, log


# ---------------------------------------------------------------------------------------------
# The worker
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def start_bridge(tmp_path: Path) -> Any:
    started: list[BridgeProcess] = []

    def start(latency_ms: int) -> BridgeProcess:
        bridge = BridgeProcess(tmp_path / f"bridge-{len(started)}", latency_ms=latency_ms)
        bridge.start()
        started.append(bridge)
        return bridge

    yield start
    for bridge in started:
        bridge.stop()


@pytest.fixture
def start_worker(prepared: Prepared, tmp_path: Path) -> Any:
    started: list[WorkerProcess] = []

    def start(bridge: BridgeProcess, **env: str) -> WorkerProcess:
        worker = WorkerProcess(
            prepared.admin_url, prepared.app_url, bridge.url, tmp_path / f"worker-{len(started)}.log", **env
        )
        worker.start()
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()
        print(f"--- {worker.log_path.name}\n{worker.log()}")


async def sigterm_and_wait(process: subprocess.Popen[bytes], within: float = GUARD_S) -> tuple[float, int | None]:
    """SIGTERM, then the seconds until the process exited, and its exit code."""
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    try:
        code = await asyncio.to_thread(process.wait, within)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return time.monotonic() - started, None
    return time.monotonic() - started, code


async def a_send_in_flight(admin: asyncpg.Connection, message: uuid.UUID) -> None:
    await eventually(
        lambda: delivery_states(admin, message), lambda s: s["sending"] >= 1, GUARD_S, what="a delivery in flight"
    )


async def test_sigterm_lets_the_send_in_flight_finish_and_record_it(
    admin: asyncpg.Connection, start_bridge: Any, start_worker: Any
) -> None:
    latency_s = 2.0
    bridge = start_bridge(int(latency_s * 1000))
    one_at_a_time = {"DISPATCH_BATCH_SIZE": "1", "DISPATCH_LANES": "1", "DISPATCH_BRIDGE_TIMEOUT_S": "10"}
    worker = start_worker(bridge, **one_at_a_time)
    owner = await new_owner(admin)
    phones = numbers(4, 801)
    message = await new_message(admin, owner, phones)
    await schedule(admin, owner, message)
    await a_send_in_flight(admin, message)
    await asyncio.sleep(0.3)  # well inside the bridge's 2 s

    elapsed, code = await sigterm_and_wait(worker.process)  # type: ignore[arg-type]
    measured(f"worker stop, one send in flight on a bridge answering in {latency_s:g} s", elapsed)
    assert code == 0, worker.log()
    assert elapsed < latency_s + SLACK_S

    states = await delivery_states(admin, message)
    outbox = sent_for(await bridge.outbox(), message)
    assert states["sending"] == 0, states  # nothing left claimed
    assert states["sent"] + states["delivered"] + states["read"] == len(outbox) >= 1, (states, outbox)
    assert states["pending"] == len(phones) - len(outbox)

    # What is left goes out from another worker, each recipient exactly once.
    start_worker(bridge, DISPATCH_BRIDGE_TIMEOUT_S="10")
    await eventually(
        lambda: delivery_states(admin, message), lambda s: s["pending"] == 0 and s["sending"] == 0, 60, what="the rest"
    )
    received = sorted(m["to"] for m in sent_for(await bridge.outbox(), message))
    assert received == sorted(phones)


async def test_sigterm_with_a_hung_bridge_releases_the_delivery_within_the_bridge_timeout(
    admin: asyncpg.Connection, start_bridge: Any, start_worker: Any
) -> None:
    bridge_timeout_s = 2.0
    bridge = start_bridge(60_000)  # the bridge takes a minute: as good as hung
    worker = start_worker(
        bridge,
        DISPATCH_BATCH_SIZE="1",
        DISPATCH_LANES="1",
        DISPATCH_BRIDGE_TIMEOUT_S=str(bridge_timeout_s),
        DISPATCH_LEASE_S="30",
    )
    owner = await new_owner(admin)
    message = await new_message(admin, owner, numbers(2, 802))
    await schedule(admin, owner, message)
    await a_send_in_flight(admin, message)

    elapsed, code = await sigterm_and_wait(worker.process)  # type: ignore[arg-type]
    measured(f"worker stop, bridge hung, DISPATCH_BRIDGE_TIMEOUT_S={bridge_timeout_s:g}", elapsed)
    assert code == 0, worker.log()
    assert elapsed < bridge_timeout_s + SLACK_S

    rows = await admin.fetch(
        "select state, attempts, last_error_code, claimed_by from public.deliveries where message_id = $1", message
    )
    assert all(r["state"] == "pending" for r in rows), [dict(r) for r in rows]
    retried = [r for r in rows if r["attempts"] == 1]
    assert len(retried) == 1 and retried[0]["last_error_code"] == "bridge_unreachable", [dict(r) for r in rows]


# ---------------------------------------------------------------------------------------------
# The API
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def start_api(settings: Settings) -> Any:
    started: list[ApiProcess] = []

    def start(*args: str) -> ApiProcess:
        api = ApiProcess(settings, via_cli=True, extra_args=args).start()
        started.append(api)
        return api

    yield start
    for api in started:
        print(f"--- api {api.port}\n{api.log()[-4000:]}")
        api.stop()


async def open_socket(api: ApiProcess, user: Any) -> ClientConnection:
    ws = await connect(api.ws_url(user.id), proxy=None)
    await ws.send(json.dumps({"type": "auth", "token": user.token}))
    async with asyncio.timeout(GUARD_S):
        assert json.loads(await ws.recv()) == {"type": "auth_ok"}
    return ws


async def close_of(ws: ClientConnection, since: float) -> tuple[int | None, str | None, float]:
    """The close code and reason the server sent, and when (seconds after `since`)."""
    try:
        async with asyncio.timeout(GUARD_S):
            while True:
                await ws.recv()
    except ConnectionClosed as exc:
        rcvd = exc.rcvd
        return (rcvd.code if rcvd else None), (rcvd.reason if rcvd else None), time.monotonic() - since
    raise AssertionError("unreachable")


async def draft(admin: asyncpg.Connection, owner: str) -> uuid.UUID:
    message: uuid.UUID = await admin.fetchval(
        "insert into public.messages (created_by, content) values ($1, 'before') returning id", uuid.UUID(owner)
    )
    return message


@pytest.fixture
async def row_lock(prepared: Prepared) -> AsyncIterator[Callable[[uuid.UUID], Any]]:
    """Hold a lock on a message row (an admin transaction), so a request that updates it stays in
    flight until the test lets go: `release = await lock(id)`, then `await release()`."""
    conns: list[asyncpg.Connection] = []

    async def lock(message: uuid.UUID) -> Callable[[], Any]:
        conn = await asyncpg.connect(prepared.admin_url)
        conns.append(conn)
        tx = conn.transaction()
        await tx.start()
        await conn.execute("select 1 from public.messages where id = $1 for update", message)
        return tx.commit

    yield lock
    for conn in conns:
        await conn.close()


async def blocked_until_locked(admin: asyncpg.Connection, message: uuid.UUID) -> None:
    """Until some backend waits for a lock (the request's UPDATE)."""

    async def waiting() -> int:
        n: int = await admin.fetchval(
            "select count(*) from pg_stat_activity where datname = current_database() and wait_event_type = 'Lock'"
            " and query ilike '%update%messages%'"
        )
        return n

    await eventually(waiting, lambda n: n >= 1, GUARD_S, what="the request to wait for the row lock")


async def test_sigterm_closes_sockets_with_1001_and_finishes_the_request_in_flight(
    admin: asyncpg.Connection, make_user: Any, start_api: Any, row_lock: Any
) -> None:
    api = start_api("--graceful-timeout", "10")
    await asyncio.to_thread(api.wait_ready)
    user = await make_user()
    sockets = [await open_socket(api, user) for _ in range(3)]
    message = await draft(admin, user.id)
    release = await row_lock(message)
    base = f"http://127.0.0.1:{api.port}"
    async with httpx.AsyncClient(base_url=base, headers=user.headers, timeout=GUARD_S) as http:
        request = asyncio.create_task(http.put(f"/api/messages/{message}", json={"content": "after"}))
        await blocked_until_locked(admin, message)

        t0 = time.monotonic()
        api.proc.send_signal(signal.SIGTERM)
        closes = await asyncio.gather(*(close_of(ws, t0) for ws in sockets))
        await asyncio.sleep(0.3)
        with pytest.raises(OSError), socket.create_connection(("127.0.0.1", api.port), timeout=1):
            pass  # no new connection is accepted while it drains
        hold_s = 1.5
        await asyncio.sleep(max(0.0, hold_s - (time.monotonic() - t0)))
        assert not request.done(), "the request in flight was dropped"
        await release()
        response = await request
        code = await asyncio.to_thread(api.proc.wait, GUARD_S)
        exited = time.monotonic() - t0

    assert [c[0] for c in closes] == [1001, 1001, 1001], closes
    assert all(c[1] == "server shutting down" for c in closes), closes
    slowest_close = max(c[2] for c in closes)
    measured("API: SIGTERM to the last socket closed with 1001", slowest_close)
    measured(f"API: SIGTERM to exit, a request held {hold_s:g} s in flight", exited)
    assert slowest_close < 2.0
    assert response.status_code == 200, response.text
    assert response.json()["content"] == "after"
    assert_stopped_cleanly(code, api)
    assert exited < hold_s + SLACK_S


async def test_a_request_longer_than_the_graceful_timeout_is_cancelled_and_rolled_back(
    admin: asyncpg.Connection, make_user: Any, start_api: Any, row_lock: Any
) -> None:
    graceful_s = 2
    api = start_api("--graceful-timeout", str(graceful_s))
    await asyncio.to_thread(api.wait_ready)
    user = await make_user()
    message = await draft(admin, user.id)
    release = await row_lock(message)
    base = f"http://127.0.0.1:{api.port}"
    async with httpx.AsyncClient(base_url=base, headers=user.headers, timeout=GUARD_S) as http:
        request = asyncio.create_task(http.put(f"/api/messages/{message}", json={"content": "after"}))
        await blocked_until_locked(admin, message)
        t0 = time.monotonic()
        api.proc.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.to_thread(api.proc.wait, GUARD_S)
            exited = time.monotonic() - t0
        finally:
            await release()  # the lock outlives the request (6 s would be long): let go now
        outcome: Any
        try:
            outcome = (await request).status_code
        except httpx.HTTPError as exc:
            outcome = type(exc).__name__

    measured(f"API: SIGTERM to exit, a request stuck past --graceful-timeout {graceful_s}", exited)
    assert_stopped_cleanly(code, api)
    assert exited < graceful_s + SLACK_S
    assert outcome != 200, outcome  # cut off: the client never got a success
    assert await admin.fetchval("select content from public.messages where id = $1", message) == "before"


async def test_workers_n_starts_n_processes_and_all_close_their_sockets_on_sigterm(
    admin: asyncpg.Connection, make_user: Any, start_api: Any
) -> None:
    api = start_api("--workers", "2")
    await asyncio.to_thread(api.wait_ready)
    parent = psutil.Process(api.pid)

    async def listening() -> set[int]:
        rows = await admin.fetch(
            "select application_name from pg_stat_activity where application_name like 'whatsched-realtime:%'"
        )
        return {int(r["application_name"].rsplit(":", 1)[1]) for r in rows}

    async def serving() -> set[int]:
        """Children of `whatsched api` with a hub of their own (not multiprocessing's resource tracker)."""
        return {c.pid for c in parent.children()} & await listening()

    children = await eventually(serving, lambda pids: len(pids) == 2, GUARD_S, what="two API processes")
    user = await make_user()
    sockets = [await open_socket(api, user) for _ in range(6)]
    t0 = time.monotonic()
    api.proc.send_signal(signal.SIGTERM)
    closes = await asyncio.gather(*(close_of(ws, t0) for ws in sockets))
    code = await asyncio.to_thread(api.proc.wait, GUARD_S)
    exited = time.monotonic() - t0
    measured("API --workers 2: SIGTERM to the last socket closed", max(c[2] for c in closes))
    measured("API --workers 2: SIGTERM to exit (parent and both workers)", exited)
    assert {c[0] for c in closes} == {1001}, closes
    assert_stopped_cleanly(code, api)
    assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie" for pid in children)
    assert await eventually(listening, lambda pids: not (children & pids), 10, what="the hubs' LISTEN to end") == (
        await listening()
    )


# ---------------------------------------------------------------------------------------------
# The systemd units (deploy/) agree with these stops
# ---------------------------------------------------------------------------------------------

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
UNITS = ("whatsched-api.service", "whatsched-worker@.service", "whatsched-bridge.service", "whatsched-bridge@.service")
HARDENING = ("NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes")


def unit_settings(name: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in (DEPLOY / name).read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";")):
            key, value = line.split("=", 1)
            found.setdefault(key.strip(), []).append(value.strip())
    return found


@pytest.mark.parametrize("name", UNITS)
def test_each_unit_restarts_on_failure_stops_with_sigterm_and_is_hardened(name: str) -> None:
    unit = unit_settings(name)
    # A bridge for one more number also reads its own file (its number id, port and public URL).
    own = ["/etc/whatsched/bridge-%i.env"] if name == "whatsched-bridge@.service" else []
    assert unit["EnvironmentFile"] == ["/etc/whatsched/whatsched.env", *own]
    assert unit["Restart"] == ["on-failure"]
    assert unit["KillSignal"] == ["SIGTERM"]
    assert unit["KillMode"] == ["mixed"]  # SIGTERM to the main process; SIGKILL to all only at the timeout
    text = (DEPLOY / name).read_text()
    assert all(option in text.splitlines() for option in HARDENING), name


def test_stop_timeouts_cover_the_graceful_stops() -> None:
    import re

    api = unit_settings("whatsched-api.service")
    graceful = int(re.search(r"--graceful-timeout (\d+)", api["ExecStart"][0]).group(1))  # type: ignore[union-attr]
    assert "--workers ${API_WORKERS}" in api["ExecStart"][0]
    assert int(api["TimeoutStopSec"][0]) >= graceful + 5

    worker = unit_settings("whatsched-worker@.service")
    bridge_call = Settings(_env_file=None).dispatch.bridge_call_timeout_s  # type: ignore[call-arg]
    assert int(worker["TimeoutStopSec"][0]) >= bridge_call + 10

    main_js = (DEPLOY.parent / "bridge" / "src" / "main.js").read_text()
    deadline_ms = int(re.search(r"STOP_DEADLINE_MS = ([\d_]+)", main_js).group(1).replace("_", ""))  # type: ignore[union-attr]
    assert int(unit_settings("whatsched-bridge.service")["TimeoutStopSec"][0]) >= deadline_ms / 1000 + 5


def test_systemd_analyze_verify_accepts_the_units(tmp_path: Path) -> None:
    import shutil
    import sys

    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed")
    node = shutil.which("node")
    whatsched = Path(sys.executable).parent / "whatsched"
    if node is None or not whatsched.exists():
        pytest.skip("node or the whatsched script is missing, and verify checks that ExecStart exists")
    # verify checks that each ExecStart program exists: point the units at this machine's.
    for name in UNITS:
        text = (DEPLOY / name).read_text()
        text = text.replace("/opt/whatsched/.venv/bin/whatsched", str(whatsched)).replace("/usr/bin/node", node)
        (tmp_path / name).write_text(text)
    targets = [str(tmp_path / n) for n in ("whatsched-api.service", "whatsched-bridge.service")]
    targets.append(str(tmp_path / "whatsched-worker@1.service"))  # an instance of the template
    result = subprocess.run([tool, "verify", *targets], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr

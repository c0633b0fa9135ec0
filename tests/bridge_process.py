"""Real processes for the dispatcher's tests and benchmark: the Node bridge with the simulator
driver (`node bridge/src/main.js`) and the worker (`python -m whatsched.cli worker`), plus the
campaign data they work on (an owner, contacts in a group, a message) written straight to the
database, and the user's transitions run as the owner through RLS, as supabase-js would.

Processes run in their own session (a SIGKILL reaches only them), log to a file the test can
show, and are stopped by the caller (the fixtures in the test modules do it in teardown).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import httpx

from whatsched.db.embedded import free_port

REPO = Path(__file__).resolve().parents[1]
BRIDGE_MAIN = REPO / "bridge" / "src" / "main.js"
DEFAULT_TOKEN = "dev-bridge-token"
T = TypeVar("T")


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class BridgeProcess:
    """The real bridge on a free port with its own BRIDGE_DATA_DIR (idempotency keys live there,
    so a restart with the same folder remembers what it sent)."""

    def __init__(
        self,
        data_dir: Path,
        *,
        token: str = DEFAULT_TOKEN,
        port: int | None = None,
        events_url: str = "",
        latency_ms: int = 0,
        ack_delay_ms: int = 50,
        number_id: str | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.number_id = number_id
        self.token = token
        self.port = port or free_port()
        self.events_url = events_url
        self.latency_ms = latency_ms
        self.ack_delay_ms = ack_delay_ms
        self.log_path = data_dir / "bridge.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def start(self, timeout: float = 20.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "WHATSAPP_DRIVER": "simulator",
            "BRIDGE_HOST": "127.0.0.1",
            "BRIDGE_PORT": str(self.port),
            "BRIDGE_TOKEN": self.token,
            "BRIDGE_DATA_DIR": str(self.data_dir),
            "BRIDGE_EVENTS_URL": self.events_url,
            "SIMULATOR_LATENCY_MS": str(self.latency_ms),
            "SIMULATOR_ACK_DELAY_MS": str(self.ack_delay_ms),
            **({"BRIDGE_NUMBER_ID": self.number_id} if self.number_id else {}),
        }
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                ["node", str(BRIDGE_MAIN)],
                cwd=REPO / "bridge",
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the bridge exited with {self.process.returncode}:\n{_tail(self.log_path)}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=1) as resp:
                    if resp.status == 200 and b'"connected"' in resp.read():
                        return
            except OSError:
                pass
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"the bridge did not come up on {self.url}:\n{_tail(self.log_path)}")

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def log(self) -> str:
        return _tail(self.log_path)

    # -- the simulator's admin routes -------------------------------------------------------

    async def _call(self, method: str, path: str, json: dict[str, Any] | None = None) -> Any:
        async with httpx.AsyncClient(base_url=self.url, headers=self.headers, timeout=30) as http:
            resp = await http.request(method, path, json=json)
            resp.raise_for_status()
            return resp.json()

    async def outbox(self) -> list[dict[str, Any]]:
        """Every message the simulator "sent" since this process started."""
        answer: dict[str, Any] = await self._call("GET", "/simulator/outbox")
        messages: list[dict[str, Any]] = answer["messages"]
        return messages

    async def configure(self, **changes: int) -> dict[str, Any]:
        """latency_ms, ack_delay_ms, fail_next."""
        answer: dict[str, Any] = await self._call("POST", "/simulator/config", changes)
        return answer

    async def force_state(self, status: str, reason: str | None = None) -> dict[str, Any]:
        answer: dict[str, Any] = await self._call("POST", "/simulator/state", {"status": status, "reason": reason})
        return answer


class WorkerProcess:
    """`python -m whatsched.cli worker` against a database and a bridge. Careful sending is off
    unless asked for (spacing 0, no caps, no quiet hours), and so is the watch's ack rule; any
    setting can be overridden."""

    def __init__(
        self,
        database_url: str,
        app_database_url: str,
        bridge_url: str,
        log_path: Path,
        *,
        token: str = DEFAULT_TOKEN,
        **env: str,
    ) -> None:
        self.log_path = log_path
        self.env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "APP_DATABASE_URL": app_database_url,
            "BRIDGE_URL": bridge_url,
            "BRIDGE_TOKEN": token,
            "SEND_SPACING_MIN_S": "0",
            "SEND_SPACING_MAX_S": "0",
            "SEND_HOURLY_CAP": "0",
            "SEND_DAILY_CAP": "0",
            "QUIET_HOURS": "",
            # These bridges post no events unless a test wires them, so no ack reaches Postgres:
            # the watch's ack rule would take every number for frozen (tests that wire acks set it).
            "NUMBER_FROZEN_ACK_S": "0",
            "PYTHONUNBUFFERED": "1",
            **env,
        }
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "whatsched.cli", "worker"],
                cwd=self.log_path.parent,  # not the repository: no stray .env
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: no cleanup at all, as a crash."""
        if self.running:
            assert self.process is not None
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM and wait; the exit code (None if it had to be killed)."""
        if self.process is None:
            return None
        if self.process.poll() is not None:
            return self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def log(self) -> str:
        return _tail(self.log_path)


async def eventually(
    probe: Callable[[], Awaitable[T]],
    done: Callable[[T], bool],
    within: float = 30.0,
    interval: float = 0.05,
    what: str = "the condition",
) -> T:
    """Poll `probe` until `done(value)`; the last value, or AssertionError after `within` s."""
    deadline = time.monotonic() + within
    while True:
        value = await probe()
        if done(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what}; last value: {value!r}")
        await asyncio.sleep(interval)


async def workers_listening(admin: asyncpg.Connection) -> int:
    """How many worker processes hold a LISTEN connection to this database."""
    count: int = await admin.fetchval(
        "select count(*) from pg_stat_activity where datname = current_database()"
        " and application_name like 'whatsched-worker:%' and query like 'LISTEN%'"
    )
    return count


# ---------------------------------------------------------------------------------------------
# Campaign data
# ---------------------------------------------------------------------------------------------


def numbers(count: int, series: int) -> list[str]:
    """`count` distinct E.164 numbers of one series; none ends in 0000 (the simulator's
    "not on WhatsApp" rule), so all are registered."""
    return [f"+5697{series:03d}{i:05d}1" for i in range(1, count + 1)]


def name_for(phone: str) -> str:
    return f"Name {phone[-6:]}"


async def new_owner(admin: asyncpg.Connection, timezone: str = "UTC") -> uuid.UUID:
    owner = uuid.uuid4()
    await admin.execute(
        "insert into auth.users (id, email) values ($1, $2)", owner, f"owner-{owner.hex[:10]}@example.com"
    )
    await admin.execute("update public.profiles set timezone = $2 where id = $1", owner, timezone)
    return owner


async def new_message(
    admin: asyncpg.Connection,
    owner: uuid.UUID,
    phones: list[str],
    content: str = "Hola {{name}}!",
    recurrence: str | None = None,
) -> uuid.UUID:
    """A draft reaching `phones` through one new group (contacts named name_for(phone))."""
    await admin.execute(
        """
        insert into public.contacts (created_by, name, phone)
        select $1, 'Name ' || right(p, 6), p from unnest($2::text[]) p
        on conflict (created_by, phone) do nothing
        """,
        owner,
        phones,
    )
    group = await admin.fetchval(
        "insert into public.groups (created_by, name) values ($1, $2) returning id", owner, f"g-{uuid.uuid4().hex[:8]}"
    )
    await admin.execute(
        """
        insert into public.group_contacts (group_id, contact_id, created_by)
        select $1, id, created_by from public.contacts where created_by = $2 and phone = any($3::text[])
        """,
        group,
        owner,
        phones,
    )
    message: uuid.UUID = await admin.fetchval(
        "insert into public.messages (created_by, content, recurrence) values ($1, $2, $3) returning id",
        owner,
        content,
        recurrence,
    )
    await admin.execute(
        "insert into public.message_groups (message_id, group_id, created_by) values ($1, $2, $3)",
        message,
        group,
        owner,
    )
    return message


async def as_owner(admin: asyncpg.Connection, owner: uuid.UUID, sql: str, *args: Any) -> Any:
    """One statement as the owner, the way PostgREST runs an rpc: role authenticated + claims."""
    claims = json.dumps({"sub": str(owner), "role": "authenticated"})
    async with admin.transaction():
        await admin.execute(
            "select set_config('role', 'authenticated', true), set_config('request.jwt.claims', $1, true)", claims
        )
        return await admin.fetchrow(sql, *args)


async def schedule(
    admin: asyncpg.Connection, owner: uuid.UUID, message: uuid.UUID, in_seconds: float = 0.0
) -> datetime:
    """Schedule as the owner for now + in_seconds; returns scheduled_for."""
    row = await as_owner(
        admin,
        owner,
        "select scheduled_for from public.schedule_message($1, now() + make_interval(secs => $2))",
        message,
        in_seconds,
    )
    at: datetime = row["scheduled_for"]
    return at


async def message_row(admin: asyncpg.Connection, message: uuid.UUID) -> asyncpg.Record:
    row: asyncpg.Record = await admin.fetchrow("select * from public.messages where id = $1", message)
    return row


async def delivery_states(admin: asyncpg.Connection, message: uuid.UUID) -> Counter[str]:
    rows = await admin.fetch(
        "select state, count(*)::int as n from public.deliveries where message_id = $1 group by state", message
    )
    return Counter({r["state"]: r["n"] for r in rows})


def sent_for(outbox: list[dict[str, Any]], message: uuid.UUID) -> list[dict[str, Any]]:
    """The outbox entries of one message (its idempotency keys are "<message id>:<phone>")."""
    prefix = f"{message}:"
    return [m for m in outbox if str(m.get("idempotency_key") or "").startswith(prefix)]


async def heal_default_number(admin: asyncpg.Connection) -> None:
    """Tests that report a flapping or lost default number get it paused or blocked by the health
    rule (as they should): hand the next test a healthy default number, as an admin's resume and a
    reconnect would, without its ramp."""
    await admin.execute(
        """with d as (select id from public.whatsapp_numbers where is_default)
           update public.whatsapp_numbers n
           set status = 'connected', reported_status = 'connected', raw_state = null, last_error = null,
               health_reset_at = now(), ramp_until = null
           from d where n.id = d.id"""
    )

"""Faults the service must survive, each against real processes: the worker SIGKILLed mid-campaign
again and again, the bridge SIGKILLed and restarted mid-send, the database server stopped and
started under a running API and worker, an API process SIGKILLed while it imports a large file,
and clients racing schedule, cancel, edit and pause on one message.

What is checked is what a user would see: the simulator's outbox (what WhatsApp received), the
message's status and counters, the API's answers, and the rows in the database. Every process a
test starts is stopped (or was killed) by the end of the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from api_processes import ApiProcess
from bridge_process import (
    BridgeProcess,
    WorkerProcess,
    delivery_states,
    eventually,
    message_row,
    new_message,
    new_owner,
    numbers,
    schedule,
    sent_for,
)
from test_dispatcher import FAST, assert_exactly_once, wait_final

from whatsched.config import Settings
from whatsched.db.embedded import EmbeddedPostgres, free_port
from whatsched.db.setup import Prepared, prepare

pytestmark = pytest.mark.slow

GUARD_S = 90  # hang guards only, never speed assertions


@pytest.fixture
async def bridge(tmp_path: Path) -> AsyncIterator[BridgeProcess]:
    process = BridgeProcess(tmp_path / "bridge")
    process.start()
    try:
        yield process
    finally:
        process.kill()


class Workers:
    """Worker processes started by one test; all of them are gone when the test ends."""

    def __init__(self, database_url: str, app_url: str, bridge: BridgeProcess, folder: Path) -> None:
        self.database_url, self.app_url, self.bridge, self.folder = database_url, app_url, bridge, folder
        self.started: list[WorkerProcess] = []

    def start(self, **env: str) -> WorkerProcess:
        worker = WorkerProcess(
            self.database_url,
            self.app_url,
            self.bridge.url,
            self.folder / f"worker-{len(self.started)}.log",
            **{**FAST, **env},
        )
        worker.start()
        self.started.append(worker)
        return worker

    def stop_all(self) -> list[int | None]:
        codes = [w.stop() for w in self.started]
        for w in self.started:
            print(f"--- {w.log_path.name}\n{w.log()}")
        return codes


@pytest.fixture
async def workers(prepared: Prepared, bridge: BridgeProcess, tmp_path: Path) -> AsyncIterator[Workers]:
    started = Workers(prepared.admin_url, prepared.app_url, bridge, tmp_path)
    try:
        yield started
    finally:
        codes = started.stop_all()
        print(f"--- bridge\n{bridge.log()}")
        # 0: stopped by SIGTERM; -9: killed by the test itself. None: SIGTERM was not enough.
        assert all(code in (0, -9) for code in codes), f"a worker did not exit cleanly: {codes}"


async def progress_of(admin: asyncpg.Connection, message: uuid.UUID, pid: int | None = None) -> asyncpg.Record:
    """Deliveries recorded as sent, and those in flight (claimed by worker `pid` when given)."""
    row: asyncpg.Record = await admin.fetchrow(
        """
        select count(*) filter (where state in ('sent', 'delivered', 'read')) as sent,
               count(*) filter (where state = 'sending' and ($2::text is null or claimed_by like $2)) as sending
        from public.deliveries where message_id = $1
        """,
        message,
        None if pid is None else f"%:{pid}:%",
    )
    return row


async def final_counts(admin: asyncpg.Connection, message: uuid.UUID) -> tuple[str, int, int, int]:
    row = await message_row(admin, message)
    return row["status"], row["recipient_count"], row["delivered_count"], row["failed_count"]


# ---------------------------------------------------------------------------------------------
# The worker killed five times in a row
# ---------------------------------------------------------------------------------------------


async def test_the_worker_killed_five_times_mid_campaign_sends_each_recipient_exactly_once(
    admin: asyncpg.Connection, bridge: BridgeProcess, workers: Workers
) -> None:
    total, kills_wanted, step = 1000, 5, 60
    owner = await new_owner(admin)
    phones = numbers(total, series=101)
    message = await new_message(admin, owner, phones)
    env = {"DISPATCH_BATCH_SIZE": "10", "DISPATCH_LANES": "2"}  # simulator at zero latency (the default)
    worker = workers.start(**env)
    await schedule(admin, owner, message)

    kill_points = []
    for _ in range(kills_wanted):
        assert worker.process is not None
        pid, floor = worker.process.pid, (kill_points[-1] if kill_points else 0) + step

        # Each kill lands while this very worker has a batch in flight (claimed, maybe sent, not recorded).
        def ready(counts: asyncpg.Record, floor: int = floor) -> bool:
            return bool(counts["sent"] >= floor and counts["sending"] > 0)

        await eventually(
            lambda pid=pid: progress_of(admin, message, pid),  # type: ignore[misc]
            ready,
            within=GUARD_S,
            interval=0.002,
            what=f"worker {pid} to have a batch in flight after {floor} sends",
        )
        worker.kill()
        at_kill = await progress_of(admin, message)
        status = (await message_row(admin, message))["status"]
        assert status == "sending" and at_kill["sent"] < total, "the campaign ended before all five kills"
        kill_points.append(int(at_kill["sent"]))
        worker = workers.start(**env)

    final = await wait_final(admin, message, within=GUARD_S)
    assert_exactly_once(await bridge.outbox(), message, phones)
    assert (final["status"], final["recipient_count"], final["delivered_count"], final["failed_count"]) == (
        "sent",
        total,
        total,
        0,
    )
    assert await delivery_states(admin, message) == Counter({"sent": total})
    # The kills hit sends in flight: those deliveries were taken over and sent again, replayed by the bridge.
    taken_over = await admin.fetchval(
        "select count(*) from public.deliveries where message_id = $1 and attempts > 1", message
    )
    assert taken_over > 0
    print(f"killed at {kill_points} sends; {taken_over} deliveries taken over after a kill")


# ---------------------------------------------------------------------------------------------
# The bridge killed and restarted mid-send
# ---------------------------------------------------------------------------------------------


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


def recorded_sends(bridge: BridgeProcess) -> dict[str, str]:
    """What a bridge has durably sent: its idempotency store, key -> whatsapp_message_id."""
    path = bridge.data_dir / "idempotency.jsonl"
    recorded: dict[str, str] = {}
    with contextlib.suppress(FileNotFoundError):
        for line in path.read_text().splitlines():
            with contextlib.suppress(ValueError):  # a line cut short by the kill
                entry = json.loads(line)
                recorded[entry["key"]] = entry["whatsapp_message_id"]
    return recorded


async def in_flight_keys(admin: asyncpg.Connection, message: uuid.UUID, pid: int) -> set[str]:
    rows = await admin.fetch(
        "select idempotency_key from public.deliveries where message_id = $1 and state = 'sending'"
        " and claimed_by like $2",
        message,
        f"%:{pid}:%",
    )
    return {r["idempotency_key"] for r in rows}


async def test_the_bridge_killed_and_restarted_mid_send_retries_then_completes_without_duplicates(
    admin: asyncpg.Connection, bridge: BridgeProcess, workers: Workers
) -> None:
    total = 600
    await bridge.configure(latency_ms=100)  # each send takes a while: kills land with sends in flight
    owner = await new_owner(admin)
    phones = numbers(total, series=102)
    message = await new_message(admin, owner, phones)
    lease_s = 5.0  # longer than a freeze below lasts: nobody takes the frozen batch over meanwhile
    env = {
        "DISPATCH_BATCH_SIZE": "10",
        "DISPATCH_LANES": "1",
        "DISPATCH_MAX_ATTEMPTS": "100",
        "DISPATCH_LEASE_S": str(lease_s),
    }
    survivor = workers.start(**env)
    doomed = workers.start(**env)
    assert survivor.process is not None and doomed.process is not None
    doomed_pid = doomed.process.pid
    await schedule(admin, owner, message)

    # One worker is frozen with a batch it claimed a moment ago (the bridge has not answered it yet);
    # the bridge finishes those sends and records them, but the answers never reach the database:
    # the case the bridge's idempotency store exists for.
    async def fresh_batch() -> int:
        n: int = await admin.fetchval(
            "select count(*) from public.deliveries where message_id = $1 and state = 'sending'"
            " and claimed_by like $2 and lease_expires_at - clock_timestamp()"
            " between make_interval(secs => $3) and make_interval(secs => $4)",
            message,
            f"%:{doomed_pid}:%",
            lease_s - 0.07,  # claimed 20 to 70 ms ago: its requests are out, the answers (100 ms) are not back
            lease_s - 0.02,
        )
        return n

    async def recorded_frozen() -> set[str]:
        return frozen & set(recorded_sends(bridge))

    await eventually(lambda: progress_of(admin, message), lambda c: c["sent"] >= 40, within=GUARD_S, what="40 sends")
    for _ in range(20):
        await eventually(fresh_batch, lambda n: n > 0, within=GUARD_S, interval=0.002, what="a fresh batch")
        os.kill(doomed_pid, signal.SIGSTOP)
        frozen = await in_flight_keys(admin, message, doomed_pid)
        with contextlib.suppress(AssertionError):
            await eventually(recorded_frozen, bool, within=1, what="the bridge to record the frozen sends")
            break
        os.kill(doomed_pid, signal.SIGCONT)  # frozen before its requests left: try another batch
    else:
        raise AssertionError("never froze the worker with sends the bridge then finished")
    before_kill = sent_for(await bridge.outbox(), message)  # a snapshot: the bridge keeps sending for the survivor
    bridge.kill()  # SIGKILL mid-send: the survivor has a batch in flight too
    doomed.kill()
    await eventually(
        lambda: admin.fetchval(
            "select count(*) from pg_stat_activity where application_name = $1", f"whatsched-worker:{doomed_pid}"
        ),
        lambda n: n == 0,
        within=GUARD_S,
        what="the frozen worker's sessions to end",
    )
    first_life = {k: v for k, v in recorded_sends(bridge).items() if k.startswith(f"{message}:")}
    assert {m["idempotency_key"] for m in before_kill} <= set(first_life)
    # Sent by the first bridge, never recorded in the database: only a replay can finish these.
    unanswered = await in_flight_keys(admin, message, doomed_pid) & set(first_life)
    assert unanswered

    # The survivor keeps trying a bridge that is not there, with backoff.
    async def retrying() -> int:
        n: int = await admin.fetchval(
            "select count(*) from public.deliveries where message_id = $1 and state = 'pending'"
            " and attempts >= 2 and last_error_code = 'bridge_unreachable'",
            message,
        )
        return n

    await eventually(retrying, lambda n: n > 0, within=GUARD_S, what="deliveries retrying while the bridge is down")
    assert (await message_row(admin, message))["status"] == "sending"

    bridge.start()  # same port, same BRIDGE_DATA_DIR
    final = await wait_final(admin, message, within=GUARD_S)
    second_life = sent_for(await bridge.outbox(), message)

    twice = set(first_life) & {m["idempotency_key"] for m in second_life}
    assert not twice, f"{len(twice)} recipient(s) were sent the message by both bridge lifetimes: {sorted(twice)[:3]}"
    second_phones = Counter(m["to"] for m in second_life)
    assert max(second_phones.values()) == 1
    first_phones = {k.split(":", 1)[1] for k in first_life}
    assert first_phones | set(second_phones) == set(phones)
    assert await final_counts(admin, message) == ("sent", total, total, 0)
    assert final["status"] == "sent"
    assert await delivery_states(admin, message) == Counter({"sent": total})
    # The frozen worker's sends were taken over after its lease and replayed by the restarted bridge:
    # recorded with the first lifetime's WhatsApp ids, never sent again.
    replayed = await admin.fetch(
        "select idempotency_key, state, whatsapp_message_id, attempts from public.deliveries"
        " where idempotency_key = any($1::text[])",
        sorted(unanswered),
    )
    assert len(replayed) == len(unanswered) > 0
    for row in replayed:
        assert row["state"] == "sent" and row["attempts"] >= 2
        assert row["whatsapp_message_id"] == first_life[row["idempotency_key"]]
    print(f"first lifetime {len(first_life)} sends, second {len(second_life)}; {len(unanswered)} replayed")


# ---------------------------------------------------------------------------------------------
# The database restarted under a running API and worker
# ---------------------------------------------------------------------------------------------


class OwnDatabase:
    """A PostgreSQL server of this test's own, so stopping it touches no other test."""

    def __init__(self, folder: Path) -> None:
        self.server = EmbeddedPostgres(folder / "postgres" / "data", free_port())
        self.data_dir = folder / "app-data"

    async def start(self) -> Prepared:
        await asyncio.to_thread(self.server.start)
        settings = Settings(_env_file=None, database_url=self.server.url, data_dir=self.data_dir)  # type: ignore[call-arg]
        return await prepare(settings)


@pytest.fixture
async def own_database(tmp_path: Path) -> AsyncIterator[OwnDatabase]:
    database = OwnDatabase(tmp_path)
    try:
        yield database
    finally:
        await asyncio.to_thread(database.server.remove)


async def sign_up(http: httpx.AsyncClient) -> tuple[str, dict[str, str]]:
    """A new user through the API itself; their id and Authorization header."""
    email, password = f"u-{uuid.uuid4().hex[:10]}@example.com", "correct horse battery"
    created = await http.post("/api/auth/signup", json={"email": email, "password": password, "name": "Ana"})
    assert created.status_code == 201, created.text
    login = await http.post("/api/auth/login", json={"email": email, "password": password})
    assert login.status_code == 200, login.text
    return created.json()["id"], {"Authorization": f"Bearer {login.json()['access_token']}"}


async def test_the_database_restarted_under_the_api_and_worker_loses_and_duplicates_nothing(
    own_database: OwnDatabase, tmp_path: Path
) -> None:
    total = 500
    prepared = await own_database.start()
    bridge = BridgeProcess(tmp_path / "bridge", latency_ms=30)
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        database_url=prepared.admin_url,
        app_database_url=prepared.app_url,
        data_dir=own_database.data_dir,
        bridge_url=bridge.url,
    )
    api = ApiProcess(settings, env={"ALLOW_SIGNUP": "true"})
    worker = WorkerProcess(
        prepared.admin_url,
        prepared.app_url,
        bridge.url,
        tmp_path / "worker.log",
        **{**FAST, "DISPATCH_BATCH_SIZE": "5", "DISPATCH_LANES": "1"},
    )
    admin = await asyncpg.connect(prepared.admin_url)
    try:
        bridge.start()
        await asyncio.to_thread(api.start().wait_ready)
        worker.start()
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api.port}", timeout=30) as http:
            user_id, auth = await sign_up(http)
            phones = numbers(total, series=103)
            message = await new_message(admin, uuid.UUID(user_id), phones)
            scheduled = await http.post(
                f"/api/messages/{message}/schedule", json={"scheduled_for": now_iso()}, headers=auth
            )
            assert scheduled.status_code == 200, scheduled.text
            await eventually(
                lambda: progress_of(admin, message),
                lambda c: c["sent"] >= 60,
                within=GUARD_S,
                what="the campaign to be under way",
            )
            await admin.close()

            await asyncio.to_thread(own_database.server.stop)  # fast shutdown: every session is cut
            for _ in range(5):
                health = await http.get("/api/health")
                assert health.status_code == 503, health.text
                assert health.json()["components"]["database"]["status"] == "down"
                data = await http.get(f"/api/messages/{message}", headers=auth)
                assert data.status_code == 503, data.text
                assert data.json() == {
                    "detail": "The database is unreachable; try again shortly.",
                    "code": "database_unavailable",
                    "errors": [],
                }
                await asyncio.sleep(0.4)
            assert worker.running, f"the worker died with the database:\n{worker.log()}"

            await asyncio.to_thread(own_database.server.start)  # same folder, same port
            # The API recovers by itself: no restart, and every request after the first success succeeds.
            await eventually(
                lambda: http.get("/api/health/db"), lambda r: r.status_code == 200, within=GUARD_S, interval=0.2
            )
            for _ in range(20):
                answer = await http.get(f"/api/messages/{message}", headers=auth)
                assert answer.status_code == 200, answer.text
            assert (await http.get("/api/health")).json()["components"]["database"]["status"] == "ok"

            admin = await asyncpg.connect(prepared.admin_url)
            final = await wait_final(admin, message, within=GUARD_S)
            assert_exactly_once(await bridge.outbox(), message, phones)
            assert (final["status"], final["recipient_count"], final["delivered_count"], final["failed_count"]) == (
                "sent",
                total,
                total,
                0,
            )
            assert await delivery_states(admin, message) == Counter({"sent": total})
            seen = (await http.get(f"/api/messages/{message}", headers=auth)).json()
            assert (seen["status"], seen["delivered_count"]) == ("sent", total)
            # The worker backed off while the server was down rather than hammering it with connections.
            attempts = worker.log_path.read_text().count("reconnecting in")
            assert 0 < attempts <= 12, f"{attempts} reconnection attempts during a few seconds of outage"
    finally:
        with contextlib.suppress(Exception):
            await admin.close()
        code = worker.stop()
        api.stop()
        bridge.kill()
        print(f"--- worker\n{worker.log()}\n--- bridge\n{bridge.log()}")
    assert code == 0, "the worker did not stop cleanly on SIGTERM"


# ---------------------------------------------------------------------------------------------
# An import interrupted by killing the API process
# ---------------------------------------------------------------------------------------------


async def writing_to_contacts(admin: asyncpg.Connection) -> int | None:
    """The server process of a transaction that has started writing contacts and not ended: it holds
    a ROW EXCLUSIVE lock on public.contacts from its first insert until its commit or rollback."""
    pid: int | None = await admin.fetchval(
        """select pid from pg_locks
           where relation = 'public.contacts'::regclass and mode = 'RowExclusiveLock' and granted
             and pid <> pg_backend_pid()"""
    )
    return pid


async def test_an_import_cut_short_by_killing_the_api_process_leaves_no_rows(
    settings: Settings, make_user: Any, admin: asyncpg.Connection
) -> None:
    import psutil

    user = await make_user()
    group = await admin.fetchval(
        "insert into public.groups (created_by, name) values ($1, 'import target') returning id::text", user.id
    )
    phones = numbers(60_000, series=104)
    csv = ("nombre,telefono\n" + "".join(f"Cliente {i},{p}\n" for i, p in enumerate(phones))).encode()
    import_id = str(uuid.uuid4())
    form = {"import_id": import_id, "group_ids": group}
    stages: list[str] = []

    def on_event(_conn: Any, _pid: int, _channel: str, payload: str) -> None:
        event = json.loads(payload)
        if event.get("event") == "import_progress" and event["payload"].get("import_id") == import_id:
            stages.append(event["payload"]["stage"])

    listener = await asyncpg.connect(settings.database_url)
    await listener.add_listener("realtime", on_event)
    api = ApiProcess(settings)
    try:
        await asyncio.to_thread(api.start().wait_ready)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api.port}", timeout=GUARD_S) as http:
            upload = asyncio.create_task(
                http.post(
                    "/api/contacts/import",
                    headers=user.headers,
                    files={"file": ("clientes.csv", csv, "text/csv")},
                    data=form,
                )
            )
            # Killed while the rows are being written inside the import's transaction.
            backend = await eventually(
                lambda: writing_to_contacts(admin), lambda pid: pid is not None, within=GUARD_S, interval=0.002
            )
            family = psutil.Process(api.pid).children(recursive=True)
            assert api.proc is not None
            api.proc.kill()
            api.proc.wait()
            with pytest.raises(httpx.TransportError):
                await upload
        assert stages and "done" not in stages, stages  # the import was under way, and never finished
        print(f"killed the API while it wrote contacts; stages seen {stages}; {len(family)} child process(es)")

        # The server notices the client is gone and rolls the transaction back.
        await eventually(
            lambda: admin.fetchval("select count(*) from pg_stat_activity where pid = $1", backend),
            lambda n: n == 0,
            within=GUARD_S,
            what="the import's server process to end",
        )
        assert await admin.fetchval("select count(*) from public.contacts where created_by = $1", user.id) == 0
        assert await admin.fetchval("select count(*) from public.group_contacts where group_id = $1::uuid", group) == 0
        audited = await admin.fetchval(
            "select count(*) from public.audit_log where actor_id = $1 and action = 'contacts.import'", user.id
        )
        assert audited == 0
        # The phone-parsing workers the API process had started do not outlive it.
        _, alive = await asyncio.to_thread(psutil.wait_procs, family, GUARD_S)
        assert not alive, f"processes left behind by the killed API: {alive}"
    finally:
        api.stop()
        await listener.close()

    # The same file through a fresh API process: all of it, so the first attempt had rows to lose.
    again = ApiProcess(settings)
    try:
        await asyncio.to_thread(again.start().wait_ready)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{again.port}", timeout=GUARD_S) as http:
            answer = await http.post(
                "/api/contacts/import",
                headers=user.headers,
                files={"file": ("clientes.csv", csv, "text/csv")},
                data={"group_ids": group},
            )
        assert answer.status_code == 200, answer.text
        assert (answer.json()["created"], answer.json()["invalid_count"]) == (len(phones), 0)
    finally:
        again.stop()
    assert await admin.fetchval("select count(*) from public.group_contacts where group_id = $1::uuid", group) == len(
        phones
    )


# ---------------------------------------------------------------------------------------------
# Conflicting actions on one message from several clients at once
# ---------------------------------------------------------------------------------------------

EDITABLE = {"draft", "scheduled", "paused"}
SETTLED = {"draft", "paused", "cancelled", "sent", "failed"}
ANSWERED_STATUS = {"schedule": {"scheduled"}, "cancel": {"cancelled"}, "pause": {"paused"}}


async def settled(admin: asyncpg.Connection, message: uuid.UUID) -> asyncpg.Record:
    row: asyncpg.Record = await admin.fetchrow(
        """select m.status, m.content, m.recipient_count, m.delivered_count, m.failed_count,
                  (select count(*) from public.deliveries d where d.message_id = m.id and d.state = 'sending') as sending
           from public.messages m where m.id = $1""",
        message,
    )
    return row


async def test_conflicting_actions_from_several_clients_leave_one_consistent_state(
    settings: Settings,
    make_user: Any,
    admin: asyncpg.Connection,
    bridge: BridgeProcess,
    workers: Workers,
) -> None:
    seed = random.randrange(1_000_000)
    rng = random.Random(seed)
    print(f"random seed {seed}")
    iterations, recipients = 20, 12
    await bridge.configure(latency_ms=10)  # sending lasts long enough for pauses and cancels to land in it
    workers.start(DISPATCH_BATCH_SIZE="4", DISPATCH_LANES="1")
    env = {"BRIDGE_URL": bridge.url}
    apis = [ApiProcess(settings, env=env), ApiProcess(settings, env=env)]
    clients: list[httpx.AsyncClient] = []
    try:
        for api in apis:
            api.start()
        await asyncio.gather(*(asyncio.to_thread(api.wait_ready) for api in apis))
        clients = [
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{apis[i % 2].port}", timeout=GUARD_S) for i in range(6)
        ]
        finals: Counter[str] = Counter()
        for iteration in range(iterations):
            user = await make_user()  # a fresh user: the schedule limit (10/min) never interferes
            original = f"Hola {{{{name}}}}! #{iteration} v0"
            message = await new_message(
                admin, uuid.UUID(user.id), numbers(recipients, series=200 + iteration), content=original
            )
            # A different mix each time, so every final state gets its turn.
            edits = [f"Hola {{{{name}}}}! #{iteration} v{k}" for k in range(1, rng.randint(2, 3) + 1)]
            actions: list[tuple[str, str, str, dict[str, Any] | None]] = [
                *[("schedule", "POST", "/schedule", {"scheduled_for": now_iso()})] * rng.randint(1, 2),
                *[("cancel", "POST", "/cancel", None)] * (rng.random() < 0.4),
                *[("pause", "POST", "/pause", None)] * rng.randint(0, 2),
                *[("resume", "POST", "/resume", None)] * rng.randint(0, 2),
                *(("edit", "PUT", "", {"content": text}) for text in edits),
            ]
            rng.shuffle(actions)

            async def act(
                verb: str,
                method: str,
                suffix: str,
                body: dict[str, Any] | None,
                user: Any = user,
                message: Any = message,
            ) -> tuple[str, dict[str, Any] | None, httpx.Response]:
                await asyncio.sleep(rng.uniform(0, 0.15))
                http = rng.choice(clients)
                answer = await http.request(method, f"/api/messages/{message}{suffix}", json=body, headers=user.headers)
                return verb, body, answer

            answers = await asyncio.gather(*(act(*a) for a in actions))
            for verb, _body, answer in answers:
                assert answer.status_code < 500, (verb, answer.status_code, answer.text)
                assert answer.status_code in (200, 409), (verb, answer.status_code, answer.text)
                if answer.status_code == 409:
                    assert answer.json()["code"] in ("invalid_transition", "not_editable"), answer.text
                    continue
                status = answer.json()["status"]
                if verb == "edit":
                    assert status in EDITABLE, f"an edit was applied to a {status} message"
                elif verb == "resume":
                    assert status in ("scheduled", "sending"), answer.text
                else:
                    assert status in ANSWERED_STATUS[verb], (verb, answer.text)

            final = await eventually(
                lambda message=message: settled(admin, message),
                lambda row: row["status"] in SETTLED and row["sending"] == 0,
                within=GUARD_S,
                what=f"message {message} to settle",
            )
            finals[final["status"]] += 1
            applied = [b["content"] for v, b, a in answers if v == "edit" and a.status_code == 200 and b]
            refused = [b["content"] for v, b, a in answers if v == "edit" and a.status_code != 200 and b]
            assert final["content"] in [original, *applied]
            assert final["content"] not in refused
            states = await delivery_states(admin, message)
            if final["status"] == "cancelled":
                assert states["pending"] == 0 and states["sending"] == 0, states
            if final["status"] == "sent":
                assert states == Counter({"sent": recipients}), states
            if states:
                assert final["recipient_count"] == sum(states.values())
            assert final["delivered_count"] == states["sent"] and final["failed_count"] == states["failed"]
            outbox = sent_for(await bridge.outbox(), message)
            assert len({m["to"] for m in outbox}) == len(outbox), "a recipient got the message twice"
            assert len(outbox) == states["sent"]
            rendered = {
                text.replace("{{name}}", f"Name {m['to'][-6:]}") for m in outbox for text in [original, *applied]
            }
            assert all(m["body"] in rendered for m in outbox)
            # Every action answered 200 is in the audit log, in the same transaction as the change
            # (the user's: the worker's steps are not audited, the message was made by the superuser).
            audited = Counter(
                r["action"]
                for r in await admin.fetch(
                    "select action from public.audit_log"
                    " where entity_id = $1 and actor_id = $2 and action like 'message.%'",
                    str(message),
                    uuid.UUID(user.id),
                )
            )
            answered = Counter(
                "message.update" if v == "edit" else f"message.{v}" for v, _b, a in answers if a.status_code == 200
            )
            assert audited == answered, (audited, answered)
            # Once final, an edit is refused and changes nothing.
            if final["status"] in ("cancelled", "sent"):
                late = await clients[0].put(
                    f"/api/messages/{message}", json={"content": "too late"}, headers=user.headers
                )
                assert (late.status_code, late.json()["code"]) == (409, "not_editable"), late.text
                assert (await message_row(admin, message))["content"] == final["content"]
        print(f"final states over {iterations} races: {dict(finals)}")
    finally:
        for http in clients:
            await http.aclose()
        for api in apis:
            api.stop()

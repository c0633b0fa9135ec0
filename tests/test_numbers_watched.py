"""Numbers watched (issue 20, "Restarted when frozen" and "Memory"): a worker's housekeeping reads
each bridge's GET /status, and Postgres decides which numbers to restart (private.frozen_numbers,
private.restart_watched_numbers): the restart is a `restart` command with no requester and a
reason, within a backoff and an hourly limit. End to end through real bridge processes
(simulator) posting their events to the API, and real worker processes; and the scale-out: six
bridge processes, two workers, one database."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from bridge_process import (
    BridgeProcess,
    WorkerProcess,
    eventually,
    message_row,
    new_message,
    new_owner,
    numbers,
    sent_for,
    workers_listening,
)
from test_number_health import bare_number, new_admin
from test_numbers_dispatch import add_number, send_from

from whatsched.config import Settings
from whatsched.db.setup import Prepared

pytestmark = pytest.mark.slow

EVENTS = "/api/bridge/events"
LIMIT_TITLE = "Número de WhatsApp sin reinicio automático"
# The watch every half second; every rule off unless a test turns it on.
FAST = {
    "DISPATCH_HOUSEKEEPING_S": "0.5",
    "NUMBER_FROZEN_ACK_S": "0",
    "NUMBER_FROZEN_STATE_S": "0",
    "NUMBER_MEMORY_CAP_MB": "0",
    "NUMBER_RESTART_BACKOFF_S": "0.5",
}


async def restarts(admin: asyncpg.Connection, number_id: str) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await admin.fetch(
        "select id, requested_by, reason, done_at, result, error from public.whatsapp_number_commands"
        " where number_id = $1::uuid and action = 'restart' order by requested_at",
        number_id,
    )
    return rows


async def status_of(admin: asyncpg.Connection, number_id: str) -> str:
    status: str = await admin.fetchval("select status from public.whatsapp_numbers where id = $1::uuid", number_id)
    return status


@pytest.fixture
async def started(tmp_path: Path) -> AsyncIterator[Callable[..., BridgeProcess]]:
    """Start bridges as a test needs them; all are stopped at the end."""
    running: list[BridgeProcess] = []

    def start(name: str, **options: Any) -> BridgeProcess:
        bridge = BridgeProcess(tmp_path / name, **options)
        bridge.start()
        running.append(bridge)
        return bridge

    try:
        yield start
    finally:
        for bridge in running:
            bridge.stop()


async def reporting_number(
    admin: asyncpg.Connection, start: Callable[..., BridgeProcess], api_url: str, settings: Settings, label: str
) -> tuple[str, BridgeProcess]:
    """A number whose own bridge posts its events (status, acks, registration) to the API."""
    number_id = str(
        await admin.fetchval("insert into public.whatsapp_numbers (label) values ($1) returning id::text", label)
    )
    bridge = start(
        label, token=settings.bridge_token, events_url=api_url + EVENTS, ack_delay_ms=20, number_id=number_id
    )
    registered = (
        "select status = 'connected' and bridge_url is not null from public.whatsapp_numbers where id = $1::uuid"
    )
    await eventually(lambda: admin.fetchval(registered, number_id), bool, 15, what=f"{label} connected")
    return number_id, bridge


# -----------------------------------------------------------------------------------------------
# The rules, in SQL
# -----------------------------------------------------------------------------------------------


async def test_memory_over_the_cap_waits_for_a_quiet_moment(admin: asyncpg.Connection) -> None:
    number = await bare_number(admin, "Memoria")
    owner = await new_owner(admin)
    message = await new_message(admin, owner, numbers(1, 401))
    await admin.execute("update public.messages set number_id = $2::uuid where id = $1", message, number)
    delivery = await admin.fetchval(
        "insert into public.deliveries (message_id, created_by, phone, idempotency_key, state)"
        " values ($1, $2, $3, $4, 'sending') returning id",
        message,
        owner,
        numbers(1, 401)[0],
        f"{message}:{numbers(1, 401)[0]}",
    )
    await admin.execute(
        "select private.observe_bridges($1::jsonb)",
        json.dumps([{"number_id": number, "status": "connected", "raw_state": "CONNECTED", "rss_bytes": 900 << 20}]),
    )
    sql = "select reason, evidence from private.frozen_numbers(array[$1::uuid], 0, 0, $2)"
    assert await admin.fetch(sql, number, 1000) == []  # under the cap
    assert await admin.fetch(sql, number, 500) == []  # over it, but a send is in flight
    await admin.execute("update public.deliveries set state = 'sent', sent_at = now() where id = $1", delivery)
    (row,) = await admin.fetch(sql, number, 500)
    assert (row["reason"], json.loads(row["evidence"])) == ("memory", {"rss_mb": 900, "cap_mb": 500})
    await admin.execute("update public.messages set status = 'cancelled' where id = $1", message)


# -----------------------------------------------------------------------------------------------
# End to end
# -----------------------------------------------------------------------------------------------


async def test_a_frozen_number_is_restarted_and_its_campaign_finishes_once(
    admin: asyncpg.Connection,
    prepared: Prepared,
    settings: Settings,
    api_url: str,
    started: Callable[..., BridgeProcess],
    tmp_path: Path,
) -> None:
    default_bridge = started("default")
    number, bridge = await reporting_number(admin, started, api_url, settings, f"Congelado {uuid.uuid4().hex[:6]}")
    # The page freezes: still connected, every send accepted, none acknowledged.
    await bridge._call("POST", "/simulator/state", {"raw_state": "OPENING"})
    owner = await new_owner(admin)
    phones = numbers(20, 402)
    campaign = await new_message(admin, owner, phones, "Hola {{name}}, ¿llega?")
    await send_from(admin, owner, campaign, number)

    worker = WorkerProcess(
        prepared.admin_url,
        prepared.app_url,
        default_bridge.url,
        tmp_path / "worker.log",
        # 3 s: far past the simulator's 50 ms acks even on a loaded machine (a slow ack is not a freeze).
        **{**FAST, "NUMBER_FROZEN_ACK_S": "3", "SEND_SPACING_MIN_S": "0.3", "SEND_SPACING_MAX_S": "0.3"},
    )
    worker.start()
    try:
        (restart,) = await eventually(
            lambda: restarts(admin, number), lambda r: len(r) == 1 and r[0]["done_at"] is not None, 30, what="a restart"
        )
        assert restart["requested_by"] is None and restart["error"] is None
        assert restart["reason"].startswith("unacknowledged: ") and "limit 3 s" in restart["reason"]
        audit = await admin.fetchrow(
            "select actor_id, details from public.audit_log where action = 'whatsapp_number.restart'"
            " and entity_id = $1 order by id desc limit 1",
            number,
        )
        assert audit["actor_id"] is None and json.loads(audit["details"])["reason"] == restart["reason"]
        # Thawed: the campaign finishes, every recipient once, and what leaves now is acknowledged.
        await eventually(lambda: message_row(admin, campaign), lambda m: m["status"] == "sent", 30, what="the campaign")
        out = sent_for(await bridge.outbox(), campaign)
        assert sorted(m["to"] for m in out) == sorted(phones)  # nothing lost, nothing twice
        # One statement, one snapshot: acknowledgements keep arriving, and a delivery acknowledged
        # between two separate counts would be in neither.
        seen = await admin.fetchrow(
            "select count(*) filter (where delivered_at is not null) as acked,"
            " count(*) filter (where state = 'sent' and delivered_at is null) as waiting,"
            " coalesce(jsonb_agg(jsonb_build_object('state', state, 'last_error_code', last_error_code,"
            "   'last_error', last_error, 'attempts', attempts))"
            "   filter (where not (state = 'sent' or delivered_at is not null)), '[]')::text as others"
            " from public.deliveries where message_id = $1",
            campaign,
        )
        assert seen["acked"] > 0 and seen["acked"] + seen["waiting"] == 20, seen["others"]
        await asyncio.sleep(3.5)  # the sends that waited before the restart do not restart it again
        assert len(await restarts(admin, number)) == 1
    finally:
        code = worker.stop()
        print(worker.log())
        await admin.execute(
            "update public.messages set status = 'cancelled' where id = $1 and status <> 'sent'", campaign
        )
    assert code == 0


async def test_a_stuck_state_restarts_a_connected_number_never_a_blocked_or_paused_one(
    admin: asyncpg.Connection,
    prepared: Prepared,
    settings: Settings,
    api_url: str,
    started: Callable[..., BridgeProcess],
    tmp_path: Path,
) -> None:
    default_bridge = started("default")
    tag = uuid.uuid4().hex[:6]
    stuck, stuck_bridge = await reporting_number(admin, started, api_url, settings, f"Atascado {tag}")
    blocked, blocked_bridge = await reporting_number(admin, started, api_url, settings, f"Bloqueado {tag}")
    paused, paused_bridge = await reporting_number(admin, started, api_url, settings, f"Pausado {tag}")
    await blocked_bridge._call("POST", "/simulator/state", {"raw_state": "TOS_BLOCK"})
    await eventually(lambda: status_of(admin, blocked), lambda s: s == "blocked", 15, what="blocked")
    await admin.execute(
        "insert into private.number_health_events (number_id, kind, weight) values ($1::uuid, 'restricted_new_chats', 3)",
        paused,
    )
    assert await status_of(admin, paused) == "paused"
    for bridge in (stuck_bridge, paused_bridge):
        await bridge._call("POST", "/simulator/state", {"raw_state": "OPENING"})
    # Both held back numbers also bloat past the cap: their states alone keep them as they are.
    for bridge in (blocked_bridge, paused_bridge):
        await bridge.configure(memory_growth_mb_per_min=120_000)

    worker = WorkerProcess(
        prepared.admin_url,
        prepared.app_url,
        default_bridge.url,
        tmp_path / "worker.log",
        **{**FAST, "NUMBER_FROZEN_STATE_S": "1", "NUMBER_MEMORY_CAP_MB": "500"},
    )
    worker.start()
    try:
        (restart,) = await eventually(
            lambda: restarts(admin, stuck), lambda r: len(r) == 1 and r[0]["done_at"] is not None, 30, what="a restart"
        )
        assert restart["requested_by"] is None
        assert restart["reason"].startswith("frozen_state: raw state OPENING for ")
        status = await stuck_bridge._call("GET", "/status")
        assert (status["status"], status["raw_state"]) == ("connected", "CONNECTED")
        await asyncio.sleep(2.0)  # several more rounds of the watch
        assert len(await restarts(admin, stuck)) == 1  # thawed: once is enough
        assert await restarts(admin, blocked) == [] and await restarts(admin, paused) == []
        rss = await admin.fetch(
            "select rss_bytes from private.number_watch where number_id = any($1::uuid[])", [blocked, paused]
        )
        assert len(rss) == 2 and all(r["rss_bytes"] > 500 << 20 for r in rss)  # over the cap, and seen
        assert (await status_of(admin, blocked), await status_of(admin, paused)) == ("blocked", "paused")
    finally:
        code = worker.stop()
        print(worker.log())
    assert code == 0


async def test_memory_over_the_cap_restarts_the_number_and_the_hourly_limit_holds(
    admin: asyncpg.Connection,
    prepared: Prepared,
    settings: Settings,
    api_url: str,
    started: Callable[..., BridgeProcess],
    tmp_path: Path,
) -> None:
    default_bridge = started("default")
    boss = await new_admin(admin)
    number, bridge = await reporting_number(admin, started, api_url, settings, f"Fuga {uuid.uuid4().hex[:6]}")
    # A leak that passes the cap again soon after each restart.
    await bridge.configure(memory_growth_mb_per_min=30_000)

    async def told() -> list[str]:
        rows = await admin.fetch(
            "select message from public.notifications where user_id = $1 and title = $2", boss, LIMIT_TITLE
        )
        return [r["message"] for r in rows]

    worker = WorkerProcess(
        prepared.admin_url,
        prepared.app_url,
        default_bridge.url,
        tmp_path / "worker.log",
        **{**FAST, "NUMBER_MEMORY_CAP_MB": "300", "NUMBER_MAX_RESTARTS_PER_HOUR": "2"},
    )
    worker.start()
    try:
        await eventually(told, bool, 40, what="admins told of the hourly limit")
        done = await restarts(admin, number)
        assert len(done) == 2
        assert all(r["requested_by"] is None and r["reason"].startswith("memory: memory ") for r in done)
        assert all(r["error"] is None for r in done)
        # The second came at least the backoff after the first.
        gap = await admin.fetchval(
            "select extract(epoch from max(requested_at) - min(requested_at)) from public.whatsapp_number_commands"
            " where number_id = $1::uuid",
            number,
        )
        assert gap >= 0.5
        await asyncio.sleep(2.5)  # still over the cap, round after round: no third, one notice
        assert len(await restarts(admin, number)) == 2
        (notice,) = await told()
        assert "Fuga" in notice and "memory" in notice
    finally:
        code = worker.stop()
        print(worker.log())
        await bridge.configure(memory_growth_mb_per_min=0)
    assert code == 0


async def test_scale_out_six_bridges_two_workers_every_delivery_once_every_cap_held(
    admin: asyncpg.Connection, prepared: Prepared, started: Callable[..., BridgeProcess], tmp_path: Path
) -> None:
    """Six numbers, each on its own bridge process (one bridge drives one number; as if spread
    over machines, each registered in Postgres by URL), two worker processes, one database."""
    default_bridge = started("default")
    tag = uuid.uuid4().hex[:6]
    cap, recipients = 5, 7
    fleet = []
    for i in range(6):
        bridge = started(f"bridge-{i}")
        fleet.append((await add_number(admin, f"Flota {i} {tag}", bridge.url), bridge))
    owner = await new_owner(admin)
    campaigns = [
        await new_message(admin, owner, numbers(recipients, 410 + i), f"Hola {{{{name}}}}, número {i}.")
        for i in range(len(fleet))
    ]

    workers = [
        WorkerProcess(
            prepared.admin_url,
            prepared.app_url,
            default_bridge.url,
            tmp_path / f"worker-{w}.log",
            SEND_HOURLY_CAP=str(cap),
            DISPATCH_BATCH_SIZE="2",
        )
        for w in range(2)
    ]
    for worker in workers:
        worker.start()
    try:
        # Both idle and listening, then every campaign is scheduled: both wake to the same work.
        await eventually(lambda: workers_listening(admin), lambda n: n == 2, 30, what="two workers listening")
        for (number, _bridge), message in zip(fleet, campaigns, strict=True):
            await send_from(admin, owner, message, number)

        async def total() -> int:
            return sum([len(await b.outbox()) for _n, b in fleet])

        await eventually(total, lambda n: n >= 6 * cap, 60, what="every number at its cap")
        await asyncio.sleep(1.5)  # time for any excess to show
        for i, (_number, bridge) in enumerate(fleet):
            out = await bridge.outbox()
            assert len(out) == cap, f"number {i} sent {len(out)}, cap {cap}"
            assert {m["idempotency_key"].split(":")[0] for m in out} == {str(campaigns[i])}
            assert len({m["to"] for m in out}) == cap  # each recipient once
        states = Counter(
            r["state"]
            for r in await admin.fetch(
                "select state from public.deliveries where message_id = any($1::uuid[])", campaigns
            )
        )
        assert states == {"sent": 6 * cap, "pending": 6 * (recipients - cap)}
        # Both workers took part.
        claimed_by = await admin.fetchval(
            "select count(distinct claimed_by) from public.deliveries where message_id = any($1::uuid[])", campaigns
        )
        assert claimed_by == 2
    finally:
        codes = [w.stop() for w in workers]
        for w in workers:
            print(w.log())
        for message in campaigns:
            await admin.execute("update public.messages set status = 'cancelled' where id = $1", message)
    assert codes == [0, 0]

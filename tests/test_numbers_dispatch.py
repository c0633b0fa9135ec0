"""Several WhatsApp numbers, each with its own bridge process (issue 20): a message leaves from its
number, through that number's bridge, paced as that number. End to end through real bridge
processes (simulator driver) and a real worker process, against the test database."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

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
)

from whatsched.db.setup import Prepared

pytestmark = pytest.mark.slow


async def add_number(admin: asyncpg.Connection, label: str, bridge_url: str) -> str:
    """A shared number whose bridge registered at `bridge_url` (as the bridge's event would)."""
    number_id = str(
        await admin.fetchval(
            "insert into public.whatsapp_numbers (label, shared) values ($1, true) returning id", label
        )
    )
    async with admin.transaction():
        await admin.execute("set local role service_role")
        await admin.execute("select private.register_bridge($1::uuid, $2)", number_id, bridge_url)
    return number_id


async def send_from(admin: asyncpg.Connection, owner: uuid.UUID, message: uuid.UUID, number_id: str | None) -> None:
    """Choose the number and schedule now, as the owner does through supabase-js."""
    claims = json.dumps({"sub": str(owner), "role": "authenticated"})
    async with admin.transaction():
        await admin.execute(
            "select set_config('role', 'authenticated', true), set_config('request.jwt.claims', $1, true)", claims
        )
        await admin.execute("update public.messages set number_id = $2::uuid where id = $1", message, number_id)
        await admin.execute("select public.schedule_message($1, now())", message)


@pytest.fixture
async def bridges(tmp_path: Path) -> AsyncIterator[list[BridgeProcess]]:
    started = [BridgeProcess(tmp_path / f"bridge-{i}") for i in range(3)]
    for bridge in started:
        bridge.start()
    try:
        yield started
    finally:
        for bridge in started:
            bridge.stop()


async def test_each_campaign_leaves_from_its_own_number_with_its_own_caps(
    admin: asyncpg.Connection, prepared: Prepared, bridges: list[BridgeProcess], tmp_path: Path
) -> None:
    # The default number (BRIDGE_URL) takes whatever else is due in the test database; the two
    # numbers under test each have their own bridge, registered in Postgres.
    default_bridge, sales_bridge, support_bridge = bridges
    tag = uuid.uuid4().hex[:6]
    sales = await add_number(admin, f"Ventas {tag}", sales_bridge.url)
    support = await add_number(admin, f"Soporte {tag}", support_bridge.url)
    alice, bob = await new_owner(admin), await new_owner(admin)
    via_sales = await new_message(admin, alice, numbers(3, 201), "Hola {{name}}, desde ventas.")
    via_support = await new_message(admin, bob, numbers(3, 202), "Hola {{name}}, desde soporte.")
    await send_from(admin, alice, via_sales, sales)
    await send_from(admin, bob, via_support, support)

    # Each number may send 2 an hour: two from each, whatever the other number did.
    worker = WorkerProcess(
        prepared.admin_url, prepared.app_url, default_bridge.url, tmp_path / "worker.log", SEND_HOURLY_CAP="2"
    )
    worker.start()
    try:

        async def outboxes() -> tuple[int, int]:
            return len(await sales_bridge.outbox()), len(await support_bridge.outbox())

        assert await eventually(outboxes, lambda n: n == (2, 2), 30, what="two sends from each number") == (2, 2)
        sales_out, support_out = await sales_bridge.outbox(), await support_bridge.outbox()
        assert all(m["body"].endswith("desde ventas.") for m in sales_out)
        assert all(m["body"].endswith("desde soporte.") for m in support_out)
        assert {m["idempotency_key"].split(":")[0] for m in sales_out} == {str(via_sales)}
        assert {m["idempotency_key"].split(":")[0] for m in support_out} == {str(via_support)}
        assert not sent_for(await default_bridge.outbox(), via_sales)
        assert not sent_for(await default_bridge.outbox(), via_support)
        # The cap holds per number: the third recipient of each waits for the next hour.
        pending = await admin.fetchval(
            "select count(*) from public.deliveries where message_id = any($1::uuid[]) and state = 'pending'",
            [via_sales, via_support],
        )
        assert pending == 2
        for message in (via_sales, via_support):
            assert (await message_row(admin, message))["status"] == "sending"
    finally:
        code = worker.stop()
        print(worker.log())
        for message in (via_sales, via_support):  # nothing of this test is left to send later
            await admin.execute("update public.messages set status = 'cancelled' where id = $1", message)
    assert code == 0


async def test_a_user_cannot_send_from_a_number_not_assigned_to_them(
    admin: asyncpg.Connection, bridges: list[BridgeProcess]
) -> None:
    private = str(
        await admin.fetchval(
            "insert into public.whatsapp_numbers (label, shared) values ($1, false) returning id",
            f"Privado {uuid.uuid4().hex[:6]}",
        )
    )
    owner = await new_owner(admin)
    message = await new_message(admin, owner, numbers(1, 203))
    with pytest.raises(asyncpg.PostgresError) as refused:
        await send_from(admin, owner, message, private)
    assert refused.value.hint == "number_not_allowed"
    # Positive control: once assigned, the same user chooses it.
    await admin.execute(
        "insert into public.whatsapp_number_users (number_id, user_id) values ($1::uuid, $2)", private, owner
    )
    await send_from(admin, owner, message, private)
    assert str((await message_row(admin, message))["number_id"]) == private


async def test_a_session_command_asked_for_in_sql_is_carried_out_on_the_numbers_bridge(
    admin: asyncpg.Connection, prepared: Prepared, bridges: list[BridgeProcess], tmp_path: Path
) -> None:
    """An admin's `request_number_action` (what /api and supabase-js call) reaches the number's own
    bridge through a worker, and the command row records the answer."""
    default_bridge, sales_bridge, support_bridge = bridges
    number = await add_number(admin, f"Ventas {uuid.uuid4().hex[:6]}", sales_bridge.url)
    boss = await new_owner(admin)
    await admin.execute("update public.profiles set role = 'admin' where id = $1", boss)
    claims = json.dumps({"sub": str(boss), "role": "authenticated"})

    async def ask(action: str) -> str:
        async with admin.transaction():
            await admin.execute(
                "select set_config('role', 'authenticated', true), set_config('request.jwt.claims', $1, true)", claims
            )
            command: str = await admin.fetchval(
                "select id::text from public.request_number_action($1::uuid, $2)", number, action
            )
        return command

    async def outcome(command: str) -> asyncpg.Record:
        row: asyncpg.Record = await admin.fetchrow(
            "select done_at, result, error from public.whatsapp_number_commands where id = $1::uuid", command
        )
        return row

    worker = WorkerProcess(prepared.admin_url, prepared.app_url, default_bridge.url, tmp_path / "worker.log")
    worker.start()
    try:
        stop = await ask("stop")
        done = await eventually(lambda: outcome(stop), lambda r: r["done_at"] is not None, 30, what="the stop")
        assert (done["result"], done["error"]) == ("stopped", None)
        assert (await sales_bridge._call("GET", "/status"))["status"] == "stopped"
        assert (await support_bridge._call("GET", "/status"))["status"] == "connected"  # only its own bridge
        start = await ask("start")
        done = await eventually(lambda: outcome(start), lambda r: r["done_at"] is not None, 30, what="the start")
        assert done["error"] is None and done["result"] in ("initializing", "connected")  # the bridge's words
        await eventually(
            lambda: sales_bridge._call("GET", "/status"), lambda s: s["status"] == "connected", 10, what="connected"
        )
    finally:
        code = worker.stop()
        print(worker.log())
    assert code == 0

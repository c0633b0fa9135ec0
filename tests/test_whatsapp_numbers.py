"""WhatsApp numbers (20261129000650_whatsapp_numbers), tried on both paths: through /api and as
supabase-js runs it (SQL as `authenticated` with the user's claims). Each refusal has its positive
control: who sees which number, who may send from it, who may add and act on numbers (queued as
commands and audited), the default row, and what the bridges report per number."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
from bridge_process import eventually
from test_rules_both_paths import api_error, direct, direct_error

from whatsched.api.deps import Resources
from whatsched.api.routes.bridge_events import sign
from whatsched.config import Settings
from whatsched.db.setup import Prepared

NUMBERS = "/api/whatsapp/numbers"


async def add_number(client: httpx.AsyncClient, who: Any, label: str | None = None, shared: bool = True) -> str:
    body = {"label": label or "Ventas " + uuid.uuid4().hex[:6], "shared": shared}
    resp = await client.post(NUMBERS, json=body, headers=who.headers)
    assert resp.status_code == 201, resp.text
    return str(resp.json()["id"])


async def listed(client: httpx.AsyncClient, who: Any) -> set[str]:
    resp = await client.get(NUMBERS, headers=who.headers)
    assert resp.status_code == 200, resp.text
    return {n["id"] for n in resp.json()}


async def seen_directly(res: Resources, who: Any) -> set[str]:
    ids = await direct(res, who, "select coalesce(array_agg(id::text), '{}') from public.whatsapp_numbers")
    return set(ids)


async def audit_actions(admin: asyncpg.Connection, number_id: str) -> list[str]:
    rows = await admin.fetch(
        "select action from public.audit_log where entity_type = 'whatsapp_number' and entity_id = $1 order by id",
        number_id,
    )
    return [r["action"] for r in rows]


@pytest.fixture
async def self_service(admin: asyncpg.Connection) -> AsyncIterator[None]:
    await admin.execute("update private.settings set self_service_numbers = true")
    try:
        yield
    finally:
        await admin.execute("update private.settings set self_service_numbers = false")


async def post_event(client: httpx.AsyncClient, settings: Settings, event: dict[str, Any]) -> httpx.Response:
    raw = json.dumps(event).encode()
    timestamp = str(int(time.time()))
    headers = {
        "Content-Type": "application/json",
        "X-Bridge-Timestamp": timestamp,
        "X-Bridge-Signature": sign(settings.bridge_token, timestamp, raw),
    }
    return await client.post("/api/bridge/events", content=raw, headers=headers)


@pytest.fixture
async def whatsapp_frames(prepared: Prepared) -> AsyncIterator[list[dict[str, Any]]]:
    """What realtime.send emits on topic `whatsapp` (pg_notify 'realtime' on plain Postgres)."""
    conn = await asyncpg.connect(prepared.admin_url)
    frames: list[dict[str, Any]] = []

    def on_notify(_c: Any, _pid: int, _channel: str, payload: str) -> None:
        frame = json.loads(payload)
        if frame.get("topic") == "whatsapp":
            frames.append(frame["payload"])

    await conn.add_listener("realtime", on_notify)
    try:
        yield frames
    finally:
        await conn.close()


# -----------------------------------------------------------------------------------------------
# The default number
# -----------------------------------------------------------------------------------------------


async def test_the_default_number_exists_every_user_may_use_it_and_it_cannot_be_removed(
    client: httpx.AsyncClient, res: Resources, make_user: Any, admin: asyncpg.Connection
) -> None:
    default_id = str(await admin.fetchval("select id from public.whatsapp_numbers where is_default"))
    user, boss = await make_user(), await make_user(admin=True)
    resp = await client.get(NUMBERS, headers=user.headers)
    assert resp.status_code == 200, resp.text
    first = resp.json()[0]
    assert (first["id"], first["label"], first["is_default"], first["shared"]) == (default_id, "Principal", True, True)
    assert default_id in await seen_directly(res, user)
    assert await direct(res, user, "select private.can_use_number($1::uuid)", default_id) is True

    assert api_error(await client.delete(f"{NUMBERS}/{default_id}", headers=boss.headers), 409) == "number_is_default"
    sql = "select public.remove_whatsapp_number($1::uuid)"
    assert await direct_error(res, boss, sql, default_id) == "number_is_default"
    # Positive control: another number of the admin's goes.
    other = await add_number(client, boss)
    assert (await client.delete(f"{NUMBERS}/{other}", headers=boss.headers)).status_code == 204
    assert await admin.fetchval("select count(*) from public.whatsapp_numbers where id = $1::uuid", other) == 0


# -----------------------------------------------------------------------------------------------
# Who sees and uses which number
# -----------------------------------------------------------------------------------------------


async def test_users_see_only_shared_assigned_or_own_numbers(
    client: httpx.AsyncClient, res: Resources, make_user: Any
) -> None:
    boss, assigned, other = await make_user(admin=True), await make_user(), await make_user()
    private_id = await add_number(client, boss, shared=False)
    shared_id = await add_number(client, boss, shared=True)
    resp = await client.put(f"{NUMBERS}/{private_id}/users/{assigned.id}", headers=boss.headers)
    assert resp.status_code == 204, resp.text

    for who, sees_private in ((boss, True), (assigned, True), (other, False)):
        api_ids, sql_ids = await listed(client, who), await seen_directly(res, who)
        assert shared_id in api_ids and shared_id in sql_ids
        assert (private_id in api_ids, private_id in sql_ids) == (sees_private, sees_private)
    assert (await client.get(f"{NUMBERS}/{private_id}", headers=other.headers)).status_code == 404
    shown = (await client.get(f"{NUMBERS}/{private_id}", headers=assigned.headers)).json()
    assert shown["user_ids"] == [assigned.id]  # a user sees only their own assignment

    # Unassigned, the number is gone for them too; a second unassign finds nothing.
    resp = await client.delete(f"{NUMBERS}/{private_id}/users/{assigned.id}", headers=boss.headers)
    assert resp.status_code == 204, resp.text
    assert private_id not in await listed(client, assigned)
    resp = await client.delete(f"{NUMBERS}/{private_id}/users/{assigned.id}", headers=boss.headers)
    assert api_error(resp, 404) == "assignment_not_found"


async def test_only_admins_assign_numbers_and_only_to_existing_users(
    client: httpx.AsyncClient, res: Resources, make_user: Any
) -> None:
    boss, user = await make_user(admin=True), await make_user()
    number = await add_number(client, boss)
    resp = await client.put(f"{NUMBERS}/{number}/users/{user.id}", headers=user.headers)
    assert api_error(resp, 403) == "forbidden"
    sql = "select public.assign_whatsapp_number($1::uuid, $2::uuid)"
    assert await direct_error(res, user, sql, number, user.id) == "forbidden"
    nobody = str(uuid.uuid4())
    assert api_error(await client.put(f"{NUMBERS}/{number}/users/{nobody}", headers=boss.headers), 404) == (
        "related_not_found"
    )
    assert await direct(res, boss, sql, number, user.id) is True
    assert await direct(res, boss, sql, number, user.id) is False  # a repeat changes nothing


async def test_a_user_cannot_send_from_a_number_they_may_not_use_on_either_path(
    client: httpx.AsyncClient, res: Resources, make_user: Any
) -> None:
    boss, assigned, other = await make_user(admin=True), await make_user(), await make_user()
    number = await add_number(client, boss, shared=False)
    await client.put(f"{NUMBERS}/{number}/users/{assigned.id}", headers=boss.headers)

    # Through /api: create and update.
    resp = await client.post("/api/messages", json={"content": "Hola", "number_id": number}, headers=other.headers)
    assert api_error(resp, 422) == "number_not_allowed"
    assert resp.json()["errors"] == [{"field": "number_id", "message": "not a WhatsApp number you may use"}]
    resp = await client.post("/api/messages", json={"content": "Hola"}, headers=other.headers)
    assert resp.status_code == 201 and resp.json()["number_id"] is None
    mine = resp.json()["id"]
    resp = await client.put(f"/api/messages/{mine}", json={"number_id": number}, headers=other.headers)
    assert api_error(resp, 422) == "number_not_allowed"

    # As supabase-js: insert, update, and a profile's default number.
    insert = "insert into public.messages (content, number_id) values ('Hola', $1::uuid) returning id::text"
    assert await direct_error(res, other, insert, number) == "number_not_allowed"
    update = "update public.messages set number_id = $2::uuid where id = $1::uuid returning id"
    assert await direct_error(res, other, update, mine, number) == "number_not_allowed"
    default = "update public.profiles set default_number_id = $1::uuid where id = auth.uid() returning id"
    assert await direct_error(res, other, default, number) == "number_not_allowed"

    # Positive controls: the assigned user may, on both paths.
    resp = await client.post("/api/messages", json={"content": "Hola", "number_id": number}, headers=assigned.headers)
    assert resp.status_code == 201, resp.text
    assert resp.json()["number_id"] == number
    theirs = resp.json()["id"]
    resp = await client.put(f"/api/messages/{theirs}", json={"number_id": None}, headers=assigned.headers)
    assert resp.status_code == 200 and resp.json()["number_id"] is None
    resp = await client.put(f"/api/messages/{theirs}", json={"number_id": number}, headers=assigned.headers)
    assert resp.status_code == 200 and resp.json()["number_id"] == number
    assert await direct(res, assigned, insert, number)
    assert await direct(res, assigned, default, number)
    # The message leaves from the number it names, else its owner's default, else the default row.
    via_default = await direct(res, assigned, "insert into public.messages (content) values ('x') returning id::text")
    leaves = "select private.message_number(m)::text from public.messages m where m.id = $1::uuid"
    assert await direct(res, assigned, leaves, via_default) == number
    default_row = await direct(res, other, "select id::text from public.whatsapp_numbers where is_default")
    assert await direct(res, other, leaves, mine) == default_row


# -----------------------------------------------------------------------------------------------
# Who adds numbers
# -----------------------------------------------------------------------------------------------


async def test_non_admins_cannot_add_numbers_while_self_service_is_off(
    client: httpx.AsyncClient, res: Resources, make_user: Any
) -> None:
    user, boss = await make_user(), await make_user(admin=True)
    assert api_error(await client.post(NUMBERS, json={"label": "Mío"}, headers=user.headers), 403) == "forbidden"
    assert await direct_error(res, user, "select public.add_whatsapp_number('Mío')") == "forbidden"
    # Users write no table of numbers directly either.
    sql = "insert into public.whatsapp_numbers (label) values ('Mío') returning id"
    assert await direct_error(res, user, sql) == "42501"
    # Positive control: an admin adds one on both paths; its label is cleaned like a group's name.
    number = await add_number(client, boss, label="  Soporte\u200b  ")
    assert (await client.get(f"{NUMBERS}/{number}", headers=boss.headers)).json()["label"] == "Soporte"
    assert await direct(res, boss, "select (public.add_whatsapp_number('Cobranza')).id")
    empty = await client.post(NUMBERS, json={"label": " "}, headers=boss.headers)
    assert api_error(empty, 422) == "validation_error" and empty.json()["errors"][0]["field"] == "label"


async def test_with_self_service_a_users_number_is_theirs_alone(
    client: httpx.AsyncClient, res: Resources, make_user: Any, self_service: None
) -> None:
    owner, other, boss = await make_user(), await make_user(), await make_user(admin=True)
    number = await add_number(client, owner, shared=True)  # asks to share: a user's number never is
    shown = (await client.get(f"{NUMBERS}/{number}", headers=owner.headers)).json()
    assert (shown["shared"], shown["owner_id"]) == (False, owner.id)
    via_sql = await direct(res, other, "select (public.add_whatsapp_number('Tienda', true)).id::text")

    assert number in await listed(client, owner) and number in await listed(client, boss)
    assert number not in await listed(client, other) and number not in await seen_directly(res, other)
    assert via_sql in await seen_directly(res, other) and via_sql not in await seen_directly(res, owner)

    # The owner manages it (not sharing it), and acts on it; another user finds nothing.
    resp = await client.put(f"{NUMBERS}/{number}", json={"label": "Mi tienda"}, headers=owner.headers)
    assert resp.status_code == 200 and resp.json()["label"] == "Mi tienda"
    resp = await client.put(f"{NUMBERS}/{number}", json={"shared": True}, headers=owner.headers)
    assert api_error(resp, 403) == "forbidden"
    assert (await client.post(f"{NUMBERS}/{number}/start", headers=owner.headers)).status_code == 202
    assert api_error(await client.post(f"{NUMBERS}/{number}/start", headers=other.headers), 404) == "number_not_found"
    sql = "select (public.request_number_action($1::uuid, 'stop')).id"
    assert await direct_error(res, other, sql, number) == "number_not_found"
    assert (await client.get(f"{NUMBERS}/{number}/qr", headers=owner.headers)).status_code == 200
    # Messages from it: the owner yes, the other user no.
    resp = await client.post("/api/messages", json={"content": "Hola", "number_id": number}, headers=owner.headers)
    assert resp.status_code == 201, resp.text
    resp = await client.post("/api/messages", json={"content": "Hola", "number_id": number}, headers=other.headers)
    assert api_error(resp, 422) == "number_not_allowed"
    assert (await client.delete(f"{NUMBERS}/{number}", headers=owner.headers)).status_code == 204
    # The deployment's numbers (no owner) stay the admins' to manage.
    shared = await add_number(client, boss)
    assert api_error(await client.post(f"{NUMBERS}/{shared}/stop", headers=owner.headers), 403) == "forbidden"
    assert await direct_error(res, owner, sql, shared) == "forbidden"
    resp = await client.put(f"{NUMBERS}/{shared}", json={"label": "Mío"}, headers=owner.headers)
    assert api_error(resp, 403) == "forbidden"
    assert api_error(await client.get(f"{NUMBERS}/{shared}/qr", headers=owner.headers), 403) == "forbidden"


# -----------------------------------------------------------------------------------------------
# Actions: queued as commands, audited
# -----------------------------------------------------------------------------------------------


async def test_actions_are_queued_as_commands_and_every_action_is_audited(
    client: httpx.AsyncClient, res: Resources, make_user: Any, admin: asyncpg.Connection
) -> None:
    boss, user = await make_user(admin=True), await make_user()
    number = await add_number(client, boss, label="Auditado")
    resp = await client.post(f"{NUMBERS}/{number}/restart", headers=boss.headers)
    assert resp.status_code == 202, resp.text
    command = resp.json()
    assert (command["number_id"], command["action"], command["requested_by"], command["done_at"]) == (
        number,
        "restart",
        boss.id,
        None,
    )
    sql = "select (public.request_number_action($1::uuid, $2)).action"
    assert await direct(res, boss, sql, number, "logout") == "logout"
    assert await direct_error(res, boss, sql, number, "explode") == "validation_error"
    assert api_error(await client.post(f"{NUMBERS}/{number}/explode", headers=boss.headers), 422) == "validation_error"
    # A user may use a shared number, not act on it.
    assert api_error(await client.post(f"{NUMBERS}/{number}/stop", headers=user.headers), 403) == "forbidden"
    assert await direct_error(res, user, sql, number, "stop") == "forbidden"

    # The worker's side: one command per number at a time, in order; then the next.
    async with res.pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        await conn.execute("set local role service_role")
        first = await conn.fetch("select * from private.claim_number_command('w1') where number_id = $1", number)
        assert [r["action"] for r in first] == ["restart"]
        again = await conn.fetch("select * from private.claim_number_command('w2') where number_id = $1", number)
        assert again == []  # the restart is in flight
        await conn.execute("select private.finish_number_command($1, 'connected', null)", first[0]["id"])
        after = await conn.fetch("select * from private.claim_number_command('w2') where number_id = $1", number)
        assert [r["action"] for r in after] == ["logout"]
        await tx.rollback()  # other tests' commands stay unclaimed

    await client.put(f"{NUMBERS}/{number}/users/{user.id}", headers=boss.headers)
    await client.delete(f"{NUMBERS}/{number}/users/{user.id}", headers=boss.headers)
    await client.put(f"{NUMBERS}/{number}", json={"shared": False}, headers=boss.headers)
    await client.delete(f"{NUMBERS}/{number}", headers=boss.headers)
    assert await audit_actions(admin, number) == [
        "whatsapp_number.add",
        "whatsapp_number.restart",
        "whatsapp_number.logout",
        "whatsapp_number.assign",
        "whatsapp_number.unassign",
        "whatsapp_number.update",
        "whatsapp_number.remove",
    ]
    actors = await admin.fetch(
        "select distinct actor_id::text from public.audit_log where entity_type = 'whatsapp_number' and entity_id = $1",
        number,
    )
    assert [r["actor_id"] for r in actors] == [boss.id]


# -----------------------------------------------------------------------------------------------
# What the bridges report
# -----------------------------------------------------------------------------------------------


async def test_bridge_events_with_a_number_id_update_that_number_and_broadcast_it(
    client: httpx.AsyncClient,
    res: Resources,
    make_user: Any,
    admin: asyncpg.Connection,
    settings: Settings,
    whatsapp_frames: list[dict[str, Any]],
) -> None:
    boss, user = await make_user(admin=True), await make_user()
    number = await add_number(client, boss, label="Segundo")
    default_id = str(await admin.fetchval("select id from public.whatsapp_numbers where is_default"))
    qr = "data:image/png;base64,QUJD"

    async def event(**fields: Any) -> httpx.Response:
        return await post_event(client, settings, fields)

    registered = await event(type="bridge_registered", number_id=number, url="http://10.0.0.7:3002")
    assert registered.status_code == 204, registered.text
    assert (await event(type="whatsapp_status", number_id=number, status="qr_needed", qr_code=qr)).status_code == 204
    row = await admin.fetchrow("select status, bridge_url from public.whatsapp_numbers where id = $1::uuid", number)
    assert (row["status"], row["bridge_url"]) == ("qr_needed", "http://10.0.0.7:3002")
    # The QR code: admins read it; a user may not.
    resp = await client.get(f"{NUMBERS}/{number}/qr", headers=boss.headers)
    assert resp.json() == {"number_id": number, "status": "qr_needed", "qr_code": qr}
    assert api_error(await client.get(f"{NUMBERS}/{number}/qr", headers=user.headers), 403) == "forbidden"
    assert await direct_error(res, user, "select public.whatsapp_number_qr($1::uuid)", number) == "forbidden"

    status = {"type": "whatsapp_status", "number_id": number, "status": "connected", "phone": "56911112222"}
    assert (await post_event(client, settings, {**status, "raw_state": "CONNECTED"})).status_code == 204
    # Without number_id: the default number, as a single-number bridge reports.
    assert (await event(type="whatsapp_status", status="connected", phone="+15550000001")).status_code == 204
    blocked = {"status": "disconnected", "raw_state": "TOS_BLOCK", "last_disconnect_reason": "banned"}
    assert (await event(type="whatsapp_status", number_id=number, **blocked)).status_code == 204
    await eventually(lambda: asyncio.sleep(0, len(whatsapp_frames)), lambda n: n >= 4, what="4 frames")
    assert whatsapp_frames == [
        {"type": "whatsapp_status", "status": "qr_needed", "number_id": number},  # not the default: no QR for all
        {"type": "whatsapp_status", "status": "connected", "number_id": number},
        {"type": "whatsapp_status", "status": "connected", "number_id": default_id},
        {"type": "whatsapp_status", "status": "disconnected", "number_id": number},
    ]
    rows = {
        str(r["id"]): r
        for r in await admin.fetch(
            "select id, status, phone, raw_state, last_disconnect_reason from public.whatsapp_numbers"
            " where id = any($1::uuid[])",
            [number, default_id],
        )
    }
    assert tuple(rows[number].values())[1:] == ("blocked", "+56911112222", "TOS_BLOCK", "banned")
    assert (rows[default_id]["status"], rows[default_id]["phone"]) == ("connected", "+15550000001")
    assert await admin.fetchval("select count(*) from private.number_qr where number_id = $1::uuid", number) == 0

    # The health check reports every number from Postgres to an admin, the numbers a user may use to
    # that user, and none to a probe without a token (it must not learn who has which number).
    hidden = await add_number(client, boss, shared=False)
    health = (await client.get("/api/health/whatsapp", headers=boss.headers)).json()
    reported = {n["id"]: n for n in health["numbers"]}
    assert reported[number]["status"] == "blocked" and reported[number]["raw_state"] == "TOS_BLOCK"
    assert health["numbers"][0]["id"] == default_id and hidden in reported
    mine = {n["id"] for n in (await client.get("/api/health/whatsapp", headers=user.headers)).json()["numbers"]}
    assert {default_id, number} <= mine and hidden not in mine
    assert (await client.get("/api/health/whatsapp")).json()["numbers"] == []

    # A number nobody knows is refused (the bridge does not retry a 4xx).
    unknown = await event(type="whatsapp_status", number_id=str(uuid.uuid4()), status="connected")
    assert api_error(unknown, 404) == "number_not_found"

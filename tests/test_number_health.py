"""A WhatsApp number's health (issue 20, "Paused before a ban"): facts of what WhatsApp did, written
where they arrive; a decaying score in SQL; a pause in the transaction of the fact; a resume by a
person, then a ramp of lower pace. End to end through real bridge processes (simulator) and a real
worker, and in SQL on both paths (the API, and supabase-js: SQL as `authenticated` with claims).
Each refusal or absence has its positive control."""

from __future__ import annotations

import asyncio
import json
import math
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from bridge_process import BridgeProcess, WorkerProcess, eventually, new_message, new_owner, numbers, sent_for
from test_numbers_dispatch import add_number, send_from
from test_rules_both_paths import api_error, direct, direct_error

from whatsched.api.deps import Resources
from whatsched.db.setup import Prepared

NUMBERS = "/api/whatsapp/numbers"


async def as_service(admin: asyncpg.Connection, sql: str, *args: Any) -> Any:
    """One statement as the worker or the API's bridge route runs it (service_role)."""
    async with admin.transaction():
        await admin.execute(
            "set local role service_role; select set_config('request.jwt.claims', '{\"role\":\"service_role\"}', true)"
        )
        return await admin.fetchval(sql, *args)


async def as_user(admin: asyncpg.Connection, user: uuid.UUID, sql: str, *args: Any) -> Any:
    claims = json.dumps({"sub": str(user), "role": "authenticated"})
    async with admin.transaction():
        await admin.execute(
            "select set_config('role', 'authenticated', true), set_config('request.jwt.claims', $1, true)", claims
        )
        return await admin.fetchval(sql, *args)


async def new_admin(admin: asyncpg.Connection) -> uuid.UUID:
    boss = await new_owner(admin)
    await admin.execute("update public.profiles set role = 'admin' where id = $1", boss)
    return boss


async def bare_number(admin: asyncpg.Connection, label: str = "Salud") -> str:
    return str(
        await admin.fetchval(
            "insert into public.whatsapp_numbers (label, shared, status, reported_status)"
            " values ($1, true, 'connected', 'connected') returning id::text",
            f"{label} {uuid.uuid4().hex[:6]}",
        )
    )


async def number_row(admin: asyncpg.Connection, number_id: str) -> asyncpg.Record:
    row: asyncpg.Record = await admin.fetchrow(
        "select *, private.health_score(id) as score from public.whatsapp_numbers where id = $1::uuid", number_id
    )
    return row


async def facts(admin: asyncpg.Connection, number_id: str, kind: str | None = None) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await admin.fetch(
        "select kind, weight, evidence from private.number_health_events where number_id = $1::uuid"
        " and ($2::text is null or kind = $2) order by id",
        number_id,
        kind,
    )
    return rows


async def pause_notices(admin: asyncpg.Connection, user: uuid.UUID) -> list[str]:
    rows = await admin.fetch(
        "select message from public.notifications where user_id = $1 and title = 'Número de WhatsApp pausado'", user
    )
    return [r["message"] for r in rows]


async def audit_actions(admin: asyncpg.Connection, number_id: str) -> list[str]:
    rows = await admin.fetch(
        "select action from public.audit_log where entity_type = 'whatsapp_number' and entity_id = $1 order by id",
        number_id,
    )
    return [r["action"] for r in rows]


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
# The score
# -----------------------------------------------------------------------------------------------


async def test_the_score_is_each_facts_weight_halved_every_half_life(admin: asyncpg.Connection) -> None:
    number = await bare_number(admin)
    # One fact now, one a half-life (60 min) ago, one eleven half-lives ago (out of the window).
    await admin.execute(
        """insert into private.number_health_events (number_id, kind, weight, at) values
           ($1::uuid, 'failed_ack', 1, now()), ($1::uuid, 'failed_ack', 1, now() - interval '60 minutes'),
           ($1::uuid, 'failed_ack', 1, now() - interval '660 minutes')""",
        number,
    )
    row = await number_row(admin, number)
    assert row["score"] == pytest.approx(1.5, abs=0.01)
    assert row["status"] == "connected"  # under the threshold of 2.5: nothing happens
    # Each kind weighs its setting.
    weights = await admin.fetchrow(
        "select private.health_weight('restricted_new_chats') as r, private.health_weight('failed_ack') as f,"
        " private.health_weight('disconnect') as d, private.health_weight('opt_out') as o"
    )
    assert tuple(weights.values()) == (1, 0.5, 1, 0.5)
    # A resume's reset leaves the facts (the evidence) but not their weight.
    await admin.execute("update public.whatsapp_numbers set health_reset_at = now() where id = $1::uuid", number)
    assert (await number_row(admin, number))["score"] == 0
    assert len(await facts(admin, number)) == 3


async def test_a_number_is_paused_in_the_transaction_of_the_fact_that_crosses_the_threshold(
    admin: asyncpg.Connection, whatsapp_frames: list[dict[str, Any]]
) -> None:
    """Disconnects reported by the bridge (record_number_status) weigh 1 each: two leave the number
    as it was, the third pauses it; its owner of affected messages and every admin are told."""
    boss = await new_admin(admin)
    number = await bare_number(admin, "Desconexiones")
    alice = await new_owner(admin)
    waiting = await new_message(admin, alice, numbers(2, 301))
    await send_from(admin, alice, waiting, number)  # scheduled: an affected message
    bystander = await new_owner(admin)

    async def report(raw: str) -> None:
        await as_service(
            admin,
            "select private.record_number_status($1::uuid, 'disconnected', $2, null, $3, null)",
            number,
            raw,
            f"lost as {raw}",
        )

    await report("CONFLICT")
    await report("UNLAUNCHED")
    row = await number_row(admin, number)
    assert (row["status"], len(await facts(admin, number, "disconnect"))) == ("failed", 2)  # negative control
    assert await pause_notices(admin, boss) == []
    await report("PROXYBLOCK")
    row = await number_row(admin, number)
    assert (row["status"], row["reported_status"], row["raw_state"]) == ("paused", "failed", "PROXYBLOCK")
    assert row["score"] >= 2.5
    for told in (boss, alice):
        (notice,) = await pause_notices(admin, told)
        assert "Desconexiones" in notice and "3 × disconnect" in notice and "PROXYBLOCK" in notice
    assert await pause_notices(admin, bystander) == []
    await eventually(
        lambda: asyncio.sleep(0, [f for f in whatsapp_frames if f.get("number_status") == "paused"]),
        bool,
        10,
        what="the pause's whatsapp_status",
    )
    (frame,) = [f for f in whatsapp_frames if f.get("number_status") == "paused"]
    assert frame["number_id"] == number and "disconnect" in frame["reason"]
    assert audit_actions_has(await audit_actions(admin, number), "whatsapp_number.pause")
    # Paused stays paused whatever the bridge says next (a person resumes it), unless WhatsApp blocks it.
    await as_service(
        admin, "select private.record_number_status($1::uuid, 'connected', 'CONNECTED', null, null, null)", number
    )
    row = await number_row(admin, number)
    assert (row["status"], row["reported_status"]) == ("paused", "connected")
    await report("TOS_BLOCK")
    assert (await number_row(admin, number))["status"] == "blocked"
    await admin.execute("update public.messages set status = 'cancelled' where id = $1", waiting)


def audit_actions_has(actions: list[str], action: str) -> bool:
    return action in actions


async def test_a_failed_ack_and_an_opt_out_are_facts_of_the_number_they_concern(admin: asyncpg.Connection) -> None:
    number = await bare_number(admin, "Hechos")
    owner = await new_owner(admin)
    message = await new_message(admin, owner, numbers(2, 302))
    await admin.execute("update public.messages set number_id = $2::uuid where id = $1", message, number)
    phone_a, phone_b = numbers(2, 302)
    await admin.execute(
        """insert into public.deliveries (message_id, created_by, phone, idempotency_key, state, whatsapp_message_id)
           select $1::uuid, $2, p, $1::text || ':' || p, 'sent', 'wa-' || p from unnest($3::text[]) p""",
        message,
        owner,
        [phone_a, phone_b],
    )
    # A delivered ack is no fact (positive control first: the writer runs, and writes nothing).
    await as_service(admin, "select count(*) from private.apply_ack($1, null, 'delivered', now())", "wa-" + phone_a)
    assert await facts(admin, number) == []
    await as_service(admin, "select count(*) from private.apply_ack($1, null, 'failed', now())", "wa-" + phone_b)
    (fact,) = await facts(admin, number)
    assert (fact["kind"], fact["weight"], json.loads(fact["evidence"])["phone"]) == ("failed_ack", 0.5, phone_b)

    # An opt-out counts against the number it reached; a reply does not.
    await admin.execute(
        "insert into private.send_ledger (created_by, sender, phone, message_id) values ($1, $2, $3, $4::uuid)",
        owner,
        number,
        phone_a,
        message,
    )
    await as_service(
        admin, "select private.record_reply($1, 'gracias', $2, now(), $3::uuid)", phone_a, uuid.uuid4().hex, number
    )
    assert len(await facts(admin, number)) == 1
    repeated = uuid.uuid4().hex
    for _ in range(2):  # a repeated WhatsApp message is one fact
        await as_service(
            admin, "select private.record_reply($1, 'STOP', $2, now(), $3::uuid)", phone_a, repeated, number
        )
    (opt_out,) = await facts(admin, number, "opt_out")
    assert (opt_out["weight"], json.loads(opt_out["evidence"])) == (0.5, {"phone": phone_a, "keyword": "STOP"})
    assert (await number_row(admin, number))["status"] == "connected"  # 1.0 < 2.5


# -----------------------------------------------------------------------------------------------
# Resume, on both paths; the ramp
# -----------------------------------------------------------------------------------------------


async def paused_number(admin: asyncpg.Connection, label: str = "Pausado") -> str:
    number = await bare_number(admin, label)
    await admin.execute(
        "insert into private.number_health_events (number_id, kind, weight) values ($1::uuid, 'restricted_new_chats', 3)",
        number,
    )
    assert (await number_row(admin, number))["status"] == "paused"
    return number


async def test_an_admin_resumes_a_paused_number_on_either_path_and_a_user_cannot(
    admin: asyncpg.Connection, client: httpx.AsyncClient, res: Resources, make_user: Any
) -> None:
    boss, user = await make_user(admin=True), await make_user()
    by_api, by_sql = await paused_number(admin), await paused_number(admin)

    # A user who may send from the (shared) number may not resume it.
    assert api_error(await client.post(f"{NUMBERS}/{by_api}/resume", headers=user.headers), 403) == "forbidden"
    assert await direct_error(res, user, "select public.resume_whatsapp_number($1::uuid)", by_sql) == "forbidden"
    assert (await number_row(admin, by_api))["status"] == "paused"

    resp = await client.post(f"{NUMBERS}/{by_api}/resume", headers=boss.headers)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert (body["status"], body["reported_status"], body["health_score"]) == ("connected", "connected", 0)
    assert body["ramp_until"] is not None
    assert await direct(res, boss, "select (public.resume_whatsapp_number($1::uuid)).status", by_sql) == "connected"
    for number in (by_api, by_sql):
        row = await number_row(admin, number)
        assert (row["status"], row["score"]) == ("connected", 0)
        hours = (row["ramp_until"] - row["health_reset_at"]).total_seconds() / 3600
        assert hours == pytest.approx(24)
        assert (await audit_actions(admin, number))[-2:] == ["whatsapp_number.pause", "whatsapp_number.resume"]
    # Only a paused number resumes.
    assert api_error(await client.post(f"{NUMBERS}/{by_api}/resume", headers=boss.headers), 409) == "number_not_paused"
    assert (
        await direct_error(res, boss, "select public.resume_whatsapp_number($1::uuid)", by_sql) == "number_not_paused"
    )


async def test_a_self_service_owner_resumes_their_own_number(
    admin: asyncpg.Connection, client: httpx.AsyncClient, res: Resources, make_user: Any
) -> None:
    owner, other = await make_user(), await make_user()
    number = await paused_number(admin, "Propio")
    await admin.execute(
        "update public.whatsapp_numbers set shared = false, owner_id = $2::uuid where id = $1::uuid", number, owner.id
    )
    await admin.execute("update private.settings set self_service_numbers = true")
    try:
        assert await direct_error(res, other, "select public.resume_whatsapp_number($1::uuid)", number) == (
            "number_not_found"
        )
        resp = await client.post(f"{NUMBERS}/{number}/resume", headers=owner.headers)
        assert resp.status_code == 200, resp.text
        assert resp.json()["status"] == "connected"
    finally:
        await admin.execute("update private.settings set self_service_numbers = false")


async def test_after_a_resume_the_claim_is_paced_by_the_ramp(admin: asyncpg.Connection) -> None:
    number = await bare_number(admin, "Rampa")
    request = json.dumps(
        {
            "worker": "w",
            "batch_limit": 200,
            "lease_seconds": 30,
            "number_id": number,
            "spacing_min_s": 8,
            "spacing_max_s": 20,
            "hourly_cap": 200,
            "daily_cap": 1000,
        }
    )
    sql = """select to_jsonb(r) from private.ramp_request(private.read_claim_request($1::jsonb)) r"""
    plain = json.loads(await as_service(admin, sql, request))
    assert (plain["batch_limit"], plain["hourly_cap"], plain["spacing_max_s"]) == (200, 200, 20)  # positive control
    await admin.execute(
        "update public.whatsapp_numbers set ramp_until = now() + interval '1 hour' where id = $1::uuid", number
    )
    ramped = json.loads(await as_service(admin, sql, request))
    assert (ramped["batch_limit"], ramped["hourly_cap"], ramped["daily_cap"]) == (50, 50, 250)
    assert (ramped["spacing_min_s"], ramped["spacing_max_s"]) == (32, 80)


# -----------------------------------------------------------------------------------------------
# End to end: real bridges, a real worker
# -----------------------------------------------------------------------------------------------

HOURLY_CAP = 40
RAMP_SHARE = 0.25


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


@pytest.mark.slow
async def test_a_number_fed_463s_is_paused_the_other_keeps_sending_and_the_resume_ramps(
    admin: asyncpg.Connection,
    prepared: Prepared,
    bridges: list[BridgeProcess],
    tmp_path: Path,
    whatsapp_frames: list[dict[str, Any]],
) -> None:
    default_bridge, restricted_bridge, healthy_bridge = bridges
    tag = uuid.uuid4().hex[:6]
    restricted = await add_number(admin, f"Restringido {tag}", restricted_bridge.url)
    healthy = await add_number(admin, f"Sano {tag}", healthy_bridge.url)
    for number in (restricted, healthy):  # as each bridge's whatsapp_status event reports it
        await as_service(
            admin, "select private.record_number_status($1::uuid, 'connected', 'CONNECTED', null, null, null)", number
        )
    await restricted_bridge.configure(restrict_new_chats=True)
    boss = await new_admin(admin)
    alice, bob = await new_owner(admin), await new_owner(admin)
    campaign = await new_message(admin, alice, numbers(10, 311), "Hola {{name}}, primera vez.")
    other = await new_message(admin, bob, numbers(4, 312), "Hola {{name}}, desde el sano.")
    await send_from(admin, alice, campaign, restricted)
    await send_from(admin, bob, other, healthy)

    # One send at a time per number (spacing on), retries soon, a cap the ramp visibly cuts.
    worker = WorkerProcess(
        prepared.admin_url,
        prepared.app_url,
        default_bridge.url,
        tmp_path / "worker.log",
        SEND_SPACING_MIN_S="0.02",
        SEND_SPACING_MAX_S="0.05",
        SEND_HOURLY_CAP=str(HOURLY_CAP),
        DISPATCH_RETRY_BASE_S="0.1",
        DISPATCH_RETRY_MAX_S="0.2",
    )
    worker.start()
    try:
        await eventually(lambda: number_row(admin, restricted), lambda r: r["status"] == "paused", 30, what="the pause")

        async def attempts() -> int:
            tried: int = await admin.fetchval(
                "select coalesce(sum(attempts), 0)::int from public.deliveries where message_id = $1", campaign
            )
            return tried

        tried = await attempts()
        refusals = await facts(admin, restricted, "restricted_new_chats")
        print(f"paused after {tried} sends to new recipients ({len(refusals)} refused with 463)")
        assert tried == len(refusals)  # every attempt was a new recipient, refused
        assert 1 <= tried - 1 <= 5  # within 5 sends after the first 463
        # The other number keeps sending: all of bob's campaign, from its own bridge.
        await eventually(healthy_bridge.outbox, lambda o: len(o) == 4, 30, what="the healthy number's four sends")
        # Nothing of alice's left the restricted number; every delivery waits, pending, once.
        await asyncio.sleep(1.0)
        assert await attempts() == tried  # the claim skips a paused number
        assert sent_for(await restricted_bridge.outbox(), campaign) == []
        states = await admin.fetch(
            "select state, count(*)::int as n from public.deliveries where message_id = $1 group by state", campaign
        )
        assert {r["state"]: r["n"] for r in states} == {"pending": 10}
        # Told: alice (her campaign waits) and the admin, naming the number and the evidence.
        for told in (alice, boss):
            (notice,) = await pause_notices(admin, told)
            assert f"Restringido {tag}" in notice and "restricted_new_chats" in notice
        assert await pause_notices(admin, bob) == []
        paused_frames = [f for f in whatsapp_frames if f.get("number_status") == "paused"]
        assert [f["number_id"] for f in paused_frames] == [restricted]

        # WhatsApp lifts the restriction; an admin resumes: the number sends again, at the ramp's pace.
        await restricted_bridge.configure(restrict_new_chats=False)
        used = await admin.fetchval(
            "select coalesce(sum(sends), 0)::int from private.sender_usage where sender = $1", restricted
        )
        assert await as_user(admin, boss, "select (public.resume_whatsapp_number($1::uuid)).status", restricted) == (
            "connected"
        )
        allowed = math.ceil(HOURLY_CAP * RAMP_SHARE) - used  # without the ramp, all 10 would go
        assert 0 < allowed < 10
        await eventually(
            restricted_bridge.outbox, lambda o: len(o) >= allowed, 30, what=f"{allowed} sends after the resume"
        )
        await asyncio.sleep(1.0)
        out = sent_for(await restricted_bridge.outbox(), campaign)
        assert len(out) == allowed
        assert len({m["to"] for m in out}) == allowed  # no duplicates
        states = await admin.fetch(
            "select state, count(*)::int as n from public.deliveries where message_id = $1 group by state", campaign
        )
        counted = {r["state"]: r["n"] for r in states}
        assert counted.get("pending") == 10 - allowed and sum(counted.values()) == 10  # nothing lost
    finally:
        code = worker.stop()
        print(worker.log())
        for message in (campaign, other):
            await admin.execute(
                "update public.messages set status = 'cancelled' where id = $1 and status <> 'sent'", message
            )
    assert code == 0

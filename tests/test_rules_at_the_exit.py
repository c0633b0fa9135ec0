"""Rules at the exit (issue 19, classes 1, 2, 7 and 10): what leaves the number is judged, not
only the draft at the door. Each way into sending re-checks on both paths (through /api and as
supabase-js runs SQL: role `authenticated` with the user's claims, one transaction per call),
each refusal beside a positive control on the same path; the dispatcher's claim checks the text
rendered for each recipient; the daily cap counts from a ledger a user cannot shrink; a cancel
by any path leaves no work behind. The end-to-end test runs the real worker and bridge and reads
the simulator's outbox: it never receives a text that breaks a rule."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from bridge_process import BridgeProcess, WorkerProcess, eventually, message_row, new_owner, numbers, sent_for
from test_rules_both_paths import api_error, direct, direct_draft, direct_error, later, reachable_group

from whatsched.api.deps import Resources
from whatsched.db.pool import user_tx
from whatsched.db.setup import Prepared
from whatsched.rules import publish_settings

SPAM = "OFERTA https://a.example https://b.example https://c.example https://d.example YA"
RESUME = "select status from public.resume_message($1::uuid)"
EDIT = "update public.messages set content = $2 where id = $1::uuid returning status"


async def fan_out(admin: asyncpg.Connection, message_id: str) -> None:
    """The worker's start of a due message (scheduled -> sending, one delivery per recipient)."""
    async with admin.transaction():
        await admin.execute("set local role service_role")
        await admin.execute("select private.claim_messages(100, 0)")
    status = await admin.fetchval("select status from public.messages where id = $1::uuid", message_id)
    assert status == "sending"  # started now, or by an earlier call that took every due message


async def scheduled_now(res: Resources, user: Any, content: str, group: str) -> str:
    mid = await direct_draft(res, user, content, group)
    assert await direct(res, user, "select status from public.schedule_message($1::uuid, now())", mid) == "scheduled"
    return mid


async def claim_all(admin: asyncpg.Connection) -> list[asyncpg.Record]:
    """One claim as the worker, pacing off: every delivery it decided on."""
    request = json.dumps({"worker": "test", "batch_limit": 1000, "lease_seconds": 60})
    async with admin.transaction():
        await admin.execute("set local role service_role")
        rows: list[asyncpg.Record] = await admin.fetch("select * from private.claim_deliveries($1::jsonb)", request)
    return rows


# -----------------------------------------------------------------------------------------------
# Class 1: edits after the check
# -----------------------------------------------------------------------------------------------


async def test_a_paused_campaign_cannot_be_edited_into_spam_on_either_path(
    client: httpx.AsyncClient, res: Resources, make_user: Any, admin: asyncpg.Connection
) -> None:
    user = await make_user()
    mid = await scheduled_now(res, user, "Hola {{name}}, te esperamos.", await reachable_group(admin, user.id))
    await fan_out(admin, mid)
    assert await direct(res, user, "select status from public.pause_message($1::uuid)", mid) == "paused"

    resp = await client.put(f"/api/messages/{mid}", json={"content": SPAM}, headers=user.headers)
    assert api_error(resp, 422) == "spam_suspected"
    assert await direct_error(res, user, EDIT, mid, SPAM) == "spam_suspected"
    # Positive control: a clean edit passes on both paths, and the campaign resumes into sending.
    assert await direct(res, user, EDIT, mid, "Hola {{name}}, cambiamos la hora.") == "paused"
    resp = await client.put(f"/api/messages/{mid}", json={"content": "Hola {{name}}, nos vemos."}, headers=user.headers)
    assert resp.status_code == 200, resp.text
    assert await direct(res, user, RESUME, mid) == "sending"


async def test_resume_runs_the_spam_guard_whatever_wrote_the_text(
    client: httpx.AsyncClient, res: Resources, make_user: Any, admin: asyncpg.Connection
) -> None:
    """A text that reached a paused campaign by a path without the door's check (here the
    superuser) is refused on resume, into `sending` (fanned out) or `scheduled` (not yet)."""
    user = await make_user()
    fanned = await scheduled_now(res, user, "Hola {{name}}.", await reachable_group(admin, user.id))
    await fan_out(admin, fanned)
    waiting = await direct_draft(res, user, "Hola otra vez {{name}}.", await reachable_group(admin, user.id))
    sql = "select status from public.schedule_message($1::uuid, $2)"
    assert await direct(res, user, sql, waiting, later(hours=2)) == "scheduled"
    for mid in (fanned, waiting):
        assert await direct(res, user, "select status from public.pause_message($1::uuid)", mid) == "paused"
        await admin.execute("update public.messages set content = $2 where id = $1::uuid", mid, SPAM)

    resp = await client.post(f"/api/messages/{fanned}/resume", headers=user.headers)
    assert api_error(resp, 422) == "spam_suspected"
    assert await direct_error(res, user, RESUME, waiting) == "spam_suspected"
    direct_status = "update public.messages set status = 'sending' where id = $1::uuid"
    assert await direct_error(res, user, direct_status, fanned) == "spam_suspected"
    assert await direct(res, user, "select status from public.messages where id = $1::uuid", fanned) == "paused"
    # Positive control: the same campaigns, cleaned, resume on both paths.
    for mid in (fanned, waiting):
        await admin.execute("update public.messages set content = $2 where id = $1::uuid", mid, "Hola {{name}}, hoy.")
    resp = await client.post(f"/api/messages/{fanned}/resume", headers=user.headers)
    assert resp.status_code == 200 and resp.json()["status"] == "sending", resp.text
    assert await direct(res, user, RESUME, waiting) == "scheduled"


async def test_a_group_added_after_scheduling_meets_duplicate_recent_on_both_paths(
    client: httpx.AsyncClient, res: Resources, make_user: Any, admin: asyncpg.Connection
) -> None:
    user = await make_user()
    first_group, second_group, third_group = [await reachable_group(admin, user.id) for _ in range(3)]
    at = later(hours=3)
    sql = "select status from public.schedule_message($1::uuid, $2)"
    text = "Recordatorio: la tienda abre a las 9."
    assert await direct(res, user, sql, await direct_draft(res, user, text, first_group), at) == "scheduled"
    copy = await direct_draft(res, user, text, second_group)
    assert await direct(res, user, sql, copy, at) == "scheduled"  # other people: no duplicate

    link = "insert into public.message_groups (message_id, group_id) values ($1::uuid, $2::uuid)"
    assert await direct_error(res, user, link, copy, first_group) == "spam_suspected"
    resp = await client.put(
        f"/api/messages/{copy}", json={"group_ids": [second_group, first_group]}, headers=user.headers
    )
    assert api_error(resp, 422) == "spam_suspected"
    assert (
        await direct(res, user, "select count(*)::int from public.message_groups where message_id = $1::uuid", copy)
        == 1
    )
    # Positive control: a group nobody got this text in is added on both paths.
    await direct(res, user, link, copy, third_group)
    fourth = await reachable_group(admin, user.id)
    resp = await client.put(
        f"/api/messages/{copy}", json={"group_ids": [second_group, third_group, fourth]}, headers=user.headers
    )
    assert resp.status_code == 200, resp.text


async def test_members_added_to_a_scheduled_messages_group_meet_the_daily_cap_on_both_paths(
    client: httpx.AsyncClient, res: Resources, make_user: Any, admin: asyncpg.Connection
) -> None:
    await publish_settings(admin, res.settings.model_copy(update={"send_daily_cap": 3}))
    try:
        user = await make_user()
        group = await reachable_group(admin, user.id, 2)
        mid = await direct_draft(res, user, "Aviso del mes", group)
        sql = "select status from public.schedule_message($1::uuid, $2)"
        assert await direct(res, user, sql, mid, later(hours=2)) == "scheduled"
        new_contacts = [
            await direct(
                res,
                user,
                "insert into public.contacts (name, phone) values ($1, $2) returning id::text",
                f"Nuevo {i}",
                f"+1556{uuid.uuid4().int % 10**7:07d}",
            )
            for i in range(3)
        ]
        add = "insert into public.group_contacts (group_id, contact_id) values ($1::uuid, $2::uuid)"
        # Positive control: a third recipient fits the cap of 3.
        await direct(res, user, add, group, new_contacts[0])
        assert await direct_error(res, user, add, group, new_contacts[1]) == "spam_suspected"
        resp = await client.post(
            f"/api/groups/{group}/contacts", json={"contact_ids": [new_contacts[2]]}, headers=user.headers
        )
        assert api_error(resp, 422) == "spam_suspected"
        assert resp.json()["errors"][0]["field"] == "daily_cap"
        assert await direct(res, user, "select public.message_recipient_count($1::uuid)", mid) == 3
    finally:
        await publish_settings(admin, res.settings)


# -----------------------------------------------------------------------------------------------
# Class 2: the rendered text is checked at the exit
# -----------------------------------------------------------------------------------------------


async def legacy_contact(admin: asyncpg.Connection, owner: str, name: str, phone: str) -> str:
    """A contact stored before today's name rules (its name never met them): the exit must still
    judge what it renders into. Triggers are bypassed for this one insert only."""
    async with admin.transaction():
        await admin.execute("set local session_replication_role = replica")
        contact_id = await admin.fetchval(
            "insert into public.contacts (created_by, name, phone) values ($1::uuid, $2, $3) returning id::text",
            owner,
            name,
            phone,
        )
    return str(contact_id)


async def test_the_claim_holds_a_rendered_text_that_breaks_a_rule_and_tells_the_owner_once(
    client: httpx.AsyncClient, res: Resources, make_user: Any, admin: asyncpg.Connection
) -> None:
    user = await make_user()
    group = await reachable_group(admin, user.id, 2)
    bad_names = {
        "ESC": "Ana\x1b[31m",
        "BIDI": "Eva\u202etxt.exe",
        "LINKS": "VISITA https://a.example https://b.example https://c.example https://d.example",
        "LONG": "Ñ" * 200,
    }
    for name in bad_names.values():
        contact = await legacy_contact(admin, user.id, name, f"+1557{uuid.uuid4().int % 10**7:07d}")
        await admin.execute(
            "insert into public.group_contacts (group_id, contact_id, created_by) values ($1::uuid, $2::uuid, $3::uuid)",
            group,
            contact,
            user.id,
        )
    template = "Hola {{name}}! " + "Te esperamos {{name}}. " * 20
    mid = await scheduled_now(res, user, template, group)
    await fan_out(admin, mid)
    rows = await claim_all(admin)
    mine = [r for r in rows if str(r["message_id"]) == mid]
    assert len(mine) == 6
    sent = [r for r in mine if r["state"] == "sending"]
    held = [r for r in mine if r["state"] == "skipped"]
    assert len(sent) == 2 and len(held) == 4
    assert all(r["body"] is None for r in held)
    assert all(r["body"].startswith("Hola Contacto ") and "{{" not in r["body"] for r in sent)

    errors = await admin.fetch(
        "select last_error_code, last_error from public.deliveries where message_id = $1::uuid and state = 'skipped'",
        mid,
    )
    assert {e["last_error_code"] for e in errors} == {"held_by_rules"}
    reasons = " ".join(e["last_error"] for e in errors)
    for code in ("control_characters", "too_many_links", "content_too_long"):
        assert code in reasons, reasons
    told = await admin.fetch(
        "select title from public.notifications where related_entity_id = $1::uuid and title = 'Envío retenido'", mid
    )
    assert len(told) == 1
    stats = (await client.get(f"/api/messages/{mid}/stats", headers=user.headers)).json()
    assert stats["held"] == 4 and stats["states"]["skipped"] == 4 and stats["states"]["sending"] == 2
    # A later batch that holds again does not notify again (one notification per message).
    await admin.execute(
        "update public.deliveries set state = 'pending', last_error_code = null, last_error = null"
        " where message_id = $1::uuid and state = 'skipped' and last_error not like '%too_many_links%'",
        mid,
    )
    assert len([r for r in await claim_all(admin) if str(r["message_id"]) == mid]) == 3
    assert (
        await admin.fetchval(
            "select count(*) from public.notifications where related_entity_id = $1::uuid and title = 'Envío retenido'",
            mid,
        )
        == 1
    )


# -----------------------------------------------------------------------------------------------
# Class 7: counts from a ledger
# -----------------------------------------------------------------------------------------------


async def test_deleting_sent_messages_does_not_lower_the_daily_cap_on_either_path(
    client: httpx.AsyncClient, res: Resources, make_user: Any, admin: asyncpg.Connection
) -> None:
    await publish_settings(admin, res.settings.model_copy(update={"send_daily_cap": 4}))
    try:
        user = await make_user()
        sent = []
        for _ in range(2):
            mid = await scheduled_now(res, user, f"Aviso {uuid.uuid4().hex[:6]}", await reachable_group(admin, user.id))
            await fan_out(admin, mid)
            sent.append(mid)
        claimed = [r for r in await claim_all(admin) if str(r["message_id"]) in sent]
        assert len(claimed) == 4 and all(r["state"] == "sending" for r in claimed)
        async with admin.transaction():
            await admin.execute("set local role service_role")
            await admin.execute(
                "select private.complete_deliveries($1::uuid[], $2::text[])",
                [r["id"] for r in claimed],
                [f"wa-{i}" for i in range(len(claimed))],
            )
            await admin.execute("select * from private.finish_messages($1::uuid[])", [uuid.UUID(m) for m in sent])
        resp = await client.delete(f"/api/messages/{sent[0]}", headers=user.headers)
        assert resp.status_code == 204, resp.text
        await direct(res, user, "delete from public.messages where id = $1::uuid", sent[1])
        assert await direct(res, user, "select count(*)::int from public.messages") == 0

        small = await direct_draft(res, user, "Uno más", await reachable_group(admin, user.id, 1))
        assert await direct(res, user, "select public.spam_check($1::uuid)", small) == ["daily_cap"]
        sql = "select status from public.schedule_message($1::uuid, $2)"
        assert await direct_error(res, user, sql, small, later(hours=1)) == "spam_suspected"
        resp = await client.post(
            f"/api/messages/{small}/schedule", json={"scheduled_for": later(hours=1).isoformat()}, headers=user.headers
        )
        assert api_error(resp, 422) == "spam_suspected"
        # Positive control: with room in the cap, the same message schedules.
        await publish_settings(admin, res.settings.model_copy(update={"send_daily_cap": 5}))
        assert await direct(res, user, sql, small, later(hours=1)) == "scheduled"
    finally:
        await publish_settings(admin, res.settings)


async def test_rate_events_are_stamped_with_the_clock_not_the_transaction_start(
    res: Resources, make_user: Any, admin: asyncpg.Connection
) -> None:
    user = await make_user()
    mid = await direct_draft(res, user, "Hola {{name}}", await reachable_group(admin, user.id))
    async with user_tx(res.pool, user.claims) as conn:
        await conn.execute("select pg_sleep(1.2)")
        await conn.execute("select public.schedule_message($1::uuid, now() + interval '1 hour')", mid)
        started = await conn.fetchval("select now()")
    stamped = await admin.fetchval(
        "select max(at) from private.rate_events where user_id = $1::uuid and action = 'schedule'", user.id
    )
    assert (stamped - started).total_seconds() >= 1.2


async def test_users_cannot_read_or_write_the_send_ledger(res: Resources, make_user: Any) -> None:
    user = await make_user()
    assert await direct_error(res, user, "select count(*) from private.send_ledger") == "42501"
    assert await direct_error(res, user, "delete from private.send_ledger") == "42501"
    # Positive control: the same caller reads their own messages.
    assert await direct(res, user, "select count(*)::int from public.messages") == 0


# -----------------------------------------------------------------------------------------------
# Class 10: a cancel by any path cancels what is pending
# -----------------------------------------------------------------------------------------------


async def test_a_cancel_by_any_path_cancels_the_pending_deliveries(
    client: httpx.AsyncClient, res: Resources, make_user: Any, admin: asyncpg.Connection
) -> None:
    user = await make_user()
    by_api, by_sql, kept = [
        await scheduled_now(res, user, f"Aviso {i} {{{{name}}}}", await reachable_group(admin, user.id))
        for i in range(3)
    ]
    for mid in (by_api, by_sql, kept):
        await fan_out(admin, mid)
        assert await direct(res, user, "select status from public.pause_message($1::uuid)", mid) == "paused"
    resp = await client.post(f"/api/messages/{by_api}/cancel", headers=user.headers)
    assert resp.status_code == 200, resp.text
    await direct(res, user, "update public.messages set status = 'cancelled' where id = $1::uuid", by_sql)
    states = "select array_agg(distinct state) from public.deliveries where message_id = $1::uuid"
    assert await admin.fetchval(states, by_api) == ["cancelled"]
    assert await admin.fetchval(states, by_sql) == ["cancelled"]
    # Positive control: the paused campaign nobody cancelled keeps its work.
    assert await admin.fetchval(states, kept) == ["pending"]


# -----------------------------------------------------------------------------------------------
# End to end: the simulator's outbox never receives a text that breaks a rule
# -----------------------------------------------------------------------------------------------


@pytest.fixture
async def bridge(tmp_path: Path) -> AsyncIterator[BridgeProcess]:
    process = BridgeProcess(tmp_path / "bridge")
    process.start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
async def worker(prepared: Prepared, bridge: BridgeProcess, tmp_path: Path) -> AsyncIterator[Callable[[], None]]:
    process = WorkerProcess(
        prepared.admin_url, prepared.app_url, bridge.url, tmp_path / "worker.log", DISPATCH_HOUSEKEEPING_S="1"
    )
    try:
        yield process.start
    finally:
        code = process.stop()
        print(process.log())
        assert code == 0, "the worker did not stop cleanly on SIGTERM"


@pytest.mark.slow
async def test_the_outbox_never_receives_a_text_that_breaks_a_rule(
    admin: asyncpg.Connection, bridge: BridgeProcess, worker: Callable[[], None]
) -> None:
    owner = await new_owner(admin)
    phones = numbers(6, 190)
    names = [
        "Ana",
        "Luis",
        "Eva\u202egpj.exe",
        "ANA\x07\x1b[2J",
        "MIRA bit.ly/a tinyurl.com/b t.co/c promo.cl/d",
        "Bo",
    ]
    group = await admin.fetchval("insert into public.groups (created_by, name) values ($1, 'e2e') returning id", owner)
    for phone, name in zip(phones, names, strict=True):
        contact = await legacy_contact(admin, str(owner), name, phone)
        await admin.execute(
            "insert into public.group_contacts (group_id, contact_id, created_by) values ($1, $2::uuid, $3)",
            group,
            contact,
            owner,
        )
    message = await admin.fetchval(
        "insert into public.messages (created_by, content) values ($1, 'Hola {{name}}, mañana abrimos.') returning id",
        owner,
    )
    await admin.execute(
        "insert into public.message_groups (message_id, group_id, created_by) values ($1, $2, $3)",
        message,
        group,
        owner,
    )
    claims = json.dumps({"sub": str(owner), "role": "authenticated"})
    async with admin.transaction():
        await admin.execute(
            "select set_config('role', 'authenticated', true), set_config('request.jwt.claims', $1, true)", claims
        )
        await admin.execute("select public.schedule_message($1, now())", message)
    worker()
    final = await eventually(
        lambda: message_row(admin, message), lambda m: m["status"] in ("sent", "failed"), 60, what="the campaign"
    )
    assert final["status"] == "sent"
    received = sent_for(await bridge.outbox(), message)
    assert sorted(m["to"] for m in received) == sorted([phones[0], phones[1], phones[5]])
    for entry in received:
        body = entry["body"]
        assert body in ("Hola Ana, mañana abrimos.", "Hola Luis, mañana abrimos.", "Hola Bo, mañana abrimos.")
    held = await admin.fetch(
        "select phone from public.deliveries where message_id = $1 and last_error_code = 'held_by_rules'", message
    )
    assert sorted(h["phone"] for h in held) == sorted(phones[2:5])

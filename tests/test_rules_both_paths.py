"""Every guide rule a supabase-js caller can reach, tried twice: through /api and as supabase-js
runs it (SQL as role `authenticated` with the user's claims, one transaction per call, as
PostgREST does). Both must give the same stable code, and clean input must pass on both paths
(positive controls), so a database that refused everything could not pass."""

from __future__ import annotations

import itertools
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from whatsched.api.deps import Resources
from whatsched.db.pool import user_tx
from whatsched.rules import publish_settings

_phones = itertools.count(7_000_000)


def later(**delta: float) -> datetime:
    return datetime.now(UTC) + timedelta(**delta)


def api_error(resp: httpx.Response, status: int) -> str:
    assert resp.status_code == status, resp.text
    body: dict[str, Any] = resp.json()
    assert set(body) == {"detail", "code", "errors"} and body["detail"]
    return str(body["code"])


async def direct(res: Resources, user: Any, sql: str, *args: Any) -> Any:
    """One supabase-js call: its own transaction as `authenticated` with the user's claims."""
    async with user_tx(res.pool, user.claims) as conn:
        return await conn.fetchval(sql, *args)


async def direct_error(res: Resources, user: Any, sql: str, *args: Any) -> str:
    """The stable code the database refused with: HINT for our rules, the SQLSTATE otherwise."""
    with pytest.raises(asyncpg.PostgresError) as err:
        await direct(res, user, sql, *args)
    return str(err.value.hint if (err.value.sqlstate or "").startswith("WS") else err.value.sqlstate)


async def reachable_group(admin: asyncpg.Connection, owner: str, contacts: int = 2) -> str:
    """A group with active contacts, made as the superuser (so it counts against no user limit)."""
    group_id = await admin.fetchval(
        "insert into groups (created_by, name) values ($1, $2) returning id::text", owner, "g-" + uuid.uuid4().hex[:8]
    )
    await admin.execute(
        """with new as (
             insert into contacts (created_by, name, phone)
             select $1, 'Contacto ' || p, p from unnest($2::text[]) as p returning id)
           insert into group_contacts (group_id, contact_id, created_by) select $3::uuid, id, $1 from new""",
        owner,
        ["+1556" + str(next(_phones)) for _ in range(contacts)],
        group_id,
    )
    return str(group_id)


async def direct_draft(res: Resources, user: Any, content: str, group_id: str | None = None) -> str:
    """A draft made the supabase-js way: insert the message, then link its group."""
    message_id = str(await direct(res, user, "insert into public.messages (content) values ($1) returning id", content))
    if group_id:
        await direct(
            res,
            user,
            "insert into public.message_groups (message_id, group_id) values ($1::uuid, $2::uuid)",
            message_id,
            group_id,
        )
    return message_id


async def api_draft(client: httpx.AsyncClient, user: Any, content: str, group_id: str | None = None) -> str:
    body: dict[str, Any] = {"content": content, "group_ids": [group_id] if group_id else []}
    resp = await client.post("/api/messages", json=body, headers=user.headers)
    assert resp.status_code == 201, resp.text
    return str(resp.json()["id"])


def schedule_sql(at: datetime) -> tuple[str, datetime]:
    return "select status from public.schedule_message($1::uuid, $2)", at


# -----------------------------------------------------------------------------------------------
# Positive controls
# -----------------------------------------------------------------------------------------------


async def test_a_clean_message_created_and_scheduled_directly_succeeds_and_is_stored_clean(
    res: Resources, make_user: Any, admin: asyncpg.Connection
) -> None:
    user = await make_user()
    group = await reachable_group(admin, user.id)
    mid = await direct_draft(res, user, "  Cafe\u0301 listo\r\nHasta mañana, {{name}}\x07  ", group)
    assert await direct(res, user, "select content from public.messages where id = $1::uuid", mid) == (
        "Caf\u00e9 listo\nHasta mañana, {{name}}"
    )
    sql, at = schedule_sql(later(hours=2))
    assert await direct(res, user, sql, mid, at) == "scheduled"
    assert await direct(res, user, "select public.spam_check($1::uuid)", mid) == []


async def test_a_clean_message_through_the_api_succeeds(
    client: httpx.AsyncClient, make_user: Any, admin: asyncpg.Connection
) -> None:
    user = await make_user()
    group = await reachable_group(admin, user.id)
    mid = await api_draft(client, user, "Hola {{name}}, la reunión es mañana.", group)
    resp = await client.post(
        f"/api/messages/{mid}/schedule", json={"scheduled_for": later(hours=2).isoformat()}, headers=user.headers
    )
    assert resp.status_code == 200 and resp.json()["status"] == "scheduled", resp.text


# -----------------------------------------------------------------------------------------------
# Content
# -----------------------------------------------------------------------------------------------

CONTENT_REFUSALS = [
    ("<script>alert(1)</script> hola", "html_not_allowed"),
    ('mira <a href="https://x.example">esto</a>', "html_not_allowed"),
    ("a" * 4097, "content_too_long"),
    (" \x07 \t", "content_empty"),
]


@pytest.mark.parametrize(("content", "code"), CONTENT_REFUSALS)
async def test_content_refused_on_insert_on_both_paths(
    client: httpx.AsyncClient, res: Resources, make_user: Any, content: str, code: str
) -> None:
    user = await make_user()
    resp = await client.post("/api/messages", json={"content": content}, headers=user.headers)
    assert api_error(resp, 422) == code
    assert resp.json()["errors"][0]["field"] == "content"
    assert await direct_error(res, user, "insert into public.messages (content) values ($1)", content) == code
    assert await direct(res, user, "select count(*) from public.messages") == 0


@pytest.mark.parametrize(("content", "code"), CONTENT_REFUSALS)
async def test_content_refused_on_update_on_both_paths(
    client: httpx.AsyncClient, res: Resources, make_user: Any, content: str, code: str
) -> None:
    user = await make_user()
    mid = await direct_draft(res, user, "Texto limpio")
    resp = await client.put(f"/api/messages/{mid}", json={"content": content}, headers=user.headers)
    assert api_error(resp, 422) == code
    sql = "update public.messages set content = $2 where id = $1::uuid"
    assert await direct_error(res, user, sql, mid, content) == code
    assert await direct(res, user, "select content from public.messages where id = $1::uuid", mid) == "Texto limpio"


# -----------------------------------------------------------------------------------------------
# Spam guard
# -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "rule"),
    [
        ("COMPRA YA ESTA OFERTA INCREIBLE HOY MISMO", "shouting"),
        ("a https://a.example b http://b.example c www.c.example d https://d.example", "too_many_links"),
    ],
)
async def test_spam_refused_on_both_paths_naming_the_rule(
    client: httpx.AsyncClient, res: Resources, make_user: Any, admin: asyncpg.Connection, content: str, rule: str
) -> None:
    user = await make_user()
    group = await reachable_group(admin, user.id)
    via_api = await api_draft(client, user, content, group)
    resp = await client.post(
        f"/api/messages/{via_api}/schedule", json={"scheduled_for": later(hours=1).isoformat()}, headers=user.headers
    )
    assert api_error(resp, 422) == "spam_suspected"
    assert [e["field"] for e in resp.json()["errors"]] == [rule]

    via_sql = await direct_draft(res, user, content, group)
    sql, at = schedule_sql(later(hours=1))
    assert await direct_error(res, user, sql, via_sql, at) == "spam_suspected"
    # Nor does a direct status update get around it.
    update = "update public.messages set status = 'scheduled', scheduled_for = $2 where id = $1::uuid"
    assert await direct_error(res, user, update, via_sql, at) == "spam_suspected"
    # Preview shows the same verdict from the same function.
    preview = await client.get(f"/api/messages/{via_sql}/preview", headers=user.headers)
    assert preview.json()["spam"] == {"verdict": "suspected", "rules": [rule]}
    assert await direct(res, user, "select public.spam_check($1::uuid)", via_sql) == [rule]
    statuses = await direct(res, user, "select array_agg(distinct status) from public.messages")
    assert statuses == ["draft"]


async def test_duplicate_recent_on_both_paths_and_on_resume(
    client: httpx.AsyncClient, res: Resources, make_user: Any, admin: asyncpg.Connection
) -> None:
    user = await make_user()
    group = await reachable_group(admin, user.id)
    at = later(hours=3)
    first = await direct_draft(res, user, "Misma noticia para todos", group)
    sql, _ = schedule_sql(at)
    assert await direct(res, user, sql, first, at) == "scheduled"

    again = await api_draft(client, user, "Misma noticia para todos", group)
    resp = await client.post(
        f"/api/messages/{again}/schedule", json={"scheduled_for": at.isoformat()}, headers=user.headers
    )
    assert api_error(resp, 422) == "spam_suspected"
    assert await direct_error(res, user, sql, again, at) == "spam_suspected"
    # A copy (duplicate) of the scheduled message cannot be scheduled next to it either.
    copy = await direct(res, user, "select id::text from public.duplicate_message($1::uuid)", first)
    assert await direct_error(res, user, sql, copy, at + timedelta(hours=1)) == "spam_suspected"
    # Two days later the same text is fine.
    assert await direct(res, user, sql, copy, at + timedelta(days=2)) == "scheduled"
    # Editing a paused message is a way back toward sending: made to match another, it is refused
    # on both paths at the edit...
    other = await direct_draft(res, user, "Otra noticia", group)
    assert await direct(res, user, sql, other, at + timedelta(minutes=5)) == "scheduled"
    await direct(res, user, "select public.pause_message($1::uuid)", first)
    edit = "update public.messages set content = 'Otra noticia' where id = $1::uuid"
    assert await direct_error(res, user, edit, first) == "spam_suspected"
    resp = await client.put(f"/api/messages/{first}", json={"content": "Otra noticia"}, headers=user.headers)
    assert api_error(resp, 422) == "spam_suspected"
    # ...and resuming is one too: the same text written by a path without the door's check (the
    # superuser here) is refused on resume.
    await admin.execute(edit, first)
    resume = "select status from public.resume_message($1::uuid)"
    assert await direct_error(res, user, resume, first) == "spam_suspected"
    resp = await client.post(f"/api/messages/{first}/resume", headers=user.headers)
    assert api_error(resp, 422) == "spam_suspected"
    assert await direct(res, user, "select status from public.messages where id = $1::uuid", first) == "paused"


async def test_daily_cap_applies_the_configured_number_on_both_paths(
    client: httpx.AsyncClient, res: Resources, make_user: Any, admin: asyncpg.Connection
) -> None:
    # SEND_DAILY_CAP=3 as whatsched migrate or an API start-up would write it.
    await publish_settings(admin, res.settings.model_copy(update={"send_daily_cap": 3}))
    try:
        user = await make_user()
        big = await reachable_group(admin, user.id, 4)
        via_sql = await direct_draft(res, user, "Aviso general", big)
        sql, at = schedule_sql(later(hours=1))
        assert await direct_error(res, user, sql, via_sql, at) == "spam_suspected"
        assert await direct(res, user, "select public.spam_check($1::uuid)", via_sql) == ["daily_cap"]
        resp = await client.post(
            f"/api/messages/{via_sql}/schedule", json={"scheduled_for": at.isoformat()}, headers=user.headers
        )
        assert api_error(resp, 422) == "spam_suspected" and resp.json()["errors"][0]["field"] == "daily_cap"
        fits = await direct_draft(res, user, "Otro aviso", await reachable_group(admin, user.id, 3))
        assert await direct(res, user, sql, fits, at) == "scheduled"
        # 0 turns the rule off, as it turns off the dispatcher's per-number cap.
        await publish_settings(admin, res.settings.model_copy(update={"send_daily_cap": 0}))
        assert await direct(res, user, sql, via_sql, at) == "scheduled"
    finally:
        await publish_settings(admin, res.settings)


# -----------------------------------------------------------------------------------------------
# Send times
# -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("at", "code"), [(later(hours=-2), "scheduled_in_past"), (later(days=400), "scheduled_too_far")]
)
async def test_send_time_rules_on_both_paths(
    client: httpx.AsyncClient, res: Resources, make_user: Any, admin: asyncpg.Connection, at: datetime, code: str
) -> None:
    user = await make_user()
    group = await reachable_group(admin, user.id)
    # On create
    resp = await client.post(
        "/api/messages", json={"content": "hola", "scheduled_for": at.isoformat()}, headers=user.headers
    )
    assert api_error(resp, 422) == code and resp.json()["errors"][0]["field"] == "scheduled_for"
    insert = "insert into public.messages (content, scheduled_for) values ('hola', $1)"
    assert await direct_error(res, user, insert, at) == code
    # On schedule
    mid = await direct_draft(res, user, "hola", group)
    resp = await client.post(
        f"/api/messages/{mid}/schedule", json={"scheduled_for": at.isoformat()}, headers=user.headers
    )
    assert api_error(resp, 422) == code
    sql, _ = schedule_sql(at)
    assert await direct_error(res, user, sql, mid, at) == code
    # On edit of a draft
    update = "update public.messages set scheduled_for = $2 where id = $1::uuid"
    assert await direct_error(res, user, update, mid, at) == code
    resp = await client.put(f"/api/messages/{mid}", json={"scheduled_for": at.isoformat()}, headers=user.headers)
    assert api_error(resp, 422) == code


# -----------------------------------------------------------------------------------------------
# Per-user limits, shared by both paths
# -----------------------------------------------------------------------------------------------


async def test_the_eleventh_schedule_in_a_minute_is_refused_whichever_path_made_the_ten(
    client: httpx.AsyncClient, res: Resources, make_user: Any, admin: asyncpg.Connection
) -> None:
    user = await make_user()
    group = await reachable_group(admin, user.id)
    drafts = [await direct_draft(res, user, f"Aviso {i}", group) for i in range(12)]
    sql, at = schedule_sql(later(hours=1))
    for mid in drafts[:5]:
        assert await direct(res, user, sql, mid, at) == "scheduled"
    for mid in drafts[5:10]:
        resp = await client.post(
            f"/api/messages/{mid}/schedule", json={"scheduled_for": at.isoformat()}, headers=user.headers
        )
        assert resp.status_code == 200, resp.text
    assert resp.headers["X-RateLimit-Remaining"] == "0"
    assert await direct_error(res, user, sql, drafts[10], at) == "rate_limited"
    resp = await client.post(
        f"/api/messages/{drafts[11]}/schedule", json={"scheduled_for": at.isoformat()}, headers=user.headers
    )
    assert api_error(resp, 429) == "rate_limited"
    assert 1 <= int(resp.headers["Retry-After"]) <= 60 and resp.headers["X-RateLimit-Limit"] == "10"
    # Another user has their own budget.
    other = await make_user()
    other_group = await reachable_group(admin, other.id)
    assert await direct(res, other, sql, await direct_draft(res, other, "Aviso", other_group), at) == "scheduled"


async def test_the_sixth_group_in_a_minute_is_refused_whichever_path_made_the_five(
    client: httpx.AsyncClient, res: Resources, make_user: Any
) -> None:
    user = await make_user()
    insert = "insert into public.groups (name) values ($1) returning id"
    for i in range(3):
        assert await direct(res, user, insert, f"directo {i}")
    for i in range(2):
        resp = await client.post("/api/groups", json={"name": f"api {i}"}, headers=user.headers)
        assert resp.status_code == 201, resp.text
    assert resp.headers["X-RateLimit-Remaining"] == "0"
    assert await direct_error(res, user, insert, "sexto") == "rate_limited"
    resp = await client.post("/api/groups", json={"name": "sexto"}, headers=user.headers)
    assert api_error(resp, 429) == "rate_limited" and int(resp.headers["Retry-After"]) >= 1
    assert await direct(res, user, "select count(*) from public.groups") == 5


# -----------------------------------------------------------------------------------------------
# Columns the state machine owns
# -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "assignment",
    ["delivered_count = 5", "recipient_count = 1", "failed_count = 1", "sent_at = now()", "created_at = now()"],
)
async def test_a_direct_write_to_a_state_machine_column_is_refused(
    client: httpx.AsyncClient, res: Resources, make_user: Any, assignment: str
) -> None:
    user = await make_user()
    mid = await direct_draft(res, user, "hola")
    sql = f"update public.messages set {assignment} where id = $1::uuid"
    assert await direct_error(res, user, sql, mid) == "42501"
    # The API has no way to write them: unknown fields are not columns it writes.
    resp = await client.put(
        f"/api/messages/{mid}", json={"content": "hola de nuevo", "delivered_count": 5}, headers=user.headers
    )
    assert resp.status_code == 200 and resp.json()["delivered_count"] == 0, resp.text


@pytest.mark.parametrize(
    "sql",
    [
        "insert into public.messages (content, status) values ('hola', 'scheduled')",
        "insert into public.messages (content, recipient_count) values ('hola', 3)",
        "insert into public.groups (name, contact_count) values ('g', 50)",
    ],
)
async def test_a_direct_insert_cannot_seed_what_the_system_owns(res: Resources, make_user: Any, sql: str) -> None:
    user = await make_user()
    assert await direct_error(res, user, sql) == "42501"


async def test_a_direct_update_cannot_move_a_message_to_another_owner_or_count_a_group(
    res: Resources, make_user: Any
) -> None:
    user, other = await make_user(), await make_user()
    mid = await direct_draft(res, user, "hola")
    sql = "update public.messages set created_by = $2::uuid where id = $1::uuid"
    assert await direct_error(res, user, sql, mid, other.id) == "42501"
    group = await direct(res, user, "insert into public.groups (name) values ('g') returning id::text")
    sql = "update public.groups set contact_count = 9 where id = $1::uuid"
    assert await direct_error(res, user, sql, group) == "42501"


# -----------------------------------------------------------------------------------------------
# The worker's way into `scheduled`: a recurring message's next occurrence
# -----------------------------------------------------------------------------------------------


async def occurrence(admin: asyncpg.Connection, owner: str, group: str, content: str, parent: str | None) -> str:
    """A message as the worker makes one (superuser: no user rules), with its group."""
    status, sent_at = ("sent", "now()") if parent is None else ("scheduled", "null")
    mid = await admin.fetchval(
        f"""insert into public.messages (created_by, content, recurrence, recurrence_parent_id, scheduled_for,
                                         status, sent_at)
            values ($1, $2, '0 9 * * *', $3::uuid, now() + interval '1 hour', '{status}', {sent_at})
            returning id::text""",
        owner,
        content,
        parent,
    )
    await admin.execute(
        "insert into public.message_groups (message_id, group_id, created_by) values ($1::uuid, $2::uuid, $3)",
        mid,
        group,
        owner,
    )
    return str(mid)


async def test_an_occurrence_the_guard_refuses_waits_paused_and_its_owner_is_told(
    admin: asyncpg.Connection, make_user: Any
) -> None:
    user = await make_user()
    group = await reachable_group(admin, user.id)
    hold = "select coalesce(array_agg(h::text), '{}') from private.hold_spam_occurrences($1::uuid[]) as h"
    # Its own series is not a duplicate of it: a daily reminder keeps going.
    first = await occurrence(admin, user.id, group, "Recordatorio diario", None)
    second = await occurrence(admin, user.id, group, "Recordatorio diario", first)
    third = await occurrence(admin, user.id, group, "Recordatorio diario", second)
    assert await admin.fetchval(hold, [third]) == []
    # The same text in another message within the day is.
    await occurrence(admin, user.id, group, "Aviso compartido", None)
    loud_parent = await occurrence(admin, user.id, group, "COMPRA YA ESTA OFERTA INCREIBLE HOY", None)
    loud = await occurrence(admin, user.id, group, "COMPRA YA ESTA OFERTA INCREIBLE HOY", loud_parent)
    assert await admin.fetchval(hold, [loud]) == [loud]
    assert await admin.fetchval("select status from public.messages where id = $1::uuid", loud) == "paused"
    note = await admin.fetchrow(
        "select type, message from public.notifications where user_id = $1 and related_entity_id = $2::uuid",
        user.id,
        loud,
    )
    assert note["type"] == "warning" and "shouting" in note["message"]
    assert await admin.fetchval("select status from public.messages where id = $1::uuid", third) == "scheduled"

"""The messages API against the real database: CRUD, filters, transitions, the spam guard, rate
limits, WhatsApp warnings (with the real bridge process), preview, stats, dashboard, ETags."""

from __future__ import annotations

import asyncio
import json
import os
import re
import tempfile
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from whatsched.api.deps import Resources
from whatsched.bridge_client import BridgeClient
from whatsched.db.embedded import free_port

MESSAGE_KEYS = {
    "id",
    "content",
    "scheduled_for",
    "status",
    "groups",
    "created_at",
    "updated_at",
    "sent_at",
    "recipient_count",
    "delivered_count",
    "failed_count",
    "created_by",
    "recurrence",
    "number_id",  # the WhatsApp number chosen for it (null: the owner's default)
    "media_id",  # its attachment (null: a text message)
}
ISO_Z = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")
BRIDGE_DIR = Path(__file__).resolve().parent.parent / "bridge"
_phone_seq = iter(range(10_000_000, 99_999_999, 7))


def later(**delta: float) -> str:
    return (datetime.now(UTC) + timedelta(**delta)).isoformat().replace("+00:00", "Z")


async def add_group(
    admin: asyncpg.Connection,
    owner: str,
    contacts: int,
    *,
    inactive: int = 0,
    opted_out: int = 0,
    names: str = "Contacto",
    also: list[str] | None = None,
) -> str:
    """A group of `contacts` new contacts (the first `inactive` inactive, the next `opted_out` opted
    out), plus existing contacts `also`. Inserted as the superuser: the API for groups is another's."""
    group_id = await admin.fetchval(
        "insert into groups (created_by, name) values ($1, $2) returning id::text", owner, "g-" + uuid.uuid4().hex[:8]
    )
    phones = ["+1555" + str(next(_phone_seq)) for _ in range(contacts)]
    await admin.execute(
        """with new as (
             insert into contacts (created_by, name, phone, is_active, opted_out_at)
             select $1, $3 || ' ' || i, p, i > $4, case when i > $4 and i <= $4 + $5 then now() end
             from unnest($2::text[]) with ordinality as t(p, i)
             returning id)
           insert into group_contacts (group_id, contact_id, created_by)
           select $6::uuid, id, $1 from new
           union all select $6::uuid, unnest($7::uuid[]), $1""",
        owner,
        phones,
        names,
        inactive,
        opted_out,
        group_id,
        also or [],
    )
    return str(group_id)


async def create(client: httpx.AsyncClient, user: Any, **body: Any) -> dict[str, Any]:
    body.setdefault("content", "Hola {{name}}, nos vemos mañana.")
    resp = await client.post("/api/messages", json=body, headers=user.headers)
    assert resp.status_code == 201, resp.text
    data: dict[str, Any] = resp.json()
    return data


async def scheduled(client: httpx.AsyncClient, user: Any, group: str, content: str | None = None) -> dict[str, Any]:
    msg = await create(client, user, content=content or f"Recordatorio {uuid.uuid4().hex[:6]}", group_ids=[group])
    resp = await client.post(
        f"/api/messages/{msg['id']}/schedule", json={"scheduled_for": later(hours=2)}, headers=user.headers
    )
    assert resp.status_code == 200, resp.text
    data: dict[str, Any] = resp.json()
    return data


def assert_error(resp: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body: dict[str, Any] = resp.json()
    assert body["code"] == code, body
    assert set(body) == {"detail", "code", "errors"} and body["detail"]
    return body


# -----------------------------------------------------------------------------------------------
# Create, read, update, delete
# -----------------------------------------------------------------------------------------------


async def test_create_returns_a_draft_in_the_guides_shape(
    client: httpx.AsyncClient, make_user: Any, admin: Any
) -> None:
    user = await make_user()
    group = await add_group(admin, user.id, 3)
    other = await add_group(admin, user.id, 2)
    resp = await client.post(
        "/api/messages",
        json={"content": "Hola {{name}}", "group_ids": [group, other, group], "scheduled_for": later(days=1)},
        headers=user.headers,
    )
    assert resp.status_code == 201, resp.text
    body = resp.json()
    assert set(body) == MESSAGE_KEYS
    assert body["status"] == "draft" and body["content"] == "Hola {{name}}"
    assert body["created_by"] == user.id and isinstance(body["id"], str)
    assert {g["id"]: g["contact_count"] for g in body["groups"]} == {group: 3, other: 2}
    assert set(body["groups"][0]) == {"id", "name", "contact_count"}
    for key in ("scheduled_for", "created_at", "updated_at"):
        assert ISO_Z.match(body[key]), body[key]
    assert body["sent_at"] is None and body["recurrence"] is None
    # Not fanned out yet: the live audience.
    assert (body["recipient_count"], body["delivered_count"], body["failed_count"]) == (5, 0, 0)
    got = await client.get(f"/api/messages/{body['id']}", headers=user.headers)
    assert got.status_code == 200 and got.json() == body
    audited = await admin.fetchval(
        "select count(*) from audit_log where action = 'message.create' and entity_id = $1", body["id"]
    )
    assert audited == 1


async def test_content_is_cleaned_and_html_refused_with_the_tag(client: httpx.AsyncClient, make_user: Any) -> None:
    user = await make_user()
    msg = await create(client, user, content="  Cafe\u0301\x00 \r\nlisto\t ")
    assert msg["content"] == "Caf\u00e9 \nlisto"
    html = await client.post("/api/messages", json={"content": "hola <script>x()</script>"}, headers=user.headers)
    body = assert_error(html, 422, "html_not_allowed")
    assert "<script>" in body["detail"] and body["errors"][0]["field"] == "content"
    link = await client.post("/api/messages", json={"content": '<a href="https://x">x</a>'}, headers=user.headers)
    assert "<a href>" in assert_error(link, 422, "html_not_allowed")["detail"]
    js = await client.post("/api/messages", json={"content": "ve a javascript:alert(1)"}, headers=user.headers)
    assert "javascript:" in assert_error(js, 422, "html_not_allowed")["detail"]
    assert_error(
        await client.post("/api/messages", json={"content": "\x00 \n"}, headers=user.headers), 422, "content_empty"
    )
    too_long = await client.post("/api/messages", json={"content": "a" * 4097}, headers=user.headers)
    assert_error(too_long, 422, "content_too_long")
    assert (await client.post("/api/messages", json={"content": "a" * 4096}, headers=user.headers)).status_code == 201


async def test_bad_bodies_are_refused_with_field_errors(client: httpx.AsyncClient, make_user: Any, admin: Any) -> None:
    user = await make_user()
    stranger = await make_user()
    theirs = await add_group(admin, stranger.id, 1)
    post = client.post
    h = user.headers
    missing = assert_error(await post("/api/messages", json={}, headers=h), 422, "validation_error")
    assert missing["errors"][0]["field"] == "content"
    cron = assert_error(
        await post("/api/messages", json={"content": "x", "recurrence": "* * *"}, headers=h), 422, "validation_error"
    )
    assert cron["errors"][0]["field"] == "recurrence"
    bad_id = assert_error(
        await post("/api/messages", json={"content": "x", "group_ids": ["nope"]}, headers=h), 422, "validation_error"
    )
    assert bad_id["errors"][0]["field"].startswith("group_ids")
    unknown = await post("/api/messages", json={"content": "x", "group_ids": [str(uuid.uuid4())]}, headers=h)
    assert assert_error(unknown, 404, "related_not_found")["errors"][0]["field"] == "group_ids"
    # Someone else's group is indistinguishable from a missing one.
    assert_error(
        await post("/api/messages", json={"content": "x", "group_ids": [theirs]}, headers=h), 404, "related_not_found"
    )
    past = await post("/api/messages", json={"content": "x", "scheduled_for": later(hours=-2)}, headers=h)
    assert assert_error(past, 422, "scheduled_in_past")["errors"][0]["field"] == "scheduled_for"
    far = await post("/api/messages", json={"content": "x", "scheduled_for": later(days=400)}, headers=h)
    assert_error(far, 422, "scheduled_too_far")
    malformed = await post("/api/messages", content=b'{"content": ', headers={**h, "Content-Type": "application/json"})
    assert_error(malformed, 400, "malformed_json")
    ok = await create(client, user, content="cada lunes", recurrence="0  9 * * 1")
    assert ok["recurrence"] == "0 9 * * 1"
    # Nothing half-created by the refused requests.
    assert await admin.fetchval("select count(*) from messages where created_by = $1", user.id) == 1


async def test_time_without_offset_is_read_in_the_profile_timezone(
    client: httpx.AsyncClient, make_user: Any, admin: Any
) -> None:
    user = await make_user()
    await admin.execute("update profiles set timezone = 'America/Santiago' where id = $1", user.id)
    year = datetime.now(UTC).year + 1
    msg = await create(client, user, scheduled_for=f"{year}-01-15T10:00:00")
    assert msg["scheduled_for"] == f"{year}-01-15T13:00:00.000000Z"  # January: Chile is UTC-3
    aware = await create(client, user, scheduled_for=f"{year}-01-15T10:00:00+00:00")
    assert aware["scheduled_for"] == f"{year}-01-15T10:00:00.000000Z"


async def test_put_updates_only_the_given_fields(client: httpx.AsyncClient, make_user: Any, admin: Any) -> None:
    user = await make_user()
    g1 = await add_group(admin, user.id, 2)
    g2 = await add_group(admin, user.id, 4)
    msg = await create(client, user, group_ids=[g1], recurrence="0 9 * * 1", scheduled_for=later(days=2))
    resp = await client.put(f"/api/messages/{msg['id']}", json={"content": "Nuevo texto"}, headers=user.headers)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["content"] == "Nuevo texto"
    assert body["recurrence"] == "0 9 * * 1" and body["scheduled_for"] == msg["scheduled_for"]
    assert [g["id"] for g in body["groups"]] == [g1]
    assert body["updated_at"] > msg["updated_at"]
    regrouped = await client.put(
        f"/api/messages/{msg['id']}", json={"group_ids": [g2], "recurrence": None}, headers=user.headers
    )
    assert regrouped.status_code == 200, regrouped.text
    after = regrouped.json()
    assert [g["id"] for g in after["groups"]] == [g2] and after["recurrence"] is None
    assert after["recipient_count"] == 4 and after["content"] == "Nuevo texto"
    html = await client.put(f"/api/messages/{msg['id']}", json={"content": "<b>x</b>"}, headers=user.headers)
    assert_error(html, 422, "html_not_allowed")


async def test_editing_outside_draft_scheduled_paused_is_refused(
    client: httpx.AsyncClient, make_user: Any, admin: Any
) -> None:
    user = await make_user()
    group = await add_group(admin, user.id, 1)
    msg = await scheduled(client, user, group)
    edited = await client.put(f"/api/messages/{msg['id']}", json={"content": "still editable"}, headers=user.headers)
    assert edited.status_code == 200 and edited.json()["status"] == "scheduled"
    assert (await client.post(f"/api/messages/{msg['id']}/cancel", headers=user.headers)).status_code == 200
    refused = await client.put(f"/api/messages/{msg['id']}", json={"content": "too late"}, headers=user.headers)
    assert_error(refused, 409, "not_editable")
    other = await add_group(admin, user.id, 1)
    regroup = await client.put(f"/api/messages/{msg['id']}", json={"group_ids": [other]}, headers=user.headers)
    assert_error(regroup, 409, "not_editable")
    assert (await client.get(f"/api/messages/{msg['id']}", headers=user.headers)).json()["content"] == "still editable"


async def test_delete_is_refused_while_sending_and_audited(
    client: httpx.AsyncClient, make_user: Any, admin: Any
) -> None:
    user = await make_user()
    group = await add_group(admin, user.id, 2)
    draft = await create(client, user, group_ids=[group])
    resp = await client.delete(f"/api/messages/{draft['id']}", headers=user.headers)
    assert resp.status_code == 204 and resp.content == b""
    assert_error(await client.get(f"/api/messages/{draft['id']}", headers=user.headers), 404, "message_not_found")
    assert (
        await admin.fetchval(
            "select count(*) from audit_log where action = 'message.delete' and entity_id = $1", draft["id"]
        )
        == 1
    )
    sending = await scheduled(client, user, group)
    await admin.execute("update messages set status = 'sending' where id = $1", sending["id"])
    assert_error(await client.delete(f"/api/messages/{sending['id']}", headers=user.headers), 409, "message_sending")
    assert await admin.fetchval("select status from messages where id = $1", sending["id"]) == "sending"
    assert (await client.post(f"/api/messages/{sending['id']}/pause", headers=user.headers)).status_code == 200
    assert (await client.delete(f"/api/messages/{sending['id']}", headers=user.headers)).status_code == 204


async def test_another_users_message_is_not_found_on_every_route(
    client: httpx.AsyncClient, make_user: Any, admin: Any
) -> None:
    owner = await make_user()
    intruder = await make_user()
    msg = await create(client, owner, group_ids=[await add_group(admin, owner.id, 1)])
    mid = msg["id"]
    h = intruder.headers
    calls = [
        client.get(f"/api/messages/{mid}", headers=h),
        client.put(f"/api/messages/{mid}", json={"content": "mine now"}, headers=h),
        client.delete(f"/api/messages/{mid}", headers=h),
        client.post(f"/api/messages/{mid}/schedule", json={"scheduled_for": later(hours=1)}, headers=h),
        client.post(f"/api/messages/{mid}/pause", headers=h),
        client.post(f"/api/messages/{mid}/resume", headers=h),
        client.post(f"/api/messages/{mid}/cancel", headers=h),
        client.post(f"/api/messages/{mid}/duplicate", headers=h),
        client.get(f"/api/messages/{mid}/preview", headers=h),
        client.get(f"/api/messages/{mid}/stats", headers=h),
    ]
    for resp in [await c for c in calls]:
        assert_error(resp, 404, "message_not_found")
    unchanged = await client.get(f"/api/messages/{mid}", headers=owner.headers)
    assert unchanged.json() == msg
    listed = await client.get("/api/messages", headers=h)
    assert listed.json()["total"] == 0 and listed.json()["items"] == []


async def test_etag_answers_304_until_the_message_changes(client: httpx.AsyncClient, make_user: Any) -> None:
    user = await make_user()
    msg = await create(client, user)
    first = await client.get(f"/api/messages/{msg['id']}", headers=user.headers)
    etag = first.headers["etag"]
    again = await client.get(f"/api/messages/{msg['id']}", headers={**user.headers, "If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""
    await client.put(f"/api/messages/{msg['id']}", json={"content": "cambió"}, headers=user.headers)
    changed = await client.get(f"/api/messages/{msg['id']}", headers={**user.headers, "If-None-Match": etag})
    assert changed.status_code == 200 and changed.json()["content"] == "cambió"
    assert changed.headers["etag"] != etag


async def test_cache_headers_as_the_guide_prescribes(client: httpx.AsyncClient, make_user: Any) -> None:
    """Reads revalidate, writes are never stored, a route's own Cache-Control wins, and a 304
    carries its ETag and no body headers."""
    user = await make_user()
    created = await client.post("/api/messages", json={"content": "Hola"}, headers=user.headers)
    assert created.status_code == 201 and created.headers["cache-control"] == "no-store"
    assert "etag" not in created.headers  # only a GET's 200 gets one
    read = await client.get(f"/api/messages/{created.json()['id']}", headers=user.headers)
    assert read.headers["cache-control"] == "no-cache, must-revalidate"
    assert re.fullmatch(r'W/"[0-9a-f]{24}"', read.headers["etag"])
    assert read.headers.get_list("etag") == [read.headers["etag"]] and read.headers.get_list("cache-control") == [
        "no-cache, must-revalidate"
    ]
    same = await client.get(
        f"/api/messages/{created.json()['id']}",
        headers={**user.headers, "If-None-Match": f'"x", {read.headers["etag"]}'},
    )
    assert same.status_code == 304 and same.headers["etag"] == read.headers["etag"]
    assert "content-type" not in same.headers and same.headers.get("content-length", "0") == "0"
    assert same.headers["cache-control"] == "no-cache, must-revalidate"
    me = await client.get("/api/auth/me", headers=user.headers)
    assert me.headers.get_list("cache-control") == ["private, max-age=300"]
    missing = await client.get(f"/api/messages/{uuid.uuid4()}", headers=user.headers)
    assert missing.status_code == 404 and "etag" not in missing.headers


# -----------------------------------------------------------------------------------------------
# The list
# -----------------------------------------------------------------------------------------------


async def test_list_paginates_filters_and_sorts(client: httpx.AsyncClient, make_user: Any, admin: Any) -> None:
    user = await make_user()
    stranger = await make_user()
    await create(client, stranger, content="ajeno")
    g1 = await add_group(admin, user.id, 2)
    g2 = await add_group(admin, user.id, 1)
    made = []
    for i in range(7):
        made.append(
            await create(
                client, user, content=f"Aviso {i} {'Pago' if i % 2 else 'reunión'}", group_ids=[g1 if i < 4 else g2]
            )
        )
    await admin.execute(
        "update messages set status = 'scheduled', scheduled_for = now() + make_interval(days => 10 - n)"
        " from (select unnest($1::uuid[]) as id, generate_series(1, 3) as n) s where messages.id = s.id",
        [m["id"] for m in made[:3]],
    )
    await admin.execute("update messages set status = 'cancelled' where id = $1", made[3]["id"])
    get = client.get
    h = user.headers
    page1 = (await get("/api/messages", params={"page_size": 3}, headers=h)).json()
    assert page1["total"] == 7 and page1["page"] == 1 and page1["page_size"] == 3
    assert [m["id"] for m in page1["items"]] == [m["id"] for m in reversed(made)][:3]  # newest first
    page3 = (await get("/api/messages", params={"page_size": 3, "page": 3}, headers=h)).json()
    assert [m["id"] for m in page3["items"]] == [made[0]["id"]] and page3["total"] == 7
    beyond = (await get("/api/messages", params={"page": 9}, headers=h)).json()
    assert beyond["items"] == [] and beyond["total"] == 7

    by_status = (await get("/api/messages", params={"status": "scheduled"}, headers=h)).json()
    assert by_status["total"] == 3 and {m["status"] for m in by_status["items"]} == {"scheduled"}
    repeated = (await get("/api/messages", params=[("status", "scheduled"), ("status", "cancelled")], headers=h)).json()
    comma = (await get("/api/messages", params={"status": "scheduled,cancelled"}, headers=h)).json()
    assert repeated["total"] == comma["total"] == 4 and repeated == comma
    assert_error(await get("/api/messages", params={"status": "bogus"}, headers=h), 422, "validation_error")

    text = (await get("/api/messages", params={"q": "PAGO"}, headers=h)).json()
    assert text["total"] == 3 and all("Pago" in m["content"] for m in text["items"])
    wild = (await get("/api/messages", params={"q": "%"}, headers=h)).json()
    assert wild["total"] == 0  # % is text, not a wildcard

    grouped = (await get("/api/messages", params={"group_id": g2}, headers=h)).json()
    assert grouped["total"] == 3 and all(m["groups"][0]["id"] == g2 for m in grouped["items"])

    soonest = (await get("/api/messages", params={"sort": "scheduled_for", "status": "scheduled"}, headers=h)).json()
    assert [m["id"] for m in soonest["items"]] == [made[2]["id"], made[1]["id"], made[0]["id"]]
    window = (
        await get("/api/messages", params={"from": later(days=7, hours=12), "to": later(days=8, hours=12)}, headers=h)
    ).json()
    assert [m["id"] for m in window["items"]] == [made[1]["id"]] and window["total"] == 1
    oldest = (await get("/api/messages", params={"sort": "created_at", "page_size": 2}, headers=h)).json()
    assert [m["id"] for m in oldest["items"]] == [made[0]["id"], made[1]["id"]]
    assert_error(await get("/api/messages", params={"sort": "content"}, headers=h), 422, "validation_error")
    assert_error(await get("/api/messages", params={"page_size": 101}, headers=h), 422, "validation_error")


async def test_list_sort_is_stable_on_equal_times(client: httpx.AsyncClient, make_user: Any, admin: Any) -> None:
    user = await make_user()
    ids = [(await create(client, user))["id"] for _ in range(5)]
    await admin.execute("update messages set created_at = '2026-01-01T00:00:00Z' where id = any($1::uuid[])", ids)
    pages = []
    for page in (1, 2, 3):
        resp = await client.get("/api/messages", params={"page_size": 2, "page": page}, headers=user.headers)
        pages += [m["id"] for m in resp.json()["items"]]
    assert pages == sorted(ids, reverse=True)


async def test_list_scope_all_is_for_admins_only(client: httpx.AsyncClient, make_user: Any, admin: Any) -> None:
    user = await make_user()
    boss = await make_user(admin=True)
    await create(client, user)
    await create(client, boss)
    assert_error(await client.get("/api/messages", params={"scope": "all"}, headers=user.headers), 403, "forbidden")
    mine = (await client.get("/api/messages", headers=boss.headers)).json()
    assert mine["total"] == 1
    everyone = (await client.get("/api/messages", params={"scope": "all"}, headers=boss.headers)).json()
    assert everyone["total"] == await admin.fetchval("select count(*) from messages")
    assert (
        await admin.fetchval(
            "select count(*) from audit_log where action = 'message.read_all' and actor_id = $1", boss.id
        )
        == 1
    )


async def test_totals_and_audience_follow_changes(client: httpx.AsyncClient, make_user: Any, admin: Any) -> None:
    user = await make_user()
    group = await add_group(admin, user.id, 3)
    msg = await create(client, user, group_ids=[group])
    assert msg["recipient_count"] == 3
    contact = await admin.fetchval("select contact_id from group_contacts where group_id = $1 limit 1", group)
    await admin.execute("update contacts set is_active = false where id = $1", contact)
    await add_group(admin, user.id, 0, also=[])  # unrelated group: no effect
    await admin.execute("insert into contacts (created_by, name, phone) values ($1, 'Nueva', '+15559990001')", user.id)
    await admin.execute(
        "insert into group_contacts (group_id, contact_id, created_by)"
        " select $1, id, created_by from contacts where phone = '+15559990001' and created_by = $2",
        group,
        user.id,
    )
    now = (await client.get(f"/api/messages/{msg['id']}", headers=user.headers)).json()
    assert now["recipient_count"] == 3  # one deactivated, one added
    await admin.execute("delete from contacts where phone = '+15559990001' and created_by = $1", user.id)
    assert (await client.get(f"/api/messages/{msg['id']}", headers=user.headers)).json()["recipient_count"] == 2
    listed = (await client.get("/api/messages", headers=user.headers)).json()
    assert listed["items"][0]["recipient_count"] == 2 and listed["total"] == 1
    await client.delete(f"/api/messages/{msg['id']}", headers=user.headers)
    assert (await client.get("/api/messages", headers=user.headers)).json()["total"] == 0


# -----------------------------------------------------------------------------------------------
# Transitions
# -----------------------------------------------------------------------------------------------


async def test_pause_resume_cancel_duplicate(client: httpx.AsyncClient, make_user: Any, admin: Any) -> None:
    user = await make_user()
    group = await add_group(admin, user.id, 2)
    msg = await scheduled(client, user, group)
    assert msg["status"] == "scheduled"
    paused = await client.post(f"/api/messages/{msg['id']}/pause", headers=user.headers)
    assert paused.status_code == 200 and paused.json()["status"] == "paused"
    assert_error(await client.post(f"/api/messages/{msg['id']}/pause", headers=user.headers), 409, "invalid_transition")
    resumed = await client.post(f"/api/messages/{msg['id']}/resume", headers=user.headers)
    assert resumed.json()["status"] == "scheduled"
    assert_error(
        await client.post(f"/api/messages/{msg['id']}/resume", headers=user.headers), 409, "invalid_transition"
    )
    copy = await client.post(f"/api/messages/{msg['id']}/duplicate", headers=user.headers)
    assert copy.status_code == 201
    dup = copy.json()
    assert dup["status"] == "draft" and dup["id"] != msg["id"] and dup["content"] == msg["content"]
    assert [g["id"] for g in dup["groups"]] == [group] and dup["recipient_count"] == 2
    cancelled = await client.post(f"/api/messages/{msg['id']}/cancel", headers=user.headers)
    assert cancelled.json()["status"] == "cancelled"
    assert_error(
        await client.post(f"/api/messages/{msg['id']}/cancel", headers=user.headers), 409, "invalid_transition"
    )
    actions = await admin.fetch(
        "select action, entity_id from audit_log where actor_id = $1 and action like 'message.%' order by id", user.id
    )
    # The database audits each change; a duplicate is the creation of its copy.
    assert [(a["action"], a["entity_id"]) for a in actions] == [
        ("message.create", msg["id"]),
        ("message.schedule", msg["id"]),
        ("message.pause", msg["id"]),
        ("message.resume", msg["id"]),
        ("message.create", dup["id"]),
        ("message.cancel", msg["id"]),
    ]


async def test_schedule_refusals(client: httpx.AsyncClient, make_user: Any, admin: Any) -> None:
    user = await make_user()
    empty = await add_group(admin, user.id, 1, inactive=1)
    group = await add_group(admin, user.id, 1)
    no_time = await create(client, user, group_ids=[group])
    url = f"/api/messages/{no_time['id']}/schedule"
    assert_error(await client.post(url, headers=user.headers), 422, "scheduled_for_required")
    assert_error(
        await client.post(url, json={"scheduled_for": later(hours=-1)}, headers=user.headers), 422, "scheduled_in_past"
    )
    nobody = await create(client, user, group_ids=[empty], scheduled_for=later(hours=1))
    assert_error(
        await client.post(f"/api/messages/{nobody['id']}/schedule", headers=user.headers), 422, "no_recipients"
    )
    ok = await client.post(url, json={"scheduled_for": later(hours=3)}, headers=user.headers)
    assert ok.status_code == 200 and ok.json()["status"] == "scheduled"
    assert_error(await client.post(url, headers=user.headers), 409, "invalid_transition")


async def test_spam_guard_refuses_scheduling_naming_the_rules(
    client: httpx.AsyncClient, make_user: Any, admin: Any, res: Resources
) -> None:
    user = await make_user()
    group = await add_group(admin, user.id, 2)
    loud = await create(
        client, user, content="COMPRA YA ESTA OFERTA INCREIBLE HOY MISMO https://a.example", group_ids=[group]
    )
    resp = await client.post(
        f"/api/messages/{loud['id']}/schedule", json={"scheduled_for": later(hours=1)}, headers=user.headers
    )
    body = assert_error(resp, 422, "spam_suspected")
    assert [e["field"] for e in body["errors"]] == ["shouting"] and "shouting" in body["detail"]
    assert (await client.get(f"/api/messages/{loud['id']}", headers=user.headers)).json()["status"] == "draft"

    first = await scheduled(client, user, group, content="Misma noticia para todos")
    again = await create(client, user, content="Misma noticia para todos", group_ids=[group])
    resp = await client.post(
        f"/api/messages/{again['id']}/schedule", json={"scheduled_for": first["scheduled_for"]}, headers=user.headers
    )
    assert [e["field"] for e in assert_error(resp, 422, "spam_suspected")["errors"]] == ["duplicate_recent"]
    # The same text two days later is fine.
    resp = await client.post(
        f"/api/messages/{again['id']}/schedule", json={"scheduled_for": later(days=2)}, headers=user.headers
    )
    assert resp.status_code == 200, resp.text

    big = await add_group(admin, user.id, res.settings.send_daily_cap + 1)
    mass = await create(client, user, content="Aviso general", group_ids=[big])
    resp = await client.post(
        f"/api/messages/{mass['id']}/schedule", json={"scheduled_for": later(hours=1)}, headers=user.headers
    )
    assert [e["field"] for e in assert_error(resp, 422, "spam_suspected")["errors"]] == ["daily_cap"]


async def test_eleventh_schedule_in_a_minute_is_rate_limited(
    client: httpx.AsyncClient, make_user: Any, admin: Any
) -> None:
    user = await make_user()
    group = await add_group(admin, user.id, 1)
    drafts = [await create(client, user, content=f"Recordatorio número {i}", group_ids=[group]) for i in range(11)]
    first = await client.post(
        f"/api/messages/{drafts[0]['id']}/schedule", json={"scheduled_for": later(hours=1)}, headers=user.headers
    )
    assert first.status_code == 200
    assert first.headers["X-RateLimit-Limit"] == "10" and first.headers["X-RateLimit-Remaining"] == "9"
    assert int(first.headers["X-RateLimit-Reset"]) > 0
    # A refused attempt leaves nothing behind, its count included (the limit lives in its transaction).
    again = await client.post(f"/api/messages/{drafts[0]['id']}/schedule", headers=user.headers)
    assert_error(again, 409, "invalid_transition")
    for i, msg in enumerate(drafts[1:10]):
        resp = await client.post(
            f"/api/messages/{msg['id']}/schedule", json={"scheduled_for": later(hours=1)}, headers=user.headers
        )
        assert resp.status_code == 200, (i, resp.text)
        assert resp.headers["X-RateLimit-Remaining"] == str(8 - i)
    limited = await client.post(
        f"/api/messages/{drafts[10]['id']}/schedule", json={"scheduled_for": later(hours=1)}, headers=user.headers
    )
    assert_error(limited, 429, "rate_limited")
    assert 1 <= int(limited.headers["Retry-After"]) <= 60
    assert limited.headers["X-RateLimit-Remaining"] == "0"
    assert (await client.get(f"/api/messages/{drafts[10]['id']}", headers=user.headers)).json()["status"] == "draft"
    msg = drafts[0]
    # Another user is not affected.
    other = await make_user()
    resp = await client.post(f"/api/messages/{msg['id']}/schedule", headers=other.headers)
    assert_error(resp, 404, "message_not_found")


async def test_disconnected_whatsapp_schedules_with_a_warning_and_notification(
    client: httpx.AsyncClient, make_user: Any, admin: Any
) -> None:
    # The test settings point the bridge at a port where nothing listens.
    user = await make_user()
    group = await add_group(admin, user.id, 1)
    msg = await create(client, user, group_ids=[group])
    resp = await client.post(
        f"/api/messages/{msg['id']}/schedule", json={"scheduled_for": later(hours=1)}, headers=user.headers
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["status"] == "scheduled" and body["warnings"] == ["whatsapp_disconnected"]
    note = await admin.fetchrow("select * from notifications where user_id = $1", user.id)
    assert note["type"] == "warning" and note["related_entity_type"] == "message"
    assert str(note["related_entity_id"]) == msg["id"] and note["title"] and note["message"]


@pytest.fixture
async def bridge(res: Resources) -> AsyncIterator[BridgeClient]:
    """The real Node bridge (simulator driver), swapped into the app for one test."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="whatsched-bridge-") as folder:
        env = {
            **os.environ,
            "BRIDGE_PORT": str(port),
            "BRIDGE_TOKEN": res.settings.bridge_token,
            "WHATSAPP_DRIVER": "simulator",
            "BRIDGE_EVENTS_URL": "",
            "BRIDGE_DATA_DIR": folder,
            "WHATSAPP_SESSION_PATH": folder,
        }
        proc = await asyncio.create_subprocess_exec(
            "node",
            "src/main.js",
            cwd=BRIDGE_DIR,
            env=env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        client = BridgeClient(f"http://127.0.0.1:{port}", res.settings.bridge_token, timeout_s=5)
        original = res.bridge
        try:
            for _ in range(100):
                try:
                    if (await client.status()).get("status") == "connected":
                        break
                except Exception:  # not listening yet
                    pass
                await asyncio.sleep(0.1)
            else:
                raise RuntimeError("the bridge did not connect within 10 s")
            res.bridge = client
            yield client
        finally:
            res.bridge = original
            await client.close()
            proc.terminate()
            await asyncio.wait_for(proc.wait(), 10)


async def test_connected_whatsapp_schedules_without_warning(
    client: httpx.AsyncClient, make_user: Any, admin: Any, bridge: BridgeClient
) -> None:
    user = await make_user()
    group = await add_group(admin, user.id, 1)
    msg = await create(client, user, group_ids=[group])
    resp = await client.post(
        f"/api/messages/{msg['id']}/schedule", json={"scheduled_for": later(hours=1)}, headers=user.headers
    )
    assert resp.status_code == 200 and resp.json()["warnings"] == []
    assert await admin.fetchval("select count(*) from notifications where user_id = $1", user.id) == 0
    # WhatsApp drops: the next schedule warns.
    async with httpx.AsyncClient(
        base_url=bridge.base_url, headers={"Authorization": f"Bearer {bridge_token(bridge)}"}
    ) as raw:
        forced = await raw.post("/simulator/state", json={"status": "disconnected"})
        assert forced.status_code == 200, forced.text
    msg2 = await create(client, user, content="Otro aviso", group_ids=[group])
    resp = await client.post(
        f"/api/messages/{msg2['id']}/schedule", json={"scheduled_for": later(hours=1)}, headers=user.headers
    )
    assert resp.json()["warnings"] == ["whatsapp_disconnected"]
    assert await admin.fetchval("select count(*) from notifications where user_id = $1", user.id) == 1


def bridge_token(client: BridgeClient) -> str:
    return client._headers["Authorization"].removeprefix("Bearer ")


# -----------------------------------------------------------------------------------------------
# Preview, stats, dashboard
# -----------------------------------------------------------------------------------------------


async def test_preview_renders_for_each_recipient_and_explains_exclusions(
    client: httpx.AsyncClient, make_user: Any, admin: Any
) -> None:
    user = await make_user()
    g1 = await add_group(admin, user.id, 12, inactive=2, opted_out=1, names="Ana")
    shared = await admin.fetch(
        "select contact_id from group_contacts gc join contacts c on c.id = gc.contact_id"
        " where gc.group_id = $1 and c.is_active and c.opted_out_at is null order by c.phone limit 3",
        g1,
    )
    g2 = await add_group(admin, user.id, 2, names="Beto", also=[r["contact_id"] for r in shared])
    msg = await create(client, user, content="Hola {{ name }}, te esperamos.", group_ids=[g1, g2])
    resp = await client.get(f"/api/messages/{msg['id']}/preview", headers=user.headers)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["recipient_count"] == 9 + 2 == msg["recipient_count"]
    assert body["excluded"] == {"inactive": 2, "opted_out": 1, "duplicates": 3}
    assert len(body["recipients"]) == 10
    first = body["recipients"][0]
    assert set(first) == {"contact_id", "name", "phone", "content"}
    assert first["content"] == f"Hola {first['name']}, te esperamos."
    assert len({r["phone"] for r in body["recipients"]}) == 10
    assert body["spam"] == {"verdict": "ok", "rules": []}
    assert body["content"] == "Hola {{ name }}, te esperamos."
    loud = await create(client, user, content="ATENCION TODOS LOS VECINOS DEL BARRIO", group_ids=[g2])
    verdict = (await client.get(f"/api/messages/{loud['id']}/preview", headers=user.headers)).json()["spam"]
    assert verdict == {"verdict": "suspected", "rules": ["shouting"]}


async def fan_out(admin: asyncpg.Connection, message_id: str) -> None:
    """Claim the message as the dispatcher does (service_role), first in line so no other is taken."""
    await admin.execute("update messages set scheduled_for = '2000-01-01' where id = $1", message_id)
    async with admin.transaction():
        await admin.execute("set local role service_role")
        claimed = await admin.fetch("select c::text as id from private.claim_messages(1, 60) c")
    assert [r["id"] for r in claimed] == [message_id]


async def test_stats_count_deliveries_by_state_with_a_timeline(
    client: httpx.AsyncClient, make_user: Any, admin: Any
) -> None:
    user = await make_user()
    group = await add_group(admin, user.id, 6)
    msg = await scheduled(client, user, group)
    empty = (await client.get(f"/api/messages/{msg['id']}/stats", headers=user.headers)).json()
    assert empty["total"] == 0 and empty["success_rate"] is None and empty["timeline"] == []
    await fan_out(admin, msg["id"])
    ids = [
        r["id"] for r in await admin.fetch("select id from deliveries where message_id = $1 order by phone", msg["id"])
    ]
    assert len(ids) == 6
    t0 = datetime(2026, 3, 1, 12, 0, 10, tzinfo=UTC)
    await admin.execute("update deliveries set state = 'sent', sent_at = $2 where id = any($1)", ids[:2], t0)
    await admin.execute(
        "update deliveries set state = 'delivered', sent_at = $2, delivered_at = $2 where id = $1",
        ids[2],
        t0 + timedelta(minutes=1),
    )
    await admin.execute(
        "update deliveries set state = 'read', sent_at = $2, read_at = $2 where id = $1",
        ids[3],
        t0 + timedelta(minutes=1),
    )
    await admin.execute(
        "update deliveries set state = 'failed', failed_at = $2 where id = $1",
        ids[4],
        t0 + timedelta(minutes=1, seconds=5),
    )
    resp = await client.get(f"/api/messages/{msg['id']}/stats", headers=user.headers)
    assert resp.status_code == 200, resp.text
    stats = resp.json()
    assert stats["total"] == 6
    assert stats["states"] == {
        "pending": 1, "sending": 0, "sent": 2, "delivered": 1, "read": 1, "failed": 1, "cancelled": 0, "skipped": 0,
    }  # fmt: skip
    assert stats["success_rate"] == 0.8
    assert stats["first_sent_at"].startswith("2026-03-01T12:00:10") and stats["first_sent_at"].endswith("Z")
    assert stats["last_sent_at"].startswith("2026-03-01T12:01:10")
    assert [(p["minute"][:16], p["sent"], p["failed"]) for p in stats["timeline"]] == [
        ("2026-03-01T12:00", 2, 0),
        ("2026-03-01T12:01", 2, 1),
    ]
    # The message now reports its deliveries, not the live audience.
    after = (await client.get(f"/api/messages/{msg['id']}", headers=user.headers)).json()
    assert (after["status"], after["recipient_count"], after["delivered_count"], after["failed_count"]) == (
        "sending",
        6,
        4,
        1,
    )
    preview = (await client.get(f"/api/messages/{msg['id']}/preview", headers=user.headers)).json()
    assert preview["recipient_count"] == 6 and preview["excluded"] == {"inactive": 0, "opted_out": 0, "duplicates": 0}


async def test_dashboard_counts_and_30_day_series(client: httpx.AsyncClient, make_user: Any, admin: Any) -> None:
    user = await make_user()
    boss = await make_user(admin=True)
    group = await add_group(admin, user.id, 3)
    await create(client, user, group_ids=[group])
    msg = await scheduled(client, user, group)
    await fan_out(admin, msg["id"])
    await admin.execute(
        "update deliveries set state = 'sent', sent_at = now() where id in"
        " (select id from deliveries where message_id = $1 order by phone limit 2)",
        msg["id"],
    )
    await admin.execute(
        "update deliveries set state = 'failed', failed_at = now() where message_id = $1 and state = 'pending'",
        msg["id"],
    )
    resp = await client.get("/api/messages/dashboard", headers=user.headers)
    assert resp.status_code == 200, resp.text
    dash = resp.json()
    assert dash["scope"] == "mine" and dash["timezone"] == "UTC"
    assert dash["messages"]["total"] == 2 and dash["messages"]["draft"] == 1 and dash["messages"]["sending"] == 1
    assert dash["contacts"] == 3 and dash["groups"] == 1
    assert len(dash["series"]) == 30
    assert dash["series"][-1] == {"date": datetime.now(UTC).date().isoformat(), "sent": 2, "failed": 1}
    assert sum(p["sent"] for p in dash["series"][:-1]) == 0
    assert_error(
        await client.get("/api/messages/dashboard", params={"scope": "all"}, headers=user.headers), 403, "forbidden"
    )
    everyone = (await client.get("/api/messages/dashboard", params={"scope": "all"}, headers=boss.headers)).json()
    assert everyone["scope"] == "all" and everyone["messages"]["total"] >= 2
    assert (
        await admin.fetchval(
            "select count(*) from audit_log where action = 'analytics.read_all' and actor_id = $1", boss.id
        )
        == 1
    )
    own = (await client.get("/api/messages/dashboard", headers=boss.headers)).json()
    assert own["messages"]["total"] == 0


async def test_openapi_documents_every_route_and_its_errors(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    paths = spec["paths"]
    expected = {
        ("/api/messages", "get"): {"200", "401", "403", "422"},
        ("/api/messages", "post"): {"201", "400", "401", "404", "422"},
        ("/api/messages/dashboard", "get"): {"200", "401", "403"},
        ("/api/messages/{message_id}", "get"): {"200", "304", "401", "404"},
        ("/api/messages/{message_id}", "put"): {"200", "401", "404", "409", "422"},
        ("/api/messages/{message_id}", "delete"): {"204", "401", "404", "409"},
        ("/api/messages/{message_id}/schedule", "post"): {"200", "401", "404", "409", "422", "429"},
        ("/api/messages/{message_id}/preview", "get"): {"200", "404"},
        ("/api/messages/{message_id}/stats", "get"): {"200", "404"},
    }
    for (path, method), statuses in expected.items():
        assert statuses <= set(paths[path][method]["responses"]), (path, method)
    for verb in ("pause", "resume", "cancel", "duplicate"):
        assert {"404", "409"} <= set(paths[f"/api/messages/{{message_id}}/{verb}"]["post"]["responses"])
    message = spec["components"]["schemas"]["Message"]["properties"]
    assert MESSAGE_KEYS <= set(message)
    assert json.dumps(spec)  # serialisable


async def test_openapi_declares_the_bearer_scheme_on_every_route_that_needs_a_token(
    client: httpx.AsyncClient, make_user: Any
) -> None:
    spec = (await client.get("/openapi.json")).json()
    assert spec["components"]["securitySchemes"]["HTTPBearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "An access token from POST /api/auth/login (or Supabase Auth).",
    }
    declared = {
        (path, method)
        for path, operations in spec["paths"].items()
        for method, operation in operations.items()
        if {"HTTPBearer": []} in operation.get("security", [])
    }
    assert ("/api/messages", "get") in declared and ("/api/contacts/import", "post") in declared
    assert ("/api/health", "get") not in declared and ("/api/auth/login", "post") not in declared
    # What it declares is what it does: each such route refuses a request without a token.
    for path, method in sorted(declared):
        url = path.replace("{", "").replace("}", "")  # any id: the token is checked first
        url = re.sub(r"(message|group|contact|notification)_id", "00000000-0000-0000-0000-000000000000", url)
        answer = await client.request(method.upper(), url)
        assert answer.status_code == 401, (path, method, answer.text)

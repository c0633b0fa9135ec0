"""The groups API against the real database: CRUD, names, the creation rate limit, members (add
many, list, remove), contact_count, cross-user isolation, auth, CORS and the OpenAPI document."""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

import asyncpg
import httpx
import pytest

from whatsched.api.app import create_app
from whatsched.api.deps import Resources
from whatsched.config import Settings
from whatsched.db.pool import user_tx

GROUP_KEYS = {"id", "name", "description", "contact_count", "created_at", "updated_at", "created_by"}
ISO_Z = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")
_phone_seq = iter(range(10_000_000, 99_999_999, 13))


def assert_error(resp: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body: dict[str, Any] = resp.json()
    assert body["code"] == code, body
    assert set(body) == {"detail", "code", "errors"} and body["detail"]
    return body


async def create_group(client: httpx.AsyncClient, user: Any, name: str, **body: Any) -> dict[str, Any]:
    resp = await client.post("/api/groups", json={"name": name, **body}, headers=user.headers)
    assert resp.status_code == 201, resp.text
    data: dict[str, Any] = resp.json()
    return data


async def create_contact(client: httpx.AsyncClient, user: Any, name: str, **body: Any) -> dict[str, Any]:
    body.setdefault("phone", f"+569{next(_phone_seq)}")
    resp = await client.post("/api/contacts", json={"name": name, **body}, headers=user.headers)
    assert resp.status_code == 201, resp.text
    data: dict[str, Any] = resp.json()
    return data


async def seed_groups(admin: asyncpg.Connection, owner: str, names: list[str], counts: list[int]) -> list[str]:
    """Groups inserted as the superuser (the API allows 5 creations a minute)."""
    rows = await admin.fetch(
        """insert into groups (created_by, name, contact_count)
           select $1, n, c from unnest($2::text[], $3::int[]) as t(n, c) returning id::text""",
        owner,
        names,
        counts,
    )
    return [r["id"] for r in rows]


async def has_icu_name_order(admin: asyncpg.Connection) -> bool:
    """Whether names sort in ICU's root collation (Postgres built with ICU) or the database's own."""
    provider = await admin.fetchval("select collprovider from pg_collation where collname = 'name_order'")
    return bool(provider == b"i" or provider == "i")


async def group_count(client: httpx.AsyncClient, user: Any, group_id: str) -> int:
    resp = await client.get(f"/api/groups/{group_id}", headers=user.headers)
    assert resp.status_code == 200, resp.text
    count: int = resp.json()["contact_count"]
    return count


# -----------------------------------------------------------------------------------------------
# Create, read, update, delete
# -----------------------------------------------------------------------------------------------


async def test_create_returns_the_guides_group_shape(client: httpx.AsyncClient, make_user: Any) -> None:
    user = await make_user()
    resp = await client.post(
        "/api/groups", json={"name": "  Clientes\tVIP \x07", "description": " Los de siempre\n"}, headers=user.headers
    )
    assert resp.status_code == 201, resp.text
    body = resp.json()
    assert set(body) == GROUP_KEYS
    assert body["name"] == "Clientes VIP" and body["description"] == "Los de siempre"
    assert body["contact_count"] == 0 and body["created_by"] == user.id
    assert isinstance(body["id"], str) and uuid.UUID(body["id"])
    assert ISO_Z.match(body["created_at"]) and ISO_Z.match(body["updated_at"])
    assert resp.headers["X-RateLimit-Limit"] == "5" and resp.headers["X-RateLimit-Remaining"] == "4"
    got = await client.get(f"/api/groups/{body['id']}", headers=user.headers)
    assert got.status_code == 200 and got.json() == body
    assert got.headers["ETag"]
    # Without a description, the guide's string is empty rather than missing.
    plain = await create_group(client, user, "Proveedores")
    assert plain["description"] == ""


async def test_group_names_are_checked_and_unique_per_user_in_any_case(
    client: httpx.AsyncClient, make_user: Any, admin: Any
) -> None:
    user = await make_user()
    for bad in ("", "   ", "\x00\x01", "x" * 101):
        resp = await client.post("/api/groups", json={"name": bad}, headers=user.headers)
        body = assert_error(resp, 422, "validation_error")
        assert body["errors"][0]["field"] == "name", body
    resp = await client.post("/api/groups", json={"name": "ok", "description": "d" * 1001}, headers=user.headers)
    assert assert_error(resp, 422, "validation_error")["errors"][0]["field"] == "description"
    await seed_groups(admin, user.id, ["Ventas"], [0])
    dup = await client.post("/api/groups", json={"name": " VENTAS "}, headers=user.headers)
    body = assert_error(dup, 409, "duplicate_group_name")
    assert body["errors"] == [{"field": "name", "message": body["detail"]}]
    # Another user may use the same name.
    other = await make_user()
    assert (await create_group(client, other, "ventas"))["name"] == "ventas"
    # Renaming onto a taken name is refused too, and changes nothing.
    mine = await create_group(client, user, "Compras")
    resp = await client.put(f"/api/groups/{mine['id']}", json={"name": "ventas"}, headers=user.headers)
    assert_error(resp, 409, "duplicate_group_name")
    assert (await client.get(f"/api/groups/{mine['id']}", headers=user.headers)).json()["name"] == "Compras"
    # Renaming to a different case of its own name is fine.
    resp = await client.put(f"/api/groups/{mine['id']}", json={"name": "COMPRAS"}, headers=user.headers)
    assert resp.status_code == 200 and resp.json()["name"] == "COMPRAS"


async def test_put_changes_only_the_given_fields(client: httpx.AsyncClient, make_user: Any) -> None:
    user = await make_user()
    group = await create_group(client, user, "Equipo", description="Interno")
    resp = await client.put(f"/api/groups/{group['id']}", json={"description": "Todo el equipo"}, headers=user.headers)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["name"] == "Equipo" and body["description"] == "Todo el equipo"
    assert body["updated_at"] > group["updated_at"] and body["created_at"] == group["created_at"]
    resp = await client.put(f"/api/groups/{group['id']}", json={"name": " Equipo 2 "}, headers=user.headers)
    assert resp.json()["name"] == "Equipo 2" and resp.json()["description"] == "Todo el equipo"
    resp = await client.put(f"/api/groups/{group['id']}", json={"description": None}, headers=user.headers)
    assert resp.json()["description"] == ""
    assert_error(
        await client.put(f"/api/groups/{group['id']}", json={"name": None}, headers=user.headers),
        422,
        "validation_error",
    )


async def test_delete_answers_204_is_audited_and_keeps_the_contacts(
    client: httpx.AsyncClient, make_user: Any, admin: Any
) -> None:
    user = await make_user()
    group = await create_group(client, user, "Temporal")
    ana = await create_contact(client, user, "Ana", group_ids=[group["id"]])
    resp = await client.delete(f"/api/groups/{group['id']}", headers=user.headers)
    assert resp.status_code == 204 and resp.content == b""
    assert_error(await client.get(f"/api/groups/{group['id']}", headers=user.headers), 404, "group_not_found")
    assert_error(await client.delete(f"/api/groups/{group['id']}", headers=user.headers), 404, "group_not_found")
    contact = await client.get(f"/api/contacts/{ana['id']}", headers=user.headers)
    assert contact.status_code == 200 and contact.json()["groups"] == []
    row = await admin.fetchrow(
        "select actor_id::text, details from audit_log where action = 'group.delete' and entity_id = $1", group["id"]
    )
    assert row is not None and row["actor_id"] == user.id
    details = json.loads(row["details"])
    assert details["name"] == "Temporal" and details["contact_count"] == 1


# -----------------------------------------------------------------------------------------------
# The list
# -----------------------------------------------------------------------------------------------


async def test_list_paginates_filters_and_sorts_stably(client: httpx.AsyncClient, make_user: Any, admin: Any) -> None:
    user = await make_user()
    names = ["beta", "Alfa", "gamma", "Delta", "épsilon", "Zeta", "eta"]
    counts = [5, 2, 5, 0, 5, 1, 2]
    ids = dict(zip(names, await seed_groups(admin, user.id, names, counts), strict=True))
    other = await make_user()
    await seed_groups(admin, other.id, ["Alfa del otro"], [9])

    async def page(**params: Any) -> dict[str, Any]:
        resp = await client.get("/api/groups", params=params, headers=user.headers)
        assert resp.status_code == 200, resp.text
        data: dict[str, Any] = resp.json()
        return data

    first = await page(page_size=3)
    assert (first["total"], first["page"], first["page_size"]) == (7, 1, 3)
    assert set(first["items"][0]) == GROUP_KEYS
    # By name, case-insensitively, by default; accents sort with their letter where Postgres has ICU.
    everything = [g["name"] for p in (1, 2, 3) for g in (await page(page=p, page_size=3))["items"]]
    if await has_icu_name_order(admin):
        assert everything == ["Alfa", "beta", "Delta", "épsilon", "eta", "gamma", "Zeta"]
    else:
        assert everything == ["Alfa", "beta", "Delta", "eta", "gamma", "Zeta", "épsilon"]
    assert [g["name"] for g in (await page(sort="-name", page_size=7))["items"]] == everything[::-1]
    # Ties on contact_count keep one order across pages, and pages never overlap.
    by_count = [
        g["id"] for p in (1, 2, 3, 4) for g in (await page(sort="-contact_count", page=p, page_size=2))["items"]
    ]
    assert len(by_count) == len(set(by_count)) == 7
    top = sorted((ids["beta"], ids["gamma"], ids["épsilon"]), reverse=True)
    assert by_count[:3] == top and by_count[-1] == ids["Delta"]
    assert by_count == [g["id"] for g in (await page(sort="-contact_count", page_size=7))["items"]]
    ascending = [g["contact_count"] for g in (await page(sort="contact_count", page_size=7))["items"]]
    assert ascending == sorted(counts)
    newest = await page(sort="-created_at", page_size=7)
    oldest = await page(sort="created_at", page_size=7)
    assert [g["id"] for g in newest["items"]] == [g["id"] for g in reversed(oldest["items"])]
    # q matches part of the name in any case; LIKE wildcards are plain text.
    found = await page(q="ETA")
    assert {g["name"] for g in found["items"]} == {"beta", "Zeta", "eta"} and found["total"] == 3
    assert (await page(q="%"))["total"] == 0
    assert (await page(page=9))["items"] == [] and (await page(page=9))["total"] == 7
    too_big = await client.get("/api/groups", params={"page_size": 101}, headers=user.headers)
    assert assert_error(too_big, 422, "validation_error")["errors"][0]["field"] == "page_size"
    bad_sort = await client.get("/api/groups", params={"sort": "description"}, headers=user.headers)
    assert_error(bad_sort, 422, "validation_error")


async def test_admin_lists_everyones_groups_only_when_asking(
    client: httpx.AsyncClient, make_user: Any, admin: Any
) -> None:
    boss, user = await make_user(admin=True), await make_user()
    (theirs,) = await seed_groups(admin, user.id, ["De otro"], [0])
    own = await client.get("/api/groups", headers=boss.headers)
    assert own.json()["total"] == 0
    everyone = await client.get("/api/groups", params={"scope": "all", "page_size": 100}, headers=boss.headers)
    assert everyone.status_code == 200 and everyone.json()["total"] >= 1
    assert_error(await client.get("/api/groups", params={"scope": "all"}, headers=user.headers), 403, "forbidden")
    # An admin reads any group by id (RLS lets them).
    assert (await client.get(f"/api/groups/{theirs}", headers=boss.headers)).json()["created_by"] == user.id
    audited = await admin.fetchval(
        "select count(*) from audit_log where action = 'group.read_all' and actor_id = $1", boss.id
    )
    assert audited == 1


# -----------------------------------------------------------------------------------------------
# Members
# -----------------------------------------------------------------------------------------------


async def test_members_are_added_in_bulk_listed_and_removed_with_contact_count_following(
    client: httpx.AsyncClient, make_user: Any
) -> None:
    user = await make_user()
    group = await create_group(client, user, "Vecinos")
    people = [await create_contact(client, user, name) for name in ("Carla", "ana", "Bruno", "Diego")]
    ids = [p["id"] for p in people]
    resp = await client.post(
        f"/api/groups/{group['id']}/contacts", json={"contact_ids": [ids[0], ids[1], ids[0]]}, headers=user.headers
    )
    assert resp.status_code == 201, resp.text
    assert resp.json() == {"added": 2, "already_members": 0}
    assert await group_count(client, user, group["id"]) == 2
    resp = await client.post(f"/api/groups/{group['id']}/contacts", json={"contact_ids": ids}, headers=user.headers)
    assert resp.status_code == 201 and resp.json() == {"added": 2, "already_members": 2}
    resp = await client.post(f"/api/groups/{group['id']}/contacts", json={"contact_ids": ids[:2]}, headers=user.headers)
    assert resp.status_code == 200 and resp.json() == {"added": 0, "already_members": 2}
    assert await group_count(client, user, group["id"]) == 4

    # The members list: contacts in the guide's shape, by name, with the contacts list's filters.
    members = await client.get(f"/api/groups/{group['id']}/contacts", headers=user.headers)
    assert members.status_code == 200, members.text
    body = members.json()
    assert body["total"] == 4 and [c["name"] for c in body["items"]] == ["ana", "Bruno", "Carla", "Diego"]
    assert all(group["id"] in c["groups"] for c in body["items"])
    await client.put(f"/api/contacts/{ids[3]}", json={"is_active": False}, headers=user.headers)
    active = await client.get(
        f"/api/groups/{group['id']}/contacts", params={"is_active": "true", "sort": "-name"}, headers=user.headers
    )
    assert [c["name"] for c in active.json()["items"]] == ["Carla", "Bruno", "ana"]
    named = await client.get(f"/api/groups/{group['id']}/contacts", params={"q": "AN"}, headers=user.headers)
    assert [c["name"] for c in named.json()["items"]] == ["ana"]
    paged = await client.get(f"/api/groups/{group['id']}/contacts", params={"page_size": 101}, headers=user.headers)
    assert_error(paged, 422, "validation_error")

    # Removing a member; removing it again is a 404.
    resp = await client.delete(f"/api/groups/{group['id']}/contacts/{ids[0]}", headers=user.headers)
    assert resp.status_code == 204 and resp.content == b""
    assert await group_count(client, user, group["id"]) == 3
    again = await client.delete(f"/api/groups/{group['id']}/contacts/{ids[0]}", headers=user.headers)
    assert_error(again, 404, "member_not_found")
    assert (await client.get(f"/api/contacts/{ids[0]}", headers=user.headers)).status_code == 200
    # Deleting a contact takes it out of its groups.
    assert (await client.delete(f"/api/contacts/{ids[1]}", headers=user.headers)).status_code == 204
    assert await group_count(client, user, group["id"]) == 2
    remaining = await client.get(f"/api/groups/{group['id']}/contacts", headers=user.headers)
    assert [c["name"] for c in remaining.json()["items"]] == ["Bruno", "Diego"]


async def test_add_members_accepts_up_to_1000_ids(client: httpx.AsyncClient, make_user: Any, admin: Any) -> None:
    user = await make_user()
    group = await create_group(client, user, "Todos")
    rows = await admin.fetch(
        """insert into contacts (created_by, name, phone)
           select $1, 'Contacto ' || i, '+1555' || (1000000 + i) from generate_series(1, 1000) i returning id::text""",
        user.id,
    )
    ids = [r["id"] for r in rows]
    resp = await client.post(f"/api/groups/{group['id']}/contacts", json={"contact_ids": ids}, headers=user.headers)
    assert resp.status_code == 201 and resp.json() == {"added": 1000, "already_members": 0}
    assert await group_count(client, user, group["id"]) == 1000
    for bad in ([], [*ids, str(uuid.uuid4())], ["not-a-uuid"]):
        resp = await client.post(f"/api/groups/{group['id']}/contacts", json={"contact_ids": bad}, headers=user.headers)
        assert assert_error(resp, 422, "validation_error")["errors"][0]["field"].startswith("contact_ids")


async def test_someone_elses_contact_cannot_be_added_and_is_named_in_the_error(
    client: httpx.AsyncClient, make_user: Any
) -> None:
    user, other = await make_user(), await make_user()
    group = await create_group(client, user, "Mis clientes")
    mine = await create_contact(client, user, "Propio")
    theirs = await create_contact(client, other, "Ajeno")
    unknown = str(uuid.uuid4())
    resp = await client.post(
        f"/api/groups/{group['id']}/contacts",
        json={"contact_ids": [mine["id"], theirs["id"], unknown]},
        headers=user.headers,
    )
    body = assert_error(resp, 404, "related_not_found")
    assert {(e["field"], e["message"]) for e in body["errors"]} == {
        ("contact_ids.1", f"contact {theirs['id']} was not found"),
        ("contact_ids.2", f"contact {unknown} was not found"),
    }
    assert theirs["id"] in body["detail"] and unknown in body["detail"]
    # All or nothing: not even the caller's own contact was added.
    assert await group_count(client, user, group["id"]) == 0
    assert (await client.get(f"/api/contacts/{mine['id']}", headers=user.headers)).json()["groups"] == []


async def test_the_composite_foreign_key_refuses_a_cross_user_link_even_without_the_api(
    res: Resources, make_user: Any, client: httpx.AsyncClient
) -> None:
    """What stands behind the API's check: a user writing group_contacts directly (as supabase-js
    would) cannot link another user's contact to their group."""
    user, other = await make_user(), await make_user()
    group = await create_group(client, user, "Directo")
    theirs = await create_contact(client, other, "Ajeno")
    with pytest.raises(asyncpg.ForeignKeyViolationError):
        async with user_tx(res.pool, user.claims) as conn:
            await conn.execute(
                "insert into public.group_contacts (group_id, contact_id) values ($1::uuid, $2::uuid)",
                group["id"],
                theirs["id"],
            )
    assert await group_count(client, user, group["id"]) == 0


# -----------------------------------------------------------------------------------------------
# Isolation, auth, limits, transport
# -----------------------------------------------------------------------------------------------


async def test_another_users_group_is_not_found_on_every_route(
    client: httpx.AsyncClient, make_user: Any, admin: Any
) -> None:
    owner, intruder = await make_user(), await make_user()
    group = await create_group(client, owner, "Privado")
    member = await create_contact(client, owner, "Miembro", group_ids=[group["id"]])
    own_contact = await create_contact(client, intruder, "Del intruso")
    gid = group["id"]
    attempts = [
        client.get(f"/api/groups/{gid}", headers=intruder.headers),
        client.put(f"/api/groups/{gid}", json={"name": "Tomado"}, headers=intruder.headers),
        client.delete(f"/api/groups/{gid}", headers=intruder.headers),
        client.get(f"/api/groups/{gid}/contacts", headers=intruder.headers),
        client.post(f"/api/groups/{gid}/contacts", json={"contact_ids": [own_contact["id"]]}, headers=intruder.headers),
        client.delete(f"/api/groups/{gid}/contacts/{member['id']}", headers=intruder.headers),
    ]
    for attempt in attempts:
        resp = await attempt
        assert_error(resp, 404, "group_not_found")
    # The intruder's own group cannot reach the owner's contact either.
    own_group = await create_group(client, intruder, "Del intruso")
    resp = await client.delete(f"/api/groups/{own_group['id']}/contacts/{member['id']}", headers=intruder.headers)
    assert_error(resp, 404, "member_not_found")
    # The owner's group is untouched.
    after = (await client.get(f"/api/groups/{gid}", headers=owner.headers)).json()
    assert after["name"] == "Privado" and after["contact_count"] == 1
    listed = (await client.get("/api/groups", headers=intruder.headers)).json()
    assert [g["id"] for g in listed["items"]] == [own_group["id"]] and listed["total"] == 1
    assert await admin.fetchval("select count(*) from group_contacts where group_id = $1", gid) == 1


async def test_sixth_group_creation_within_a_minute_is_rate_limited(
    client: httpx.AsyncClient, make_user: Any, admin: Any
) -> None:
    user = await make_user()
    for i in range(5):
        resp = await client.post("/api/groups", json={"name": f"Grupo {i}"}, headers=user.headers)
        assert resp.status_code == 201, resp.text
        assert resp.headers["X-RateLimit-Remaining"] == str(4 - i)
    limited = await client.post("/api/groups", json={"name": "Grupo 5"}, headers=user.headers)
    assert_error(limited, 429, "rate_limited")
    assert 1 <= int(limited.headers["Retry-After"]) <= 60
    assert limited.headers["X-RateLimit-Limit"] == "5" and limited.headers["X-RateLimit-Remaining"] == "0"
    assert await admin.fetchval("select count(*) from groups where created_by = $1", user.id) == 5
    # Per user: someone else still may.
    other = await make_user()
    assert (await client.post("/api/groups", json={"name": "Grupo 5"}, headers=other.headers)).status_code == 201
    # Reads and edits are not limited.
    assert (await client.get("/api/groups", headers=user.headers)).status_code == 200


async def test_every_route_needs_a_token(client: httpx.AsyncClient) -> None:
    gid, cid = uuid.uuid4(), uuid.uuid4()
    calls = [
        ("GET", "/api/groups", None),
        ("POST", "/api/groups", {"name": "x"}),
        ("GET", f"/api/groups/{gid}", None),
        ("PUT", f"/api/groups/{gid}", {"name": "x"}),
        ("DELETE", f"/api/groups/{gid}", None),
        ("GET", f"/api/groups/{gid}/contacts", None),
        ("POST", f"/api/groups/{gid}/contacts", {"contact_ids": [str(cid)]}),
        ("DELETE", f"/api/groups/{gid}/contacts/{cid}", None),
    ]
    for method, path, body in calls:
        resp = await client.request(method, path, json=body)
        assert_error(resp, 401, "unauthenticated")
        assert resp.headers["WWW-Authenticate"] == "Bearer"
    bad = await client.get("/api/groups", headers={"Authorization": "Bearer not-a-token"})
    assert_error(bad, 401, "invalid_token")


async def test_malformed_json_is_a_400(client: httpx.AsyncClient, make_user: Any) -> None:
    user = await make_user()
    headers = {**user.headers, "Content-Type": "application/json"}
    resp = await client.post("/api/groups", content=b'{"name": "Roto",', headers=headers)
    assert_error(resp, 400, "malformed_json")
    group = await create_group(client, user, "Sano")
    resp = await client.post(f"/api/groups/{group['id']}/contacts", content=b"{contact_ids: []}", headers=headers)
    assert_error(resp, 400, "malformed_json")
    resp = await client.put(f"/api/groups/{group['id']}", content=b"[", headers=headers)
    assert_error(resp, 400, "malformed_json")
    bad_id = await client.get("/api/groups/not-a-uuid", headers=user.headers)
    assert assert_error(bad_id, 422, "validation_error")["errors"][0]["field"] == "group_id"


async def test_cors_preflight_answers_with_the_guides_headers(client: httpx.AsyncClient) -> None:
    for path in ("/api/groups", "/api/contacts"):
        resp = await client.options(
            path,
            headers={
                "Origin": "http://localhost:3000",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "Content-Type, Authorization, X-Requested-With",
            },
        )
        assert resp.status_code == 200, resp.text
        assert resp.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"
        assert resp.headers["Access-Control-Allow-Credentials"] == "true"
        methods = [m.strip() for m in resp.headers["Access-Control-Allow-Methods"].split(",")]
        assert methods == ["GET", "POST", "PUT", "DELETE", "OPTIONS"]
        allowed = {h.strip().lower() for h in resp.headers["Access-Control-Allow-Headers"].split(",")}
        assert {"content-type", "authorization", "x-requested-with"} <= allowed
    # An origin that is not configured gets no permission.
    stranger = await client.options(
        "/api/groups", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    )
    assert "Access-Control-Allow-Origin" not in stranger.headers


async def test_an_unexpected_error_is_a_500_with_the_error_body_that_a_browser_can_read(settings: Settings) -> None:
    app = create_app(settings)

    @app.get("/api/explode", include_in_schema=False)
    async def explode() -> None:
        raise RuntimeError("a bug")

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=True)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        resp = await http.get("/api/explode", headers={"Origin": "http://localhost:3000"})
    assert resp.status_code == 500
    assert resp.json() == {
        "detail": "Something went wrong on our side; it has been logged.",
        "code": "internal_error",
        "errors": [],
    }
    # Without the CORS headers the browser would hide the 500 behind a CORS failure.
    assert resp.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"


async def test_openapi_documents_the_group_routes_and_their_errors(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    paths = spec["paths"]
    expected = {
        ("/api/groups", "get"): {"200", "401", "403", "422"},
        ("/api/groups", "post"): {"201", "400", "401", "409", "422", "429"},
        ("/api/groups/{group_id}", "get"): {"200", "304", "401", "404"},
        ("/api/groups/{group_id}", "put"): {"200", "400", "401", "404", "409", "422"},
        ("/api/groups/{group_id}", "delete"): {"204", "401", "404"},
        ("/api/groups/{group_id}/contacts", "get"): {"200", "401", "404", "422"},
        ("/api/groups/{group_id}/contacts", "post"): {"200", "201", "400", "401", "404", "422"},
        ("/api/groups/{group_id}/contacts/{contact_id}", "delete"): {"204", "401", "404"},
    }
    for (path, method), statuses in expected.items():
        assert statuses <= set(paths[path][method]["responses"]), (path, method)
    schemas = spec["components"]["schemas"]
    assert set(schemas["Group"]["properties"]) == GROUP_KEYS
    assert set(schemas["GroupCreate"]["properties"]) == {"name", "description"}
    assert set(schemas["MembersAdded"]["properties"]) == {"added", "already_members"}
    error_ref = paths["/api/groups"]["post"]["responses"]["409"]["content"]["application/json"]["schema"]["$ref"]
    assert error_ref.endswith("/ErrorBody")
    assert json.dumps(spec)

"""The contacts API against the real database: the guide's shape, phone normalisation (international,
national with the profile's or the body's country), refusals with their codes, filters and sorts,
partial updates with opt-out and groups, deletion, cross-user isolation and auth."""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

import asyncpg
import httpx

CONTACT_KEYS = {
    "id",
    "name",
    "phone",
    "email",
    "is_active",
    "groups",
    "created_at",
    "updated_at",
    "opted_out_at",
    "opted_out_keyword",
}
ISO_Z = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")
_phone_seq = iter(range(10_000_000, 99_999_999, 17))


def assert_error(resp: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body: dict[str, Any] = resp.json()
    assert body["code"] == code, body
    assert set(body) == {"detail", "code", "errors"} and body["detail"]
    return body


async def create(client: httpx.AsyncClient, user: Any, name: str, **body: Any) -> dict[str, Any]:
    body.setdefault("phone", f"+569{next(_phone_seq)}")
    resp = await client.post("/api/contacts", json={"name": name, **body}, headers=user.headers)
    assert resp.status_code == 201, resp.text
    data: dict[str, Any] = resp.json()
    return data


async def new_group(client: httpx.AsyncClient, user: Any, name: str) -> str:
    resp = await client.post("/api/groups", json={"name": name}, headers=user.headers)
    assert resp.status_code == 201, resp.text
    group_id: str = resp.json()["id"]
    return group_id


async def contact_count(client: httpx.AsyncClient, user: Any, group_id: str) -> int:
    count: int = (await client.get(f"/api/groups/{group_id}", headers=user.headers)).json()["contact_count"]
    return count


# -----------------------------------------------------------------------------------------------
# Create and read
# -----------------------------------------------------------------------------------------------


async def test_create_returns_the_guides_contact_shape(client: httpx.AsyncClient, make_user: Any) -> None:
    user = await make_user()
    group = await new_group(client, user, "Clientes")
    resp = await client.post(
        "/api/contacts",
        json={
            "name": " María\u0000 José ",
            "phone": "+56 9 1234 5678",
            "email": "Maria@Correo.CL",
            "group_ids": [group],
        },
        headers=user.headers,
    )
    assert resp.status_code == 201, resp.text
    body = resp.json()
    assert set(body) == CONTACT_KEYS
    assert body["name"] == "María José" and body["phone"] == "+56912345678"
    assert body["email"] == "Maria@correo.cl"  # the domain part is case-insensitive
    assert body["is_active"] is True and body["opted_out_at"] is None and body["groups"] == [group]
    assert uuid.UUID(body["id"]) and ISO_Z.match(body["created_at"]) and ISO_Z.match(body["updated_at"])
    got = await client.get(f"/api/contacts/{body['id']}", headers=user.headers)
    assert got.status_code == 200 and got.json() == body and got.headers["ETag"]
    assert await contact_count(client, user, group) == 1
    plain = await create(client, user, "Sin correo", email="")
    assert plain["email"] is None and plain["groups"] == []


async def test_national_numbers_use_the_profiles_default_country_unless_the_body_names_one(
    client: httpx.AsyncClient, make_user: Any, admin: asyncpg.Connection
) -> None:
    user = await make_user()
    # CL by default.
    assert (await create(client, user, "Nacional", phone="9 1234 5678"))["phone"] == "+56912345678"
    assert (await create(client, user, "Con ceros", phone="0056 9 8765 4321"))["phone"] == "+56987654321"
    # The body's default_country wins over the profile's.
    us = await create(client, user, "Gringo", phone="(202) 555-0143", default_country="us")
    assert us["phone"] == "+12025550143"
    # A profile in Argentina reads national numbers as Argentine.
    await admin.execute("update profiles set default_country = 'AR' where id = $1", user.id)
    ar = await create(client, user, "Porteño", phone="011 15-2345-6789")
    assert ar["phone"] == "+5491123456789"
    assert (await create(client, user, "Internacional", phone="+56 9 5555 1234"))["phone"] == "+56955551234"
    bad = await client.post(
        "/api/contacts", json={"name": "x", "phone": "9 1234 5678", "default_country": "XX"}, headers=user.headers
    )
    assert assert_error(bad, 422, "validation_error")["errors"][0]["field"] == "default_country"


async def test_invalid_phone_is_refused_with_the_reason(client: httpx.AsyncClient, make_user: Any) -> None:
    user = await make_user()
    cases = {
        "12": "wrong length for a number of its country",
        "hola": "not a phone number",
        "": "empty phone number",
        "+56 2 2123 4567 8901": "wrong length for a number of its country",
    }
    for raw, reason in cases.items():
        resp = await client.post("/api/contacts", json={"name": "Ana", "phone": raw}, headers=user.headers)
        body = assert_error(resp, 422, "invalid_phone")
        assert body["errors"] == [{"field": "phone", "message": reason}], raw
        assert reason in body["detail"]
    listed = await client.get("/api/contacts", headers=user.headers)
    assert listed.json()["total"] == 0
    missing = await client.post("/api/contacts", json={"name": "Ana"}, headers=user.headers)
    assert assert_error(missing, 422, "validation_error")["errors"][0]["field"] == "phone"


async def test_a_phone_you_already_have_is_a_409_whatever_its_format(client: httpx.AsyncClient, make_user: Any) -> None:
    user = await make_user()
    first = await create(client, user, "Primero", phone="+56 9 1111 2222")
    again = await client.post("/api/contacts", json={"name": "Otro", "phone": "9 1111 2222"}, headers=user.headers)
    body = assert_error(again, 409, "duplicate_phone")
    assert body["errors"] == [{"field": "phone", "message": body["detail"]}]
    # Someone else may have the same number.
    other = await make_user()
    assert (await create(client, other, "Ajeno", phone="+56911112222"))["phone"] == "+56911112222"
    # Changing another contact to that number is refused as well.
    second = await create(client, user, "Segundo")
    resp = await client.put(f"/api/contacts/{second['id']}", json={"phone": "+56911112222"}, headers=user.headers)
    assert_error(resp, 409, "duplicate_phone")
    resp = await client.put(f"/api/contacts/{first['id']}", json={"phone": "+56 9 1111 2222"}, headers=user.headers)
    assert resp.status_code == 200  # its own number again


async def test_names_are_trimmed_and_cleaned_and_emails_validated(client: httpx.AsyncClient, make_user: Any) -> None:
    user = await make_user()
    contact = await create(client, user, "\t Ana\n\x1b[31m  Pérez\u202e ")
    assert contact["name"] == "Ana [31m Pérez"
    assert (await create(client, user, "x" * 200))["name"] == "x" * 200
    for bad in ("", "  \n ", "\x00", "x" * 201):
        resp = await client.post("/api/contacts", json={"name": bad, "phone": "+56912340000"}, headers=user.headers)
        assert assert_error(resp, 422, "validation_error")["errors"][0]["field"] == "name", repr(bad)
    for bad in ("ana", "ana@", "ana@localhost", "a b@c.com", "ana@@c.com"):
        resp = await client.post(
            "/api/contacts", json={"name": "Ana", "phone": "+56912340000", "email": bad}, headers=user.headers
        )
        assert assert_error(resp, 422, "validation_error")["errors"][0]["field"] == "email", bad


async def test_group_ids_that_are_not_yours_create_nothing(client: httpx.AsyncClient, make_user: Any) -> None:
    user, other = await make_user(), await make_user()
    mine = await new_group(client, user, "Mío")
    theirs = await new_group(client, other, "Suyo")
    resp = await client.post(
        "/api/contacts",
        json={"name": "Ana", "phone": "+56912345678", "group_ids": [mine, theirs]},
        headers=user.headers,
    )
    body = assert_error(resp, 404, "related_not_found")
    assert body["errors"] == [{"field": "group_ids.1", "message": f"group {theirs} was not found"}]
    # The whole request rolled back: no contact, no membership.
    assert (await client.get("/api/contacts", headers=user.headers)).json()["total"] == 0
    assert await contact_count(client, user, mine) == 0
    assert await contact_count(client, other, theirs) == 0


# -----------------------------------------------------------------------------------------------
# The list
# -----------------------------------------------------------------------------------------------


async def test_list_filters_and_sorts_with_groups_aggregated(
    client: httpx.AsyncClient, make_user: Any, admin: asyncpg.Connection
) -> None:
    user = await make_user()
    vip = await new_group(client, user, "VIP")
    team = await new_group(client, user, "Equipo")
    ana = await create(client, user, "ana", phone="+56 9 1234 5678", email="ana@Correo.cl", group_ids=[vip, team])
    bruno = await create(client, user, "Bruno", phone="+56 9 8765 4321", group_ids=[team])
    carla = await create(client, user, "Carla", phone="+1 202 555 0143", is_active=False)
    dup1 = await create(client, user, "Diego", phone="+56 9 2222 3333")
    dup2 = await create(client, user, "Diego", phone="+56 9 2222 4444")
    other = await make_user()
    await create(client, other, "Ana del otro", phone="+56 9 1234 5678")

    async def listing(**params: Any) -> dict[str, Any]:
        resp = await client.get("/api/contacts", params=params, headers=user.headers)
        assert resp.status_code == 200, resp.text
        data: dict[str, Any] = resp.json()
        return data

    def names(page: dict[str, Any]) -> list[str]:
        return [c["name"] for c in page["items"]]

    everything = await listing()
    assert everything["total"] == 5 and (everything["page"], everything["page_size"]) == (1, 20)
    assert names(everything) == ["ana", "Bruno", "Carla", "Diego", "Diego"]
    assert set(everything["items"][0]) == CONTACT_KEYS
    by_id = {c["id"]: c for c in everything["items"]}
    # Joined in one request: same time, so by id.
    assert by_id[ana["id"]]["groups"] == sorted([vip, team]) and by_id[bruno["id"]]["groups"] == [team]
    assert by_id[carla["id"]]["groups"] == []
    # Equal names keep one order (by id), page after page.
    diegos = sorted([dup1["id"], dup2["id"]])
    assert [c["id"] for c in everything["items"][3:]] == diegos
    split = [c["id"] for p in (1, 2, 3) for c in (await listing(page=p, page_size=2))["items"]]
    assert split == [c["id"] for c in everything["items"]]
    assert names(await listing(sort="-name")) == ["Diego", "Diego", "Carla", "Bruno", "ana"]
    assert [c["id"] for c in (await listing(sort="-name"))["items"][:2]] == diegos[::-1]
    assert [c["phone"] for c in (await listing(sort="phone"))["items"]] == sorted(c["phone"] for c in by_id.values())
    oldest = [c["id"] for c in (await listing(sort="created_at"))["items"]]
    assert oldest == [ana["id"], bruno["id"], carla["id"], dup1["id"], dup2["id"]]
    assert [c["id"] for c in (await listing(sort="-created_at"))["items"]] == oldest[::-1]

    # q: name, email (any case), or the digits of the phone however they are typed.
    assert names(await listing(q="AN")) == ["ana"]
    assert names(await listing(q="correo.CL")) == ["ana"]
    assert names(await listing(q="8765 43")) == ["Bruno"]
    assert names(await listing(q="(202) 555")) == ["Carla"]
    assert names(await listing(q="+56 9 2222")) == ["Diego", "Diego"]
    assert (await listing(q="_"))["total"] == 0  # LIKE wildcards are plain text
    # is_active and group_id.
    assert names(await listing(is_active="false")) == ["Carla"]
    assert (await listing(is_active="true"))["total"] == 4
    assert names(await listing(group_id=team)) == ["ana", "Bruno"]
    assert names(await listing(group_id=vip, q="bru")) == []
    assert (await listing(group_id=str(uuid.uuid4())))["total"] == 0
    # Bad parameters.
    for params in ({"page_size": 101}, {"page": 0}, {"sort": "email"}, {"is_active": "maybe"}, {"group_id": "x"}):
        resp = await client.get("/api/contacts", params=params, headers=user.headers)
        assert_error(resp, 422, "validation_error")
    too_big = await client.get("/api/contacts", params={"page_size": 101}, headers=user.headers)
    assert assert_error(too_big, 422, "validation_error")["errors"][0]["field"] == "page_size"


async def test_accented_names_sort_with_their_letter_where_postgres_has_icu(
    client: httpx.AsyncClient, make_user: Any, admin: asyncpg.Connection
) -> None:
    user = await make_user()
    for name in ("Zoe", "Ángela", "ana", "Óscar", "oscar b"):
        await create(client, user, name)
    got = [c["name"] for c in (await client.get("/api/contacts", headers=user.headers)).json()["items"]]
    provider = await admin.fetchval("select collprovider from pg_collation where collname = 'name_order'")
    if provider in (b"i", "i"):
        assert got == ["ana", "Ángela", "Óscar", "oscar b", "Zoe"]
    else:
        # Without ICU the database's collation decides accents; case still never does.
        assert got.index("ana") < got.index("oscar b") < got.index("Zoe")


async def test_admin_lists_everyones_contacts_only_when_asking(
    client: httpx.AsyncClient, make_user: Any, admin: asyncpg.Connection
) -> None:
    boss, user = await make_user(admin=True), await make_user()
    theirs = await create(client, user, "De otro")
    assert (await client.get("/api/contacts", headers=boss.headers)).json()["total"] == 0
    everyone = await client.get("/api/contacts", params={"scope": "all", "q": "De otro"}, headers=boss.headers)
    assert theirs["id"] in [c["id"] for c in everyone.json()["items"]]
    assert_error(await client.get("/api/contacts", params={"scope": "all"}, headers=user.headers), 403, "forbidden")
    assert (await client.get(f"/api/contacts/{theirs['id']}", headers=boss.headers)).status_code == 200
    audited = await admin.fetchval(
        "select count(*) from audit_log where action = 'contact.read_all' and actor_id = $1", boss.id
    )
    assert audited == 1


# -----------------------------------------------------------------------------------------------
# Update and delete
# -----------------------------------------------------------------------------------------------


async def test_put_changes_only_the_given_fields(client: httpx.AsyncClient, make_user: Any) -> None:
    user = await make_user()
    contact = await create(client, user, "Ana", phone="+56 9 1234 5678", email="ana@correo.cl")
    cid = contact["id"]
    resp = await client.put(f"/api/contacts/{cid}", json={"name": " Ana María "}, headers=user.headers)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["name"] == "Ana María" and body["phone"] == "+56912345678" and body["email"] == "ana@correo.cl"
    assert body["updated_at"] > contact["updated_at"] and body["created_at"] == contact["created_at"]
    # A national number on update, read in the profile's country; email null clears it.
    body = (
        await client.put(f"/api/contacts/{cid}", json={"phone": "9 7777 8888", "email": None}, headers=user.headers)
    ).json()
    assert body["phone"] == "+56977778888" and body["email"] is None and body["name"] == "Ana María"
    body = (await client.put(f"/api/contacts/{cid}", json={"is_active": False}, headers=user.headers)).json()
    assert body["is_active"] is False
    invalid = await client.put(f"/api/contacts/{cid}", json={"phone": "123"}, headers=user.headers)
    assert assert_error(invalid, 422, "invalid_phone")["errors"][0]["field"] == "phone"
    for field in ("name", "phone", "is_active", "opted_out", "group_ids"):
        resp = await client.put(f"/api/contacts/{cid}", json={field: None}, headers=user.headers)
        assert_error(resp, 422, "validation_error")
    # An empty body changes nothing.
    same = await client.put(f"/api/contacts/{cid}", json={}, headers=user.headers)
    assert same.status_code == 200 and same.json() == body


async def test_opting_out_is_recorded_once_and_can_be_withdrawn(
    client: httpx.AsyncClient, make_user: Any, admin: asyncpg.Connection
) -> None:
    user = await make_user()
    contact = await create(client, user, "Ana")
    cid = contact["id"]
    out = (await client.put(f"/api/contacts/{cid}", json={"opted_out": True}, headers=user.headers)).json()
    assert out["opted_out_at"] is not None and ISO_Z.match(out["opted_out_at"])
    again = (
        await client.put(f"/api/contacts/{cid}", json={"opted_out": True, "name": "Ana B"}, headers=user.headers)
    ).json()
    assert again["opted_out_at"] == out["opted_out_at"]  # the first request's time stays
    back = (await client.put(f"/api/contacts/{cid}", json={"opted_out": False}, headers=user.headers)).json()
    assert back["opted_out_at"] is None
    assert await admin.fetchval("select opted_out_at from contacts where id = $1", cid) is None
    created_out = await create(client, user, "Nunca", opted_out=True)
    assert created_out["opted_out_at"] is not None


async def test_group_ids_on_put_replace_the_contacts_groups_and_counts_follow(
    client: httpx.AsyncClient, make_user: Any
) -> None:
    user, other = await make_user(), await make_user()
    a, b, c = [await new_group(client, user, n) for n in ("A", "B", "C")]
    theirs = await new_group(client, other, "Ajeno")
    contact = await create(client, user, "Ana", group_ids=[a, b])
    cid = contact["id"]
    resp = await client.put(f"/api/contacts/{cid}", json={"group_ids": [b, c]}, headers=user.headers)
    assert resp.status_code == 200 and resp.json()["groups"] == [b, c]
    assert resp.json()["updated_at"] > contact["updated_at"]
    assert [await contact_count(client, user, g) for g in (a, b, c)] == [0, 1, 1]
    refused = await client.put(f"/api/contacts/{cid}", json={"group_ids": [a, theirs]}, headers=user.headers)
    body = assert_error(refused, 404, "related_not_found")
    assert body["errors"] == [{"field": "group_ids.1", "message": f"group {theirs} was not found"}]
    assert (await client.get(f"/api/contacts/{cid}", headers=user.headers)).json()["groups"] == [b, c]
    cleared = await client.put(f"/api/contacts/{cid}", json={"group_ids": []}, headers=user.headers)
    assert cleared.json()["groups"] == []
    assert [await contact_count(client, user, g) for g in (a, b, c)] == [0, 0, 0]


async def test_delete_answers_204_is_audited_and_leaves_its_groups(
    client: httpx.AsyncClient, make_user: Any, admin: asyncpg.Connection
) -> None:
    user = await make_user()
    group = await new_group(client, user, "Grupo")
    keep = await create(client, user, "Queda", group_ids=[group])
    gone = await create(client, user, "Se va", group_ids=[group])
    assert await contact_count(client, user, group) == 2
    resp = await client.delete(f"/api/contacts/{gone['id']}", headers=user.headers)
    assert resp.status_code == 204 and resp.content == b""
    assert await contact_count(client, user, group) == 1
    assert_error(await client.get(f"/api/contacts/{gone['id']}", headers=user.headers), 404, "contact_not_found")
    assert_error(await client.delete(f"/api/contacts/{gone['id']}", headers=user.headers), 404, "contact_not_found")
    assert (await client.get(f"/api/contacts/{keep['id']}", headers=user.headers)).json()["groups"] == [group]
    row = await admin.fetchrow(
        "select actor_id::text, entity_type from audit_log where action = 'contact.delete' and entity_id = $1",
        gone["id"],
    )
    assert row is not None and row["actor_id"] == user.id and row["entity_type"] == "contact"


# -----------------------------------------------------------------------------------------------
# Isolation, auth, transport
# -----------------------------------------------------------------------------------------------


async def test_another_users_contact_is_not_found_on_every_route(
    client: httpx.AsyncClient, make_user: Any, admin: asyncpg.Connection
) -> None:
    owner, intruder = await make_user(), await make_user()
    contact = await create(client, owner, "Privada", phone="+56 9 4444 5555")
    cid = contact["id"]
    attempts = [
        client.get(f"/api/contacts/{cid}", headers=intruder.headers),
        client.put(f"/api/contacts/{cid}", json={"name": "Tomada"}, headers=intruder.headers),
        client.put(f"/api/contacts/{cid}", json={"opted_out": True}, headers=intruder.headers),
        client.delete(f"/api/contacts/{cid}", headers=intruder.headers),
    ]
    for attempt in attempts:
        assert_error(await attempt, 404, "contact_not_found")
    row = await admin.fetchrow("select name, opted_out_at from contacts where id = $1", cid)
    assert row is not None and row["name"] == "Privada" and row["opted_out_at"] is None
    assert (await client.get("/api/contacts", headers=intruder.headers)).json()["total"] == 0
    assert (await client.get("/api/contacts", params={"q": "4444"}, headers=intruder.headers)).json()["total"] == 0


async def test_every_route_needs_a_token(client: httpx.AsyncClient) -> None:
    cid = uuid.uuid4()
    calls = [
        ("GET", "/api/contacts", None),
        ("POST", "/api/contacts", {"name": "x", "phone": "+56912345678"}),
        ("GET", f"/api/contacts/{cid}", None),
        ("PUT", f"/api/contacts/{cid}", {"name": "x"}),
        ("DELETE", f"/api/contacts/{cid}", None),
    ]
    for method, path, body in calls:
        assert_error(await client.request(method, path, json=body), 401, "unauthenticated")


async def test_malformed_json_is_a_400(client: httpx.AsyncClient, make_user: Any) -> None:
    user = await make_user()
    headers = {**user.headers, "Content-Type": "application/json"}
    assert_error(await client.post("/api/contacts", content=b'{"name": "Ana"', headers=headers), 400, "malformed_json")
    contact = await create(client, user, "Ana")
    resp = await client.put(f"/api/contacts/{contact['id']}", content=b"{'name': 'x'}", headers=headers)
    assert_error(resp, 400, "malformed_json")
    assert_error(await client.get("/api/contacts/not-a-uuid", headers=user.headers), 422, "validation_error")


async def test_openapi_documents_the_contact_routes_and_their_errors(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    paths = spec["paths"]
    expected = {
        ("/api/contacts", "get"): {"200", "401", "403", "422"},
        ("/api/contacts", "post"): {"201", "400", "401", "404", "409", "422"},
        ("/api/contacts/{contact_id}", "get"): {"200", "304", "401", "404"},
        ("/api/contacts/{contact_id}", "put"): {"200", "400", "401", "404", "409", "422"},
        ("/api/contacts/{contact_id}", "delete"): {"204", "401", "404"},
    }
    for (path, method), statuses in expected.items():
        assert statuses <= set(paths[path][method]["responses"]), (path, method)
    schemas = spec["components"]["schemas"]
    assert set(schemas["Contact"]["properties"]) == CONTACT_KEYS
    assert {"name", "phone", "email", "is_active", "group_ids", "default_country"} <= set(
        schemas["ContactCreate"]["properties"]
    )
    assert "opted_out" in schemas["ContactUpdate"]["properties"]
    assert json.dumps(spec)

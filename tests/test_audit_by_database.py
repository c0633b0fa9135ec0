"""The audit trail is written by the database (20261206000100_audit_trail), whichever path made the
change: each critical action is tried through /api and as supabase-js runs it (SQL as
`authenticated` with the user's claims and PostgREST's `request.headers`, one transaction per
call), and must leave the same entry: actor, action, entity, and the caller's IP and user agent.
Users read their own entries (admins all) and can write, change or remove none; each refusal has a
positive control on the same path."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import asyncpg
import httpx
import pytest
from test_rules_both_paths import reachable_group

from whatsched.api.deps import Resources
from whatsched.db.pool import service_tx

# What the API sees: the test client's peer is 127.0.0.1, which the `behind_proxy` fixture trusts.
API_IP = "198.51.100.23"
API_UA = "audit-test/1.0 (api)"
# What PostgREST passes on Supabase: every header, names in lower case, the client first in
# x-forwarded-for (then the proxies), the gateway's own view in x-real-ip.
POSTGREST_IP = "203.0.113.9"
POSTGREST_UA = "Mozilla/5.0 (X11; Linux x86_64) supabase-js-web/2.45.0"
POSTGREST_HEADERS = {
    "host": "abcdefghijklmnop.supabase.co",
    "accept": "*/*",
    "user-agent": POSTGREST_UA,
    "x-client-info": "supabase-js-web/2.45.0",
    "x-forwarded-for": f"{POSTGREST_IP}, 172.16.0.3",
    "x-real-ip": "172.16.0.3",
    "prefer": "return=representation",
}


def later(**delta: float) -> datetime:
    return datetime.now(UTC) + timedelta(**delta)


async def postgrest(res: Resources, user: Any, sql: str, *args: Any, headers: Any = POSTGREST_HEADERS) -> Any:
    """One supabase-js call: its own transaction as `authenticated` with the user's claims and the
    request's headers as PostgREST sets them (`headers` may be raw text, to try a broken value)."""
    raw = headers if isinstance(headers, str) else json.dumps(headers)
    async with res.pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "select set_config('role', 'authenticated', true), set_config('request.jwt.claims', $1, true),"
            " set_config('request.headers', $2, true)",
            json.dumps(user.claims),
            raw,
        )
        return await conn.fetchval(sql, *args)


async def postgrest_error(res: Resources, user: Any, sql: str, *args: Any) -> str:
    with pytest.raises(asyncpg.PostgresError) as err:
        await postgrest(res, user, sql, *args)
    return str(err.value.sqlstate)


@pytest.fixture
def behind_proxy(res: Resources, monkeypatch: pytest.MonkeyPatch) -> None:
    """The API behind a proxy it trusts: X-Forwarded-For names the client."""
    monkeypatch.setattr(res.settings, "trusted_proxies", "127.0.0.1/32")


def api_headers(user: Any) -> dict[str, str]:
    return {**user.headers, "User-Agent": API_UA, "X-Forwarded-For": API_IP}


async def entries(admin: asyncpg.Connection, action: str, entity_id: str) -> list[dict[str, Any]]:
    rows = await admin.fetch(
        """select actor_id::text as actor, action, entity_type, entity_id, host(ip) as ip, user_agent, details
           from public.audit_log where action = $1 and entity_id = $2 order by id""",
        action,
        entity_id,
    )
    return [{**dict(r), "details": json.loads(r["details"])} for r in rows]


async def entry(admin: asyncpg.Connection, action: str, entity_id: str) -> dict[str, Any]:
    found = await entries(admin, action, entity_id)
    assert len(found) == 1, (action, entity_id, found)
    return found[0]


# -----------------------------------------------------------------------------------------------
# The two paths, as one interface
# -----------------------------------------------------------------------------------------------


class Path(Protocol):
    name: str
    ip: str
    user_agent: str

    async def create_message(self, content: str, group: str | None = None) -> str: ...
    async def edit(self, message_id: str, **fields: Any) -> None: ...
    async def delete_message(self, message_id: str) -> None: ...
    async def schedule(self, message_id: str, at: datetime) -> None: ...
    async def transition(self, message_id: str, verb: str) -> None: ...
    async def delete_contacts(self, contact_ids: list[str]) -> None: ...
    async def delete_groups(self, group_ids: list[str]) -> None: ...
    async def lift_opt_out(self, contact_id: str) -> None: ...


class Api:
    name, ip, user_agent = "api", API_IP, API_UA

    def __init__(self, client: httpx.AsyncClient, user: Any) -> None:
        self.client, self.headers = client, api_headers(user)

    async def _ok(self, method: str, url: str, body: Any = None) -> dict[str, Any]:
        resp = await self.client.request(method, url, json=body, headers=self.headers)
        assert resp.status_code in (200, 201, 204), resp.text
        return resp.json() if resp.content else {}

    async def create_message(self, content: str, group: str | None = None) -> str:
        body = await self._ok("POST", "/api/messages", {"content": content, "group_ids": [group] if group else []})
        return str(body["id"])

    async def edit(self, message_id: str, **fields: Any) -> None:
        body = {k: v.isoformat() if isinstance(v, datetime) else v for k, v in fields.items()}
        await self._ok("PUT", f"/api/messages/{message_id}", body)

    async def delete_message(self, message_id: str) -> None:
        await self._ok("DELETE", f"/api/messages/{message_id}")

    async def schedule(self, message_id: str, at: datetime) -> None:
        await self._ok("POST", f"/api/messages/{message_id}/schedule", {"scheduled_for": at.isoformat()})

    async def transition(self, message_id: str, verb: str) -> None:
        await self._ok("POST", f"/api/messages/{message_id}/{verb}")

    async def delete_contacts(self, contact_ids: list[str]) -> None:
        for contact_id in contact_ids:
            await self._ok("DELETE", f"/api/contacts/{contact_id}")

    async def delete_groups(self, group_ids: list[str]) -> None:
        for group_id in group_ids:
            await self._ok("DELETE", f"/api/groups/{group_id}")

    async def lift_opt_out(self, contact_id: str) -> None:
        await self._ok("PUT", f"/api/contacts/{contact_id}", {"opted_out": False})


class PostgRest:
    """What supabase-js sends: table writes and RPCs, bulk where the client would filter with `in`."""

    name, ip, user_agent = "supabase-js", POSTGREST_IP, POSTGREST_UA

    def __init__(self, res: Resources, user: Any) -> None:
        self.res, self.user = res, user

    async def _sql(self, sql: str, *args: Any) -> Any:
        return await postgrest(self.res, self.user, sql, *args)

    async def create_message(self, content: str, group: str | None = None) -> str:
        message_id = str(await self._sql("insert into public.messages (content) values ($1) returning id", content))
        if group:
            await self._sql(
                "insert into public.message_groups (message_id, group_id) values ($1::uuid, $2::uuid)",
                message_id,
                group,
            )
        return message_id

    async def edit(self, message_id: str, **fields: Any) -> None:
        sets = ", ".join(f"{name} = ${i + 2}" for i, name in enumerate(fields))
        await self._sql(f"update public.messages set {sets} where id = $1::uuid", message_id, *fields.values())

    async def delete_message(self, message_id: str) -> None:
        await self._sql("delete from public.messages where id = $1::uuid", message_id)

    async def schedule(self, message_id: str, at: datetime) -> None:
        await self._sql("select public.schedule_message($1::uuid, $2)", message_id, at)

    async def transition(self, message_id: str, verb: str) -> None:
        await self._sql(f"select public.{verb}_message($1::uuid)", message_id)

    async def delete_contacts(self, contact_ids: list[str]) -> None:
        await self._sql("delete from public.contacts where id = any($1::uuid[])", contact_ids)

    async def delete_groups(self, group_ids: list[str]) -> None:
        await self._sql("delete from public.groups where id = any($1::uuid[])", group_ids)

    async def lift_opt_out(self, contact_id: str) -> None:
        await self._sql("update public.contacts set opted_out_at = null where id = $1::uuid", contact_id)


MakePath = Callable[[Any], Path]


@pytest.fixture(params=["api", "supabase-js"])
def path(request: pytest.FixtureRequest, client: httpx.AsyncClient, res: Resources, behind_proxy: None) -> MakePath:
    if request.param == "api":
        return lambda user: Api(client, user)
    return lambda user: PostgRest(res, user)


def assert_by(found: dict[str, Any], user: Any, via: Path) -> None:
    """The entry names the user, and the client as that path sees it."""
    assert found["actor"] == user.id, found
    assert (found["ip"], found["user_agent"]) == (via.ip, via.user_agent), found


async def add_contacts(admin: asyncpg.Connection, owner: str, n: int, group: str | None = None) -> list[str]:
    ids = await admin.fetch(
        "insert into public.contacts (created_by, name, phone) select $1, 'Contacto ' || g, '+1557' || ($2 + g)"
        " from generate_series(1, $3) g returning id::text",
        owner,
        uuid.uuid4().int % 9_000_000 * 100,
        n,
    )
    contact_ids = [r["id"] for r in ids]
    if group:
        await admin.execute(
            "insert into public.group_contacts (group_id, contact_id, created_by)"
            " select $1::uuid, c, $2 from unnest($3::uuid[]) c",
            group,
            owner,
            contact_ids,
        )
    return contact_ids


# -----------------------------------------------------------------------------------------------
# Messages
# -----------------------------------------------------------------------------------------------


async def test_creating_a_message_is_audited(make_user: Any, admin: asyncpg.Connection, path: MakePath) -> None:
    user = await make_user()
    via = path(user)
    message_id = await via.create_message("Hola, mañana hay reunión.")
    found = await entry(admin, "message.create", message_id)
    assert_by(found, user, via)
    assert found["entity_type"] == "message"
    assert found["details"] == {"owner": user.id, "status": "draft"}


async def test_editing_content_time_and_recurrence_is_audited(
    make_user: Any, admin: asyncpg.Connection, path: MakePath
) -> None:
    user = await make_user()
    via = path(user)
    message_id = await via.create_message("Primera versión")
    await via.edit(message_id, content="Segunda versión")
    at = later(days=2).replace(microsecond=0)
    await via.edit(message_id, scheduled_for=at, recurrence="0 9 * * 1")
    first, second = await entries(admin, "message.update", message_id)
    for found in (first, second):
        assert_by(found, user, via)
    assert first["details"]["fields"] == ["content"]
    assert second["details"]["fields"] == ["scheduled_for", "recurrence"]
    assert second["details"]["recurrence"] == {"from": None, "to": "0 9 * * 1"}
    assert datetime.fromisoformat(second["details"]["scheduled_for"]["to"]) == at
    # An edit that changes nothing is not an edit.
    await via.edit(message_id, content="Segunda versión")
    assert len(await entries(admin, "message.update", message_id)) == 2


async def test_deleting_a_message_is_audited(make_user: Any, admin: asyncpg.Connection, path: MakePath) -> None:
    user = await make_user()
    via = path(user)
    message_id = await via.create_message("Para borrar")
    await via.delete_message(message_id)
    assert await admin.fetchval("select count(*) from public.messages where id = $1::uuid", message_id) == 0
    found = await entry(admin, "message.delete", message_id)
    assert_by(found, user, via)
    assert found["details"] == {"owner": user.id, "status": "draft"}


async def test_schedule_pause_resume_and_cancel_are_audited(
    make_user: Any, admin: asyncpg.Connection, path: MakePath
) -> None:
    user = await make_user()
    via = path(user)
    group = await reachable_group(admin, user.id)
    message_id = await via.create_message("Hola {{name}}, la reunión es mañana.", group)
    await via.schedule(message_id, later(hours=2))
    await via.transition(message_id, "pause")
    await via.transition(message_id, "resume")
    await via.transition(message_id, "cancel")
    found = await admin.fetch(
        "select action, details from public.audit_log where entity_id = $1 and action <> 'message.create' order by id",
        message_id,
    )
    assert [(r["action"], json.loads(r["details"])["from"], json.loads(r["details"])["to"]) for r in found] == [
        ("message.schedule", "draft", "scheduled"),
        ("message.pause", "scheduled", "paused"),
        ("message.resume", "paused", "scheduled"),
        ("message.cancel", "scheduled", "cancelled"),
    ]
    for action in ("message.schedule", "message.pause", "message.resume", "message.cancel"):
        assert_by(await entry(admin, action, message_id), user, via)


async def test_a_direct_status_update_is_audited_as_its_verb(
    res: Resources, make_user: Any, admin: asyncpg.Connection
) -> None:
    """supabase-js may skip the RPCs: `.update({status, scheduled_for})` is the same verb."""
    user = await make_user()
    via = PostgRest(res, user)
    group = await reachable_group(admin, user.id)
    message_id = await via.create_message("Hola {{name}}, nos vemos.", group)
    at = later(hours=3).replace(microsecond=0)
    await postgrest(
        res,
        user,
        "update public.messages set status = 'scheduled', scheduled_for = $2 where id = $1::uuid",
        message_id,
        at,
    )
    await postgrest(res, user, "update public.messages set status = 'cancelled' where id = $1::uuid", message_id)
    scheduled = await entry(admin, "message.schedule", message_id)
    assert_by(scheduled, user, via)
    assert scheduled["details"]["fields"] == ["scheduled_for"]
    assert datetime.fromisoformat(scheduled["details"]["scheduled_for"]["to"]) == at
    assert_by(await entry(admin, "message.cancel", message_id), user, via)
    assert await entries(admin, "message.update", message_id) == []


async def test_the_workers_own_steps_are_not_audited(res: Resources, make_user: Any, admin: asyncpg.Connection) -> None:
    user = await make_user()
    group = await reachable_group(admin, user.id)
    via = PostgRest(res, user)
    message_id = await via.create_message("Hola {{name}}", group)
    await via.schedule(message_id, later(hours=1))
    before = await admin.fetchval("select count(*) from public.audit_log where entity_id = $1", message_id)
    async with service_tx(res.pool) as conn:
        await conn.execute("update public.messages set status = 'sending' where id = $1::uuid", message_id)
        await conn.execute("update public.messages set delivered_count = 1 where id = $1::uuid", message_id)
    assert await admin.fetchval("select count(*) from public.audit_log where entity_id = $1", message_id) == before
    # Positive control: the trigger does see the service; a pause is a critical action by anyone.
    async with service_tx(res.pool) as conn:
        await conn.execute("update public.messages set status = 'paused' where id = $1::uuid", message_id)
    paused = await entry(admin, "message.pause", message_id)
    assert paused["actor"] is None and paused["ip"] is None
    assert (paused["details"]["from"], paused["details"]["to"]) == ("sending", "paused")


# -----------------------------------------------------------------------------------------------
# Contacts and groups
# -----------------------------------------------------------------------------------------------


async def test_deleting_contacts_is_audited_one_entry_each(
    make_user: Any, admin: asyncpg.Connection, path: MakePath
) -> None:
    user = await make_user()
    via = path(user)
    contact_ids = await add_contacts(admin, user.id, 3)
    await via.delete_contacts(contact_ids)
    for contact_id in contact_ids:
        found = await entry(admin, "contact.delete", contact_id)
        assert_by(found, user, via)
        assert found["entity_type"] == "contact" and found["details"] == {"owner": user.id}


async def test_deleting_groups_is_audited_one_entry_each(
    make_user: Any, admin: asyncpg.Connection, path: MakePath
) -> None:
    user = await make_user()
    via = path(user)
    groups = [await reachable_group(admin, user.id, contacts=n) for n in (1, 2)]
    names = {g: await admin.fetchval("select name from public.groups where id = $1::uuid", g) for g in groups}
    await via.delete_groups(groups)
    for count, group in enumerate(groups, start=1):
        found = await entry(admin, "group.delete", group)
        assert_by(found, user, via)
        assert found["details"] == {"owner": user.id, "name": names[group], "contact_count": count}


@pytest.mark.parametrize("trigger", ["contacts_audit_delete", "groups_audit_delete", "messages_audit_delete"])
async def test_a_delete_trigger_is_per_statement_with_a_transition_table(
    admin: asyncpg.Connection, trigger: str
) -> None:
    """A bulk delete costs one insert into the log, however many rows it removes."""
    row = await admin.fetchrow("select tgtype, tgoldtable from pg_trigger where tgname = $1", trigger)
    assert row is not None
    assert row["tgtype"] & 1 == 0, "a row-level trigger"  # TRIGGER_TYPE_ROW
    assert row["tgoldtable"] == "old_rows"


async def test_a_bulk_delete_writes_one_entry_per_contact(
    res: Resources, make_user: Any, admin: asyncpg.Connection
) -> None:
    user = await make_user()
    contact_ids = await add_contacts(admin, user.id, 500)
    await postgrest(res, user, "delete from public.contacts where created_by = (select auth.uid())")
    audited = await admin.fetchval(
        "select count(*) from public.audit_log where action = 'contact.delete' and entity_id = any($1::text[])",
        contact_ids,
    )
    assert audited == 500


async def test_removing_an_account_is_not_an_entry_per_row(
    res: Resources, make_user: Any, admin: asyncpg.Connection
) -> None:
    user = await make_user()
    contact_ids = await add_contacts(admin, user.id, 3)
    # Positive control: the same kind of row, deleted by its owner, is audited.
    await postgrest(res, user, "delete from public.contacts where id = $1::uuid", contact_ids[0])
    assert len(await entries(admin, "contact.delete", contact_ids[0])) == 1
    await admin.execute("delete from auth.users where id = $1::uuid", user.id)
    for contact_id in contact_ids[1:]:
        assert await entries(admin, "contact.delete", contact_id) == []


async def test_lifting_an_opt_out_by_hand_is_audited(make_user: Any, admin: asyncpg.Connection, path: MakePath) -> None:
    user = await make_user()
    via = path(user)
    (contact_id,) = await add_contacts(admin, user.id, 1)
    await admin.execute(
        "update public.contacts set opted_out_at = now(), opted_out_keyword = 'BAJA' where id = $1::uuid", contact_id
    )
    await via.lift_opt_out(contact_id)
    assert await admin.fetchval("select can_receive from public.contacts where id = $1::uuid", contact_id)
    found = await entry(admin, "contact.opt_out_lifted", contact_id)
    assert_by(found, user, via)
    assert found["details"]["keyword"] == "BAJA" and found["details"]["opted_out_at"]


async def test_an_opt_out_set_or_lifted_by_the_service_is_not_by_hand(
    res: Resources, make_user: Any, admin: asyncpg.Connection
) -> None:
    user = await make_user()
    (contact_id,) = await add_contacts(admin, user.id, 1)
    await postgrest(res, user, "update public.contacts set opted_out_at = now() where id = $1::uuid", contact_id)
    async with service_tx(res.pool) as conn:  # as when the contact's own reply opts back in
        await conn.execute("update public.contacts set opted_out_at = null where id = $1::uuid", contact_id)
    assert await entries(admin, "contact.opt_out_lifted", contact_id) == []
    # Positive control: the same lift by the user is audited.
    await postgrest(res, user, "update public.contacts set opted_out_at = now() where id = $1::uuid", contact_id)
    await postgrest(res, user, "update public.contacts set opted_out_at = null where id = $1::uuid", contact_id)
    assert len(await entries(admin, "contact.opt_out_lifted", contact_id)) == 1


# -----------------------------------------------------------------------------------------------
# Roles (no /api route changes one: an admin through supabase-js, or the service)
# -----------------------------------------------------------------------------------------------


async def test_role_changes_are_audited(res: Resources, make_user: Any, admin: asyncpg.Connection) -> None:
    boss, user = await make_user(admin=True), await make_user()
    # The service made `boss` an admin (the command line's --admin).
    made = await entry(admin, "profile.role_change", boss.id)
    assert made["actor"] is None and made["details"] == {"from": "user", "to": "admin"}
    # A user cannot promote themselves, and nothing is recorded of the refused change.
    sql = "update public.profiles set role = 'admin' where id = $1::uuid"
    assert await postgrest_error(res, user, sql, user.id) == "42501"
    assert await entries(admin, "profile.role_change", user.id) == []
    # Positive control: an admin can, and the entry names the admin.
    await postgrest(res, boss, sql, user.id)
    found = await entry(admin, "profile.role_change", user.id)
    assert_by(found, boss, PostgRest(res, boss))
    assert found["entity_type"] == "profile" and found["details"] == {"from": "user", "to": "admin"}


# -----------------------------------------------------------------------------------------------
# Actions that change no table: recorded by the API as the service, with the request's origin
# -----------------------------------------------------------------------------------------------


async def test_a_login_is_audited_with_the_clients_origin(
    client: httpx.AsyncClient, make_user: Any, admin: asyncpg.Connection, behind_proxy: None
) -> None:
    user = await make_user()
    resp = await client.post(
        "/api/auth/login",
        json={"email": user.email, "password": user.password},
        headers={"User-Agent": API_UA, "X-Forwarded-For": API_IP},
    )
    assert resp.status_code == 200, resp.text
    found = await entry(admin, "login_success", user.id)
    assert (found["actor"], found["ip"], found["user_agent"]) == (user.id, API_IP, API_UA)


async def test_an_admins_read_of_everything_is_audited_in_its_transaction(
    client: httpx.AsyncClient, make_user: Any, admin: asyncpg.Connection, behind_proxy: None
) -> None:
    boss, user = await make_user(admin=True), await make_user()
    resp = await client.get("/api/messages", params={"scope": "all", "q": "auditoría"}, headers=api_headers(boss))
    assert resp.status_code == 200, resp.text
    found = await admin.fetch(
        "select host(ip) as ip, user_agent, details->>'q' as q from public.audit_log"
        " where actor_id = $1 and action = 'message.read_all'",
        boss.id,
    )
    assert [tuple(r) for r in found] == [(API_IP, API_UA, "auditoría")]
    # A user asking for everything is refused (403), and no entry stays behind.
    assert (await client.get("/api/messages", params={"scope": "all"}, headers=api_headers(user))).status_code == 403
    assert await admin.fetchval("select count(*) from public.audit_log where actor_id = $1", user.id) == 0


async def test_the_api_ignores_x_forwarded_for_from_an_untrusted_peer(
    client: httpx.AsyncClient, make_user: Any, admin: asyncpg.Connection
) -> None:
    user = await make_user()
    resp = await client.post("/api/messages", json={"content": "Hola"}, headers=api_headers(user))
    assert resp.status_code == 201, resp.text
    found = await entry(admin, "message.create", resp.json()["id"])
    assert (found["ip"], found["user_agent"]) == ("127.0.0.1", API_UA)


# -----------------------------------------------------------------------------------------------
# The request's origin, read safely
# -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "ip", "user_agent"),
    [
        ({"x-forwarded-for": "2001:db8::5, 10.0.0.1", "user-agent": "ua"}, "2001:db8::5", "ua"),
        ({"x-forwarded-for": " 192.0.2.1 ", "x-real-ip": "192.0.2.99"}, "192.0.2.1", None),
        ({"x-forwarded-for": "unknown, 10.0.0.1", "x-real-ip": "192.0.2.7"}, "192.0.2.7", None),
        ({"x-real-ip": "192.0.2.8"}, "192.0.2.8", None),
        ({"x-forwarded-for": "<script>", "x-real-ip": "nope", "user-agent": ""}, None, None),
        ({"user-agent": "x" * 2000}, None, "x" * 500),
        ({}, None, None),
        ("not json at all", None, None),
        ('["a", "list"]', None, None),
    ],
    ids=["ipv6", "trimmed", "invalid-first", "real-ip", "all-invalid", "long-agent", "none", "bad-json", "not-object"],
)
async def test_the_origin_is_read_safely(
    res: Resources, make_user: Any, admin: asyncpg.Connection, headers: Any, ip: str | None, user_agent: str | None
) -> None:
    user = await make_user()
    message_id = await postgrest(
        res, user, "insert into public.messages (content) values ('Hola') returning id::text", headers=headers
    )
    found = await entry(admin, "message.create", message_id)
    assert (found["actor"], found["ip"], found["user_agent"]) == (user.id, ip, user_agent)


# -----------------------------------------------------------------------------------------------
# Users write nothing; they read their own entries, admins all
# -----------------------------------------------------------------------------------------------


async def own_entry(res: Resources, user: Any, admin: asyncpg.Connection) -> int:
    """An entry of the user's own, made the legitimate way (a message created)."""
    message_id = await postgrest(res, user, "insert into public.messages (content) values ('Mío') returning id::text")
    return int(await admin.fetchval("select id from public.audit_log where entity_id = $1", message_id))


async def test_users_cannot_insert_entries(res: Resources, make_user: Any, admin: asyncpg.Connection) -> None:
    user, boss = await make_user(), await make_user(admin=True)
    for who in (user, boss):
        forged = "insert into public.audit_log (actor_id, action, ip) values ((select auth.uid()), 'login_success', '1.2.3.4')"
        assert await postgrest_error(res, who, forged) == "42501"
        # Positive control: on the same path, an action of theirs does write an entry.
        assert await own_entry(res, who, admin) > 0
    assert await admin.fetchval("select count(*) from public.audit_log where ip = '1.2.3.4'") == 0


async def test_users_cannot_change_or_remove_entries(res: Resources, make_user: Any, admin: asyncpg.Connection) -> None:
    user, boss = await make_user(), await make_user(admin=True)
    for who in (user, boss):
        own = await own_entry(res, who, admin)
        # Positive control: the entry is theirs to read, so a refusal is not a hidden row.
        assert await postgrest(res, who, "select action from public.audit_log where id = $1", own) == "message.create"
        for sql in (
            "update public.audit_log set action = 'nada' where id = $1",
            "delete from public.audit_log where id = $1",
        ):
            assert await postgrest_error(res, who, sql, own) == "42501"
        assert await admin.fetchval("select action from public.audit_log where id = $1", own) == "message.create"


async def test_users_cannot_call_the_writers(res: Resources, make_user: Any, admin: asyncpg.Connection) -> None:
    user = await make_user()
    record = "select private.record_audit('login_success', (select auth.uid()), 'user', null, '{}'::jsonb)"
    write = (
        "select private.write_audit((select auth.uid()), 'login_success', 'user', array[null::text],"
        " array['{}'::jsonb])"
    )
    for sql in (record, write):
        assert await postgrest_error(res, user, sql) == "42501"
    assert (
        await admin.fetchval(
            "select count(*) from public.audit_log where actor_id = $1 and action = 'login_success'", user.id
        )
        == 0
    )
    # Positive control: the service may record an action that changes no table.
    async with service_tx(res.pool, {"x-forwarded-for": "192.0.2.50", "user-agent": "svc"}) as conn:
        await conn.execute("select private.record_audit('logout', $1::uuid, 'user', $1::text, '{}'::jsonb)", user.id)
    found = await entry(admin, "logout", user.id)
    assert (found["actor"], found["ip"], found["user_agent"]) == (user.id, "192.0.2.50", "svc")


async def test_users_read_their_own_entries_and_admins_all(
    res: Resources, make_user: Any, admin: asyncpg.Connection
) -> None:
    a, b, boss = await make_user(), await make_user(), await make_user(admin=True)
    mine, theirs = await own_entry(res, a, admin), await own_entry(res, b, admin)
    visible = "select array_agg(id order by id) from public.audit_log where id = any($1::bigint[])"
    assert await postgrest(res, a, visible, [mine, theirs]) == [mine]
    assert await postgrest(res, b, visible, [mine, theirs]) == [theirs]
    assert await postgrest(res, boss, visible, [mine, theirs]) == [mine, theirs]
    assert await postgrest(res, a, "select count(*) from public.audit_log where actor_id <> $1::uuid", a.id) == 0
    # anon reads nothing at all.
    async with res.pool.acquire() as conn, conn.transaction():
        await conn.execute("select set_config('role', 'anon', true)")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.fetchval("select count(*) from public.audit_log")

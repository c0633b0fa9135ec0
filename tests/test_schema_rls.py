"""Row-level security, table by table: what each kind of caller may do to user A's rows.

Callers: the owner (A), another user (B), an admin and anon, each in its own transaction on the
app connection (login role `authenticator`), switched exactly as PostgREST switches. Every case
runs in a transaction that is rolled back, so the cases are independent.
Outcomes: OK (the statement touches A's row), HIDDEN (no error, zero rows) and DENIED (42501:
permission denied, or a new row refused by a policy).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest
from schema_helpers import (
    ANON,
    Person,
    add_contact,
    add_group,
    add_message,
    create_person,
    delete_people,
    phone,
    refused,
    session,
)

OK, HIDDEN, DENIED = "ok", "hidden", "denied"
ACTORS = ("owner", "other", "admin", "anon")
OPS = ("select", "insert", "update", "delete")
TABLES = (
    "profiles",
    "contacts",
    "groups",
    "group_contacts",
    "messages",
    "message_groups",
    "deliveries",
    "notifications",
    "audit_log",
)

# What each caller may do to A's rows: (owner, other, admin, anon).
OWNED = {
    "select": (OK, HIDDEN, OK, DENIED),
    "insert": (OK, DENIED, OK, DENIED),
    "update": (OK, HIDDEN, OK, DENIED),
    "delete": (OK, HIDDEN, OK, DENIED),
}
EXPECTED: dict[str, dict[str, tuple[str, str, str, str]]] = {
    # Profiles are made by the auth trigger and removed with the user; nobody else adds or removes one.
    "profiles": {
        "select": (OK, HIDDEN, OK, DENIED),
        "insert": (DENIED, DENIED, DENIED, DENIED),
        "update": (OK, HIDDEN, OK, DENIED),
        "delete": (DENIED, DENIED, DENIED, DENIED),
    },
    "contacts": OWNED,
    "groups": OWNED,
    "group_contacts": OWNED,
    "messages": OWNED,
    "message_groups": OWNED,
    # Only the worker writes deliveries.
    "deliveries": {
        "select": (OK, HIDDEN, OK, DENIED),
        "insert": (DENIED, DENIED, DENIED, DENIED),
        "update": (DENIED, DENIED, DENIED, DENIED),
        "delete": (DENIED, DENIED, DENIED, DENIED),
    },
    # An admin reads everyone's notifications but writes only their own.
    "notifications": {
        "select": (OK, HIDDEN, OK, DENIED),
        "insert": (OK, DENIED, DENIED, DENIED),
        "update": (OK, HIDDEN, HIDDEN, DENIED),
        "delete": (OK, HIDDEN, HIDDEN, DENIED),
    },
    # Written only by the database's own triggers and the service (20261206000100_audit_trail):
    # users read their own entries, admins all; nobody acting as a user adds, rewrites or removes one.
    "audit_log": {
        "select": (OK, HIDDEN, OK, DENIED),
        "insert": (DENIED, DENIED, DENIED, DENIED),
        "update": (DENIED, DENIED, DENIED, DENIED),
        "delete": (DENIED, DENIED, DENIED, DENIED),
    },
}


@dataclass
class World:
    a: Person
    b: Person
    admin: Person
    rows: dict[str, Any]  # A's rows, by name

    def actor(self, name: str) -> Person | str:
        return {"owner": self.a, "other": self.b, "admin": self.admin, "anon": ANON}[name]


async def own_rows(admin: asyncpg.Connection, owner: Person) -> dict[str, Any]:
    c1, c2 = await add_contact(admin, owner), await add_contact(admin, owner)
    g1, g2 = await add_group(admin, owner, [c1]), await add_group(admin, owner)
    m1 = await add_message(admin, owner, [g1])
    d1 = await admin.fetchval(
        """insert into public.deliveries (message_id, created_by, contact_id, phone, idempotency_key)
           values ($1::uuid, $2::uuid, $3::uuid, $4, $5) returning id::text""",
        m1,
        owner.id,
        c1,
        phone(),
        uuid.uuid4().hex,
    )
    n1 = await admin.fetchval(
        "insert into public.notifications (user_id, type, title, message) values ($1::uuid, 'info', 'T', 'M')"
        " returning id::text",
        owner.id,
    )
    a1 = await admin.fetchval(
        "insert into public.audit_log (actor_id, action) values ($1::uuid, 'test.seed') returning id", owner.id
    )
    return {"c1": c1, "c2": c2, "g1": g1, "g2": g2, "m1": m1, "d1": d1, "n1": n1, "a1": a1}


@pytest.fixture(scope="module")
async def world(owner_conn: asyncpg.Connection) -> AsyncIterator[World]:
    a = await create_person(owner_conn)
    b = await create_person(owner_conn)
    admin = await create_person(owner_conn, is_admin=True)
    rows = await own_rows(owner_conn, a)
    rows["b"] = await own_rows(owner_conn, b)
    yield World(a, b, admin, rows)
    await delete_people(owner_conn, [a, b, admin])


def statement(table: str, op: str, w: World) -> tuple[str, list[Any]]:
    """The statement that tries `op` on A's row of `table` (insert: a new row owned by A)."""
    r, a = w.rows, w.a.id
    keys: dict[str, tuple[str, list[Any]]] = {
        "profiles": ("id = $1::uuid", [a]),
        "contacts": ("id = $1::uuid", [r["c1"]]),
        "groups": ("id = $1::uuid", [r["g1"]]),
        "group_contacts": ("group_id = $1::uuid and contact_id = $2::uuid", [r["g1"], r["c1"]]),
        "messages": ("id = $1::uuid", [r["m1"]]),
        "message_groups": ("message_id = $1::uuid and group_id = $2::uuid", [r["m1"], r["g1"]]),
        "deliveries": ("id = $1::uuid", [r["d1"]]),
        "notifications": ("id = $1::uuid", [r["n1"]]),
        "audit_log": ("id = $1", [r["a1"]]),
    }
    where, args = keys[table]
    if op == "select":
        return f"select 1 from public.{table} where {where}", args
    if op == "delete":
        return f"delete from public.{table} where {where} returning 1", args
    if op == "update":
        change = {
            "profiles": "display_name = 'changed'",
            "contacts": "name = 'changed'",
            "groups": "description = 'changed'",
            "group_contacts": "added_at = now()",
            "messages": "content = 'changed'",
            "message_groups": "group_id = group_id",
            "deliveries": "state = 'sent'",
            "notifications": "is_read = true",
            "audit_log": "action = 'rewritten'",
        }[table]
        return f"update public.{table} set {change} where {where} returning 1", args
    inserts: dict[str, tuple[str, list[Any]]] = {
        "profiles": ("insert into public.profiles (id) values ($1::uuid) returning 1", [a]),
        "contacts": (
            "insert into public.contacts (created_by, name, phone) values ($1::uuid, 'New', $2) returning 1",
            [a, phone()],
        ),
        "groups": (
            "insert into public.groups (created_by, name) values ($1::uuid, $2) returning 1",
            [a, "New " + uuid.uuid4().hex[:6]],
        ),
        "group_contacts": (
            "insert into public.group_contacts (group_id, contact_id, created_by)"
            " values ($1::uuid, $2::uuid, $3::uuid) returning 1",
            [r["g1"], r["c2"], a],
        ),
        "messages": ("insert into public.messages (created_by, content) values ($1::uuid, 'New') returning 1", [a]),
        "message_groups": (
            "insert into public.message_groups (message_id, group_id, created_by)"
            " values ($1::uuid, $2::uuid, $3::uuid) returning 1",
            [r["m1"], r["g2"], a],
        ),
        "deliveries": (
            "insert into public.deliveries (message_id, created_by, phone, idempotency_key)"
            " values ($1::uuid, $2::uuid, $3, $4) returning 1",
            [r["m1"], a, phone(), uuid.uuid4().hex],
        ),
        "notifications": (
            "insert into public.notifications (user_id, type, title, message)"
            " values ($1::uuid, 'info', 'New', 'New') returning 1",
            [a],
        ),
        "audit_log": ("insert into public.audit_log (actor_id, action) values ($1::uuid, 'test.new') returning 1", [a]),
    }
    return inserts[table]


MATRIX = [
    pytest.param(table, op, actor, EXPECTED[table][op][i], id=f"{table}-{op}-{actor}-{EXPECTED[table][op][i]}")
    for table in TABLES
    for op in OPS
    for i, actor in enumerate(ACTORS)
]


@pytest.mark.parametrize(("table", "op", "actor", "outcome"), MATRIX)
async def test_rls_matrix(
    app_pool: asyncpg.Pool, owner_conn: asyncpg.Connection, world: World, table: str, op: str, actor: str, outcome: str
) -> None:
    sql, args = statement(table, op, world)
    if op != "insert":
        # The row is there: HIDDEN means RLS hid it, not that it is missing.
        where_sql = sql.replace(" returning 1", "")
        probe = "select count(*) from public." + table + " where " + where_sql.split(" where ", 1)[1]
        assert await owner_conn.fetchval(probe, *args) == 1
    async with session(app_pool, world.actor(actor)) as conn:
        if outcome == DENIED:
            await refused(conn.fetch(sql, *args), "42501")
        else:
            rows = await conn.fetch(sql, *args)
            assert len(rows) == (1 if outcome == OK else 0)


def test_the_matrix_covers_every_table_and_operation() -> None:
    assert {(t, o) for t, o, _, _ in (p.values for p in MATRIX)} == {(t, o) for t in TABLES for o in OPS}


async def test_matrix_tables_are_the_guides_tables(owner_conn: asyncpg.Connection) -> None:
    present = {
        r["tablename"] for r in await owner_conn.fetch("select tablename from pg_tables where schemaname = 'public'")
    }
    assert set(TABLES) <= present


# -----------------------------------------------------------------------------------------------
# Links across owners, owner spoofing
# -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("claimed_owner", ["B", "A"])
async def test_b_cannot_attach_a_contact_of_a_to_a_group_of_b(
    app_pool: asyncpg.Pool, world: World, claimed_owner: str
) -> None:
    """As B, with either owner on the link: B's own (the composite FK refuses A's contact) or A's (RLS)."""
    owner = world.b.id if claimed_owner == "B" else world.a.id
    async with session(app_pool, world.b) as conn:
        await refused(
            conn.execute(
                "insert into public.group_contacts (group_id, contact_id, created_by) values ($1::uuid, $2::uuid, $3::uuid)",
                world.rows["b"]["g1"],
                world.rows["c2"],
                owner,
            ),
            "23503" if claimed_owner == "B" else "42501",
        )


async def test_b_cannot_attach_a_contact_of_a_to_a_group_of_b_with_the_default_owner(
    app_pool: asyncpg.Pool, world: World
) -> None:
    async with session(app_pool, world.b) as conn:
        await refused(
            conn.execute(
                "insert into public.group_contacts (group_id, contact_id) values ($1::uuid, $2::uuid)",
                world.rows["b"]["g1"],
                world.rows["c2"],
            ),
            "23503",
        )


@pytest.mark.parametrize("claimed_owner", ["B", "A"])
async def test_b_cannot_attach_a_group_of_a_to_a_message_of_b(
    app_pool: asyncpg.Pool, world: World, claimed_owner: str
) -> None:
    owner = world.b.id if claimed_owner == "B" else world.a.id
    async with session(app_pool, world.b) as conn:
        await refused(
            conn.execute(
                "insert into public.message_groups (message_id, group_id, created_by) values ($1::uuid, $2::uuid, $3::uuid)",
                world.rows["b"]["m1"],
                world.rows["g2"],
                owner,
            ),
            "23503" if claimed_owner == "B" else "42501",
        )


async def test_b_cannot_point_a_link_of_b_at_a_contact_of_a(app_pool: asyncpg.Pool, world: World) -> None:
    async with session(app_pool, world.b) as conn:
        await refused(
            conn.execute(
                "update public.group_contacts set contact_id = $1::uuid where group_id = $2::uuid",
                world.rows["c2"],
                world.rows["b"]["g1"],
            ),
            "23503",
        )


async def test_an_admin_cannot_link_rows_of_two_owners(app_pool: asyncpg.Pool, world: World) -> None:
    for owner in (world.a.id, world.b.id):
        async with session(app_pool, world.admin) as conn:
            await refused(
                conn.execute(
                    "insert into public.group_contacts (group_id, contact_id, created_by)"
                    " values ($1::uuid, $2::uuid, $3::uuid)",
                    world.rows["b"]["g1"],
                    world.rows["c2"],
                    owner,
                ),
                "23503",
            )


SPOOFS = {
    "contacts": "insert into public.contacts (created_by, name, phone) values ($1::uuid, 'X', '+56911112222')",
    "groups": "insert into public.groups (created_by, name) values ($1::uuid, 'Spoofed')",
    "messages": "insert into public.messages (created_by, content) values ($1::uuid, 'Spoofed')",
    "notifications": "insert into public.notifications (user_id, type, title, message) values ($1::uuid, 'info', 'X', 'X')",
    "audit_log": "insert into public.audit_log (actor_id, action) values ($1::uuid, 'spoofed')",
}


@pytest.mark.parametrize("table", sorted(SPOOFS))
async def test_a_cannot_insert_a_row_owned_by_b(app_pool: asyncpg.Pool, world: World, table: str) -> None:
    async with session(app_pool, world.a) as conn:
        await refused(conn.execute(SPOOFS[table], world.b.id), "42501")


async def test_a_cannot_insert_links_owned_by_b(app_pool: asyncpg.Pool, world: World) -> None:
    rb = world.rows["b"]
    async with session(app_pool, world.a) as conn:
        await refused(
            conn.execute(
                "insert into public.group_contacts (group_id, contact_id, created_by) values ($1::uuid, $2::uuid, $3::uuid)",
                rb["g1"],
                rb["c2"],
                world.b.id,
            ),
            "42501",
        )
    async with session(app_pool, world.a) as conn:
        await refused(
            conn.execute(
                "insert into public.message_groups (message_id, group_id, created_by) values ($1::uuid, $2::uuid, $3::uuid)",
                rb["m1"],
                rb["g2"],
                world.b.id,
            ),
            "42501",
        )


@pytest.mark.parametrize("table", ["contacts", "groups", "messages"])
async def test_an_owner_cannot_give_a_row_away(app_pool: asyncpg.Pool, world: World, table: str) -> None:
    key = {"contacts": "c1", "groups": "g1", "messages": "m1"}[table]
    for actor in (world.a, world.admin):
        async with session(app_pool, actor) as conn:
            await refused(
                conn.execute(
                    f"update public.{table} set created_by = $1::uuid where id = $2::uuid", world.b.id, world.rows[key]
                ),
                "42501",
            )


async def test_b_cannot_hang_a_message_on_a_series_of_a(
    app_pool: asyncpg.Pool, owner_conn: asyncpg.Connection, world: World
) -> None:
    """recurrence_parent_id is the worker's: a user cannot write it (column grants), so A's
    next-occurrence slot stays free."""
    async with session(app_pool, world.b) as conn:
        await refused(
            conn.fetchval(
                "insert into public.messages (content, recurrence_parent_id) values ('Squat', $1::uuid) returning id",
                world.rows["m1"],
            ),
            "42501",
        )
    async with session(app_pool, world.b, commit=True) as conn:
        made = await conn.fetchval("insert into public.messages (content) values ('Squat') returning id")
    async with session(app_pool, world.b) as conn:
        await refused(
            conn.execute(
                "update public.messages set recurrence_parent_id = $1::uuid where id = $2::uuid", world.rows["m1"], made
            ),
            "42501",
        )
    assert (
        await owner_conn.fetchval(
            "select count(*) from public.messages where recurrence_parent_id = $1::uuid", world.rows["m1"]
        )
        == 0
    )
    await owner_conn.execute("delete from public.messages where id = $1", made)


# -----------------------------------------------------------------------------------------------
# Columns and operations the policies alone do not cover
# -----------------------------------------------------------------------------------------------


async def test_a_user_cannot_change_their_own_role(
    app_pool: asyncpg.Pool, owner_conn: asyncpg.Connection, world: World
) -> None:
    async with session(app_pool, world.a) as conn:
        await refused(
            conn.execute("update public.profiles set role = 'admin' where id = $1::uuid", world.a.id), "42501"
        )
    async with session(app_pool, world.a) as conn:
        # Their other fields stay theirs to change.
        assert (
            await conn.fetchval(
                "update public.profiles set display_name = 'Ana', timezone = 'America/Santiago'"
                " where id = $1::uuid returning display_name",
                world.a.id,
            )
            == "Ana"
        )
    assert await owner_conn.fetchval("select role from public.profiles where id = $1::uuid", world.a.id) == "user"


async def test_an_admin_can_change_a_role(app_pool: asyncpg.Pool, world: World) -> None:
    async with session(app_pool, world.admin) as conn:
        assert (
            await conn.fetchval(
                "update public.profiles set role = 'admin' where id = $1::uuid returning role", world.b.id
            )
            == "admin"
        )


async def test_a_profile_id_cannot_change(app_pool: asyncpg.Pool, world: World) -> None:
    async with session(app_pool, world.admin) as conn:
        moved = await conn.fetchval(
            "update public.profiles set id = $1::uuid where id = $2::uuid returning id::text", world.b.id, world.a.id
        )
        assert moved == world.a.id


async def test_users_cannot_set_a_groups_contact_count(
    app_pool: asyncpg.Pool, owner_conn: asyncpg.Connection, world: World
) -> None:
    async with session(app_pool, world.a) as conn:
        await refused(
            conn.execute("update public.groups set contact_count = 999 where id = $1::uuid", world.rows["g1"]), "42501"
        )
    async with session(app_pool, world.a) as conn:
        await refused(conn.execute("insert into public.groups (name, contact_count) values ('Seeded', 50)"), "42501")
    assert (
        await owner_conn.fetchval("select contact_count from public.groups where id = $1::uuid", world.rows["g1"]) == 1
    )


@pytest.mark.parametrize("table", TABLES)
@pytest.mark.parametrize("actor", ["owner", "admin", "anon"])
async def test_nobody_acting_as_a_user_can_truncate(
    app_pool: asyncpg.Pool, world: World, table: str, actor: str
) -> None:
    """TRUNCATE skips RLS and row triggers (the append-only audit log, the counters)."""
    async with session(app_pool, world.actor(actor)) as conn:
        await refused(conn.execute(f"truncate public.{table} cascade"), "42501")


async def test_the_audit_log_refuses_rewrites_even_with_privileges(
    owner_conn: asyncpg.Connection, world: World
) -> None:
    """The trigger is the second wall: it holds for a role that was granted update and delete."""
    tx = owner_conn.transaction()
    await tx.start()
    try:
        await owner_conn.execute("grant update, delete on public.audit_log to authenticated")
        await owner_conn.execute("create policy probe_all on public.audit_log for all to authenticated using (true)")
        await owner_conn.execute(
            "select set_config('role', 'authenticated', true), set_config('request.jwt.claims', $1, true)",
            json.dumps({"sub": world.admin.id, "role": "authenticated"}),
        )
        for sql in (
            "update public.audit_log set action = 'x' where id = $1",
            "delete from public.audit_log where id = $1",
        ):
            with pytest.raises(asyncpg.PostgresError) as info:
                async with owner_conn.transaction():
                    await owner_conn.execute(sql, world.rows["a1"])
            assert info.value.sqlstate == "42501"
    finally:
        await tx.rollback()


async def test_the_audit_log_is_intact(owner_conn: asyncpg.Connection, world: World) -> None:
    assert (
        await owner_conn.fetchval("select action from public.audit_log where id = $1", world.rows["a1"]) == "test.seed"
    )


# -----------------------------------------------------------------------------------------------
# Realtime: private topics user:<id>
# -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def realtime_rows(owner_conn: asyncpg.Connection, world: World) -> AsyncIterator[dict[str, str]]:
    """One broadcast row on A's topic and one on B's: topic -> row id."""
    rows = {}
    for person in (world.a, world.b):
        topic = "user:" + person.id
        rows[topic] = await owner_conn.fetchval(
            "insert into realtime.messages (topic, extension, payload, event, private)"
            " values ($1, 'broadcast', '{}'::jsonb, 'probe', true) returning id::text",
            topic,
        )
    yield rows
    await owner_conn.execute("delete from realtime.messages where id = any($1::uuid[])", list(rows.values()))


@pytest.mark.parametrize(
    ("actor", "topic_of", "visible"),
    [
        ("owner", "A", True),
        ("other", "A", False),
        ("other", "B", True),
        ("owner", "B", False),
        ("admin", "A", True),
    ],
    ids=["A-joins-A", "B-joins-A", "B-joins-B", "A-joins-B", "admin-joins-A"],
)
async def test_realtime_private_topics(
    app_pool: asyncpg.Pool, world: World, realtime_rows: dict[str, str], actor: str, topic_of: str, visible: bool
) -> None:
    """Joined to a topic it may read, a caller reads that topic's rows and never another's."""
    topic = "user:" + (world.a.id if topic_of == "A" else world.b.id)
    async with session(app_pool, world.actor(actor)) as conn:
        await conn.execute("select set_config('realtime.topic', $1, true)", topic)
        seen = await conn.fetch(
            "select topic from realtime.messages where id = any($1::uuid[])", list(realtime_rows.values())
        )
    assert {r["topic"] for r in seen} == ({topic} if visible else set())


async def test_realtime_is_closed_to_anon(app_pool: asyncpg.Pool, world: World, realtime_rows: dict[str, str]) -> None:
    async with session(app_pool, ANON) as conn:
        await conn.execute("select set_config('realtime.topic', $1, true)", "user:" + world.a.id)
        await refused(conn.fetch("select 1 from realtime.messages"), "42501")


async def test_users_cannot_broadcast_on_their_topic(app_pool: asyncpg.Pool, world: World) -> None:
    async with session(app_pool, world.a) as conn:
        await conn.execute("select set_config('realtime.topic', $1, true)", "user:" + world.a.id)
        await refused(
            conn.execute(
                "insert into realtime.messages (topic, extension, event, payload, private)"
                " values ($1, 'broadcast', 'x', '{}', true)",
                "user:" + world.a.id,
            ),
            "42501",
        )

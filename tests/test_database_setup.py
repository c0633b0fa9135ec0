"""The bootstrap and the migration runner, on a real PostgreSQL."""

from __future__ import annotations

import json
from typing import Any

import asyncpg
import pytest

from whatsched.db import bootstrap, migrate
from whatsched.db.embedded import free_port
from whatsched.db.setup import Prepared
from whatsched.errors import ConfigError


async def test_every_migration_is_recorded_where_the_supabase_cli_looks(admin: asyncpg.Connection) -> None:
    rows = await admin.fetch("select version, name, statements from supabase_migrations.schema_migrations")
    recorded = {r["version"]: r["name"] for r in rows}
    on_disk = {m.version: m.name for m in migrate.discover()}
    assert recorded == on_disk
    assert all(r["statements"] for r in rows)


async def test_a_second_run_finds_nothing_pending(admin: asyncpg.Connection) -> None:
    assert await migrate.migrate(admin) == []
    assert await migrate.pending(admin) == []


async def test_a_migration_edited_after_it_was_applied_is_refused_in_one_sentence(admin: asyncpg.Connection) -> None:
    first = migrate.discover()[0]
    tx = admin.transaction()
    await tx.start()
    try:
        await admin.execute(
            "update supabase_migrations.schema_migrations set statements = array[$2] where version = $1",
            first.version,
            first.sql + "\n-- an earlier edit",
        )
        with pytest.raises(ConfigError) as err:
            await migrate.pending(admin)
        assert first.version in str(err.value) and "recreate it" in str(err.value)
    finally:
        await tx.rollback()
    # Positive control: the file as applied is not flagged.
    assert await migrate.pending(admin) == []


async def test_bootstrap_is_idempotent_and_not_supabase(admin: asyncpg.Connection) -> None:
    assert await bootstrap.is_supabase(admin) is False
    assert await bootstrap.bootstrap(admin) is True
    assert await bootstrap.bootstrap(admin) is True
    roles = await admin.fetch(
        "select rolname, rolbypassrls, rolcanlogin from pg_roles"
        " where rolname in ('anon', 'authenticated', 'service_role', 'authenticator') order by rolname"
    )
    assert [(r["rolname"], r["rolbypassrls"], r["rolcanlogin"]) for r in roles] == [
        ("anon", False, False),
        ("authenticated", False, False),
        ("authenticator", False, True),
        ("service_role", True, False),
    ]


async def test_auth_helpers_read_request_claims_like_supabase(admin: asyncpg.Connection) -> None:
    claims = {
        "sub": "6b1f8c2e-8f5e-4c3a-9d7e-2a1b3c4d5e6f",
        "role": "authenticated",
        "email": "a@example.com",
    }
    async with admin.transaction():
        await admin.execute("select set_config('request.jwt.claims', $1, true)", json.dumps(claims))
        row = await admin.fetchrow(
            "select auth.uid()::text as uid, auth.role() as role, auth.email() as email, auth.jwt() ->> 'sub' as sub"
        )
    assert dict(row) == {
        "uid": claims["sub"],
        "role": "authenticated",
        "email": "a@example.com",
        "sub": claims["sub"],
    }


async def test_realtime_send_becomes_a_notification_locally(prepared: Prepared) -> None:
    listener = await asyncpg.connect(prepared.admin_url)
    received: list[str] = []
    await listener.add_listener("realtime", lambda *args: received.append(args[3]))
    sender = await asyncpg.connect(prepared.admin_url)
    await sender.execute("""select realtime.send('{"x": 1}'::jsonb, 'ping', 'user:abc', true)""")
    await sender.close()
    for _ in range(50):
        if received:
            break
        import asyncio

        await asyncio.sleep(0.02)
    await listener.close()
    assert json.loads(received[0]) == {
        "topic": "user:abc",
        "event": "ping",
        "payload": {"x": 1},
        "private": True,
    }


async def test_the_app_connection_is_not_a_superuser(prepared: Prepared) -> None:
    conn = await asyncpg.connect(prepared.app_url)
    try:
        row = await conn.fetchrow(
            "select current_user, rolsuper, rolbypassrls from pg_roles where rolname = current_user"
        )
    finally:
        await conn.close()
    assert row["current_user"] == "authenticator"
    assert row["rolsuper"] is False and row["rolbypassrls"] is False


async def test_deleting_a_user_removes_everything_they_own(admin: asyncpg.Connection, make_user: Any) -> None:
    user = await make_user()
    await admin.execute(
        "insert into public.messages (created_by, content) values ($1::uuid, 'hola'), ($1::uuid, 'chao')", user.id
    )
    await admin.execute("delete from auth.users where id = $1::uuid", user.id)
    left = await admin.fetchval(
        "select (select count(*) from public.messages where created_by = $1::uuid)"
        " + (select count(*) from public.message_counts where created_by = $1::uuid)"
        " + (select count(*) from public.profiles where id = $1::uuid)",
        user.id,
    )
    assert left == 0


async def test_every_user_may_join_the_whatsapp_topic_but_not_anothers(
    prepared: Prepared, admin: asyncpg.Connection, make_user: Any
) -> None:
    a, b = await make_user(), await make_user()
    # Only this test's rows count: realtime.send stores every broadcast, as Realtime's does.
    ids = await admin.fetch(
        "insert into realtime.messages (topic, extension, event, payload, private) values"
        " ('whatsapp', 'broadcast', 'whatsapp_status', '{}', true), ('user:' || $1, 'broadcast', 'x', '{}', true)"
        " returning id",
        a.id,
    )
    conn = await asyncpg.connect(prepared.app_url)
    try:
        seen = {}
        for topic in ("whatsapp", f"user:{a.id}"):
            async with conn.transaction():
                await conn.execute(
                    "select set_config('role', 'authenticated', true), set_config('request.jwt.claims', $1, true),"
                    " set_config('realtime.topic', $2, true)",
                    json.dumps(b.claims),
                    topic,
                )
                seen[topic] = await conn.fetchval(
                    "select count(*) from realtime.messages where topic = $1 and id = any($2::uuid[])",
                    topic,
                    [r["id"] for r in ids],
                )
    finally:
        await conn.close()
    assert seen == {"whatsapp": 1, f"user:{a.id}": 0}


async def test_profile_timezones_are_checked_by_the_database(admin: asyncpg.Connection, make_user: Any) -> None:
    user = await make_user()
    await admin.execute("update public.profiles set timezone = 'America/Santiago' where id = $1::uuid", user.id)
    with pytest.raises(asyncpg.CheckViolationError):
        await admin.execute("update public.profiles set timezone = 'Mars/Olympus' where id = $1::uuid", user.id)


def test_free_ports_are_never_handed_out_twice() -> None:
    """Servers started one after the other (the embedded PostgreSQL, API processes, bridges) each
    ask for a free port before any of them binds it; the kernel may offer the same port again, and
    two API processes of one test were once both given 53583."""
    ports = [free_port() for _ in range(1_000)]
    assert len(set(ports)) == len(ports)

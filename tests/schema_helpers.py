"""Helpers for the schema suites: users made the way GoTrue makes them, sessions as each kind of
caller (a user, anon, the service), owned rows, and assertions on SQLSTATEs."""

from __future__ import annotations

import contextlib
import json
import secrets
import uuid
from collections.abc import AsyncIterator, Awaitable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest

ANON = "anon"
SERVICE = "service_role"


@dataclass(frozen=True)
class Person:
    id: str
    email: str

    @property
    def claims(self) -> dict[str, Any]:
        return {"sub": self.id, "role": "authenticated", "email": self.email}


Actor = Person | str  # a Person (authenticated), ANON or SERVICE


async def create_person(admin: asyncpg.Connection, *, is_admin: bool = False) -> Person:
    """An auth.users row as GoTrue writes it; the trigger gives it a profile."""
    person = Person(str(uuid.uuid4()), f"schema-{uuid.uuid4().hex[:10]}@example.com")
    await admin.execute(
        """insert into auth.users (id, email, aud, role, raw_app_meta_data, raw_user_meta_data, created_at)
           values ($1::uuid, $2, 'authenticated', 'authenticated', $3::jsonb, $4::jsonb, now())""",
        person.id,
        person.email,
        json.dumps({"provider": "email", "providers": ["email"]}),
        json.dumps({}),
    )
    if is_admin:
        await admin.execute("update public.profiles set role = 'admin' where id = $1::uuid", person.id)
    return person


async def delete_people(admin: asyncpg.Connection, people: list[Person]) -> None:
    """Everything they own goes with them (cascades), so no due message is left for other suites.
    Messages first, while their owner exists, so message_counts counts them down (a cascade from
    auth.users removes the counters instead: 20261129000500_derived_counts skips owners that are gone)."""
    ids = [p.id for p in people]
    await admin.execute("delete from public.messages where created_by = any($1::uuid[])", ids)
    await admin.execute("delete from auth.users where id = any($1::uuid[])", ids)


async def become(conn: asyncpg.Connection, actor: Actor) -> None:
    """Inside a transaction: switch to the actor exactly as PostgREST does."""
    if actor == ANON:
        await conn.execute("select set_config('role', 'anon', true)")
    elif actor == SERVICE:
        await conn.execute(
            "select set_config('role', 'service_role', true),"
            " set_config('request.jwt.claims', '{\"role\":\"service_role\"}', true)"
        )
    else:
        assert isinstance(actor, Person)
        await conn.execute(
            "select set_config('role', 'authenticated', true), set_config('request.jwt.claims', $1, true)",
            json.dumps(actor.claims),
        )


class _Rollback(Exception):
    pass


@asynccontextmanager
async def session(pool: asyncpg.Pool, actor: Actor, *, commit: bool = False) -> AsyncIterator[asyncpg.Connection]:
    """One transaction as `actor` on the app pool; rolled back unless commit=True."""
    async with pool.acquire() as conn:
        try:
            async with conn.transaction():
                await become(conn, actor)
                yield conn
                if not commit:
                    raise _Rollback
        except _Rollback:
            pass


async def refused(call: Awaitable[Any], sqlstate: str, hint: str | None = None) -> asyncpg.PostgresError:
    """Assert that the call fails with this SQLSTATE (and stable code in HINT, when given)."""
    with pytest.raises(asyncpg.PostgresError) as info:
        await call
    err = info.value
    assert err.sqlstate == sqlstate, f"expected {sqlstate}, got {err.sqlstate}: {err}"
    if hint is not None:
        assert getattr(err, "hint", None) == hint, f"expected hint {hint!r}, got {getattr(err, 'hint', None)!r}"
    return err


def phone() -> str:
    """A valid E.164 number, unique enough for one run."""
    return "+569" + str(uuid.uuid4().int)[:8]


# -----------------------------------------------------------------------------------------------
# Owned rows, written by the admin (superuser) connection on an owner's behalf
# -----------------------------------------------------------------------------------------------


async def add_contact(
    admin: asyncpg.Connection, owner: Person, *, number: str | None = None, active: bool = True, opted_out: bool = False
) -> str:
    return str(
        await admin.fetchval(
            """insert into public.contacts (created_by, name, phone, is_active, opted_out_at)
               values ($1::uuid, 'Contact', $2, $3, case when $4 then now() end) returning id""",
            owner.id,
            number or phone(),
            active,
            opted_out,
        )
    )


async def add_group(admin: asyncpg.Connection, owner: Person, contact_ids: Sequence[str] = ()) -> str:
    group_id = str(
        await admin.fetchval(
            "insert into public.groups (created_by, name) values ($1::uuid, $2) returning id",
            owner.id,
            "Group " + uuid.uuid4().hex[:8],
        )
    )
    if contact_ids:
        await link_contacts(admin, owner, group_id, list(contact_ids))
    return group_id


async def link_contacts(admin: asyncpg.Connection, owner: Person, group_id: str, contact_ids: list[str]) -> None:
    await admin.execute(
        """insert into public.group_contacts (group_id, contact_id, created_by)
           select $1::uuid, c, $3::uuid from unnest($2::uuid[]) c""",
        group_id,
        contact_ids,
        owner.id,
    )


async def add_message(
    admin: asyncpg.Connection, owner: Person, group_ids: Sequence[str] = (), content: str | None = None
) -> str:
    # Distinct text by default: the spam guard refuses the same text to the same groups within a day.
    content = content or "Hola " + secrets.token_hex(4)
    message_id = str(
        await admin.fetchval(
            "insert into public.messages (created_by, content) values ($1::uuid, $2) returning id", owner.id, content
        )
    )
    if group_ids:
        await admin.execute(
            """insert into public.message_groups (message_id, group_id, created_by)
               select $1::uuid, g, $3::uuid from unnest($2::uuid[]) g""",
            message_id,
            list(group_ids),
            owner.id,
        )
    return message_id


async def status_of(admin: asyncpg.Connection, message_id: str) -> str:
    return str(await admin.fetchval("select status from public.messages where id = $1::uuid", message_id))


# -----------------------------------------------------------------------------------------------
# The dispatcher's claim
# -----------------------------------------------------------------------------------------------


async def claim(conn: asyncpg.Connection, limit: int = 10, ahead_s: float = 60) -> list[str]:
    """private.claim_messages(limit, ahead_s) as the caller of `conn`: the ids it started
    (scheduled messages due within ahead_s seconds, now `sending` with their deliveries)."""
    rows = await conn.fetch("select c::text as id from private.claim_messages($1, $2) c", limit, ahead_s)
    return [r["id"] for r in rows]


@contextlib.asynccontextmanager
async def lifted_schedule_limit(admin: asyncpg.Connection) -> AsyncIterator[None]:
    """For tests that schedule many messages as one user within a minute (the limit is 10)."""
    limit = await admin.fetchval("select schedule_per_minute from private.settings")
    await admin.execute("update private.settings set schedule_per_minute = 1000")
    try:
        yield
    finally:
        await admin.execute("update private.settings set schedule_per_minute = $1", limit)

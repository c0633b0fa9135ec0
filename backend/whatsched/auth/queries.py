"""The SQL about the caller themselves, run in their own transaction (role authenticated +
claims): whether they are an admin (private.is_admin(), the helper the policies use) and their
profile."""

from __future__ import annotations

import asyncpg

from whatsched.auth.models import Profile


async def is_admin(conn: asyncpg.Connection) -> bool:
    """Whether the caller is an admin (private.is_admin(), the helper the policies use)."""
    return bool(await conn.fetchval("select private.is_admin()"))


async def profile(conn: asyncpg.Connection, user_id: str) -> Profile | None:
    """The user's profile row (RLS: one's own, or any for an admin); None when there is none."""
    row = await conn.fetchrow(
        "select display_name, role, timezone, default_country from public.profiles where id = $1::uuid", user_id
    )
    return Profile(**dict(row)) if row else None

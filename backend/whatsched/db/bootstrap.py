"""Give a plain PostgreSQL what a Supabase project already has (roles, auth, realtime)."""

from __future__ import annotations

from importlib import resources

import asyncpg


async def is_supabase(conn: asyncpg.Connection) -> bool:
    """Hosted and local Supabase both run as `supabase_admin` and ship GoTrue's own migrations."""
    return bool(
        await conn.fetchval(
            "select exists(select 1 from pg_roles where rolname = 'supabase_admin')"
            " and to_regclass('auth.schema_migrations') is not null"
        )
    )


def bootstrap_sql() -> str:
    return resources.files("whatsched.db").joinpath("bootstrap.sql").read_text(encoding="utf-8")


async def bootstrap(conn: asyncpg.Connection, authenticator_password: str | None = None) -> bool:
    """Apply the bootstrap unless this is Supabase. Returns whether it was applied."""
    if await is_supabase(conn):
        return False
    # Roles are cluster-wide: serialise concurrent bootstraps of several databases.
    async with conn.transaction():
        await conn.execute("select pg_advisory_xact_lock(7265001)")
        await conn.execute(bootstrap_sql())
        if authenticator_password:
            await conn.execute(f"alter role authenticator password {_quote_literal(authenticator_password)}")
    return True


def _quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"

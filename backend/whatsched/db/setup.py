"""Bring a database to the latest schema: bootstrap (plain Postgres only) then migrations."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from whatsched import rules
from whatsched.config import Settings
from whatsched.db import bootstrap, migrate, pool
from whatsched.errors import ConfigError


@dataclass(frozen=True)
class Prepared:
    admin_url: str
    app_url: str
    supabase: bool
    applied: list[str]


async def connect_admin(settings: Settings) -> asyncpg.Connection:
    url = pool.admin_url(settings)
    try:
        return await asyncpg.connect(url, timeout=10)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        where = "DATABASE_URL" if settings.database_url else "the embedded PostgreSQL"
        raise ConfigError(f"cannot connect to {where} ({_safe(url)}): {exc}") from exc


async def prepare(settings: Settings) -> Prepared:
    conn = await connect_admin(settings)
    try:
        applied_bootstrap = await bootstrap.bootstrap(conn, settings.authenticator_password)
        applied = await migrate.migrate(conn)
        await rules.publish_settings(conn, settings)
    finally:
        await conn.close()
    return Prepared(
        admin_url=pool.admin_url(settings),
        app_url=pool.app_url(settings, supabase=not applied_bootstrap),
        supabase=not applied_bootstrap,
        applied=[f"{m.version}_{m.name}" for m in applied],
    )


def _safe(url: str) -> str:
    """The URL without its password, for messages."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.password:
        return url.replace(":" + parts.password + "@", ":***@")
    return url


async def resolve_app_url(settings: Settings) -> str:
    """The app connection for a process started on its own (the API or worker without `dev`)."""
    if settings.app_database_url:
        return settings.app_database_url
    conn = await connect_admin(settings)
    try:
        supabase = await bootstrap.is_supabase(conn)
    finally:
        await conn.close()
    return pool.app_url(settings, supabase=supabase)

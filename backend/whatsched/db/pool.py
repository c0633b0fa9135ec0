"""Connection pools and the two kinds of transaction: as a user (RLS) and as the service."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg

from whatsched.config import Settings


def admin_url(settings: Settings) -> str:
    """The owner connection (migrations, bootstrap). Defaults to the embedded server."""
    return settings.database_url or f"postgresql://postgres@127.0.0.1:{settings.embedded_pg_port}/postgres"


def app_url(settings: Settings, supabase: bool) -> str:
    """The connection for user work: never a superuser on a database we bootstrapped."""
    if settings.app_database_url:
        return settings.app_database_url
    url = admin_url(settings)
    if supabase:
        return url
    parts = urlsplit(url)
    auth = "authenticator"
    if settings.authenticator_password:
        auth += ":" + quote(settings.authenticator_password, safe="")
    host = parts.hostname or "127.0.0.1"
    netloc = f"{auth}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


async def _init_connection(conn: asyncpg.Connection) -> None:
    for name in ("json", "jsonb"):
        await conn.set_type_codec(name, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def create_pool(url: str, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        url, min_size=min_size, max_size=max_size, init=_init_connection, command_timeout=60
    )
    assert pool is not None
    return pool


@asynccontextmanager
async def user_tx(pool: asyncpg.Pool, claims: Mapping[str, Any]) -> AsyncIterator[asyncpg.Connection]:
    """One transaction as PostgREST runs it: role `authenticated` and the verified JWT claims."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "select set_config('role', 'authenticated', true), set_config('request.jwt.claims', $1, true)",
            json.dumps(dict(claims)),
        )
        yield conn


@asynccontextmanager
async def service_tx(pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Connection]:
    """One transaction as `service_role` (bypasses RLS): the worker and the auth provider."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "select set_config('role', 'service_role', true),"
            " set_config('request.jwt.claims', '{\"role\":\"service_role\"}', true)"
        )
        yield conn

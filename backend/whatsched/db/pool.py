"""Connection pools and the two kinds of transaction: as a user (RLS) and as the service."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
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


# The statement timeout a user transaction runs under, kept on each connection (a custom setting)
# so user_tx applies it in the same round trip as the role and claims.
USER_TIMEOUT_SETTING = "whatsched.user_statement_timeout"
# As PostgREST does for the role it impersonates: the role's own `statement_timeout` setting
# (Supabase gives `authenticated` 8 s; the bootstrap mirrors it), unless configured otherwise.
ROLE_TIMEOUT = """
select coalesce(
  (select split_part(c, '=', 2) from pg_catalog.pg_db_role_setting s, unnest(s.setconfig) as c
   where s.setrole = 'authenticated'::regrole and s.setdatabase in (0, (select oid from pg_catalog.pg_database
                                                                          where datname = current_database()))
     and c like 'statement_timeout=%'
   order by s.setdatabase desc limit 1),
  '0')"""


def _initializer(user_statement_timeout: str | None) -> Callable[[asyncpg.Connection], Awaitable[None]]:
    async def init(conn: asyncpg.Connection) -> None:
        for name in ("json", "jsonb"):
            await conn.set_type_codec(name, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
        timeout = user_statement_timeout or await conn.fetchval(ROLE_TIMEOUT)
        await conn.execute(f"select set_config('{USER_TIMEOUT_SETTING}', $1, false)", timeout)

    return init


async def _reset(conn: asyncpg.Connection) -> None:
    """On release: only an abandoned transaction needs undoing. Role and claims are always
    transaction-local, so asyncpg's full reset (UNLISTEN, RESET ALL, ...) would be a wasted round trip."""
    if not conn.is_closed() and conn.is_in_transaction():
        await conn.execute("rollback")


async def create_pool(
    url: str, min_size: int = 1, max_size: int = 10, user_statement_timeout: str | None = None
) -> asyncpg.Pool:
    """`user_statement_timeout` (a Postgres interval such as '8s'; '0' for none) bounds every
    user_tx; by default it is the `authenticated` role's own setting, as on Supabase."""
    pool = await asyncpg.create_pool(
        url,
        min_size=min_size,
        max_size=max_size,
        init=_initializer(user_statement_timeout),
        reset=_reset,
        command_timeout=60,
    )
    assert pool is not None
    return pool


def sql_literal(text: str) -> str:
    """An escape-string literal, safe whatever standard_conforming_strings says."""
    return "E'" + text.replace("\\", "\\\\").replace("'", "''") + "'"


def request_headers(ip: str | None, user_agent: str | None) -> dict[str, str]:
    """What a transaction carries as `request.headers`, named as PostgREST names them (lowercase):
    the client IP as the API resolved it (trusted proxies) and the user agent. The audit trail's
    triggers read them (20261206000100_audit_trail)."""
    headers = {"x-forwarded-for": ip, "user-agent": user_agent}
    return {name: value for name, value in headers.items() if value}


def user_begin(claims: Mapping[str, Any], headers: Mapping[str, str] | None = None) -> str:
    """The text that opens a user transaction, in one round trip: BEGIN, then one select that sets
    the role, the verified JWT claims, the request's headers and the role's statement timeout."""
    literal = sql_literal(json.dumps(dict(claims)))
    header_literal = sql_literal(json.dumps(dict(headers or {})))
    return (
        "begin; select set_config('role', 'authenticated', true),"
        f" set_config('request.jwt.claims', {literal}, true),"
        f" set_config('request.headers', {header_literal}, true),"
        f" set_config('statement_timeout', current_setting('{USER_TIMEOUT_SETTING}'), true)"
    )


@asynccontextmanager
async def user_tx(
    pool: asyncpg.Pool, claims: Mapping[str, Any], headers: Mapping[str, str] | None = None
) -> AsyncIterator[asyncpg.Connection]:
    """One transaction as PostgREST runs it: role `authenticated`, the verified JWT claims, the
    request's headers (`request_headers()`; none for callers without a request) and the role's
    statement timeout (57014 when a statement runs longer; the API answers 503).

    BEGIN and the settings travel in one round trip (a simple-protocol batch), so inside it use
    plain SQL `savepoint` rather than asyncpg's `conn.transaction()`. Committed when the block
    ends, rolled back if it raises."""
    async with begun_tx(pool, user_begin(claims, headers)) as conn:
        yield conn


@asynccontextmanager
async def begun_tx(pool: asyncpg.Pool, begin: str) -> AsyncIterator[asyncpg.Connection]:
    """user_tx with its opening text already built (`user_begin`; the API keeps it per token).
    A read costs three round trips: this text, the query, COMMIT."""
    async with pool.acquire() as conn:
        await conn.execute(begin)
        try:
            yield conn
        except BaseException:
            if not conn.is_closed() and conn.is_in_transaction():
                await conn.execute("rollback")
            raise
        await conn.execute("commit")


@asynccontextmanager
async def service_tx(pool: asyncpg.Pool, headers: Mapping[str, str] | None = None) -> AsyncIterator[asyncpg.Connection]:
    """One transaction as `service_role` (bypasses RLS): the worker and the auth provider; with
    `headers` when it acts for a request (the audit of a login records its IP and user agent)."""
    header_literal = sql_literal(json.dumps(dict(headers or {})))
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "select set_config('role', 'service_role', true),"
            " set_config('request.jwt.claims', '{\"role\":\"service_role\"}', true),"
            f" set_config('request.headers', {header_literal}, true)"
        )
        yield conn

"""Who is calling and a transaction as them, tuned for the messages API's hot reads.

Same contract as whatsched.api.deps (`caller`, `user_conn`): verified claims, then one transaction
with role `authenticated` and request.jwt.claims, so RLS decides. Three differences, all for speed:
  - every dependency is `async def` (a plain `def` dependency costs a thread-pool hop per request);
  - a verified token's claims are remembered until it expires (at most CLAIMS_TTL_S): verifying an
    ES256 signature is the single most expensive step of a cached read. A token is never
    re-verified later than it could have been revoked by expiry, so nothing is accepted that the
    verifier would refuse, except within CLAIMS_TTL_S of a JWKS key being withdrawn;
  - BEGIN and the two set_config calls travel in one round trip (a simple-protocol batch);
  - transactions run on the messages API's own pool (`lifespan`), whose connections skip asyncpg's
    session reset (UNLISTEN, RESET ALL...: one more round trip per request). Nothing here sets
    session state: role and claims are transaction-local, and asyncpg still rolls back any
    transaction left open before a connection returns to the pool.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from fastapi import Depends, FastAPI, Query, Request

from whatsched.api.common import PageParams
from whatsched.api.deps import Caller, Resources, bearer_token, verify_token
from whatsched.auth.client_ip import client_ip
from whatsched.db import pool as db_pool
from whatsched.db.setup import resolve_app_url

CLAIMS_TTL_S = 60.0
MAX_CACHED_TOKENS = 10_000

# token -> (claims, claims as a SQL literal, monotonic time it stops being trusted)
_verified: dict[str, tuple[dict[str, Any], str, float]] = {}


def sql_literal(text: str) -> str:
    """An escape-string literal: safe whatever standard_conforming_strings says."""
    return "E'" + text.replace("\\", "\\\\").replace("'", "''") + "'"


def _begin_sql(literal: str) -> str:
    return f"begin; select set_config('role', 'authenticated', true), set_config('request.jwt.claims', {literal}, true)"


POOL_SIZE = 10


async def _no_session_state(conn: asyncpg.Connection) -> None:
    """asyncpg's own _reset already rolled back any open transaction; there is nothing else to undo."""


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Runs inside the app's lifespan (FastAPI nests a router's), so resources already exist."""
    res: Resources = app.state.resources
    url = await resolve_app_url(res.settings)
    pool = await asyncpg.create_pool(
        url, min_size=2, max_size=POOL_SIZE, init=db_pool._init_connection, reset=_no_session_state, command_timeout=60
    )
    assert pool is not None
    app.state.messages_pool = pool
    try:
        yield
    finally:
        await pool.close()


async def resources(request: Request) -> Resources:
    res: Resources = request.app.state.resources
    return res


async def _claims(res: Resources, token: str) -> tuple[dict[str, Any], str]:
    now = time.monotonic()
    hit = _verified.get(token)
    if hit is not None and hit[2] > now:
        return hit[0], hit[1]
    claims = await verify_token(res, token)
    remaining = float(claims.get("exp", 0)) - time.time()
    if len(_verified) >= MAX_CACHED_TOKENS:
        _verified.clear()
    literal = sql_literal(json.dumps(claims))
    _verified[token] = (claims, literal, now + min(CLAIMS_TTL_S, max(remaining, 0.0)))
    return claims, literal


async def caller(request: Request, res: Resources = Depends(resources)) -> Caller:
    token = bearer_token(request)
    claims, _ = await _claims(res, token)
    return Caller(
        id=str(claims["sub"]),
        claims=claims,
        token=token,
        ip=client_ip(request, res.settings.trusted_proxies),
        user_agent=request.headers.get("user-agent"),
    )


async def user_conn(
    request: Request, who: Caller = Depends(caller), res: Resources = Depends(resources)
) -> AsyncIterator[asyncpg.Connection]:
    """A transaction as the caller: committed when the route returns, rolled back if it raises."""
    _, literal = await _claims(res, who.token)
    pool: asyncpg.Pool = request.app.state.messages_pool
    async with pool.acquire() as conn:
        await conn.execute(_begin_sql(literal))
        try:
            yield conn
        except BaseException:
            if not conn.is_closed():
                await conn.execute("rollback")
            raise
        await conn.execute("commit")


async def page_params(
    page: int = Query(1, ge=1, le=100_000, description="1-based page number"),
    page_size: int = Query(20, ge=1, le=100, description="items per page (max 100)"),
) -> PageParams:
    return PageParams(page=page, page_size=page_size)

"""A user transaction runs under a statement timeout, as PostgREST runs Supabase's `authenticated`
(8 s there): a statement that runs longer is cancelled, the API answers 503 with a JSON body, and
the connection goes back to the pool clean."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from whatsched.api.app import create_app
from whatsched.config import Settings
from whatsched.db.pool import user_tx


@pytest.fixture
async def quick_app(settings: Settings) -> AsyncIterator[FastAPI]:
    """The API with a 300 ms user statement timeout."""
    application = create_app(settings.model_copy(update={"user_statement_timeout": "300ms"}))
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def quick_client(quick_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=quick_app, client=("127.0.0.1", 50001))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http


async def test_a_statement_past_the_timeout_is_answered_503_and_the_pool_stays_clean(
    quick_app: FastAPI, quick_client: httpx.AsyncClient, make_user: Any, admin: asyncpg.Connection
) -> None:
    user = await make_user()
    made = await quick_client.post("/api/messages", json={"content": "Hola"}, headers=user.headers)
    assert made.status_code == 201, made.text
    mid = made.json()["id"]
    # Someone holds the row: the edit waits for the lock, past the timeout.
    async with admin.transaction():
        await admin.execute("select 1 from public.messages where id = $1::uuid for update", mid)
        started = asyncio.get_running_loop().time()
        resp = await quick_client.put(f"/api/messages/{mid}", json={"content": "Otra"}, headers=user.headers)
        waited = asyncio.get_running_loop().time() - started
    assert resp.status_code == 503, resp.text
    body = resp.json()
    assert body["code"] == "statement_timeout" and set(body) == {"detail", "code", "errors"}
    assert waited < 5, waited
    # Every pooled connection still works, with no transaction left open and no timeout outside user work.
    pool: asyncpg.Pool = quick_app.state.resources.pool
    for _ in range(2 * pool.get_max_size()):
        ok = await quick_client.put(f"/api/messages/{mid}", json={"content": "Otra"}, headers=user.headers)
        assert ok.status_code == 200 and ok.json()["content"] == "Otra", ok.text
    async with pool.acquire() as conn:
        assert not conn.is_in_transaction()
        assert await conn.fetchval("show statement_timeout") == "0"
        assert await conn.fetchval("select current_user") == "authenticator"


async def test_the_direct_path_is_bounded_the_same_way(quick_app: FastAPI, make_user: Any) -> None:
    user = await make_user()
    pool: asyncpg.Pool = quick_app.state.resources.pool
    with pytest.raises(asyncpg.QueryCanceledError):
        async with user_tx(pool, user.claims) as conn:
            assert await conn.fetchval("show statement_timeout") == "300ms"
            await conn.execute("select pg_sleep(2)")
    async with user_tx(pool, user.claims) as conn:
        assert await conn.fetchval("select (select auth.uid())::text") == user.id

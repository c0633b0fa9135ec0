"""The database's health check: whether a pooled connection can be had and answers a trivial
statement, each within the timeout."""

from __future__ import annotations

import asyncpg


async def ping(pool: asyncpg.Pool, within_s: float) -> None:
    """Raises whatever keeps the database from answering (no connection, timeout, error); each
    step (getting a connection, the statement) may take up to `within_s` seconds."""
    async with pool.acquire(timeout=within_s) as conn:
        await conn.fetchval("select 1", timeout=within_s)

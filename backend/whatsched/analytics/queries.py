"""The SQL of analytics: the public.analytics_* functions (security invoker), run in the caller's
transaction so RLS decides what is counted, and the caller's today. Each answers JSON (decoded
by the connection's json codec)."""

from __future__ import annotations

from datetime import date
from typing import Any

import asyncpg


async def dashboard(conn: asyncpg.Connection, everyone: bool, days: int) -> Any:
    """Totals, success rate and the last `days` days (public.analytics_dashboard)."""
    return await conn.fetchval("select public.analytics_dashboard($1, $2)", everyone, days)


async def messages(conn: asyncpg.Connection, first: date, last: date, everyone: bool, top: int) -> Any:
    """Messages created in [first, last], per day and status, and the `top` with the most recipients."""
    return await conn.fetchval("select public.analytics_messages($1, $2, $3, $4)", first, last, everyone, top)


async def groups(conn: asyncpg.Connection, everyone: bool, limit: int, offset: int) -> Any:
    """A page of groups' reach, by name ({items, total})."""
    return await conn.fetchval("select public.analytics_groups($1, $2, $3)", everyone, limit, offset)


async def today(conn: asyncpg.Connection) -> date:
    """Today in the caller's profile timezone."""
    day: date = await conn.fetchval("select (now() at time zone private.caller_timezone())::date")
    return day

"""The SQL of report exports: the rows of each report (messages, deliveries, contacts), read in
the caller's transaction through a server-side cursor, so a report of any size is streamed.

Rows are what the caller's RLS shows, narrowed to their own unless `everyone` (an admin's
scope=all), created within [first, last] days in the caller's timezone when given.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any

import asyncpg

# The rows of each report: the caller's own unless $1 (scope=all), created within [$2, $3] days in
# the caller's timezone when given.
_DAY_FILTER = """($2::date is null or {t}.created_at >= ($2::date::timestamp at time zone private.caller_timezone()))
  and ($3::date is null or {t}.created_at < (($3::date + 1)::timestamp at time zone private.caller_timezone()))"""

QUERIES: dict[str, str] = {
    "messages": f"""
select m.id, m.content, m.status, m.scheduled_for, m.sent_at, m.recipient_count, m.delivered_count,
       m.failed_count,
       coalesce((select string_agg(g.name, '; ' order by g.name)
                 from public.message_groups mg join public.groups g on g.id = mg.group_id
                 where mg.message_id = m.id), '') as groups,
       m.created_by, m.created_at, m.updated_at
from public.messages m
where ($1 or m.created_by = (select auth.uid())) and {_DAY_FILTER.format(t="m")}
order by m.created_at, m.id""",
    "deliveries": f"""
select d.id, d.message_id, d.contact_name, d.phone, d.state, d.attempts, d.last_error_code, d.last_error,
       d.sent_at, d.delivered_at, d.read_at, d.failed_at, d.created_by, d.created_at
from public.deliveries d
where ($1 or d.created_by = (select auth.uid())) and {_DAY_FILTER.format(t="d")}
order by d.created_at, d.id""",
    "contacts": f"""
select c.id, c.name, c.phone, c.email, c.is_active, c.opted_out_at,
       coalesce((select string_agg(g.name, '; ' order by g.name)
                 from public.group_contacts gc join public.groups g on g.id = gc.group_id
                 where gc.contact_id = c.id), '') as groups,
       c.created_by, c.created_at, c.updated_at
from public.contacts c
where ($1 or c.created_by = (select auth.uid())) and {_DAY_FILTER.format(t="c")}
order by c.created_at, c.id""",
}


@dataclass
class ReportRows:
    """An open report: its column names (known even when there is no row) and its cursor."""

    columns: list[str]
    cursor: Any

    async def batch(self, size: int) -> list[asyncpg.Record]:
        """The next `size` rows at most; an empty list at the end."""
        rows: list[asyncpg.Record] = await self.cursor.fetch(size)
        return rows


async def open_report(
    conn: asyncpg.Connection, kind: str, everyone: bool, first: date | None, last: date | None
) -> ReportRows:
    """A server-side cursor over the report's rows (the transaction must stay open while it is read)."""
    statement = await conn.prepare(QUERIES[kind])
    return ReportRows([a.name for a in statement.get_attributes()], await statement.cursor(everyone, first, last))

"""The SQL of the caller's replies: a page, newest first, optionally from one contact or answering
one message, built as the response's JSON by Postgres. RLS keeps every user to the replies kept for
them (an admin sees all, so the page names the caller's own)."""

from __future__ import annotations

from uuid import UUID

import asyncpg

from whatsched.db.paging import page_json
from whatsched.db.sql import Args, ts

# The guide's reply shape, over replies `r` left-joined to their contact `c`.
REPLY_JSON = f"""json_build_object(
  'id', r.id,
  'contact_id', r.contact_id,
  'contact_name', c.name,
  'phone', r.phone,
  'text', r.text,
  'kind', r.kind,
  'message_id', r.message_id,
  'received_at', {ts("r.received_at")}
)"""

NEWEST_FIRST = "r.received_at desc, r.id desc"


def replies_query(
    contact_id: UUID | None, message_id: UUID | None, page: int, page_size: int
) -> tuple[str, list[object]]:
    """One statement: the page of the caller's replies (their own, even for an admin) and how many
    match in all, as the response's JSON text."""
    arg = Args()
    where = ["r.created_by = (select auth.uid())"]
    if contact_id is not None:
        where.append(f"r.contact_id = {arg(contact_id)}::uuid")
    if message_id is not None:
        where.append(f"r.message_id = {arg(message_id)}::uuid")
    condition = " and ".join(where)
    sql = page_json(
        "public.replies",
        "r",
        condition,
        NEWEST_FIRST,
        REPLY_JSON,
        page,
        page_size,
        joins="left join public.contacts c on c.id = r.contact_id",
    )
    return sql, arg.values


async def replies_page(
    conn: asyncpg.Connection, contact_id: UUID | None, message_id: UUID | None, page: int, page_size: int
) -> str:
    sql, args = replies_query(contact_id, message_id, page, page_size)
    text: str = await conn.fetchval(sql, *args)
    return text

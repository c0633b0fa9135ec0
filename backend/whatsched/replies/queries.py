"""The SQL of the caller's replies: a page, newest first, optionally from one contact or answering
one message. RLS keeps every user to the replies kept for them (an admin sees all)."""

from __future__ import annotations

from uuid import UUID

import asyncpg

COLUMNS = (
    "r.id::text, r.contact_id::text, c.name as contact_name, r.phone, r.text, r.kind, r.message_id::text, r.received_at"
)
FILTER = """where r.created_by = (select auth.uid())
  and ($1::uuid is null or r.contact_id = $1) and ($2::uuid is null or r.message_id = $2)"""


async def replies_page(
    conn: asyncpg.Connection, contact_id: UUID | None, message_id: UUID | None, limit: int, offset: int
) -> tuple[list[asyncpg.Record], int]:
    """The caller's replies (their own, even for an admin) and how many match in all."""
    rows: list[asyncpg.Record] = await conn.fetch(
        f"""select {COLUMNS}, count(*) over () as total
            from public.replies r left join public.contacts c on c.id = r.contact_id
            {FILTER}
            order by r.received_at desc, r.id desc
            limit $3 offset $4""",
        contact_id,
        message_id,
        limit,
        offset,
    )
    if rows:
        return rows, int(rows[0]["total"])
    total: int = await conn.fetchval(f"select count(*) from public.replies r {FILTER}", contact_id, message_id)
    return rows, total

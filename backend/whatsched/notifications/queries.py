"""The SQL of notifications: the caller's inbox (a page, the unread count, marking read,
deleting) and creating a notification for the caller.

Every function runs inside the caller's transaction (role authenticated + claims). The inbox is
the caller's own notifications (an admin's RLS view is wider, so every inbox query names
`user_id = auth.uid()`); marking and deleting are allowed by RLS only on one's own.
"""

from __future__ import annotations

from uuid import UUID

import asyncpg

from whatsched.notifications.texts import NotificationText

# The guide's notification shape, as columns.
COLUMNS = "id::text, type, title, message, is_read, related_entity_type, related_entity_id::text, created_at"


async def inbox_page(
    conn: asyncpg.Connection, is_read: bool | None, kind: str | None, limit: int, offset: int
) -> tuple[list[asyncpg.Record], int]:
    """The page of the caller's notifications (newest first, optionally only read/unread and of
    one type), and how many there are in all."""
    rows: list[asyncpg.Record] = await conn.fetch(
        f"""select {COLUMNS}, count(*) over () as total
            from public.notifications
            where user_id = (select auth.uid())
              and ($1::boolean is null or is_read = $1) and ($2::text is null or type = $2)
            order by created_at desc, id desc
            limit $3 offset $4""",
        is_read,
        kind,
        limit,
        offset,
    )
    if rows:
        total = int(rows[0]["total"])
    else:  # past the last page: the window count has no row to ride on
        total = await conn.fetchval(
            """select count(*) from public.notifications
               where user_id = (select auth.uid())
                 and ($1::boolean is null or is_read = $1) and ($2::text is null or type = $2)""",
            is_read,
            kind,
        )
    return rows, total


async def unread_count(conn: asyncpg.Connection) -> int:
    count: int = await conn.fetchval(
        "select count(*) from public.notifications where user_id = (select auth.uid()) and not is_read"
    )
    return count


async def mark_all_read(conn: asyncpg.Connection) -> int:
    """Mark every unread notification of the caller read; how many were."""
    status: str = await conn.execute(
        "update public.notifications set is_read = true where user_id = (select auth.uid()) and not is_read"
    )
    return int(status.split()[-1])


async def mark_read(conn: asyncpg.Connection, notification_id: UUID) -> asyncpg.Record | None:
    """The notification (COLUMNS) after marking it read; None when it is not the caller's."""
    row: asyncpg.Record | None = await conn.fetchrow(
        f"update public.notifications set is_read = true where id = $1 returning {COLUMNS}", notification_id
    )
    return row


async def delete(conn: asyncpg.Connection, notification_id: UUID) -> bool:
    """False when the notification is not the caller's (or does not exist)."""
    deleted = await conn.fetchval("delete from public.notifications where id = $1 returning id", notification_id)
    return deleted is not None


async def notify(conn: asyncpg.Connection, text: NotificationText, entity_type: str, entity_id: str) -> None:
    """A notification for the caller (RLS: a user may only create their own)."""
    await conn.execute(
        """insert into public.notifications (type, title, message, related_entity_type, related_entity_id)
           values ($1, $2, $3, $4, $5::uuid)""",
        text.type,
        text.title,
        text.message,
        entity_type,
        entity_id,
    )

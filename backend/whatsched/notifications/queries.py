"""The SQL of notifications: the caller's inbox (a page, the unread count, marking read,
deleting) and creating a notification for the caller.

Every function runs inside the caller's transaction (role authenticated + claims). The inbox is
the caller's own notifications (an admin's RLS view is wider, so every inbox query names
`user_id = auth.uid()`); marking and deleting are allowed by RLS only on one's own.
"""

from __future__ import annotations

from uuid import UUID

import asyncpg

from whatsched.db.paging import page_json
from whatsched.db.sql import Args, ts
from whatsched.notifications.texts import NotificationText

# The guide's notification shape, over a relation aliased `n`.
NOTIFICATION_JSON = f"""json_build_object(
  'id', n.id,
  'type', n.type,
  'title', n.title,
  'message', n.message,
  'is_read', n.is_read,
  'related_entity_type', n.related_entity_type,
  'related_entity_id', n.related_entity_id,
  'created_at', {ts("n.created_at")}
)"""

NEWEST_FIRST = "n.created_at desc, n.id desc"


def inbox_query(is_read: bool | None, kind: str | None, page: int, page_size: int) -> tuple[str, list[object]]:
    """One statement: the page of the caller's notifications (newest first, optionally only
    read/unread and of one type) and how many there are in all, as the response's JSON text."""
    arg = Args()
    where = ["n.user_id = (select auth.uid())"]
    if is_read is not None:
        where.append(f"n.is_read = {arg(is_read)}")
    if kind is not None:
        where.append(f"n.type = {arg(kind)}")
    condition = " and ".join(where)
    sql = page_json("public.notifications", "n", condition, NEWEST_FIRST, NOTIFICATION_JSON, page, page_size)
    return sql, arg.values


async def inbox_page(
    conn: asyncpg.Connection, is_read: bool | None, kind: str | None, page: int, page_size: int
) -> str:
    sql, args = inbox_query(is_read, kind, page, page_size)
    text: str = await conn.fetchval(sql, *args)
    return text


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


async def mark_read(conn: asyncpg.Connection, notification_id: UUID) -> str | None:
    """The notification's JSON after marking it read; None when it is not the caller's."""
    text: str | None = await conn.fetchval(
        f"update public.notifications n set is_read = true where n.id = $1 returning {NOTIFICATION_JSON}::text",
        notification_id,
    )
    return text


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

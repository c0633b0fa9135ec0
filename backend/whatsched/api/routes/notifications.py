"""Notifications: the caller's inbox (list, unread count, mark read, mark all read, delete).

The inbox is the caller's own notifications (an admin's RLS view is wider, so every query names
`user_id = auth.uid()`); marking and deleting are allowed by RLS only on one's own, so another
user's notification is a 404.
"""

from __future__ import annotations

from typing import Literal
from uuid import UUID

import asyncpg
from fastapi import APIRouter, Depends, Query, Response
from pydantic import BaseModel

from whatsched.api.common import Page, PageParams, UtcDateTime, page_params
from whatsched.api.deps import user_conn
from whatsched.api.errors import ApiError, responses

router = APIRouter(prefix="/api/notifications", tags=["notifications"])

NotificationType = Literal["success", "error", "warning", "info"]


class Notification(BaseModel):
    """The guide's notification JSON."""

    id: str
    type: NotificationType
    title: str
    message: str
    is_read: bool
    related_entity_type: Literal["message", "group", "contact"] | None
    related_entity_id: str | None
    created_at: UtcDateTime


class UnreadCount(BaseModel):
    count: int


class Updated(BaseModel):
    updated: int


COLUMNS = "id::text, type, title, message, is_read, related_entity_type, related_entity_id::text, created_at"


def _not_found(notification_id: UUID) -> ApiError:
    return ApiError(404, "notification_not_found", f"Notification {notification_id} was not found.")


@router.get("", response_model=Page[Notification], responses=responses(401, 422))
async def list_notifications(
    is_read: bool | None = Query(None, description="only read (true) or unread (false) notifications"),
    type: NotificationType | None = Query(None, description="only this type"),
    paging: PageParams = Depends(page_params),
    conn: asyncpg.Connection = Depends(user_conn, scope="function"),
) -> Page[Notification]:
    """Newest first."""
    rows = await conn.fetch(
        f"""select {COLUMNS}, count(*) over () as total
            from public.notifications
            where user_id = (select auth.uid())
              and ($1::boolean is null or is_read = $1) and ($2::text is null or type = $2)
            order by created_at desc, id desc
            limit $3 offset $4""",
        is_read,
        type,
        paging.page_size,
        paging.offset,
    )
    if rows:
        total = int(rows[0]["total"])
    else:  # past the last page: the window count has no row to ride on
        total = await conn.fetchval(
            """select count(*) from public.notifications
               where user_id = (select auth.uid())
                 and ($1::boolean is null or is_read = $1) and ($2::text is null or type = $2)""",
            is_read,
            type,
        )
    items = [Notification(**{k: v for k, v in row.items() if k != "total"}) for row in rows]
    return Page[Notification](items=items, total=total, page=paging.page, page_size=paging.page_size)


# Declared before /{notification_id} routes; the literal path wins for GET anyway.
@router.get("/unread-count", response_model=UnreadCount, responses=responses(401))
async def unread_count(conn: asyncpg.Connection = Depends(user_conn, scope="function")) -> UnreadCount:
    count = await conn.fetchval(
        "select count(*) from public.notifications where user_id = (select auth.uid()) and not is_read"
    )
    return UnreadCount(count=count)


@router.post("/mark-all-read", response_model=Updated, responses=responses(401))
async def mark_all_read(conn: asyncpg.Connection = Depends(user_conn, scope="function")) -> Updated:
    status = await conn.execute(
        "update public.notifications set is_read = true where user_id = (select auth.uid()) and not is_read"
    )
    return Updated(updated=int(status.split()[-1]))


@router.post("/mark-read/{notification_id}", response_model=Notification, responses=responses(401, 404, 422))
async def mark_read(
    notification_id: UUID, conn: asyncpg.Connection = Depends(user_conn, scope="function")
) -> Notification:
    row = await conn.fetchrow(
        f"update public.notifications set is_read = true where id = $1 returning {COLUMNS}", notification_id
    )
    if row is None:
        raise _not_found(notification_id)
    return Notification(**dict(row))


@router.delete("/{notification_id}", status_code=204, response_class=Response, responses=responses(401, 404, 422))
async def delete_notification(
    notification_id: UUID, conn: asyncpg.Connection = Depends(user_conn, scope="function")
) -> Response:
    deleted = await conn.fetchval("delete from public.notifications where id = $1 returning id", notification_id)
    if deleted is None:
        raise _not_found(notification_id)
    return Response(status_code=204)

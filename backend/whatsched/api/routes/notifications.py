"""Notifications: the caller's inbox (list, unread count, mark read, mark all read, delete).

The inbox is the caller's own notifications (an admin's RLS view is wider, so every query names
`user_id = auth.uid()`); marking and deleting are allowed by RLS only on one's own, so another
user's notification is a 404. Notification JSON is built in SQL (whatsched.notifications.queries)
and sent as is; the response models below document it.
"""

from __future__ import annotations

from typing import Literal
from uuid import UUID

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel

from whatsched.api.common import Page, pg_json
from whatsched.api.deps import CallerDep, PagingDep, ResourcesDep, UserConn, caller_tx
from whatsched.api.errors import ApiError, responses
from whatsched.api.fast_lane import fast_lane
from whatsched.models import UtcDateTime
from whatsched.notifications import queries
from whatsched.notifications.texts import NotificationType

router = APIRouter(prefix="/api/notifications", tags=["notifications"])


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


def _not_found(notification_id: UUID) -> ApiError:
    return ApiError(404, "notification_not_found", f"Notification {notification_id} was not found.")


@router.get("", response_model=Page[Notification], responses=responses(401, 422))
@fast_lane
async def list_notifications(
    *,
    is_read: bool | None = Query(None, description="only read (true) or unread (false) notifications"),
    type: NotificationType | None = Query(None, description="only this type"),
    paging: PagingDep,
    who: CallerDep,
    res: ResourcesDep,
) -> Response:
    """Newest first."""
    async with caller_tx(res, who) as conn:
        text = await queries.inbox_page(conn, is_read, type, paging.page, paging.page_size)
    return pg_json(text)


# Declared before /{notification_id} routes; the literal path wins for GET anyway.
@router.get("/unread-count", response_model=UnreadCount, responses=responses(401))
async def unread_count(conn: UserConn) -> UnreadCount:
    return UnreadCount(count=await queries.unread_count(conn))


@router.post("/mark-all-read", response_model=Updated, responses=responses(401))
async def mark_all_read(conn: UserConn) -> Updated:
    return Updated(updated=await queries.mark_all_read(conn))


@router.post("/mark-read/{notification_id}", response_model=Notification, responses=responses(401, 404, 422))
async def mark_read(notification_id: UUID, conn: UserConn) -> Response:
    text = await queries.mark_read(conn, notification_id)
    if text is None:
        raise _not_found(notification_id)
    return pg_json(text)


@router.delete("/{notification_id}", status_code=204, response_class=Response, responses=responses(401, 404, 422))
async def delete_notification(notification_id: UUID, conn: UserConn) -> Response:
    if not await queries.delete(conn, notification_id):
        raise _not_found(notification_id)
    return Response(status_code=204)

"""Replies: what the people the caller wrote to answered, newest first (GET /api/replies).

Each reply is kept once per user who sent that phone a message within REPLY_WINDOW_DAYS (never for
one who only has the phone as a contact); `kind` says what the whole text meant (`reply`,
`opt_out`, `opt_in`), `contact_id` is that user's contact with the phone, if any, and `message_id`
is the last message that user sent to it, while it exists (so a campaign's answers can be listed).
"""

from __future__ import annotations

from typing import Literal
from uuid import UUID

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel

from whatsched.api.common import Page, pg_json
from whatsched.api.deps import CallerDep, PagingDep, ResourcesDep, caller_tx
from whatsched.api.errors import responses
from whatsched.api.fast_lane import fast_lane
from whatsched.models import UtcDateTime
from whatsched.replies import queries

router = APIRouter(prefix="/api/replies", tags=["replies"])


class Reply(BaseModel):
    id: str
    contact_id: str | None
    contact_name: str | None
    phone: str
    text: str
    kind: Literal["reply", "opt_out", "opt_in"]
    message_id: str | None
    received_at: UtcDateTime


@router.get("", response_model=Page[Reply], responses=responses(401, 422))
@fast_lane
async def list_replies(
    *,
    contact_id: UUID | None = Query(None, description="only replies from this contact"),
    message_id: UUID | None = Query(None, description="only replies to this message"),
    paging: PagingDep,
    who: CallerDep,
    res: ResourcesDep,
) -> Response:
    # Newest first. The JSON is built by Postgres (whatsched.replies.queries); Reply documents it.
    async with caller_tx(res, who) as conn:
        text = await queries.replies_page(conn, contact_id, message_id, paging.page, paging.page_size)
    return pg_json(text)

"""The messages API: CRUD, state transitions, preview, stats and the dashboard.

Every route runs in the caller's transaction, so RLS decides what exists: another user's message
is a 404 `message_not_found`. Message JSON is built in SQL (whatsched.messages.queries) and sent
as is; the response models below document it. Creates, edits, deletes and transitions are audited
by the database's triggers (20261206000100_audit_trail), as they are for a supabase-js caller.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Literal
from uuid import UUID

import asyncpg
from fastapi import APIRouter, Body, Query, Response

from whatsched.api.common import QueryDateTime, audit_action, pg_json, read_all
from whatsched.api.deps import CallerDep, PagingDep, Resources, ResourcesDep, UserConn, caller_tx
from whatsched.api.errors import ApiError, rate_limit_headers, responses
from whatsched.api.fast_lane import fast_lane
from whatsched.auth.queries import is_admin
from whatsched.bridge_client import BridgeError
from whatsched.messages import queries
from whatsched.messages.models import (
    STATUSES,
    Dashboard,
    Message,
    MessageCreate,
    MessagePage,
    MessageUpdate,
    Preview,
    ScheduleBody,
    ScheduledMessage,
    Sort,
    Stats,
)
from whatsched.notifications import texts
from whatsched.notifications.queries import notify
from whatsched.rules import rate_limit_status

router = APIRouter(prefix="/api/messages", tags=["messages"])

BRIDGE_CHECK_TIMEOUT_S = 3.0
PREVIEW_SAMPLE = 10


def _not_found(message_id: str) -> ApiError:
    return ApiError(404, "message_not_found", f"Message {message_id} was not found.")


async def _link_groups(conn: asyncpg.Connection, message_id: str, group_ids: list[UUID], replace: bool) -> bool:
    ids = list(dict.fromkeys(str(g) for g in group_ids))
    try:
        return await queries.set_groups(conn, message_id, ids, replace)
    except asyncpg.ForeignKeyViolationError:
        # A group that does not exist or is someone else's: the same answer for both.
        raise ApiError(
            404,
            "related_not_found",
            "One of group_ids does not exist.",
            [{"field": "group_ids", "message": "contains an unknown group"}],
        ) from None


async def _message_or_404(conn: asyncpg.Connection, message_id: str) -> str:
    text = await queries.message_json(conn, message_id)
    if text is None:
        raise _not_found(message_id)
    return text


MESSAGE_ERRORS = responses(401, 404, 422)

# -----------------------------------------------------------------------------------------------
# Collection
# -----------------------------------------------------------------------------------------------


def _statuses(values: list[str] | None) -> list[str]:
    wanted = [s.strip() for v in values or [] for s in v.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in STATUSES]
    if unknown:
        raise ApiError(
            422,
            "validation_error",
            f"Unknown status {unknown[0]!r}; expected one of {', '.join(STATUSES)}.",
            [{"field": "status", "message": f"unknown status {unknown[0]!r}"}],
        )
    return list(dict.fromkeys(wanted))


@router.get("", response_model=MessagePage, responses=responses(401, 403, 422))
@fast_lane
async def list_messages(
    *,
    status: list[str] | None = Query(None, description="Repeat or comma-separate: draft,scheduled,..."),
    q: str | None = Query(None, max_length=200, description="Text in the content (case-insensitive)"),
    scheduled_from: QueryDateTime | None = Query(None, alias="from", description="scheduled_for ≥ this"),
    scheduled_to: QueryDateTime | None = Query(None, alias="to", description="scheduled_for < this"),
    created_from: QueryDateTime | None = Query(None),
    created_to: QueryDateTime | None = Query(None),
    group_id: UUID | None = Query(None),
    sort: Sort = Query("-created_at"),
    scope: Literal["mine", "all"] = Query("mine", description="all: every user's messages (admins only)"),
    paging: PagingDep,
    who: CallerDep,
    res: ResourcesDep,
) -> Response:
    """Your messages, newest first by default. Times without offset are read in your timezone."""
    filters = queries.ListFilters(statuses=_statuses(status), q=q or None, group_id=str(group_id) if group_id else None)
    async with caller_tx(res, who) as conn:
        filters.scheduled_from, filters.scheduled_to, filters.created_from, filters.created_to = await queries.localize(
            conn, scheduled_from, scheduled_to, created_from, created_to
        )
        if scope == "all":
            await read_all(conn, who, "message", "messages", q)
            filters.everyone = True
        text = await queries.list_messages(conn, filters, sort, paging.page, paging.page_size)
    return pg_json(text)


@router.post("", response_model=Message, status_code=201, responses=responses(400, 401, 404, 422))
async def create_message(body: MessageCreate, conn: UserConn) -> Response:
    """A new draft. Unknown (or someone else's) group ids answer 404 related_not_found. The
    database cleans the content and checks the send time (20261129000400_content_rules), and
    refuses a number_id you may not use (422 number_not_allowed). With `media_id` (one of your files,
    POST /api/media) the content is the attachment's caption and may be empty."""
    (at,) = await queries.localize(conn, body.scheduled_for)
    number_id = str(body.number_id) if body.number_id else None
    media_id = str(body.media_id) if body.media_id else None
    message_id = await queries.insert_message(conn, body.content, at, body.recurrence, number_id, media_id)
    await _link_groups(conn, message_id, body.group_ids, replace=False)
    return pg_json(await _message_or_404(conn, message_id), 201)


# Declared before /{message_id} so "dashboard" is never read as an id.
@router.get("/dashboard", response_model=Dashboard, responses=responses(401, 403, 422))
async def dashboard(
    *,
    scope: Literal["mine", "all"] = Query("mine", description="all: every user (admins only)"),
    who: CallerDep,
    conn: UserConn,
) -> Response:
    """public.dashboard_counts plus sends and failures per day over the last 30 days."""
    everyone = scope == "all"
    if everyone:
        if not await is_admin(conn):
            raise ApiError(403, "forbidden", "Only an admin can read everyone's dashboard.")
        await audit_action(conn, who, "analytics.read_all", "dashboard", None, {"route": "/api/messages/dashboard"})
    return pg_json(await queries.dashboard_json(conn, everyone))


# -----------------------------------------------------------------------------------------------
# One message
# -----------------------------------------------------------------------------------------------


@router.get(
    "/{message_id}",
    response_model=Message,
    responses={**responses(401, 404, 422), 304: {"description": "Not modified (If-None-Match matched the ETag)"}},
)
@fast_lane
async def get_message(message_id: UUID, who: CallerDep, res: ResourcesDep) -> Response:
    """Carries an ETag; send it back in If-None-Match to get 304 when nothing changed."""
    async with caller_tx(res, who) as conn:
        text = await _message_or_404(conn, str(message_id))
    return pg_json(text)


@router.put("/{message_id}", response_model=Message, responses=responses(400, 401, 404, 409, 422))
async def update_message(
    message_id: UUID,
    body: MessageUpdate,
    conn: UserConn,
) -> Response:
    """Partial update of content, group_ids, scheduled_for, recurrence, number_id and media_id (null
    detaches the file; the message then needs a text). Only draft,
    scheduled and paused messages can be edited (409 not_editable otherwise); number_id must be a
    WhatsApp number you may use (422 number_not_allowed)."""
    mid = str(message_id)
    sent = body.model_fields_set
    changes: dict[str, Any] = {}
    if "content" in sent:
        changes["content"] = body.content
    if "scheduled_for" in sent:
        (at,) = await queries.localize(conn, body.scheduled_for)
        changes["scheduled_for"] = at
    if "recurrence" in sent:
        changes["recurrence"] = body.recurrence
    if "number_id" in sent:
        changes["number_id"] = str(body.number_id) if body.number_id else None
    if "media_id" in sent:
        changes["media_id"] = str(body.media_id) if body.media_id else None
    if not await queries.update_message(conn, mid, changes):
        raise _not_found(mid)
    if "group_ids" in sent and await _link_groups(conn, mid, body.group_ids, replace=True) and not changes:
        await queries.touch(conn, mid)
    return pg_json(await _message_or_404(conn, mid))


@router.delete("/{message_id}", status_code=204, response_class=Response, responses=responses(401, 404, 409, 422))
async def delete_message(message_id: UUID, conn: UserConn) -> Response:
    """Refused while sending (409 message_sending): pause or cancel it first."""
    mid = str(message_id)
    was = await queries.delete_message(conn, mid)
    if was is None:
        raise _not_found(mid)
    if was == "sending":
        raise ApiError(409, "message_sending", "The message is being sent; pause or cancel it before deleting it.")
    return Response(status_code=204)


# -----------------------------------------------------------------------------------------------
# Transitions
# -----------------------------------------------------------------------------------------------


async def _whatsapp_connected(res: Resources) -> bool:
    try:
        state = await asyncio.wait_for(res.bridge.status(), BRIDGE_CHECK_TIMEOUT_S)
    except (BridgeError, TimeoutError):
        return False
    return state.get("status") == "connected"


@router.post(
    "/{message_id}/schedule",
    response_model=ScheduledMessage,
    responses=responses(400, 401, 404, 409, 422, 429),
)
async def schedule_message(
    *,
    message_id: UUID,
    body: ScheduleBody | None = Body(None),
    who: CallerDep,
    res: ResourcesDep,
) -> Response:
    """draft → scheduled. The database applies the rules: 10 per minute per user (429 with
    Retry-After), the send time, and the spam guard (422 spam_suspected naming the rules). When
    WhatsApp is not connected the message is still scheduled; the answer warns and a notification
    is created."""
    mid = str(message_id)
    # Ask the bridge before opening the transaction: a slow bridge must not hold a database connection.
    connected = await _whatsapp_connected(res)
    async with caller_tx(res, who) as conn:
        (at,) = await queries.localize(conn, body.scheduled_for if body else None)
        await queries.schedule(conn, mid, at)
        limit_headers = rate_limit_headers(await rate_limit_status(conn, "schedule"))
        warnings = [] if connected else ["whatsapp_disconnected"]
        if not connected:
            await notify(conn, texts.SCHEDULED_WHILE_DISCONNECTED, "message", mid)
        text = await _message_or_404(conn, mid)
    return pg_json(queries.with_warnings(text, warnings), headers=limit_headers)


async def _transition(conn: asyncpg.Connection, message_id: UUID, verb: queries.Transition) -> str:
    mid = str(message_id)
    await queries.transition(conn, verb, mid)
    return await _message_or_404(conn, mid)


TRANSITION_ERRORS = responses(401, 404, 409, 422)


@router.post("/{message_id}/pause", response_model=Message, responses=TRANSITION_ERRORS)
async def pause_message(message_id: UUID, conn: UserConn) -> Response:
    """scheduled | sending → paused (409 invalid_transition otherwise)."""
    return pg_json(await _transition(conn, message_id, "pause"))


@router.post("/{message_id}/resume", response_model=Message, responses=TRANSITION_ERRORS)
async def resume_message(message_id: UUID, conn: UserConn) -> Response:
    """paused → scheduled (nothing sent yet) or sending (409 invalid_transition otherwise)."""
    return pg_json(await _transition(conn, message_id, "resume"))


@router.post("/{message_id}/cancel", response_model=Message, responses=TRANSITION_ERRORS)
async def cancel_message(message_id: UUID, conn: UserConn) -> Response:
    """draft | scheduled | paused | sending → cancelled; pending deliveries are cancelled too."""
    return pg_json(await _transition(conn, message_id, "cancel"))


@router.post("/{message_id}/duplicate", response_model=Message, status_code=201, responses=TRANSITION_ERRORS)
async def duplicate_message(message_id: UUID, conn: UserConn) -> Response:
    """A new draft with the same content, groups and recurrence."""
    copy_id = await queries.duplicate(conn, str(message_id))
    return pg_json(await _message_or_404(conn, copy_id), 201)


# -----------------------------------------------------------------------------------------------
# Preview and stats
# -----------------------------------------------------------------------------------------------


@router.get("/{message_id}/preview", response_model=Preview, responses=MESSAGE_ERRORS)
async def preview_message(
    message_id: UUID,
    conn: UserConn,
) -> Response:
    """Who the message reaches now (de-duplicated by phone), who is left out and why, the text a
    sample of up to 10 recipients will receive, and the spam guard's verdict."""
    mid = str(message_id)
    verdict = await queries.spam_verdict(conn, mid)
    if verdict is None:
        raise _not_found(mid)
    content, rules = verdict
    numbers = await queries.preview_numbers(conn, mid, PREVIEW_SAMPLE)
    sample = json.loads(numbers["sample"])
    body = {
        "message_id": mid,
        "content": content,
        "media": await queries.preview_media(conn, mid),
        "recipients": sample,
        "recipient_count": numbers["recipient_count"],
        "excluded": {
            "inactive": numbers["inactive"],
            "opted_out": numbers["opted_out"],
            "duplicates": numbers["duplicates"],
        },
        "spam": {"verdict": "suspected" if rules else "ok", "rules": rules},
    }
    return pg_json(json.dumps(body, ensure_ascii=False, separators=(",", ":")))


@router.get("/{message_id}/stats", response_model=Stats, responses=MESSAGE_ERRORS)
async def message_stats(message_id: UUID, conn: UserConn) -> Response:
    """Deliveries per state, success rate, first/last send and a per-minute timeline (UTC minutes)."""
    text = await queries.stats_json(conn, str(message_id))
    if text is None:
        raise _not_found(str(message_id))
    return pg_json(text)

"""Analytics: the dashboard, messages over a day range, and the reach of each group.

The numbers come from SQL functions (public.analytics_*, security invoker) run in the caller's
transaction, so RLS decides what is counted. `scope=all` (admins only) counts every user's data
and is recorded in the audit log as `analytics.read_all`.
"""

from __future__ import annotations

import asyncio
from datetime import date, timedelta
from typing import Literal

import asyncpg
from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from whatsched.analytics import queries
from whatsched.api.common import Page, QueryDate, audit_action
from whatsched.api.deps import Caller, CallerDep, PagingDep, Resources, ResourcesDep, UserConn
from whatsched.api.errors import ApiError, responses
from whatsched.api.routes.health import WhatsAppComponent, check_whatsapp
from whatsched.api.routes.metrics import SystemFigures, system_figures
from whatsched.auth.queries import is_admin
from whatsched.db.paging import limit_offset
from whatsched.models import UtcDateTime

router = APIRouter(prefix="/api/analytics", tags=["analytics"])

Scope = Literal["mine", "all"]
SCOPE = Query("mine", description="all: every user's data (admins only; audited)")
BRIDGE_CHECK_TIMEOUT_S = 3.0
DASHBOARD_DAYS = 30
MAX_RANGE_DAYS = 366
# asyncpg sends date.min/date.max as -infinity/infinity, and a day series to infinity never ends.
EARLIEST_DAY, LATEST_DAY = date(1970, 1, 1), date(9998, 12, 31)
TOP_MESSAGES = 10


# -----------------------------------------------------------------------------------------------
# Response models
# -----------------------------------------------------------------------------------------------


class DayPoint(BaseModel):
    date: date
    messages_created: int
    sent: int = Field(description="deliveries WhatsApp accepted that day")
    failed: int = Field(description="deliveries that failed for good that day")


class MessageTotals(BaseModel):
    total: int
    draft: int
    scheduled: int
    sending: int
    sent: int
    paused: int
    cancelled: int
    failed: int


class DeliveryTotals(BaseModel):
    ok: int = Field(description="sent, delivered or read")
    failed: int
    pending: int
    delivered: int
    read: int


class Totals(BaseModel):
    messages: MessageTotals
    contacts: int
    active_contacts: int
    groups: int
    deliveries: DeliveryTotals
    success_rate: float | None = Field(description="ok / (ok + failed); null before any delivery finished")


class Dashboard(BaseModel):
    scope: Scope
    timezone: str = Field(description="days are calendar days in this timezone (the caller's profile)")
    totals: Totals
    success_rate: float | None
    series: list[DayPoint] = Field(description="the last 30 days, oldest first")
    whatsapp: WhatsAppComponent
    system: SystemFigures | None = Field(description="this API process's metrics; admins only, null otherwise")


class RangeTotals(BaseModel):
    messages_created: int
    sent: int
    failed: int
    success_rate: float | None


class TopMessage(BaseModel):
    id: str
    created_by: str
    content: str = Field(description="the first 200 characters")
    status: str
    recipient_count: int
    delivered_count: int
    failed_count: int
    scheduled_for: UtcDateTime | None
    sent_at: UtcDateTime | None
    created_at: UtcDateTime


class MessagesAnalytics(BaseModel):
    scope: Scope
    timezone: str
    from_: date = Field(alias="from")
    to: date
    totals: RangeTotals
    series: list[DayPoint]
    by_status: dict[str, int] = Field(description="messages created in the range, by current status")
    top_messages: list[TopMessage] = Field(description="messages created in the range with the most recipients")

    model_config = {"populate_by_name": True}


class GroupReach(BaseModel):
    id: str
    name: str
    created_by: str
    created_at: UtcDateTime
    contacts: int = Field(description="members")
    active_contacts: int = Field(description="members still reachable (active, not opted out)")
    messages: int = Field(description="messages addressed to the group")
    messages_sent: int = Field(description="of them, sending or sent")
    deliveries: int = Field(description="deliveries of those messages to the group's members")
    deliveries_ok: int = Field(description="of them, sent, delivered or read")
    deliveries_failed: int
    failure_rate: float | None = Field(description="failed / (ok + failed); null before any finished")


# -----------------------------------------------------------------------------------------------
# Scope
# -----------------------------------------------------------------------------------------------


async def _widen(conn: asyncpg.Connection, who: Caller, scope: Scope, entity: str) -> bool:
    """True for scope=all, after checking the caller is an admin and auditing the read."""
    if scope != "all":
        return False
    if not await is_admin(conn):
        raise ApiError(403, "forbidden", "Only an admin can read everyone's analytics.")
    await audit_action(conn, who, "analytics.read_all", "analytics", None, {"view": entity})
    return True


async def _whatsapp(res: Resources) -> WhatsAppComponent:
    try:
        return await asyncio.wait_for(check_whatsapp(res), BRIDGE_CHECK_TIMEOUT_S)
    except TimeoutError:
        return WhatsAppComponent(status="unreachable", detail="the WhatsApp bridge did not answer in time")
    except ValueError:  # an answer we cannot read is as good as none
        return WhatsAppComponent(status="unreachable", detail="the WhatsApp bridge answered an unknown status")


# -----------------------------------------------------------------------------------------------
# Routes
# -----------------------------------------------------------------------------------------------


@router.get("/dashboard", response_model=Dashboard, responses=responses(401, 403, 422))
async def dashboard(
    *,
    scope: Scope = SCOPE,
    who: CallerDep,
    res: ResourcesDep,
    conn: UserConn,
) -> Dashboard:
    """Totals, success rate, the last 30 days, WhatsApp's state and (admins) this process's metrics."""
    whatsapp = asyncio.create_task(_whatsapp(res))  # the bridge answers while Postgres counts
    try:
        everyone = await _widen(conn, who, scope, "dashboard")
        admin = everyone or await is_admin(conn)
        data = await queries.dashboard(conn, everyone, DASHBOARD_DAYS)
    except BaseException:
        whatsapp.cancel()
        raise
    return Dashboard(
        scope=data["scope"],
        timezone=data["timezone"],
        totals=data["totals"],
        success_rate=data["totals"]["success_rate"],
        series=data["series"],
        whatsapp=await whatsapp,
        system=system_figures() if admin else None,
    )


@router.get("/messages", response_model=MessagesAnalytics, responses=responses(401, 403, 422))
async def messages(
    *,
    from_: QueryDate | None = Query(
        None, alias="from", description="first day (YYYY-MM-DD, 1970 to 9998); default: 29 days before `to`"
    ),
    to: QueryDate | None = Query(None, description="last day, included (YYYY-MM-DD, 1970 to 9998); default: today"),
    scope: Scope = SCOPE,
    who: CallerDep,
    conn: UserConn,
) -> MessagesAnalytics:
    """Per-day series and per-status counts of messages created in [from, to] (your timezone), and the
    messages with the most recipients."""
    if to is None:
        to = await queries.today(conn)
        assert to is not None
    for name, day in (("from", from_), ("to", to)):
        if day is not None and not EARLIEST_DAY <= day <= LATEST_DAY:
            message = f"must be between {EARLIEST_DAY} and {LATEST_DAY}"
            raise ApiError(422, "validation_error", f"`{name}` {message}.", [{"field": name, "message": message}])
    first = from_ or to - timedelta(days=DASHBOARD_DAYS - 1)
    if first > to:
        raise ApiError(
            422, "validation_error", "`from` is after `to`.", [{"field": "from", "message": "must not be after to"}]
        )
    if (to - first).days + 1 > MAX_RANGE_DAYS:
        message = f"covers at most {MAX_RANGE_DAYS} days"
        raise ApiError(422, "validation_error", f"The range {message}.", [{"field": "from", "message": message}])
    everyone = await _widen(conn, who, scope, "messages")
    data = await queries.messages(conn, first, to, everyone, TOP_MESSAGES)
    return MessagesAnalytics.model_validate(data)


@router.get("/groups", response_model=Page[GroupReach], responses=responses(401, 403, 422))
async def groups(
    *,
    scope: Scope = SCOPE,
    paging: PagingDep,
    who: CallerDep,
    conn: UserConn,
) -> Page[GroupReach]:
    """The reach of each group, by name."""
    everyone = await _widen(conn, who, scope, "groups")
    data = await queries.groups(conn, everyone, *limit_offset(paging.page, paging.page_size))
    return Page[GroupReach](
        items=[GroupReach.model_validate(item) for item in data["items"]],
        total=data["total"],
        page=paging.page,
        page_size=paging.page_size,
    )

"""What every router shares: UTC timestamps with Z (whatsched.models), the page shape, date and
date-time query parameters, JSON bodies built by Postgres, and audit from a request."""

from __future__ import annotations

import re
from datetime import date, datetime
from typing import Annotated, Any, Generic, TypeVar

import asyncpg
from fastapi import Response
from pydantic import BaseModel, BeforeValidator

from whatsched import audit
from whatsched.api.deps import Caller
from whatsched.api.errors import ApiError
from whatsched.auth.queries import is_admin
from whatsched.models import UtcDateTime, utc_iso

__all__ = ["Page", "QueryDate", "QueryDateTime", "UtcDateTime", "audit_action", "pg_json", "read_all", "utc_iso"]

T = TypeVar("T")

_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def _iso_text(kind: str, example: str, whole: bool) -> Any:
    """Pydantic reads a bare number as a Unix time (`?to=0.5` was 1970-01-01T00:00:00.5Z); the schema
    says `format: date` / `date-time`, so a query value must be ISO 8601 text. What passes is then
    parsed by pydantic as before (a date-time without offset stays naive: the route localizes it)."""

    def check(value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if (_ISO_DATE.fullmatch(text) if whole else _ISO_DATE.match(text)) is None:
                raise ValueError(f"must be an ISO 8601 {kind} such as {example}")
        return value

    return BeforeValidator(check)


# Query parameters documented as `format: date-time` / `format: date` that refuse numbers with 422.
QueryDateTime = Annotated[datetime, _iso_text("date-time", "2025-01-27T10:00:00Z", whole=False)]
QueryDate = Annotated[date, _iso_text("date", "2025-01-27", whole=True)]


def pg_json(text: str, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A body Postgres already serialised (json_build_object ...::text), sent as its bytes: the
    route's response_model documents the shape, nothing parses or validates it on the way out."""
    return Response(content=text.encode(), status_code=status, media_type="application/json", headers=headers)


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int
    page: int
    page_size: int


async def audit_action(
    conn: asyncpg.Connection,
    who: Caller,
    action: str,
    entity_type: str | None = None,
    entity_id: str | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    """Record an action that changes no table (a read of everyone's data, an export) in the
    caller's own transaction: it commits or rolls back with it. Table changes are audited by the
    database's triggers."""
    await audit.record(conn, action, actor_id=who.id, entity_type=entity_type, entity_id=entity_id, details=details)


async def read_all(conn: asyncpg.Connection, who: Caller, entity: str, plural: str, q: str | None) -> None:
    """A list asked with scope=all: admins only (403 otherwise), and the read of every user's
    `plural` audited as `<entity>.read_all` in the caller's transaction."""
    if not await is_admin(conn):
        raise ApiError(403, "forbidden", f"Only an admin can list every user's {plural}.")
    await audit_action(conn, who, f"{entity}.read_all", entity, None, {"q": q or ""})

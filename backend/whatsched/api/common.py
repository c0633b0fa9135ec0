"""What every router shares: UTC timestamps with Z, pagination, and audit from a request."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Generic, TypeVar

import asyncpg
from fastapi import Query
from pydantic import BaseModel, PlainSerializer

from whatsched import audit
from whatsched.api.deps import Caller


def utc_iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


# Times on the wire are ISO 8601 UTC with Z.
UtcDateTime = Annotated[datetime, PlainSerializer(utc_iso, return_type=str, when_used="json")]

T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int
    page: int
    page_size: int


class PageParams(BaseModel):
    page: int
    page_size: int

    @property
    def offset(self) -> int:
        return (self.page - 1) * self.page_size


async def page_params(
    page: int = Query(1, ge=1, le=100_000, description="1-based page number"),
    page_size: int = Query(20, ge=1, le=100, description="items per page (max 100)"),
) -> PageParams:
    return PageParams(page=page, page_size=page_size)


async def audit_action(
    conn: asyncpg.Connection,
    who: Caller,
    action: str,
    entity_type: str | None = None,
    entity_id: str | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    """Record a critical action in the caller's own transaction (it commits or rolls back with it)."""
    await audit.record(
        conn,
        action,
        actor_id=who.id,
        entity_type=entity_type,
        entity_id=entity_id,
        ip=who.ip,
        user_agent=who.user_agent,
        details=details,
    )

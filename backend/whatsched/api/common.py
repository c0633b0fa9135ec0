"""What every router shares: UTC timestamps with Z (whatsched.models), the page shape, and audit
from a request."""

from __future__ import annotations

from typing import Any, Generic, TypeVar

import asyncpg
from pydantic import BaseModel

from whatsched import audit
from whatsched.api.deps import Caller
from whatsched.models import UtcDateTime, utc_iso

__all__ = ["Page", "UtcDateTime", "audit_action", "utc_iso"]

T = TypeVar("T")


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

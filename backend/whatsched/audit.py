"""The audit log: one append-only row per critical action."""

from __future__ import annotations

from typing import Any

import asyncpg


async def record(
    conn: asyncpg.Connection,
    action: str,
    *,
    actor_id: str | None,
    entity_type: str | None = None,
    entity_id: str | None = None,
    ip: str | None = None,
    user_agent: str | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    """Insert with the connection's role: as the user inside their transaction, or as the service."""
    await conn.execute(
        "insert into public.audit_log (actor_id, action, entity_type, entity_id, ip, user_agent, details)"
        " values ($1::uuid, $2, $3, $4, $5::inet, $6, $7)",
        actor_id,
        action,
        entity_type,
        entity_id,
        ip,
        (user_agent or "")[:500] or None,
        details or {},
    )

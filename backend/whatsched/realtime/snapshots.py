"""A message's current status and progress as frames: what a subscriber receives first, and again
after the event stream was interrupted, so it never shows a stale state."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import asyncpg

from whatsched.db.pool import service_tx, user_tx
from whatsched.realtime import protocol

# Before fan-out the total is the live audience, as in the message JSON (public.message_audiences).
_COLUMNS = """
  id::text as id, status, delivered_count, failed_count,
  case when status in ('draft', 'scheduled', 'paused') and recipient_count = 0
       then coalesce((select a.recipients from public.message_audiences a where a.message_id = messages.id), 0)
       else recipient_count end as recipient_count,
  to_char(updated_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') as timestamp
"""


def frames(row: Mapping[str, Any]) -> list[str]:
    return [
        protocol.status_update(row["id"], row["status"], row["timestamp"]),
        protocol.progress(row["id"], row["delivered_count"], row["recipient_count"], row["failed_count"]),
    ]


async def for_user(pool: asyncpg.Pool, claims: Mapping[str, Any], message_id: str) -> tuple[str, list[str]] | None:
    """The message's owner and its snapshot as the user sees it (RLS): None when the message is not
    theirs to see."""
    async with user_tx(pool, claims) as conn:
        row = await conn.fetchrow(
            f"select created_by::text as owner, {_COLUMNS} from public.messages where id = $1::uuid", message_id
        )
    return None if row is None else (row["owner"], frames(row))


async def for_service(pool: asyncpg.Pool, message_ids: Sequence[str]) -> dict[str, list[str]]:
    """Snapshots of messages whose subscriptions were already authorised, in one query."""
    if not message_ids:
        return {}
    async with service_tx(pool) as conn:
        rows = await conn.fetch(f"select {_COLUMNS} from public.messages where id = any($1::uuid[])", list(message_ids))
    return {row["id"]: frames(row) for row in rows}

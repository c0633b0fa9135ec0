"""The SQL of what the WhatsApp bridge reports, run as the service role: delivery acks
(private.apply_ack, waking the dispatcher's workers when an ack settles a delivery they still had
open), WhatsApp's connection status (private.record_whatsapp_status, relayed to every user's
socket by private.broadcast) and incoming replies (private.record_reply)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg


async def apply_ack(
    conn: asyncpg.Connection, whatsapp_message_id: str, idempotency_key: str | None, ack: str, at: datetime | None
) -> None:
    """Move the delivery forward (never backwards; failed only before delivered), at `at` or now."""
    rows = await conn.fetch(
        "select message_id, previous_state from private.apply_ack($1, $2, $3, coalesce($4, now()))",
        whatsapp_message_id,
        idempotency_key,
        ack,
        at,
    )
    for row in rows:
        if row["previous_state"] in ("pending", "sending"):
            # The worker still counted this delivery as open: let it finish the message.
            await conn.execute("select pg_notify('whatsched_dispatch', $1::text)", str(row["message_id"]))


async def record_status(conn: asyncpg.Connection, status: str, phone: str | None, last_error: str | None) -> Any:
    """Keep the bridge's status; the status it had before."""
    return await conn.fetchval("select private.record_whatsapp_status($1, $2, $3)", status, phone, last_error)


async def broadcast_status(conn: asyncpg.Connection, frame: dict[str, Any]) -> None:
    """Relay the guide's whatsapp_status frame to every user's socket (realtime topic `whatsapp`)."""
    await conn.execute("select private.broadcast($1::jsonb, 'whatsapp_status', 'whatsapp')", frame)


async def record_reply(
    conn: asyncpg.Connection, phone: str, text: str, whatsapp_message_id: str, at: datetime | None
) -> int:
    """Keep a reply for every user who wrote to `phone` within REPLY_WINDOW_DAYS, and apply an
    opt-out/opt-in keyword to every user's contact with it; how many kept it (0: nobody wrote to
    the sender lately and nothing was stored)."""
    stored: int = await conn.fetchval(
        "select private.record_reply($1, $2, $3, coalesce($4, now()))", phone, text, whatsapp_message_id, at
    )
    return stored

"""The SQL of what the WhatsApp bridges report, run as the service role: delivery acks
(private.apply_ack, waking the dispatcher's workers when an ack settles a delivery they still had
open), each number's connection status (private.record_number_status, which also relays the
guide's whatsapp_status event to every user's socket), where each number's bridge listens
(private.register_bridge), incoming replies (private.record_reply), and every number's state for
the health check."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg

from whatsched.db.sql import ts


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


# A number's states (ours) that the bridge's `disconnected` leads to: a report from one of them is
# no transition, so it warns nobody again.
DOWN_STATES = frozenset({"failed", "blocked"})


async def record_status(
    conn: asyncpg.Connection,
    number_id: str | None,
    status: str,
    raw_state: str | None,
    phone: str | None,
    reason: str | None,
    qr_code: str | None,
) -> str:
    """Keep what the bridge reported for the number (None: the default one) and broadcast the
    guide's whatsapp_status event with its number_id; the number's state before (ours)."""
    previous: str = await conn.fetchval(
        "select private.record_number_status($1::uuid, $2, $3, $4, $5, $6)",
        number_id,
        status,
        raw_state,
        phone,
        reason,
        qr_code,
    )
    return previous


async def register_bridge(conn: asyncpg.Connection, number_id: str | None, url: str) -> None:
    """Where the bridge driving the number (None: the default one) listens."""
    await conn.execute("select private.register_bridge($1::uuid, $2)", number_id, url)


async def numbers_health(conn: asyncpg.Connection) -> list[dict[str, Any]]:
    """The state of every number the connection may see (RLS: a user's usable numbers, an admin's
    all) as Postgres keeps it, the default first."""
    rows = await conn.fetch(
        f"""select n.id::text as id, n.label, n.phone, n.status, n.raw_state, n.last_disconnect_reason,
                   {ts("n.status_changed_at")} as status_changed_at
            from public.whatsapp_numbers n
            order by n.is_default desc, lower(n.label), n.id"""
    )
    return [dict(r) for r in rows]


async def record_reply(
    conn: asyncpg.Connection,
    phone: str,
    text: str,
    whatsapp_message_id: str,
    at: datetime | None,
    number_id: str | None = None,
) -> int:
    """Keep a reply that reached `number_id` (None: the default number) for every user who wrote
    to `phone` from it within REPLY_WINDOW_DAYS, and apply an opt-out/opt-in keyword to the
    contacts with that phone in the number's scope (private.opt_out_scope); how many kept it (0:
    nobody wrote to the sender from that number lately and nothing was stored)."""
    stored: int = await conn.fetchval(
        "select private.record_reply($1, $2, $3, coalesce($4, now()), $5::uuid)",
        phone,
        text,
        whatsapp_message_id,
        at,
        number_id,
    )
    return stored

"""Claim: start messages about to fall due, and take one batch of due deliveries under a lease, in one round
trip (private.claim_deliveries, given one named request). Each delivery comes back rendered and checked at
the exit: `body` is the text to send, or None when the claim skipped it (an opt-out) or held it (the text
for that recipient breaks a rule). Also: how long the worker may sleep before the next work."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import asyncpg

from whatsched.dispatcher.pacing import Pacing

START = "select count(*)::integer from private.claim_messages($1, $2)"
CLAIM = (
    "select id, message_id, phone, idempotency_key, body, attempts, media::text"
    " from private.claim_deliveries($1::jsonb)"
)
NEXT_WAKE = "select extract(epoch from private.next_wake_at($1, $2) - clock_timestamp())::float8"
# The earliest over several numbers' pacing keys, in one round trip.
NEXT_WAKE_ANY = (
    "select extract(epoch from min(private.next_wake_at(s, $2)) - clock_timestamp())::float8 from unnest($1::text[]) s"
)


@dataclass(frozen=True, slots=True)
class Claimed:
    """A delivery the claim decided on: `sending` under this worker's lease with the text to send
    (`body`), or skipped or held at the exit (`body` None: nothing to send)."""

    id: UUID
    message_id: UUID
    phone: str
    idempotency_key: str
    body: str | None
    attempts: int
    # The attachment, when the message has one: {id, sha256, size, mime_type, filename, kind, path}
    # (the caption is `body`, possibly empty).
    media: dict[str, Any] | None = None


async def start_due(conn: asyncpg.Connection, limit: int, ahead_s: float) -> int:
    """Start up to `limit` messages due within `ahead_s` (status `sending`, deliveries created,
    each due at its message's scheduled_for); returns how many started."""
    started: int = await conn.fetchval(START, limit, ahead_s)
    return started


async def claim(
    conn: asyncpg.Connection,
    worker_id: str,
    pacing: Pacing,
    number_id: str,
    limit: int,
    lease_s: float,
) -> list[Claimed]:
    """One batch of the deliveries that leave from `number_id`, paced as that number."""
    request = {
        "worker": worker_id,
        "batch_limit": limit,
        "lease_seconds": lease_s,
        "number_id": number_id,
        **pacing.claim_request(),
    }
    rows = await conn.fetch(CLAIM, json.dumps(request))
    return [Claimed(r[0], r[1], r[2], r[3], r[4], r[5], json.loads(r[6]) if r[6] is not None else None) for r in rows]


async def seconds_until_next(conn: asyncpg.Connection, senders: list[str] | None, ahead_s: float) -> float | None:
    """Seconds until something is due (negative: already due); None when nothing is planned.
    `senders` (the numbers' pacing keys) add the earliest of their next_send_at (spacing or a
    full cap) to pending work; scheduled messages count from `ahead_s` before their time, when
    they are started."""
    value: float | None = (
        await conn.fetchval(NEXT_WAKE_ANY, senders, ahead_s)
        if senders
        else await conn.fetchval(NEXT_WAKE, None, ahead_s)
    )
    return value

"""Rescue: the housekeeping safety net. The claim already takes over expired leases and the
worker finishes messages as their last batch completes; these sweeps catch what a crash in
between could leave behind, and tell the worker when work is overdue.

- `sweep`: finish every `sending` message with no open delivery (a worker died between its
  last completion and the finish);
- `overdue`: whether anything is due now (an expired lease, a retry, a message) that no
  NOTIFY announced, so the worker wakes for it;
- `prune_usage`: drop pacing counts older than the daily window, and send-ledger rows older
  than the longest window that reads them (the reply window; the daily cap reads one day);
- `compact_counts`: fold the per-transaction rows of public.message_counts into one per owner
  and status (each transaction writes its own rows so status changes never wait on a counter).
"""

from __future__ import annotations

import asyncpg

from whatsched.dispatcher import complete

OVERDUE = "select coalesce(private.next_wake_at($1, $2) <= now(), false)"
# Over several numbers' pacing keys, in one round trip.
OVERDUE_ANY = "select coalesce(bool_or(private.next_wake_at(s, $2) <= now()), false) from unnest($1::text[]) s"
PRUNE = "delete from private.sender_usage where minute < now() - interval '2 days'"
PRUNE_LEDGER = (
    "delete from private.send_ledger"
    " where at < now() - make_interval(days => greatest((select reply_window_days from private.current_settings()), 1) + 1)"
)
COMPACT = "select private.compact_message_counts()"


async def sweep(conn: asyncpg.Connection) -> list[complete.Finished]:
    return await complete.finish(conn, None)


async def overdue(conn: asyncpg.Connection, senders: list[str] | None, ahead_s: float) -> bool:
    due: bool = (
        await conn.fetchval(OVERDUE_ANY, senders, ahead_s) if senders else await conn.fetchval(OVERDUE, None, ahead_s)
    )
    return due


async def prune_usage(conn: asyncpg.Connection) -> int:
    status: str = await conn.execute(PRUNE)
    ledger: str = await conn.execute(PRUNE_LEDGER)
    return int(status.rsplit(" ", 1)[-1]) + int(ledger.rsplit(" ", 1)[-1])


async def compact_counts(conn: asyncpg.Connection) -> int:
    folded: int = await conn.fetchval(COMPACT)
    return folded

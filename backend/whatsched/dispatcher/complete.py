"""Complete: record the sends the bridge accepted (one statement per batch), then finish the
messages left without open deliveries: status, notification and next occurrence in one
transaction, so a finished message never lacks either."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

import asyncpg

from whatsched import metrics
from whatsched.dispatcher import notify, recurrence
from whatsched.dispatcher.deliver import Sent

COMPLETE = "select private.complete_deliveries($1, $2)"
FINISH = "select * from private.finish_messages($1)"


@dataclass(frozen=True, slots=True)
class Finished:
    id: UUID
    created_by: UUID
    status: str
    recurrence: str | None
    scheduled_for: datetime | None
    timezone: str


async def complete(conn: asyncpg.Connection, sent: list[Sent]) -> int:
    done: int = await conn.fetchval(COMPLETE, [s.id for s in sent], [s.whatsapp_message_id for s in sent])
    metrics.SENDS.labels("sent").inc(len(sent))
    return done


async def finish(conn: asyncpg.Connection, message_ids: list[UUID] | None) -> list[Finished]:
    """Finish these messages (None: every sending message) if nothing is left to send.
    Call it after the completion has committed (see private.finish_messages)."""
    async with conn.transaction():
        rows = await conn.fetch(FINISH, message_ids)
        finished = [Finished(**dict(r)) for r in rows]
        if finished:
            await notify.finished(conn, [f.id for f in finished])
            await recurrence.schedule_next(conn, [(f.id, f.recurrence, f.scheduled_for, f.timezone) for f in finished])
    return finished

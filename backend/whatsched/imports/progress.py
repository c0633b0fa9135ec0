"""`import_progress` events on the user's realtime topic while an import runs.

Each event is its own short transaction on a pooled connection, as the user, OUTSIDE the import's
transaction: realtime.send is pg_notify on plain Postgres, and a NOTIFY inside a transaction is
delivered only at commit, which for the import is the end. The database builds the event and picks
the topic (private.send_import_progress: the caller's own, whatever the caller asks). Updates are
throttled to a few a second (a stage change goes at once; within a stage the latest counts go when
the interval ends) and never fail an import: a lost progress event is only lost.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import asyncpg

from whatsched import events
from whatsched.db.errors import DATABASE_ERRORS
from whatsched.db.pool import user_tx

log = logging.getLogger("whatsched.imports")

EVENT = events.named("import_progress")  # its shape: contracts/events.json (built by the database)
MIN_INTERVAL_S = 0.25  # at most four updates a second within a stage

Listener = Callable[[str, int, int], None]


class Progress:
    def __init__(
        self,
        pool: asyncpg.Pool | None,
        claims: Mapping[str, Any],
        user_id: str,
        import_id: str,
        listener: Listener | None = None,
        min_interval_s: float = MIN_INTERVAL_S,
    ) -> None:
        self.pool = pool
        self.claims = dict(claims)
        self.user_id = user_id
        self.import_id = import_id
        self.listener = listener
        self.min_interval_s = min_interval_s
        self._stage: str | None = None
        self._last_sent = 0.0
        self._pending: dict[str, Any] | None = None
        self._timer: asyncio.Task[None] | None = None
        self.sent = 0

    async def update(self, stage: str, processed: int, total: int, *, force: bool = False) -> None:
        """Send now, or (within the interval of the same stage) keep it as the pending update that a
        timer sends when the interval ends: the latest counts always go out."""
        if self.listener is not None:
            self.listener(stage, processed, total)
        payload = {"type": EVENT, "import_id": self.import_id, "stage": stage, "processed": processed, "total": total}
        wait = self._last_sent + self.min_interval_s - time.monotonic()
        if not force and stage == self._stage and wait > 0:
            self._pending = payload
            if self._timer is None:
                self._timer = asyncio.get_running_loop().create_task(self._flush_after(wait))
            return
        self._cancel_timer()
        self._pending = None
        await self._emit(stage, payload)

    async def _flush_after(self, delay: float) -> None:
        await asyncio.sleep(delay)
        self._timer = None
        payload, self._pending = self._pending, None
        if payload is not None:
            await self._emit(str(payload["stage"]), payload)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def _emit(self, stage: str, payload: dict[str, Any]) -> None:
        self._stage, self._last_sent = stage, time.monotonic()
        await self._send(payload)

    async def _send(self, payload: dict[str, Any]) -> None:
        if self.pool is None:
            return
        try:
            async with user_tx(self.pool, self.claims) as conn:
                await conn.execute(
                    "select private.send_import_progress($1::uuid, $2, $3, $4)",
                    payload["import_id"],
                    payload["stage"],
                    payload["processed"],
                    payload["total"],
                )
            self.sent += 1
        except DATABASE_ERRORS as exc:
            log.warning("imports: could not send import_progress: %s", exc)

"""Watch: the housekeeping step that restarts a frozen or bloated WhatsApp number.

Each round it reads every number's bridge (GET /status: status, raw state, rss_bytes), keeps the
readings in Postgres (private.observe_bridges), and asks Postgres which numbers to restart
(private.restart_watched_numbers, whose rules are private.frozen_numbers): that function queues
each restart as a `restart` command with no requester and a reason, within the backoff and the
hourly limit, so the restart is carried out, recorded and audited like a person's
(dispatcher.numbers.run_commands). Deliveries in flight at the restart keep their lease and are
taken over when it ends, as after a crash.

Every few minutes the workers also judge silence (`judge_unanswered`): a number whose first
messages to new contacts mostly got no reply earns a health fact, as a 463 does.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any

import asyncpg

from whatsched.bridge_client import BridgeError
from whatsched.config import DispatchSettings
from whatsched.dispatcher.numbers import Bridges, Number

log = logging.getLogger("whatsched.dispatcher")

OBSERVE = "select private.observe_bridges($1::jsonb)"
RESTART = """
select number_id::text, reason, command_id::text, held
from private.restart_watched_numbers(
  p_numbers => $1::uuid[], p_ack_s => $2, p_state_s => $3, p_memory_cap_mb => $4,
  p_max_per_hour => $5, p_backoff_s => $6)"""


@dataclass(frozen=True, slots=True)
class Limits:
    """The watch's settings (NUMBER_*); a limit of 0 turns its rule off."""

    frozen_ack_s: float
    frozen_state_s: float
    memory_cap_mb: float
    max_restarts_per_hour: int
    restart_backoff_s: float

    @classmethod
    def from_settings(cls, dispatch: DispatchSettings) -> Limits:
        return cls(
            dispatch.frozen_ack_s,
            dispatch.frozen_state_s,
            dispatch.memory_cap_mb,
            dispatch.max_restarts_per_hour,
            dispatch.restart_backoff_s,
        )


@dataclass(frozen=True, slots=True)
class Decision:
    """A number the rules named: its queued command, or why it was held back."""

    number_id: str
    reason: str
    command_id: str | None
    held: str | None


async def observe(numbers: list[Number], bridges: Bridges) -> list[dict[str, Any]]:
    """Each reachable bridge's own status; an unreachable one is left out (nothing to restart)."""

    async def read(number: Number) -> dict[str, Any] | None:
        try:
            status = await bridges.of(number).status()
        except BridgeError:
            return None
        return {
            "number_id": number.id,
            "status": status.get("status"),
            "raw_state": status.get("raw_state"),
            "rss_bytes": status.get("rss_bytes"),
        }

    readings = await asyncio.gather(*(read(n) for n in numbers))
    return [r for r in readings if r is not None]


async def judge_unanswered(conn: asyncpg.Connection) -> list[str]:
    """The numbers given an `unanswered` health fact now (private.judge_unanswered: most of their
    first messages to new contacts over a day got no reply)."""
    return [str(r[0]) for r in await conn.fetch("select * from private.judge_unanswered()")]


async def watch(conn: asyncpg.Connection, numbers: list[Number], bridges: Bridges, limits: Limits) -> list[Decision]:
    """Observe every bridge, then queue the restarts the rules call for; what was decided."""
    readings = await observe(numbers, bridges)
    if not readings:
        return []
    await conn.execute(OBSERVE, json.dumps(readings))
    rows = await conn.fetch(
        RESTART,
        [r["number_id"] for r in readings],
        limits.frozen_ack_s,
        limits.frozen_state_s,
        limits.memory_cap_mb,
        limits.max_restarts_per_hour,
        limits.restart_backoff_s,
    )
    decisions = [Decision(*r) for r in rows]
    for d in decisions:
        if d.command_id is not None:
            log.warning("number %s: restart queued (%s)", d.number_id, d.reason)
        elif d.held in ("hourly_limit", "backoff"):
            log.warning("number %s: needs a restart (%s), held back by the %s", d.number_id, d.reason, d.held)
    return decisions

"""Numbers: the WhatsApp numbers this worker sends from, each with the bridge process that drives
it (found through Postgres: a bridge registers its URL there; the default number's is BRIDGE_URL),
and the session commands (start, stop, restart, logout) people ask for through /api or
supabase-js, which the worker carries out against the number's bridge."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import asyncpg

from whatsched.bridge_client import BridgeClient, BridgeError

log = logging.getLogger("whatsched.dispatcher")

COMMANDS_CHANNEL = "whatsched_number_commands"
SESSION_ACTIONS = ("start", "stop", "restart", "logout")

# The default number's bridge is the deployment's BRIDGE_URL, as before numbers existed (its
# registration is kept for health, not for routing); every other number's is the URL its bridge
# registered.
SENDING = """
select id::text, label, case when is_default then $1 else bridge_url end as bridge_url
from public.whatsapp_numbers
where bridge_url is not null or is_default
order by is_default desc, created_at, id"""

CLAIM_COMMAND = "select id::text, number_id::text, action from private.claim_number_command($1)"
FINISH_COMMAND = "select private.finish_number_command($1::uuid, $2, $3)"


@dataclass(frozen=True, slots=True)
class Number:
    """A number the worker can send from: its id (the claim's number_id and pacing key) and bridge."""

    id: str
    label: str
    bridge_url: str


async def sending(conn: asyncpg.Connection, default_bridge_url: str) -> list[Number]:
    """Every number with a bridge, the default number first."""
    return [Number(*r) for r in await conn.fetch(SENDING, default_bridge_url)]


class Bridges:
    """One BridgeClient per bridge URL, made on first use and closed together."""

    def __init__(self, token: str, timeout_s: float) -> None:
        self._token = token
        self._timeout_s = timeout_s
        self._clients: dict[str, BridgeClient] = {}

    def of(self, number: Number) -> BridgeClient:
        client = self._clients.get(number.bridge_url)
        if client is None:
            client = self._clients[number.bridge_url] = BridgeClient(number.bridge_url, self._token, self._timeout_s)
        return client

    async def close(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.close()


async def run_commands(conn: asyncpg.Connection, worker_id: str, numbers: list[Number], bridges: Bridges) -> int:
    """Carry out the pending session commands, one at a time; how many were done."""
    by_id = {n.id: n for n in numbers}
    done = 0
    while True:
        row = await conn.fetchrow(CLAIM_COMMAND, worker_id)
        if row is None:
            return done
        command_id, number_id, action = row
        number = by_id.get(number_id)
        result: str | None = None
        error: str | None = None
        if number is None:
            error = "no bridge has registered for this number"
        else:
            try:
                answer = await bridges.of(number).session(action)
                result = str(answer.get("status"))
            except BridgeError as exc:
                error = f"{exc.code}: {exc.message}"
        await conn.execute(FINISH_COMMAND, command_id, result, error)
        log.info("number %s: %s -> %s", number_id, action, result or error)
        done += 1


LOCAL = """
with wanted as (select 'Número ' || i as label from generate_series(2, $1::integer) i),
added as (
  insert into public.whatsapp_numbers (label, shared)
  select w.label, true from wanted w
  where not exists (select 1 from public.whatsapp_numbers n where n.label = w.label)
  returning id, label
)
select id::text, label from added
union all
select n.id::text, n.label from public.whatsapp_numbers n join wanted w on w.label = n.label
order by 2"""


async def ensure_local(conn: asyncpg.Connection, count: int) -> list[tuple[str, str]]:
    """`whatsched dev` with WHATSAPP_NUMBERS=count: the rows of numbers 2..count (made when missing,
    shared with every user), as (id, label); the default number is the first."""
    return [(r[0], r[1]) for r in await conn.fetch(LOCAL, count)]

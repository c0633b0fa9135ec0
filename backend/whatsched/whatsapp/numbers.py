"""The SQL of WhatsApp numbers (20261129000650_whatsapp_numbers). Every write calls the database's
function for it (public.add_whatsapp_number, ...), so the API and supabase-js meet the same rules;
number JSON is built here, in SQL, under the caller's RLS (a number they may not use is not found).

All functions take a connection inside the caller's transaction (role authenticated + claims).
"""

from __future__ import annotations

import asyncpg

from whatsched.db.sql import ts

# A number as the API shows it, over a relation `n` of public.whatsapp_numbers. user_ids: who it is
# assigned to, as far as the caller may see (an admin: everyone; a user: themselves).
NUMBER_JSON = f"""json_build_object(
  'id', n.id,
  'label', n.label,
  'phone', n.phone,
  'status', n.status,
  'raw_state', n.raw_state,
  'last_disconnect_reason', n.last_disconnect_reason,
  'last_error', n.last_error,
  'shared', n.shared,
  'owner_id', n.owner_id,
  'is_default', n.is_default,
  'bridge_url', n.bridge_url,
  'user_ids', (select coalesce(json_agg(u.user_id order by u.user_id), '[]'::json)
               from public.whatsapp_number_users u where u.number_id = n.id),
  'reported_status', n.reported_status,
  'health_score', round(private.health_score(n.id)::numeric, 3),
  'ramp_until', {ts("n.ramp_until")},
  'status_changed_at', {ts("n.status_changed_at")},
  'created_at', {ts("n.created_at")},
  'updated_at', {ts("n.updated_at")}
)"""

COMMAND_JSON = f"""json_build_object(
  'id', c.id,
  'number_id', c.number_id,
  'action', c.action,
  'requested_by', c.requested_by,
  'requested_at', {ts("c.requested_at")},
  'done_at', {ts("c.done_at")},
  'result', c.result,
  'error', c.error
)"""


async def list_numbers(conn: asyncpg.Connection) -> str:
    """The numbers the caller may use (an admin: all), the default first, then by label."""
    text: str = await conn.fetchval(
        f"""select coalesce(json_agg({NUMBER_JSON} order by n.is_default desc, lower(n.label), n.id), '[]'::json)::text
            from public.whatsapp_numbers n"""
    )
    return text


async def number_json(conn: asyncpg.Connection, number_id: str) -> str | None:
    text: str | None = await conn.fetchval(
        f"select {NUMBER_JSON}::text from public.whatsapp_numbers n where n.id = $1::uuid", number_id
    )
    return text


async def add_number(conn: asyncpg.Connection, label: str, shared: bool) -> str:
    """The new number (admins; with SELF_SERVICE_NUMBERS any user, then not shared)."""
    text: str = await conn.fetchval(
        f"select {NUMBER_JSON}::text from public.add_whatsapp_number($1, $2) n", label, shared
    )
    return text


async def update_number(conn: asyncpg.Connection, number_id: str, label: str | None, shared: bool | None) -> str:
    text: str = await conn.fetchval(
        f"select {NUMBER_JSON}::text from public.update_whatsapp_number($1::uuid, $2, $3) n", number_id, label, shared
    )
    return text


async def remove_number(conn: asyncpg.Connection, number_id: str) -> None:
    await conn.execute("select public.remove_whatsapp_number($1::uuid)", number_id)


async def assign(conn: asyncpg.Connection, number_id: str, user_id: str) -> bool:
    """True when the user was not assigned before."""
    added: bool = await conn.fetchval("select public.assign_whatsapp_number($1::uuid, $2::uuid)", number_id, user_id)
    return added


async def unassign(conn: asyncpg.Connection, number_id: str, user_id: str) -> bool:
    """True when the user was assigned."""
    removed: bool = await conn.fetchval(
        "select public.unassign_whatsapp_number($1::uuid, $2::uuid)", number_id, user_id
    )
    return removed


async def request_action(conn: asyncpg.Connection, number_id: str, action: str) -> str:
    """The queued command (public.request_number_action), as JSON."""
    text: str = await conn.fetchval(
        f"select {COMMAND_JSON}::text from public.request_number_action($1::uuid, $2) c", number_id, action
    )
    return text


async def resume(conn: asyncpg.Connection, number_id: str) -> str:
    """The paused number resumed (public.resume_whatsapp_number), as JSON (read after it, so the
    score's own query sees the reset)."""
    await conn.execute("select public.resume_whatsapp_number($1::uuid)", number_id)
    text: str = await conn.fetchval(
        f"select {NUMBER_JSON}::text from public.whatsapp_numbers n where n.id = $1::uuid", number_id
    )
    return text


async def qr_code(conn: asyncpg.Connection, number_id: str) -> tuple[str | None, str]:
    """(the QR code waiting to be scanned or None, the number's status); admins and the owner."""
    row = await conn.fetchrow(
        """select public.whatsapp_number_qr($1::uuid) as qr_code,
                  (select n.status from public.whatsapp_numbers n where n.id = $1::uuid) as status""",
        number_id,
    )
    return row["qr_code"], str(row["status"])

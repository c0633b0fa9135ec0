"""The SQL of webhook endpoints and their delivery log (20261206000200_webhooks). Every write calls
the database's function or statement for it under the caller's RLS, so the API and supabase-js meet
the same rules; the JSON is built here, in SQL.

All functions take a connection inside the caller's transaction (role authenticated + claims).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import asyncpg

from whatsched.db.paging import page_json
from whatsched.db.sql import ts

# An endpoint as the API shows it, over a relation `e` of public.webhook_endpoints (never its secret).
ENDPOINT_JSON = f"""json_build_object(
  'id', e.id,
  'owner_id', e.owner_id,
  'deployment_wide', e.owner_id is null,
  'url', e.url,
  'description', e.description,
  'event_types', to_json(e.event_types),
  'enabled', e.enabled,
  'disabled_reason', e.disabled_reason,
  'failing_since', {ts("e.failing_since")},
  'secret_rotated_at', {ts("e.secret_rotated_at")},
  'created_at', {ts("e.created_at")},
  'updated_at', {ts("e.updated_at")}
)"""

# A delivery with its attempts, over a relation `d` of public.webhook_deliveries.
DELIVERY_JSON = f"""json_build_object(
  'id', d.id,
  'event_type', d.event_type,
  'state', d.state,
  'attempts', d.attempts,
  'next_attempt_at', case when d.state = 'pending' then {ts("d.next_attempt_at")} end,
  'last_status_code', d.last_status_code,
  'last_error', d.last_error,
  'delivered_at', {ts("d.delivered_at")},
  'created_at', {ts("d.created_at")},
  'attempt_log', (select coalesce(json_agg(json_build_object(
                    'attempt', a.attempt, 'at', {ts("a.at")}, 'status_code', a.status_code,
                    'latency_ms', a.latency_ms, 'error', a.error) order by a.attempt, a.id), '[]'::json)
                  from public.webhook_attempts a where a.delivery_id = d.id)
)"""

NOT_FOUND = "webhook_not_found"


async def list_endpoints(conn: asyncpg.Connection) -> str:
    """The caller's endpoints (an admin: all, deployment-wide ones included), newest first."""
    text: str = await conn.fetchval(
        f"""select coalesce(json_agg({ENDPOINT_JSON} order by e.created_at desc, e.id), '[]'::json)::text
            from public.webhook_endpoints e"""
    )
    return text


async def endpoint_json(conn: asyncpg.Connection, endpoint_id: str) -> str | None:
    text: str | None = await conn.fetchval(
        f"select {ENDPOINT_JSON}::text from public.webhook_endpoints e where e.id = $1::uuid", endpoint_id
    )
    return text


async def create_endpoint(
    conn: asyncpg.Connection, url: str, event_types: list[str], description: str | None, deployment_wide: bool
) -> str:
    """The new endpoint with its secret, which is never shown again. (Read in a second statement:
    the function's row is not visible to the statement that called it.)"""
    created: str = await conn.fetchval(
        "select public.create_webhook_endpoint($1, $2, $3, $4)::text", url, event_types, description, deployment_wide
    )
    answer: dict[str, Any] = json.loads(created)
    text: str = await conn.fetchval(
        f"""select ({ENDPOINT_JSON}::jsonb || jsonb_build_object('secret', $2::text))::text
            from public.webhook_endpoints e where e.id = $1::uuid""",
        answer["endpoint"]["id"],
        answer["secret"],
    )
    return text


async def update_endpoint(
    conn: asyncpg.Connection,
    endpoint_id: str,
    url: str | None,
    event_types: list[str] | None,
    description: str | None,
    clear_description: bool,
    enabled: bool | None,
) -> str | None:
    """The endpoint after a partial update (None: not the caller's)."""
    text: str | None = await conn.fetchval(
        f"""update public.webhook_endpoints e
            set url = coalesce($2, e.url), event_types = coalesce($3, e.event_types),
                description = case when $5 then null else coalesce($4, e.description) end,
                enabled = coalesce($6, e.enabled)
            where e.id = $1::uuid
            returning {ENDPOINT_JSON}::text""",
        endpoint_id,
        url,
        event_types,
        description,
        clear_description,
        enabled,
    )
    return text


async def delete_endpoint(conn: asyncpg.Connection, endpoint_id: str) -> bool:
    deleted: str | None = await conn.fetchval(
        "delete from public.webhook_endpoints e where e.id = $1::uuid returning e.id::text", endpoint_id
    )
    return deleted is not None


async def rotate_secret(conn: asyncpg.Connection, endpoint_id: str, grace_hours: float) -> str:
    secret: str = await conn.fetchval("select public.rotate_webhook_secret($1::uuid, $2)", endpoint_id, grace_hours)
    return secret


async def deliveries_page(
    conn: asyncpg.Connection, endpoint_id: str, state: str | None, page: int, page_size: int
) -> str:
    """One page of the endpoint's deliveries, newest first, each with its attempts."""
    condition = "d.endpoint_id = $1::uuid and ($2::text is null or d.state = $2)"
    order = "d.created_at desc, d.id desc"
    sql = page_json("public.webhook_deliveries", "d", condition, order, DELIVERY_JSON, page, page_size)
    text: str = await conn.fetchval(sql, endpoint_id, state)
    return text


async def replay(
    conn: asyncpg.Connection,
    endpoint_id: str,
    delivery_id: str | None,
    since: datetime | None,
    until: datetime | None,
) -> int:
    queued: int = await conn.fetchval(
        "select public.replay_webhook_deliveries($1::uuid, $2::uuid, $3, $4)", endpoint_id, delivery_id, since, until
    )
    return queued


async def ping(conn: asyncpg.Connection, endpoint_id: str) -> str:
    delivery: str = await conn.fetchval("select public.ping_webhook_endpoint($1::uuid)::text", endpoint_id)
    return delivery

"""Audit entries for actions that change no table: login, logout, signup, an import finished,
reads of everyone's data, exports. Table changes (messages, contacts, groups, roles) are audited
by the database's own triggers, whichever path made them (20261206000100_audit_trail).

The entry is written by `private.record_audit`, which only `service_role` may run, so no user can
forge one. Its IP and user agent are the transaction's `request.headers` (db.pool.user_tx and
service_tx set them), as for the triggers."""

from __future__ import annotations

import json
from typing import Any

import asyncpg

from whatsched.db.pool import sql_literal

# Inside a user's transaction (user_tx) the call takes service_role for this one statement and
# gives the caller's role back, in one round trip: the entry commits or rolls back with the
# user's work, and no second connection is needed. On a service transaction it changes nothing.
RECORD = (
    "select set_config('whatsched.audit_role', current_setting('role'), true),"
    " set_config('role', 'service_role', true);"
    " select private.record_audit({args});"
    " select set_config('role', current_setting('whatsched.audit_role'), true)"
)


def _text(value: str | None) -> str:
    return "null" if value is None else sql_literal(value)


async def record(
    conn: asyncpg.Connection,
    action: str,
    *,
    actor_id: str | None,
    entity_type: str | None = None,
    entity_id: str | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    """Record `action` in the connection's open transaction (user_tx or service_tx)."""
    args = ", ".join(
        (
            _text(action),
            _text(actor_id) + "::uuid",
            _text(entity_type),
            _text(entity_id),
            sql_literal(json.dumps(details or {})) + "::jsonb",
        )
    )
    await conn.execute(RECORD.format(args=args))

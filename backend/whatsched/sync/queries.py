"""The SQL of offline sync: public.sync_operations, the stored answer of each operation a client
synced, under (user, client_op_id), so a replayed operation gets its answer back without acting
again. Run in the caller's transaction: a user sees and stores only their own."""

from __future__ import annotations

from typing import Any

import asyncpg


async def stored_answers(conn: asyncpg.Connection, client_op_ids: list[str]) -> dict[str, tuple[int, Any]]:
    """The stored (status, body) of those of the caller's operations that have one."""
    rows = await conn.fetch(
        """select client_op_id, status, body from public.sync_operations
           where user_id = (select auth.uid()) and client_op_id = any($1::text[])""",
        client_op_ids,
    )
    return {r["client_op_id"]: (r["status"], r["body"]) for r in rows}


async def store_answer(conn: asyncpg.Connection, client_op_id: str, status: int, body: Any) -> None:
    """Keep the operation's answer (the first one stored wins)."""
    await conn.execute(
        """insert into public.sync_operations (user_id, client_op_id, status, body)
           values ((select auth.uid()), $1, $2, $3)
           on conflict (user_id, client_op_id) do nothing""",
        client_op_id,
        status,
        body,
    )

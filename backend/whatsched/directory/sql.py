"""SQL fragments and small queries the groups and contacts modules share."""

from __future__ import annotations

from typing import Any

import asyncpg

# Names sort as lower(name) in this collation: ICU's where available (migration 20261128001100).
NAME_ORDER = "private.name_order"


def ts(expr: str) -> str:
    """ISO 8601 UTC with Z, microseconds kept (the same text the messages API writes)."""
    return f"""to_char({expr} at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"""


def like(text: str) -> str:
    """A case-insensitive 'contains' pattern with LIKE's wildcards escaped."""
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


class Args:
    """Positional parameters collected while a statement is assembled."""

    def __init__(self) -> None:
        self.values: list[Any] = []

    def __call__(self, value: Any) -> str:
        self.values.append(value)
        return f"${len(self.values)}"


async def is_admin(conn: asyncpg.Connection) -> bool:
    """Whether the caller is an admin (private.is_admin(), the helper the policies use)."""
    return bool(await conn.fetchval("select private.is_admin()"))

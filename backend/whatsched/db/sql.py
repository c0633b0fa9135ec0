"""Helpers for assembling SQL text, shared by every query module: timestamps as the API writes
them, LIKE patterns, positional parameters, and the collation names sort in. No queries here."""

from __future__ import annotations

from typing import Any

# Names sort as lower(name) in this collation: ICU's where available (migration 20261128001100).
NAME_ORDER = "private.name_order"


def ts(expr: str) -> str:
    """ISO 8601 UTC with Z, microseconds kept (what UtcDateTime writes, to the digit count)."""
    return f"""to_char({expr} at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"""


def like(text: str) -> str:
    """A case-insensitive 'contains' pattern with LIKE's wildcards escaped."""
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


class Args:
    """Positional parameters collected while a statement is assembled: `arg(value)` appends the
    value and answers its placeholder ($1, $2, ...); `arg.values` is what to execute with."""

    def __init__(self) -> None:
        self.values: list[Any] = []

    def __call__(self, value: Any) -> str:
        self.values.append(value)
        return f"${len(self.values)}"

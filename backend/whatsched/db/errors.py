"""What a lost or failing database connection raises, in one place.

asyncpg raises OSError (and TimeoutError) when it cannot reach the server, InterfaceError when a
connection closed under it, InternalClientError when a connection was left mid-protocol by a
server that went away, and a PostgresError for what the server itself answered."""

from __future__ import annotations

import asyncpg

CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
)
DATABASE_ERRORS: tuple[type[BaseException], ...] = (asyncpg.PostgresError, *CONNECTION_ERRORS)

"""Apply supabase/migrations in order, recorded where the supabase CLI records them."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from whatsched.errors import ConfigError

FILE_NAME = re.compile(r"^(?P<version>\d{14})_(?P<name>[a-z0-9_]+)\.sql$")
LOCK_KEY = 7265002


@dataclass(frozen=True)
class Migration:
    version: str
    name: str
    path: Path

    @property
    def sql(self) -> str:
        return self.path.read_text(encoding="utf-8")


def migrations_dir() -> Path:
    """supabase/migrations at the repository root (the package is installed editable from it)."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        candidate = parent / "supabase" / "migrations"
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("supabase/migrations not found above " + str(here))


def discover(folder: Path | None = None) -> list[Migration]:
    folder = folder or migrations_dir()
    found = []
    for path in sorted(folder.glob("*.sql")):
        match = FILE_NAME.match(path.name)
        if match is None:
            raise ValueError(f"migration file name must be <14-digit version>_<name>.sql: {path.name}")
        found.append(Migration(match["version"], match["name"], path))
    return found


async def applied_versions(conn: asyncpg.Connection) -> set[str]:
    if await conn.fetchval("select to_regclass('supabase_migrations.schema_migrations')") is None:
        return set()
    rows = await conn.fetch("select version from supabase_migrations.schema_migrations")
    return {r["version"] for r in rows}


async def changed_since_applied(conn: asyncpg.Connection, known: list[Migration]) -> list[str]:
    """Applied migrations whose file now says something else. Only rows our runner wrote (the whole
    file as one statement) can be compared; the supabase CLI stores the file split."""
    if await conn.fetchval("select to_regclass('supabase_migrations.schema_migrations')") is None:
        return []
    rows = await conn.fetch(
        "select version, statements[1] as sql from supabase_migrations.schema_migrations"
        " where cardinality(statements) = 1"
    )
    stored = {r["version"]: r["sql"] for r in rows}
    return [m.version for m in known if m.version in stored and stored[m.version] != m.sql]


def unknown_versions(done: set[str], known: list[Migration]) -> list[str]:
    """Applied versions this checkout does not have: a database migrated by another history."""
    return sorted(done - {m.version for m in known})


async def pending(conn: asyncpg.Connection, folder: Path | None = None) -> list[Migration]:
    done = await applied_versions(conn)
    known = discover(folder)
    stale = unknown_versions(done, known)
    if stale:
        # Before the first release the migrations were squashed (one file per feature): a
        # database migrated by the older files cannot be moved forward, only recreated.
        raise ConfigError(
            f"the database was migrated by migrations this checkout does not have ({', '.join(stale[:3])}"
            f"{', ...' if len(stale) > 3 else ''}); it predates the squashed schema: recreate it"
            " (for the embedded default, delete DATA_DIR's postgres folder) and run whatsched migrate again"
        )
    changed = await changed_since_applied(conn, known)
    if changed:
        # Before the first release a migration file is edited in place (one definition per object):
        # a database built from an earlier edit would silently keep the old definitions.
        raise ConfigError(
            f"the database was migrated by an earlier version of {', '.join(changed[:3])}"
            f"{', ...' if len(changed) > 3 else ''}; before the first release migrations are edited in place:"
            " recreate it (for the embedded default, delete DATA_DIR's postgres folder) and run whatsched migrate again"
        )
    return [m for m in known if m.version not in done]


async def migrate(conn: asyncpg.Connection, folder: Path | None = None) -> list[Migration]:
    """Apply every pending migration, each in its own transaction, under an advisory lock."""
    await conn.execute("create schema if not exists supabase_migrations")
    await conn.execute(
        "create table if not exists supabase_migrations.schema_migrations (version text not null primary key);"
        " alter table supabase_migrations.schema_migrations add column if not exists statements text[];"
        " alter table supabase_migrations.schema_migrations add column if not exists name text;"
    )
    applied: list[Migration] = []
    await conn.execute("select pg_advisory_lock($1)", LOCK_KEY)
    try:
        for migration in await pending(conn, folder):
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    "insert into supabase_migrations.schema_migrations (version, name, statements) values ($1, $2, $3)",
                    migration.version,
                    migration.name,
                    [migration.sql],
                )
            applied.append(migration)
    finally:
        await conn.execute("select pg_advisory_unlock($1)", LOCK_KEY)
    return applied

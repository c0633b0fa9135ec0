"""`whatsched contacts import FILE --user EMAIL`: the same import as the API, for a user named by
email, with a progress bar. The command line itself is declared in whatsched.cli."""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg

from whatsched.auth.local import find_user_by_email
from whatsched.config import Settings
from whatsched.db.pool import create_pool, user_tx
from whatsched.imports import service
from whatsched.imports.progress import Listener, Progress
from whatsched.imports.refusal import ImportRefused
from whatsched.imports.upload import file_too_large

# (id, email) of the user with an email, or None: Supabase Auth's admin API on Supabase (whose auth
# tables no role of ours may read), the auth tables as supabase_auth_admin locally.
FindUser = Callable[[str], Awaitable[tuple[str, str] | None]]


async def _user(pool: asyncpg.Pool, email: str, find_user: FindUser | None) -> tuple[str, str]:
    found = await find_user(email.strip()) if find_user is not None else await find_user_by_email(pool, email)
    if found is None:
        raise ImportRefused(404, "user_not_found", f"There is no user with the email {email!r}.")
    return found


async def _groups(pool: asyncpg.Pool, claims: dict[str, str], groups: list[str]) -> tuple[str, ...]:
    """Each --group is an id or a name of one of the user's groups (names are case-insensitive)."""
    ids: list[str] = []
    async with user_tx(pool, claims) as conn:
        for wanted in groups:
            try:
                ids.append(str(uuid.UUID(wanted)))
                continue
            except ValueError:
                pass
            found = await conn.fetchval(
                "select id::text from public.groups where created_by = (select auth.uid()) and lower(name) = lower($1)",
                wanted.strip(),
            )
            if found is None:
                raise ImportRefused(404, "related_not_found", f"The user has no group named {wanted!r}.")
            ids.append(str(found))
    return tuple(dict.fromkeys(ids))


def read_file(path: Path, max_bytes: int) -> bytes:
    """The file's bytes, refused before reading when it is over the limit."""
    if path.stat().st_size > max_bytes:
        raise file_too_large(max_bytes)
    with path.open("rb") as handle:
        data = handle.read(max_bytes + 1)  # a file that grew since stat() is still bounded
    if len(data) > max_bytes:
        raise file_too_large(max_bytes)
    return data


async def run(
    settings: Settings,
    app_url: str,
    data: bytes,
    filename: str,
    email: str,
    *,
    groups: list[str],
    on_duplicate: str,
    dry_run: bool,
    country: str | None,
    sheet: str | None,
    mapping: str | None,
    listener: Listener | None = None,
    find_user: FindUser | None = None,
) -> service.ImportResult:
    if on_duplicate not in ("skip", "update"):
        raise service.invalid_option("on_duplicate", "must be skip or update")
    pool = await create_pool(app_url, min_size=1, max_size=3)
    try:
        user_id, user_email = await _user(pool, email, find_user)
        claims = {"sub": user_id, "role": "authenticated", "email": user_email}
        options = service.ImportOptions(
            group_ids=await _groups(pool, claims, groups),
            default_country=service.check_country(country),
            on_duplicate="update" if on_duplicate == "update" else "skip",
            dry_run=dry_run,
            mapping=service.parse_mapping(mapping),
            sheet=sheet,
        )
        actor = service.Actor(user_id, claims, None, "whatsched-cli")
        progress = Progress(pool, claims, user_id, options.import_id, listener=listener)
        return await service.run_import(
            pool, actor, data, filename, options, max_rows=settings.import_max_rows, progress=progress
        )
    finally:
        await pool.close()


def summary(result: service.ImportResult, filename: str, email: str, shown: int = 20) -> str:
    verb = "would import" if result.dry_run else "imported"
    lines = [
        f"{verb} {filename} for {email}" + (" (dry run: nothing was written)" if result.dry_run else ""),
        f"  rows {result.total_rows} · created {result.created} · updated {result.updated} · "
        f"skipped duplicates {result.skipped_duplicates} · invalid {result.invalid_count} · "
        f"groups updated {result.groups_updated}",
    ]
    for item in result.invalid[:shown]:
        lines.append(f"  row {item.row}, {item.column}: {item.value!r}: {item.reason}")
    if result.invalid_count > shown:
        lines.append(f"  … and {result.invalid_count - shown} more invalid rows (--json lists the first 1,000)")
    return "\n".join(lines)


def as_json(result: service.ImportResult) -> str:
    return json.dumps(result.answer(), ensure_ascii=False, indent=2)

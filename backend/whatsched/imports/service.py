"""One contacts import from start to end, the same for the HTTP route and the CLI: read the file,
pick the columns, normalise and check the rows, write them all or nothing as the user, audit it,
and report progress on the user's realtime topic along the way."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import re
import time
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import asyncpg
import phonenumbers

from whatsched import audit
from whatsched.db.pool import request_headers, user_tx
from whatsched.imports import normalize, phone_pool, writer
from whatsched.imports.columns import ROLES, plan_columns
from whatsched.imports.normalize import Invalid, OnDuplicate
from whatsched.imports.progress import Progress
from whatsched.imports.reader import read_table
from whatsched.imports.refusal import ImportRefused

# Uploads above this size start the phone-parsing workers while the file is being read.
WARM_POOL_BYTES = 384 * 1024


@dataclass(frozen=True)
class Actor:
    """Who imports: the verified claims go to Postgres as request.jwt.claims, the IP and user
    agent (none from the command line) as request.headers, which the audit entry records."""

    id: str
    claims: Mapping[str, Any]
    ip: str | None = None
    user_agent: str | None = None

    @property
    def request_headers(self) -> dict[str, str]:
        return request_headers(self.ip, self.user_agent)


@dataclass(frozen=True)
class ImportOptions:
    group_ids: tuple[str, ...] = ()
    default_country: str | None = None
    on_duplicate: OnDuplicate = "skip"
    dry_run: bool = False
    mapping: Mapping[str, str] | None = None
    sheet: str | None = None
    import_id: str = field(default_factory=lambda: str(uuid.uuid4()))


@dataclass
class ImportResult:
    import_id: str
    total_rows: int
    created: int
    updated: int
    skipped_duplicates: int
    invalid_count: int
    invalid: list[Invalid]
    groups_updated: int
    dry_run: bool
    timings: dict[str, float] = field(default_factory=dict)

    def answer(self) -> dict[str, Any]:
        """The JSON body: every field but the timings."""
        body = asdict(self)
        body.pop("timings")
        return body


def invalid_option(name: str, message: str) -> ImportRefused:
    return ImportRefused(
        422, "validation_error", f"Invalid value for '{name}': {message}", [{"field": name, "message": message}]
    )


def parse_mapping(text: str | None) -> dict[str, str] | None:
    """The `mapping` option: a JSON object {"name"|"phone"|"email": "<header in the file>"}."""
    if text is None or not text.strip():
        return None
    try:
        value = json.loads(text)
    except ValueError:
        raise invalid_option("mapping", 'must be a JSON object such as {"phone": "Celular"}') from None
    if not isinstance(value, dict) or not all(isinstance(v, str) and v.strip() for v in value.values()):
        raise invalid_option("mapping", "must be a JSON object whose values are column headers")
    unknown = sorted(set(value) - set(ROLES))
    if unknown:
        raise invalid_option("mapping", f"unknown key {unknown[0]!r}; use {', '.join(ROLES)}")
    return {str(k): str(v) for k, v in value.items()}


def check_country(code: str | None) -> str | None:
    if code is None or not code.strip():
        return None
    code = code.strip().upper()
    if not re.fullmatch(r"[A-Z]{2}", code) or code not in phonenumbers.SUPPORTED_REGIONS:
        raise invalid_option("default_country", f"{code!r} is not an ISO 3166 country code phonenumbers knows")
    return code


def check_group_ids(values: list[str]) -> tuple[str, ...]:
    ids: list[str] = []
    for value in values:
        for part in value.split(","):
            if not part.strip():
                continue
            try:
                ids.append(str(uuid.UUID(part.strip())))
            except ValueError:
                raise invalid_option("group_ids", f"{part.strip()!r} is not a group id") from None
    return tuple(dict.fromkeys(ids))


def check_import_id(value: str | None) -> str | None:
    if value is None or not value.strip():
        return None
    try:
        return str(uuid.UUID(value.strip()))
    except ValueError:
        raise invalid_option("import_id", "must be a UUID") from None


def _safe_name(filename: str | None) -> str:
    """For the audit log only: the last path segment, printable, bounded."""
    name = (filename or "").replace("\\", "/").rsplit("/", 1)[-1]
    return re.sub(r"[\x00-\x1f\x7f]", "", name)[:200]


async def _context(pool: asyncpg.Pool, actor: Actor, options: ImportOptions) -> str | None:
    """The country for national numbers, and a check that every group is visible to the user."""
    async with user_tx(pool, actor.claims, actor.request_headers) as conn:
        row = await conn.fetchrow(
            "select (select default_country from public.profiles where id = (select auth.uid())) as country,"
            " (select count(*) from public.groups where id = any($1::uuid[]))::integer as groups",
            list(options.group_ids),
        )
    assert row is not None
    if row["groups"] != len(options.group_ids):
        raise writer.missing_groups()
    return check_country(options.default_country) or row["country"]


class _RolledBack(Exception):
    """Leaves a dry run's transaction: the same statements ran, and none of them stays."""


async def run_import(
    pool: asyncpg.Pool,
    actor: Actor,
    data: bytes,
    filename: str | None,
    options: ImportOptions,
    *,
    max_rows: int,
    progress: Progress | None = None,
) -> ImportResult:
    """Import one file; raises ImportRefused (nothing written) when the file or options cannot be used."""
    started = time.perf_counter()
    progress = progress or Progress(pool, actor.claims, actor.id, options.import_id)
    total = 0
    try:
        await progress.update("reading", 0, 0, force=True)
        if len(data) >= WARM_POOL_BYTES:
            phone_pool.warm()
        country = await _context(pool, actor, options)
        table = await asyncio.to_thread(
            read_table,
            data,
            filename,
            sheet=options.sheet,
            max_rows=max_rows,
            select=lambda headers: plan_columns(headers, options.mapping).indices,  # read only these columns
        )
        plan = plan_columns(table.headers, options.mapping)
        read_s = time.perf_counter() - started
        total = len(table.frame)
        validator = normalize.Validator(table, plan, country, options.on_duplicate)
        del table
        await progress.update("importing", 0, total, force=True)
        written, duplicates, db_timings = await _write(pool, actor, validator, options, filename, progress)
        result = ImportResult(
            import_id=options.import_id,
            total_rows=total,
            created=written.created,
            updated=written.updated,
            skipped_duplicates=duplicates + written.skipped_existing,
            invalid_count=validator.invalid_count,
            invalid=validator.invalid,
            groups_updated=len(written.groups),
            dry_run=options.dry_run,
        )
        await progress.update("done", total, total, force=True)
    except BaseException:
        await asyncio.shield(progress.update("failed", 0, total, force=True))
        raise
    result.timings = {
        "read": read_s,
        "phones": validator.timings.parse_wall,
        "phones_cpu": validator.timings.parse_cpu,
        "validate": validator.timings.decide,
        "names": validator.timings.names,
        **db_timings,
        "total": time.perf_counter() - started,
    }
    return result


async def _write(
    pool: asyncpg.Pool,
    actor: Actor,
    validator: normalize.Validator,
    options: ImportOptions,
    filename: str | None,
    progress: Progress,
) -> tuple[writer.Written, int, dict[str, float]]:
    """One transaction as the user, open while the batches arrive (Postgres writes one batch while
    the pool parses the next); a dry run runs the very same statements and rolls them back.
    Returns the counts, the file's own duplicates, and the seconds spent writing and committing."""
    written, duplicates, processed, in_db, waited = writer.Written(), 0, 0, 0.0, 0.0
    committing = 0.0
    try:
        # A second connection judges the names of the next batch while this one writes.
        async with (
            user_tx(pool, actor.claims, actor.request_headers) as conn,
            user_tx(pool, actor.claims, actor.request_headers) as judging,
        ):
            await writer.prepare(conn)
            waiting_since = time.perf_counter()
            judge = functools.partial(writer.judge_names, judging)
            async with contextlib.aclosing(validator.batches(judge)) as batches:
                async for batch in batches:
                    mark = time.perf_counter()
                    waited += mark - waiting_since
                    await writer.write_batch(conn, batch, options.group_ids, options.on_duplicate, written)
                    in_db += time.perf_counter() - mark
                    duplicates += batch.duplicates
                    processed += batch.rows
                    await progress.update("importing", processed, validator.total)
                    waiting_since = time.perf_counter()
            if options.dry_run:
                raise _RolledBack
            # Not a table change of its own (the contacts are): recorded as the service, in this
            # transaction, so it commits with the import or not at all.
            await audit.record(
                conn,
                "contacts.import",
                actor_id=actor.id,
                entity_type="contact",
                details={
                    "import_id": options.import_id,
                    "file": _safe_name(filename),
                    "type": validator.table.kind,
                    "total_rows": validator.total,
                    "created": written.created,
                    "updated": written.updated,
                    "skipped_duplicates": duplicates + written.skipped_existing,
                    "invalid_count": validator.invalid_count,
                    "groups_updated": len(written.groups),
                    "group_ids": list(options.group_ids),
                    "on_duplicate": options.on_duplicate,
                },
            )
            committing = time.perf_counter()
    except _RolledBack:
        pass
    commit_s = time.perf_counter() - committing if committing else 0.0
    # wait: Postgres idle, waiting for the next batch's numbers (the parsing is behind the writes).
    return written, duplicates, {"write": in_db, "wait": waited, "commit": commit_s}

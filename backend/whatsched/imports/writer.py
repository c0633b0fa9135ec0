"""Writing an import's batches in the caller's transaction (RLS applies). Each batch is COPYed into
a temporary table, then set-based statements do the rest: contacts inserted or updated on
(created_by, phone), the file's later values applied on top in update mode, and the batch's
contacts linked to the chosen groups. The caller owns the transaction, so a failure in any step of
any batch rolls back all of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import asyncpg

from whatsched.imports.normalize import Batch, OnDuplicate
from whatsched.imports.refusal import ImportRefused

TEMP_TABLE = "whatsched_import_rows"

# Rows go in phone order so two imports touching the same phones lock them in the same order.
# The owner is given once ((select auth.uid()), an init plan): the column's default would read and
# parse the JWT claims again for every row (~10 % of the statement). RLS still checks it.
_INSERT_SKIP = f"""
with written as (
  insert into public.contacts (created_by, name, phone, email)
  select (select auth.uid()), coalesce(i.name, i.phone), i.phone, i.email
  from pg_temp.{TEMP_TABLE} i where not i.repeat order by i.phone
  on conflict (created_by, phone) do nothing
  returning 1)
select count(*)::integer as created, 0 as updated from written
"""

# A row without a name (inserted with its phone as the name) or an email never erases one, and a
# contact the file leaves as it was is not rewritten: only real changes count as updated.
_INSERT_UPDATE = f"""
with written as (
  insert into public.contacts as c (created_by, name, phone, email)
  select (select auth.uid()), coalesce(i.name, i.phone), i.phone, i.email
  from pg_temp.{TEMP_TABLE} i where not i.repeat order by i.phone
  on conflict (created_by, phone) do update
    set name = case when excluded.name = excluded.phone then c.name else excluded.name end,
        email = coalesce(excluded.email, c.email)
    where (case when excluded.name = excluded.phone then c.name else excluded.name end,
           coalesce(excluded.email, c.email)) is distinct from (c.name, c.email)
  returning (xmax = 0) as inserted)
select count(*) filter (where inserted)::integer as created,
       count(*) filter (where not inserted)::integer as updated
from written
"""

# Update mode: a phone an earlier batch wrote appears again; the later row's values win.
_APPLY_REPEATS = f"""
update public.contacts c
set name = coalesce(i.name, c.name), email = coalesce(i.email, c.email)
from pg_temp.{TEMP_TABLE} i
where i.repeat and c.created_by = (select auth.uid()) and c.phone = i.phone
  and (coalesce(i.name, c.name), coalesce(i.email, c.email)) is distinct from (c.name, c.email)
"""

_LINK_GROUPS = f"""
with linked as (
  insert into public.group_contacts (group_id, contact_id)
  select g.id, c.id
  from unnest($1::uuid[]) as g(id)
  cross join pg_temp.{TEMP_TABLE} i
  join public.contacts c on c.created_by = (select auth.uid()) and c.phone = i.phone
  where not i.repeat
  order by g.id, c.id
  on conflict do nothing
  returning group_id)
select distinct group_id::text from linked
"""


async def judge_names(conn: asyncpg.Connection, raw: list[str]) -> tuple[list[str | None], list[str | None]]:
    """Each raw name as the contacts trigger would store it and why it would refuse it (Postgres
    decides: private.contact_names). A blank name is no refusal here: the phone names the row."""
    row = await conn.fetchrow("select names, problems from private.contact_names($1::text[])", raw)
    assert row is not None
    names = [name or None for name in row["names"]]
    return names, [problem if name else None for name, problem in zip(names, row["problems"], strict=True)]


@dataclass
class Written:
    created: int = 0
    updated: int = 0
    skipped_existing: int = 0  # contacts already there and left as they were
    groups: set[str] = field(default_factory=set)  # groups that gained a member


async def prepare(conn: asyncpg.Connection) -> None:
    await conn.execute(
        f"create temporary table {TEMP_TABLE} (phone text not null, name text, email text,"
        " repeat boolean not null default false) on commit drop"
    )


async def copy_rows(conn: asyncpg.Connection, batch: Batch) -> None:
    await conn.execute(f"truncate pg_temp.{TEMP_TABLE}")
    records = [(*r, False) for r in batch.records] + [(*r, True) for r in batch.repeats]
    # No ANALYZE: with no statistics the planner sizes the table from its pages, which is enough here.
    await conn.copy_records_to_table(TEMP_TABLE, records=records, columns=["phone", "name", "email", "repeat"])


async def upsert_contacts(conn: asyncpg.Connection, on_duplicate: OnDuplicate) -> tuple[int, int]:
    row = await conn.fetchrow(_INSERT_UPDATE if on_duplicate == "update" else _INSERT_SKIP)
    assert row is not None
    return int(row["created"]), int(row["updated"])


async def apply_repeats(conn: asyncpg.Connection) -> None:
    await conn.execute(_APPLY_REPEATS)


async def link_groups(conn: asyncpg.Connection, group_ids: Sequence[str]) -> set[str]:
    try:
        return {str(r[0]) for r in await conn.fetch(_LINK_GROUPS, list(group_ids))}
    except asyncpg.ForeignKeyViolationError:
        # A group deleted since the import started (or never visible): nothing of the import stays.
        raise missing_groups() from None


def missing_groups() -> ImportRefused:
    detail = "One of group_ids does not exist."
    return ImportRefused(
        404, "related_not_found", detail, [{"field": "group_ids", "message": "contains an unknown group"}]
    )


async def write_batch(
    conn: asyncpg.Connection, batch: Batch, group_ids: Sequence[str], on_duplicate: OnDuplicate, into: Written
) -> None:
    """One batch, in `conn`'s open transaction; adds its counts to `into`."""
    if not batch.records and not batch.repeats:
        return
    await copy_rows(conn, batch)
    created, updated = await upsert_contacts(conn, on_duplicate)
    if batch.repeats:
        await apply_repeats(conn)
    if group_ids:
        into.groups |= await link_groups(conn, group_ids)
    into.created += created
    into.updated += updated
    into.skipped_existing += len(batch.records) - created - updated

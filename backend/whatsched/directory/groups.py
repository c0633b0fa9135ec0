"""The SQL of groups and their members. Group JSON is built in Postgres (GROUP_JSON), so a page of
groups is one statement whose single text value is the response body.

Every function runs inside the caller's transaction (role authenticated + claims): RLS decides
what exists, and another user's group is simply not found.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import asyncpg

from whatsched.db.paging import limit_offset
from whatsched.db.sql import NAME_ORDER, Args, like, ts

# The guide's group shape, over a relation aliased `g`.
GROUP_JSON = f"""json_build_object(
  'id', g.id,
  'name', g.name,
  'description', g.description,
  'contact_count', g.contact_count,
  'created_at', {ts("g.created_at")},
  'updated_at', {ts("g.updated_at")},
  'created_by', g.created_by
)"""

# Always ending in the primary key, so equal names or counts keep one order from page to page.
SORTS = {
    "name": f"lower(g.name) collate {NAME_ORDER}, g.id",
    "-name": f"lower(g.name) collate {NAME_ORDER} desc, g.id desc",
    "created_at": "g.created_at, g.id",
    "-created_at": "g.created_at desc, g.id desc",
    "contact_count": "g.contact_count, g.id",
    "-contact_count": "g.contact_count desc, g.id desc",
}


async def group_json(conn: asyncpg.Connection, group_id: str) -> str | None:
    text: str | None = await conn.fetchval(
        f"select {GROUP_JSON}::text from public.groups g where g.id = $1::uuid", group_id
    )
    return text


@dataclass
class GroupFilters:
    q: str | None = None
    everyone: bool = False  # an admin's scope=all; otherwise the caller's own groups


def list_query(f: GroupFilters, sort: str, page: int, page_size: int) -> tuple[str, list[Any]]:
    """One statement: the page and the total, as the response's JSON text."""
    arg = Args()
    where: list[str] = []
    if not f.everyone:
        # "Mine" stated explicitly (RLS alone also admits an admin's view of everyone): uses the index.
        where.append("g.created_by = (select auth.uid())")
    if f.q:
        where.append(f"g.name ilike {arg(like(f.q))}")
    condition = " and ".join(where) or "true"
    order = SORTS[sort]
    limit, offset = limit_offset(page, page_size)
    sql = f"""
with page as (
  select g.* from public.groups g where {condition} order by {order} limit {limit} offset {offset}
)
select json_build_object(
  'items', coalesce((select json_agg({GROUP_JSON} order by {order}) from page g), '[]'::json),
  'total', (select count(*) from public.groups g where {condition}),
  'page', {int(page)}::integer,
  'page_size', {limit}::integer
)::text"""
    return sql, arg.values


async def list_groups(conn: asyncpg.Connection, f: GroupFilters, sort: str, page: int, page_size: int) -> str:
    sql, args = list_query(f, sort, page, page_size)
    text: str = await conn.fetchval(sql, *args)
    return text


# -----------------------------------------------------------------------------------------------
# Writes
# -----------------------------------------------------------------------------------------------


async def insert_group(conn: asyncpg.Connection, name: str, description: str) -> str:
    """The new group's JSON. A name already used (any case) raises groups_name_per_owner → 409."""
    text: str = await conn.fetchval(
        f"insert into public.groups as g (name, description) values ($1, $2) returning {GROUP_JSON}::text",
        name,
        description,
    )
    return text


async def update_group(conn: asyncpg.Connection, group_id: str, changes: dict[str, str]) -> str | None:
    """Apply name/description changes; the group's JSON, or None when it is not visible."""
    if not changes:
        return await group_json(conn, group_id)
    columns = list(changes)  # keys come from our model's field names, never from the client
    sets = ", ".join(f"{c} = ${i + 2}" for i, c in enumerate(columns))
    text: str | None = await conn.fetchval(
        f"update public.groups g set {sets} where g.id = $1::uuid returning {GROUP_JSON}::text",
        group_id,
        *[changes[c] for c in columns],
    )
    return text


async def delete_group(conn: asyncpg.Connection, group_id: str) -> asyncpg.Record | None:
    """Delete (memberships and message links go with it); what it was, or None when not visible."""
    row: asyncpg.Record | None = await conn.fetchrow(
        "delete from public.groups where id = $1::uuid returning name, contact_count, created_by::text",
        group_id,
    )
    return row


@dataclass(frozen=True)
class MembersResult:
    group_found: bool
    missing: list[str]  # requested contact ids that do not exist for the group's owner
    added: int
    distinct_requested: int


# One statement: which of the ids are the group owner's contacts, and, only when all of them are,
# the set-based insert. The composite foreign key (contact_id, created_by) stays the real guard:
# a contact deleted meanwhile still fails the insert (23503 → 404 related_not_found).
ADD_MEMBERS = """
with grp as (select id, created_by from public.groups where id = $1::uuid),
wanted as (select distinct w as id from unnest($2::uuid[]) w),
known as (
  select c.id from public.contacts c join grp on c.created_by = grp.created_by
  where c.id in (select id from wanted)
),
missing as (select id from wanted except select id from known),
ins as (
  insert into public.group_contacts (group_id, contact_id, created_by)
  select grp.id, w.id, grp.created_by from grp, wanted w
  where not exists (select 1 from missing)
  order by w.id
  on conflict do nothing
  returning contact_id
)
select exists (select 1 from grp) as group_found,
       array(select id::text from missing order by id) as missing,
       (select count(*) from ins)::integer as added,
       (select count(*) from wanted)::integer as distinct_requested"""


async def add_members(conn: asyncpg.Connection, group_id: str, contact_ids: list[str]) -> MembersResult:
    row = await conn.fetchrow(ADD_MEMBERS, group_id, contact_ids)
    return MembersResult(row["group_found"], list(row["missing"]), row["added"], row["distinct_requested"])


async def remove_member(conn: asyncpg.Connection, group_id: str, contact_id: str) -> tuple[bool, bool]:
    """(group visible, contact was a member and is not any more)."""
    row = await conn.fetchrow(
        """with gone as (
             delete from public.group_contacts where group_id = $1::uuid and contact_id = $2::uuid returning 1)
           select exists (select 1 from public.groups where id = $1::uuid) as group_found,
                  exists (select 1 from gone) as removed""",
        group_id,
        contact_id,
    )
    return bool(row["group_found"]), bool(row["removed"])

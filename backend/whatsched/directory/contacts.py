"""The SQL of contacts. Contact JSON is built in Postgres (CONTACT_JSON) with each contact's group
ids aggregated in the same statement, so a page of contacts is one query.

Every function runs inside the caller's transaction (role authenticated + claims): RLS decides
what exists, and another user's contact is simply not found.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import asyncpg

from whatsched.db.paging import limit_offset
from whatsched.db.sql import NAME_ORDER, Args, like, ts

# The guide's contact shape (plus opted_out_at and the reply keyword that caused it), over contacts
# `c` left-joined to `grp` (groups_of).
CONTACT_JSON = f"""json_build_object(
  'id', c.id,
  'name', c.name,
  'phone', c.phone,
  'email', c.email,
  'is_active', c.is_active,
  'groups', coalesce(grp.ids, '[]'::json),
  'created_at', {ts("c.created_at")},
  'updated_at', {ts("c.updated_at")},
  'opted_out_at', {ts("c.opted_out_at")},
  'opted_out_keyword', c.opted_out_keyword
)"""


def groups_of(contacts: str) -> str:
    """Each contact's group ids as one JSON array, for the contacts in the relation `contacts`."""
    return f"""select gc.contact_id, json_agg(gc.group_id order by gc.added_at, gc.group_id) as ids
  from {contacts} p join public.group_contacts gc on gc.contact_id = p.id
  group by gc.contact_id"""


ONE_CONTACT = f"""
with c as (select * from public.contacts where id = $1::uuid),
grp as ({groups_of("c")})
select {CONTACT_JSON}::text from c left join grp on grp.contact_id = c.id"""

# Always ending in the primary key, so equal names keep one order from page to page.
SORTS = {
    "name": f"lower(c.name) collate {NAME_ORDER}, c.id",
    "-name": f"lower(c.name) collate {NAME_ORDER} desc, c.id desc",
    "created_at": "c.created_at, c.id",
    "-created_at": "c.created_at desc, c.id desc",
    "phone": "c.phone, c.id",
    "-phone": "c.phone desc, c.id desc",
}

# Text that reads as (part of) a phone number: digits and the punctuation people type around them.
_PHONE_LIKE = re.compile(r"^[\d\s+\-.()/]*\d[\d\s+\-.()/]*$")
_NOT_DIGIT = re.compile(r"\D")


async def contact_json(conn: asyncpg.Connection, contact_id: str) -> str | None:
    text: str | None = await conn.fetchval(ONE_CONTACT, contact_id)
    return text


@dataclass
class ContactFilters:
    q: str | None = None
    is_active: bool | None = None
    group_id: str | None = None  # contacts of this group (none when the group is not yours)
    member_of: str | None = None  # the members route: the group must be visible, else no result
    everyone: bool = False  # an admin's scope=all; otherwise the caller's own contacts


def list_query(f: ContactFilters, sort: str, page: int, page_size: int) -> tuple[str, list[Any]]:
    """One statement: the page (with each contact's groups) and the total, as JSON text.
    With member_of, the text is null when that group is not visible."""
    arg = Args()
    where: list[str] = []
    member_of = arg(f.member_of) if f.member_of else None
    if member_of:
        # A visible group's members are its owner's contacts: no owner condition needed.
        where.append(f"c.id in (select contact_id from public.group_contacts where group_id = {member_of}::uuid)")
    elif not f.everyone:
        # "Mine" stated explicitly (RLS alone also admits an admin's view of everyone): uses the index.
        where.append("c.created_by = (select auth.uid())")
    if f.group_id:
        where.append(f"c.id in (select contact_id from public.group_contacts where group_id = {arg(f.group_id)}::uuid)")
    if f.q:
        text = arg(like(f.q))
        alternatives = [f"c.name ilike {text}", f"c.email ilike {text}"]
        if _PHONE_LIKE.match(f.q):
            digits = _NOT_DIGIT.sub("", f.q)
            alternatives.append(f"c.phone like {arg(like(digits))}")
        where.append("(" + " or ".join(alternatives) + ")")
    if f.is_active is not None:
        where.append(f"c.is_active = {arg(f.is_active)}")
    condition = " and ".join(where) or "true"
    order = SORTS[sort]
    limit, offset = limit_offset(page, page_size)
    body = f"""json_build_object(
  'items', coalesce((select json_agg({CONTACT_JSON} order by {order})
                     from page c left join grp on grp.contact_id = c.id), '[]'::json),
  'total', (select count(*) from public.contacts c where {condition}),
  'page', {int(page)}::integer,
  'page_size', {limit}::integer
)::text"""
    if member_of:
        body = f"case when exists (select 1 from public.groups where id = {member_of}::uuid) then {body} end"
    sql = f"""
with page as (
  select c.* from public.contacts c where {condition} order by {order} limit {limit} offset {offset}
),
grp as ({groups_of("page")})
select {body}"""
    return sql, arg.values


async def list_contacts(
    conn: asyncpg.Connection, f: ContactFilters, sort: str, page: int, page_size: int
) -> str | None:
    sql, args = list_query(f, sort, page, page_size)
    text: str | None = await conn.fetchval(sql, *args)
    return text


async def profile_country(conn: asyncpg.Connection) -> str | None:
    """The caller's default country for national numbers (profiles.default_country, CL unless changed)."""
    region: str | None = await conn.fetchval(
        "select default_country from public.profiles where id = (select auth.uid())"
    )
    return region


# -----------------------------------------------------------------------------------------------
# Writes
# -----------------------------------------------------------------------------------------------


async def insert_contact(
    conn: asyncpg.Connection, name: str, phone: str, email: str | None, is_active: bool, opted_out: bool
) -> str:
    """The new contact's id. A phone the caller already has raises contacts_phone_per_owner → 409."""
    contact_id = await conn.fetchval(
        """insert into public.contacts (name, phone, email, is_active, opted_out_at)
           values ($1, $2, $3, $4, case when $5 then now() end) returning id::text""",
        name,
        phone,
        email,
        is_active,
        opted_out,
    )
    return str(contact_id)


# Columns a partial update may set, and the SQL each value goes through.
_UPDATABLE = {
    "name": "{}",
    "phone": "{}",
    "email": "{}",
    "is_active": "{}",
    # true keeps the first opt-out time; false clears it.
    "opted_out_at": "case when {}::boolean then coalesce(c.opted_out_at, now()) end",
}


async def update_contact(conn: asyncpg.Connection, contact_id: str, changes: dict[str, Any]) -> bool:
    """Apply changes (keys of _UPDATABLE; opted_out_at takes a bool). Without changes, only locks
    the row. False when the contact is not visible."""
    if not changes:
        found = await conn.fetchval("select id from public.contacts where id = $1::uuid for update", contact_id)
        return found is not None
    columns = [c for c in _UPDATABLE if c in changes]
    sets = ", ".join(f"{c} = " + _UPDATABLE[c].format(f"${i + 2}") for i, c in enumerate(columns))
    found = await conn.fetchval(
        f"update public.contacts c set {sets} where c.id = $1::uuid returning c.id",
        contact_id,
        *[changes[c] for c in columns],
    )
    return found is not None


@dataclass(frozen=True)
class LinkResult:
    missing: list[str]  # requested group ids that do not exist for the contact's owner
    changed: bool


# One statement: which of the groups are the contact owner's and, only when all of them are, the
# set-based link (and, when replacing, the unlink of the others). The composite foreign key
# (group_id, created_by) stays the real guard against linking someone else's group.
LINK_GROUPS = """
with con as (select id, created_by from public.contacts where id = $1::uuid),
wanted as (select distinct w as id from unnest($2::uuid[]) w),
known as (
  select g.id from public.groups g join con on g.created_by = con.created_by
  where g.id in (select id from wanted)
),
missing as (select id from wanted except select id from known),
dropped as (
  delete from public.group_contacts gc using con
  where $3 and gc.contact_id = con.id and gc.group_id <> all($2::uuid[])
    and not exists (select 1 from missing)
  returning gc.group_id
),
ins as (
  insert into public.group_contacts (group_id, contact_id, created_by)
  select w.id, con.id, con.created_by from con, wanted w
  where not exists (select 1 from missing)
  order by w.id
  on conflict do nothing
  returning group_id
)
select array(select id::text from missing order by id) as missing,
       (select count(*) from dropped) + (select count(*) from ins) > 0 as changed"""


async def link_groups(conn: asyncpg.Connection, contact_id: str, group_ids: list[str], replace: bool) -> LinkResult:
    row = await conn.fetchrow(LINK_GROUPS, contact_id, group_ids, replace)
    return LinkResult(list(row["missing"]), bool(row["changed"]))


async def touch(conn: asyncpg.Connection, contact_id: str) -> None:
    """A change of groups is a change of the contact: bump updated_at (and its ETag)."""
    await conn.execute("update public.contacts set updated_at = now() where id = $1::uuid", contact_id)


async def delete_contact(conn: asyncpg.Connection, contact_id: str) -> bool:
    """Delete (its memberships go with it, and group counts follow). False when not visible."""
    found = await conn.fetchval("delete from public.contacts where id = $1::uuid returning id", contact_id)
    return found is not None

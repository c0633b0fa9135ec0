"""The SQL of the messages API. Every message the API returns is built by MESSAGE_JSON, in SQL,
so a page and its groups come back from Postgres as one ready JSON text.

All functions take a connection inside the caller's transaction (role authenticated + claims):
RLS decides what exists. A message another user owns is simply not found.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import asyncpg

from whatsched.db.paging import limit_offset
from whatsched.db.sql import Args, like, ts

# The guide's message shape, over a relation `m` of messages joined by MESSAGE_JOINS. Groups are
# looked up per row (LATERAL, by index): the plan does not depend on how many rows a page has, so
# Postgres can reuse one generic plan for every page instead of planning each request.
# Before fan-out recipient_count is the live audience (public.message_audiences caches
# public.message_recipient_count, kept exact by triggers).
MESSAGE_JSON = f"""json_build_object(
  'id', m.id,
  'content', m.content,
  'scheduled_for', {ts("m.scheduled_for")},
  'status', m.status,
  'groups', grp.groups,
  'created_at', {ts("m.created_at")},
  'updated_at', {ts("m.updated_at")},
  'sent_at', {ts("m.sent_at")},
  'recipient_count', case when m.status in ('draft', 'scheduled', 'paused') and m.recipient_count = 0
                          then coalesce(aud.recipients, 0)
                          else m.recipient_count end,
  'delivered_count', m.delivered_count,
  'failed_count', m.failed_count,
  'created_by', m.created_by,
  'recurrence', m.recurrence,
  'number_id', m.number_id,
  'media_id', m.media_id
)"""

# What MESSAGE_JSON reads besides `m`: its cached audience and its groups as one JSON array ('[]' when none).
MESSAGE_JOINS = """left join public.message_audiences aud on aud.message_id = m.id
cross join lateral (
  select coalesce(json_agg(json_build_object('id', g.id, 'name', g.name, 'contact_count', g.contact_count)
                           order by g.name, g.id), '[]'::json) as groups
  from public.message_groups mg
  join public.groups g on g.id = mg.group_id
  where mg.message_id = m.id
) grp"""


ONE_MESSAGE = f"""
select {MESSAGE_JSON}::text from public.messages m {MESSAGE_JOINS} where m.id = $1::uuid"""

_SORTS = {
    "created_at": "m.created_at, m.id",
    "-created_at": "m.created_at desc, m.id desc",
    "scheduled_for": "m.scheduled_for, m.id",
    "-scheduled_for": "m.scheduled_for desc, m.id desc",
    "updated_at": "m.updated_at, m.id",
    "-updated_at": "m.updated_at desc, m.id desc",
}


async def message_json(conn: asyncpg.Connection, message_id: str) -> str | None:
    text: str | None = await conn.fetchval(ONE_MESSAGE, message_id)
    return text


@dataclass
class ListFilters:
    statuses: list[str] = field(default_factory=list)
    q: str | None = None
    scheduled_from: datetime | None = None
    scheduled_to: datetime | None = None
    created_from: datetime | None = None
    created_to: datetime | None = None
    group_id: str | None = None
    everyone: bool = False  # an admin's scope=all; otherwise the caller's own messages


def list_query(f: ListFilters, sort: str, page: int, page_size: int) -> tuple[str, list[Any]]:
    """One statement: the page (with groups and audience) and the total, as JSON text."""
    arg = Args()
    where: list[str] = []
    counts_where: list[str] = []
    if not f.everyone:
        # Explicitly "mine" (RLS alone would also admit an admin's view of everyone): uses the index.
        where.append("m.created_by = (select auth.uid())")
        counts_where.append("c.created_by = (select auth.uid())")
    if f.statuses:
        p = arg(f.statuses)
        where.append(f"m.status = any({p}::text[])")
        counts_where.append(f"c.status = any({p}::text[])")
    exact_total = False
    if f.q:
        where.append(f"m.content ilike {arg(like(f.q))}")
        exact_total = True
    for column, op, value in (
        ("scheduled_for", ">=", f.scheduled_from),
        ("scheduled_for", "<", f.scheduled_to),
        ("created_at", ">=", f.created_from),
        ("created_at", "<", f.created_to),
    ):
        if value is not None:
            where.append(f"m.{column} {op} {arg(value)}::timestamptz")
            exact_total = True
    if f.group_id:
        where.append(
            f"exists (select 1 from public.message_groups fg where fg.message_id = m.id and fg.group_id = {arg(f.group_id)}::uuid)"
        )
        exact_total = True
    condition = " and ".join(where) or "true"
    if exact_total:
        total = f"(select count(*) from public.messages m where {condition})"
    else:
        # Only owner/status filters: the maintained per-status counts give the total without a scan.
        total = (
            f"(select coalesce(sum(c.n), 0) from public.message_counts c where {' and '.join(counts_where) or 'true'})"
        )
    order = _SORTS[sort]
    limit, offset = limit_offset(page, page_size)
    sql = f"""
with page as (
  select m.* from public.messages m where {condition} order by {order} limit {limit} offset {offset}
)
select json_build_object(
  'items', coalesce((select json_agg({MESSAGE_JSON} order by {order}) from page m {MESSAGE_JOINS}), '[]'::json),
  'total', {total},
  'page', {int(page)}::integer,
  'page_size', {limit}::integer
)::text"""
    return sql, arg.values


async def list_messages(conn: asyncpg.Connection, f: ListFilters, sort: str, page: int, page_size: int) -> str:
    sql, args = list_query(f, sort, page, page_size)
    text: str = await conn.fetchval(sql, *args)
    return text


async def localize(conn: asyncpg.Connection, *values: datetime | None) -> list[datetime | None]:
    """Times without an offset are read in the caller's profile timezone, as the database reads
    them (private.caller_timezone); one query, only if needed."""
    naive = [v for v in values if v is not None and v.tzinfo is None]
    if not naive:
        return list(values)
    read = iter(
        await conn.fetchval(
            "select array(select t at time zone private.caller_timezone()"
            " from unnest($1::timestamp[]) with ordinality as u (t, i) order by i)",
            naive,
        )
    )
    return [next(read) if v is not None and v.tzinfo is None else v for v in values]


# -----------------------------------------------------------------------------------------------
# Writes
# -----------------------------------------------------------------------------------------------


async def insert_message(
    conn: asyncpg.Connection,
    content: str,
    scheduled_for: datetime | None,
    recurrence: str | None,
    number_id: str | None = None,
    media_id: str | None = None,
) -> str:
    """The new draft's id. A number_id the user may not use is refused (WS430 number_not_allowed),
    a media_id not theirs too (WS404 related_not_found)."""
    message_id = await conn.fetchval(
        "insert into public.messages (content, scheduled_for, recurrence, number_id, media_id)"
        " values ($1, $2, $3, $4::uuid, $5::uuid) returning id",
        content,
        scheduled_for,
        recurrence,
        number_id,
        media_id,
    )
    return str(message_id)


async def set_groups(conn: asyncpg.Connection, message_id: str, group_ids: list[str], replace: bool) -> bool:
    """Link the groups (the owner's: the composite foreign key refuses others). True if anything changed."""
    changed = False
    if replace:
        status = await conn.execute(
            "delete from public.message_groups where message_id = $1::uuid and group_id <> all($2::uuid[])",
            message_id,
            group_ids,
        )
        changed = status != "DELETE 0"
    if group_ids:
        status = await conn.execute(
            """insert into public.message_groups (message_id, group_id, created_by)
               select $1::uuid, g, m.created_by
               from unnest($2::uuid[]) g, public.messages m where m.id = $1::uuid
               on conflict do nothing""",
            message_id,
            group_ids,
        )
        changed = changed or status != "INSERT 0 0"
    return changed


async def update_message(conn: asyncpg.Connection, message_id: str, changes: dict[str, Any]) -> bool:
    """Apply content/scheduled_for/recurrence/number_id/media_id changes (the triggers refuse non-editable
    messages, and a number the user may not use).
    Without changes, only locks the row. False when the message is not visible."""
    if not changes:
        found = await conn.fetchval("select id from public.messages where id = $1::uuid for update", message_id)
        return found is not None
    columns = list(changes)
    sets = ", ".join(f"{c} = ${i + 2}" for i, c in enumerate(columns))
    found = await conn.fetchval(
        f"update public.messages set {sets} where id = $1::uuid returning id",
        message_id,
        *[changes[c] for c in columns],
    )
    return found is not None


async def touch(conn: asyncpg.Connection, message_id: str) -> None:
    """A change of groups is a change of the message: bump updated_at (and its ETag)."""
    await conn.execute("update public.messages set updated_at = now() where id = $1::uuid", message_id)


async def delete_message(conn: asyncpg.Connection, message_id: str) -> str | None:
    """Deletes unless sending. Returns the status it had (None: not found)."""
    row = await conn.fetchrow(
        """with target as (select id, status from public.messages where id = $1::uuid for update),
                gone as (delete from public.messages m using target t
                         where m.id = t.id and t.status <> 'sending' returning m.id)
           select t.status from target t""",
        message_id,
    )
    return None if row is None else str(row["status"])


# -----------------------------------------------------------------------------------------------
# Transitions (the database's functions apply the rules and refuse an invalid transition)
# -----------------------------------------------------------------------------------------------

Transition = Literal["pause", "resume", "cancel"]

# One literal statement per verb: the verb picks the statement, it is never spliced into SQL.
TRANSITIONS: dict[Transition, str] = {
    "pause": "select public.pause_message($1::uuid)",
    "resume": "select public.resume_message($1::uuid)",
    "cancel": "select public.cancel_message($1::uuid)",
}


async def schedule(conn: asyncpg.Connection, message_id: str, at: datetime | None) -> None:
    """draft → scheduled, at `at` (None: the time the message already has)."""
    await conn.execute("select public.schedule_message($1::uuid, $2::timestamptz)", message_id, at)


async def transition(conn: asyncpg.Connection, verb: Transition, message_id: str) -> None:
    """pause, resume or cancel the message."""
    await conn.execute(TRANSITIONS[verb], message_id)


async def duplicate(conn: asyncpg.Connection, message_id: str) -> str:
    """A new draft with the message's content, groups and recurrence; the copy's id."""
    copy_id = await conn.fetchval("select id from public.duplicate_message($1::uuid)", message_id)
    return str(copy_id)


# -----------------------------------------------------------------------------------------------
# Spam facts, preview, stats, dashboard
# -----------------------------------------------------------------------------------------------


async def spam_verdict(conn: asyncpg.Connection, message_id: str) -> tuple[str, list[str]] | None:
    """The message's content and the spam guard's rules (public.spam_check); None when not visible."""
    row = await conn.fetchrow(
        "select content, public.spam_check(id) as rules from public.messages where id = $1::uuid", message_id
    )
    return None if row is None else (str(row["content"]), list(row["rules"]))


PREVIEW = """
with members as (
  select c.id, c.name, c.phone, c.is_active, c.opted_out_at, c.can_receive, c.created_at
  from public.message_groups mg
  join public.group_contacts gc on gc.group_id = mg.group_id
  join public.contacts c on c.id = gc.contact_id
  where mg.message_id = $1::uuid
),
eligible as (select * from members where can_receive),
reached as (select distinct on (phone) * from eligible order by phone, created_at)
select
  (select count(*) from reached)::integer as recipient_count,
  (select count(distinct id) from members where not is_active)::integer as inactive,
  (select count(distinct id) from members where is_active and opted_out_at is not null)::integer as opted_out,
  ((select count(*) from eligible) - (select count(*) from reached))::integer as duplicates,
  coalesce((select json_agg(json_build_object('contact_id', s.id, 'name', s.name, 'phone', s.phone,
                                              'content', private.render(m.content, s.name))
                            order by s.name, s.phone)
            from (select * from reached order by name, phone limit $2) s,
                 public.messages m where m.id = $1::uuid), '[]'::json)::text as sample"""


async def preview_numbers(conn: asyncpg.Connection, message_id: str, sample: int) -> asyncpg.Record:
    row: asyncpg.Record = await conn.fetchrow(PREVIEW, message_id, sample)
    return row


async def stats_json(conn: asyncpg.Connection, message_id: str) -> str | None:
    text: str | None = await conn.fetchval("select public.message_stats($1::uuid)::text", message_id)
    return text


DASHBOARD = """
with tz as (
  select coalesce((select timezone from public.profiles where id = (select auth.uid())), 'UTC') as name
),
days as (
  select generate_series((now() at time zone tz.name)::date - 29, (now() at time zone tz.name)::date,
                         interval '1 day')::date as day
  from tz
),
sent as (
  select (d.sent_at at time zone tz.name)::date as day, count(*)::integer as n
  from public.deliveries d, tz
  where ($1 or d.created_by = (select auth.uid())) and d.sent_at >= now() - interval '31 days'
  group by 1
),
failed as (
  select (d.failed_at at time zone tz.name)::date as day, count(*)::integer as n
  from public.deliveries d, tz
  where ($1 or d.created_by = (select auth.uid())) and d.state = 'failed'
    and d.failed_at >= now() - interval '31 days'
  group by 1
)
select (public.dashboard_counts($1) || jsonb_build_object(
  'scope', case when $1 then 'all' else 'mine' end,
  'timezone', (select name from tz),
  'series', (select jsonb_agg(jsonb_build_object('date', to_char(days.day, 'YYYY-MM-DD'),
                                                 'sent', coalesce(sent.n, 0), 'failed', coalesce(failed.n, 0))
                              order by days.day)
             from days left join sent using (day) left join failed using (day))
))::text"""


async def dashboard_json(conn: asyncpg.Connection, everyone: bool) -> str:
    text: str = await conn.fetchval(DASHBOARD, everyone)
    return text


def with_warnings(message_text: str, warnings: list[str]) -> str:
    body = json.loads(message_text)
    body["warnings"] = warnings
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"))


async def preview_media(conn: asyncpg.Connection, message_id: str) -> dict[str, Any] | None:
    """The message's attachment as the preview shows it (None: a text message)."""
    text: str | None = await conn.fetchval(
        """select json_build_object('id', f.id, 'kind', f.kind, 'mime_type', f.mime_type,
                                    'original_name', f.original_name, 'size_bytes', f.size_bytes,
                                    'state', f.state, 'url', '/api/media/' || f.id || '/content')::text
           from public.messages m join public.media f on f.id = m.media_id where m.id = $1::uuid""",
        message_id,
    )
    return json.loads(text) if text is not None else None

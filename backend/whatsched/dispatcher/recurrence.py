"""Recurring messages (beyond the guide): when a message with a `recurrence` finishes (sent or
failed), its next occurrence is a new scheduled message with the same content and groups at the
next time the rule matches, in the owner's timezone, with `recurrence_parent_id` set (and the same
attachment, if any). A
cancelled message ends its series. The spam guard checks each occurrence (its own series is not a
duplicate of it); one it refuses waits paused, and its owner gets a warning notification.

Rules are 5-field cron expressions ("0 9 * * 1-5": weekdays at 09:00) or croniter's shortcuts
(@hourly, @daily, @weekly, @monthly, @yearly). The next time is strictly after both the finished
occurrence's `scheduled_for` and now, so a late finish skips the times already past.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from uuid import UUID
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import asyncpg
from croniter import croniter

log = logging.getLogger("whatsched.dispatcher")

INSERT_NEXT = """
insert into public.messages (created_by, content, recurrence, recurrence_parent_id, scheduled_for, status, number_id,
                             media_id)
select m.created_by, m.content, m.recurrence, m.id, n.at, 'scheduled', m.number_id, m.media_id
from unnest($1::uuid[], $2::timestamptz[]) as n (id, at)
join public.messages m on m.id = n.id
on conflict (recurrence_parent_id) where recurrence_parent_id is not null do nothing
returning id, recurrence_parent_id
"""
COPY_GROUPS = """
insert into public.message_groups (message_id, group_id, created_by)
select c.id, mg.group_id, mg.created_by
from unnest($1::uuid[], $2::uuid[]) as c (id, parent_id)
join public.message_groups mg on mg.message_id = c.parent_id
"""
# Wake every worker: the new occurrence may be due before what they sleep towards.
WAKE = "select pg_notify('whatsched_dispatch', id::text) from unnest($1::uuid[]) as id"


def is_valid(rule: str) -> bool:
    return bool(rule.strip()) and croniter.is_valid(rule.strip())


def next_occurrence(rule: str, previous: datetime | None, tz: str, now: datetime | None = None) -> datetime:
    """The next time `rule` matches in `tz`, strictly after `previous` and `now` (UTC result)."""
    now = now or datetime.now(UTC)
    try:
        zone = ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        zone = ZoneInfo("UTC")
    start = max(previous, now) if previous is not None else now
    after = croniter(rule.strip(), start.astimezone(zone)).get_next(datetime)
    assert isinstance(after, datetime)
    return after.astimezone(UTC)


async def schedule_next(
    conn: asyncpg.Connection, finished: list[tuple[UUID, str | None, datetime | None, str]]
) -> list[UUID]:
    """Insert the next occurrence of each finished recurring message; returns the new ids.
    A rule that does not parse (written around the API's validation) ends its series, logged."""
    ids: list[UUID] = []
    times: list[datetime] = []
    for message_id, rule, scheduled_for, tz in finished:
        if not rule:
            continue
        try:
            times.append(next_occurrence(rule, scheduled_for, tz))
        except (ValueError, KeyError) as exc:
            log.warning("message %s: recurrence %r does not parse (%s); no next occurrence", message_id, rule, exc)
            continue
        ids.append(message_id)
    if not ids:
        return []
    rows = await conn.fetch(INSERT_NEXT, ids, times)
    created = [r["id"] for r in rows]
    if created:
        await conn.execute(COPY_GROUPS, created, [r["recurrence_parent_id"] for r in rows])
        # The spam guard, as on every way into `scheduled`: a refused occurrence waits paused.
        held = await conn.fetch("select private.hold_spam_occurrences($1::uuid[]) as id", created)
        if held:
            log.warning("recurrence: %d occurrence(s) paused by the spam guard", len(held))
        await conn.execute(WAKE, created)
    return created

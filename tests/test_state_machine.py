"""The message state machine, enforced by Postgres: the transition functions called as the owner,
direct updates through RLS (what supabase-js can do), the worker's transitions as service_role,
and a schedule racing a cancel.

Graph (guide statuses): draft → scheduled | cancelled; scheduled → paused | cancelled | sending*;
sending → paused | cancelled | sent* | failed*; paused → scheduled (not fanned out yet) | sending
(fanned out) | cancelled; sent, cancelled, failed are final. (*: the worker only.)
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest
from schema_helpers import (
    SERVICE,
    Person,
    add_contact,
    add_group,
    add_message,
    become,
    create_person,
    delete_people,
    refused,
    session,
    status_of,
)

from whatsched.db.setup import Prepared

STATUSES = ("draft", "scheduled", "sending", "sent", "paused", "cancelled", "failed")
# Starting points: "paused" has not been fanned out yet, "paused_fanned_out" has (paused while sending).
STARTS = ("draft", "scheduled", "sending", "sent", "paused", "paused_fanned_out", "cancelled", "failed")

USER_EDGES = {
    ("draft", "scheduled"),
    ("draft", "cancelled"),
    ("scheduled", "paused"),
    ("scheduled", "cancelled"),
    ("sending", "paused"),
    ("sending", "cancelled"),
    ("paused", "scheduled"),
    ("paused", "cancelled"),
}
WORKER_EDGES = {("scheduled", "sending"), ("sending", "sent"), ("sending", "failed")}


@dataclass
class Cast:
    a: Person
    b: Person
    group: str  # A's group: one active contact
    other_group: str  # A's second group: one active contact
    empty_group: str  # A's group of unreachable contacts (inactive, opted out)
    b_message: str  # B's draft, schedulable


@pytest.fixture(scope="module")
async def cast(owner_conn: asyncpg.Connection) -> AsyncIterator[Cast]:
    a, b = await create_person(owner_conn), await create_person(owner_conn)
    group = await add_group(owner_conn, a, [await add_contact(owner_conn, a)])
    other_group = await add_group(owner_conn, a, [await add_contact(owner_conn, a)])
    empty_group = await add_group(
        owner_conn,
        a,
        [await add_contact(owner_conn, a, active=False), await add_contact(owner_conn, a, opted_out=True)],
    )
    b_group = await add_group(owner_conn, b, [await add_contact(owner_conn, b)])
    b_message = await add_message(owner_conn, b, [b_group])
    await owner_conn.execute(
        "update public.messages set scheduled_for = now() + interval '1 hour' where id = $1::uuid", b_message
    )
    yield Cast(a, b, group, other_group, empty_group, b_message)
    await delete_people(owner_conn, [a, b])


async def fan_out(admin: asyncpg.Connection, message_id: str) -> int:
    """The worker's fan-out, done directly: one delivery per reachable contact."""
    status = await admin.execute(
        """insert into public.deliveries (message_id, created_by, contact_id, phone, idempotency_key)
           select m.id, m.created_by, c.id, c.phone, m.id::text || ':' || c.phone
           from public.messages m
           join public.message_groups mg on mg.message_id = m.id
           join public.group_contacts gc on gc.group_id = mg.group_id
           join public.contacts c on c.id = gc.contact_id
           where m.id = $1::uuid and c.is_active and c.opted_out_at is null
           on conflict do nothing""",
        message_id,
    )
    return int(status.split()[-1])


async def message_in(admin: asyncpg.Connection, cast: Cast, start: str, *, groups: list[str] | None = None) -> str:
    """A message of A's in `start`, walked there along the graph by the owner connection (as the
    worker would), with a send time an hour ahead."""
    mid = await add_message(admin, cast.a, [cast.group] if groups is None else groups)
    await admin.execute("update public.messages set scheduled_for = now() + interval '1 hour' where id = $1::uuid", mid)

    async def to(status: str) -> None:
        await admin.execute("update public.messages set status = $2 where id = $1::uuid", mid, status)

    path = {
        "draft": [],
        "scheduled": ["scheduled"],
        "sending": ["scheduled", "sending"],
        "sent": ["scheduled", "sending", "sent"],
        "failed": ["scheduled", "sending", "failed"],
        "paused": ["scheduled", "paused"],
        "paused_fanned_out": ["scheduled", "sending", "paused"],
        "cancelled": ["cancelled"],
    }[start]
    for status in path:
        await to(status)
        if status == "sending":
            assert await fan_out(admin, mid) >= 1
    return mid


def call(verb: str, message_id: str, *args: Any) -> tuple[str, list[Any]]:
    if verb == "schedule":
        return "select (m).status from public.schedule_message($1::uuid, $2) m", [message_id, *args]
    return f"select (m).status from public.{verb}_message($1::uuid) m", [message_id]


# -----------------------------------------------------------------------------------------------
# The transition functions, called as the owner, from every starting point
# -----------------------------------------------------------------------------------------------

FUNCTION_RESULTS: dict[str, dict[str, str]] = {
    "schedule": {"draft": "scheduled"},
    "pause": {"scheduled": "paused", "sending": "paused"},
    "resume": {"paused": "scheduled", "paused_fanned_out": "sending"},
    "cancel": {
        "draft": "cancelled",
        "scheduled": "cancelled",
        "paused": "cancelled",
        "paused_fanned_out": "cancelled",
        "sending": "cancelled",
    },
    "duplicate": dict.fromkeys(STARTS, "draft"),
}


@pytest.mark.parametrize(
    ("verb", "start"),
    [
        pytest.param(verb, start, id=f"{verb}-from-{start}-{FUNCTION_RESULTS[verb].get(start, 'WS409')}")
        for verb in FUNCTION_RESULTS
        for start in STARTS
    ],
)
async def test_transition_function(
    app_pool: asyncpg.Pool, owner_conn: asyncpg.Connection, cast: Cast, verb: str, start: str
) -> None:
    mid = await message_in(owner_conn, cast, start)
    before = await status_of(owner_conn, mid)
    args = [None] if verb == "schedule" else []
    sql, params = call(verb, mid, *args)
    expected = FUNCTION_RESULTS[verb].get(start)
    async with session(app_pool, cast.a, commit=True) as conn:
        if expected is None:
            await refused(conn.fetchval(sql, *params), "WS409", "invalid_transition")
        else:
            assert await conn.fetchval(sql, *params) == expected
    # The message itself moved exactly as answered (duplicate leaves it alone).
    after = await status_of(owner_conn, mid)
    assert after == (expected if expected is not None and verb != "duplicate" else before)


@pytest.mark.parametrize("verb", list(FUNCTION_RESULTS))
@pytest.mark.parametrize("whose", ["missing", "another-users"])
async def test_transition_function_on_a_message_you_cannot_see_is_ws404(
    app_pool: asyncpg.Pool, cast: Cast, verb: str, whose: str
) -> None:
    mid = str(uuid.uuid4()) if whose == "missing" else cast.b_message
    sql, params = call(verb, mid, *([None] if verb == "schedule" else []))
    async with session(app_pool, cast.a) as conn:
        await refused(conn.fetchval(sql, *params), "WS404", "message_not_found")


async def test_bs_message_is_there_for_b(app_pool: asyncpg.Pool, cast: Cast) -> None:
    """The WS404 above is RLS hiding B's message, not a broken message."""
    async with session(app_pool, cast.b) as conn:
        assert await conn.fetchval(*_args(call("schedule", cast.b_message, None))) == "scheduled"


def _args(pair: tuple[str, list[Any]]) -> tuple[Any, ...]:
    return (pair[0], *pair[1])


# -----------------------------------------------------------------------------------------------
# schedule_message's rules
# -----------------------------------------------------------------------------------------------

SCHEDULE_REFUSALS = [
    ("no-time", None, "group", "WS422", "scheduled_for_required"),
    ("two-minutes-ago", "-2 minutes", "group", "WS423", "scheduled_in_past"),
    ("a-year-and-a-day", "1 year 1 day", "group", "WS424", "scheduled_too_far"),
    ("no-groups", "1 hour", None, "WS425", "no_recipients"),
    ("only-unreachable-contacts", "1 hour", "empty_group", "WS425", "no_recipients"),
]


@pytest.mark.parametrize(
    ("offset", "group", "sqlstate", "hint"),
    [pytest.param(*r[1:], id=f"{r[0]}-{r[3]}") for r in SCHEDULE_REFUSALS],
)
async def test_schedule_refusals(
    app_pool: asyncpg.Pool,
    owner_conn: asyncpg.Connection,
    cast: Cast,
    offset: str | None,
    group: str | None,
    sqlstate: str,
    hint: str,
) -> None:
    mid = await add_message(owner_conn, cast.a, [getattr(cast, group)] if group else [])
    async with session(app_pool, cast.a) as conn:
        at = None if offset is None else await conn.fetchval("select now() + $1::text::interval", offset)
        await refused(conn.fetchval("select public.schedule_message($1::uuid, $2)", mid, at), sqlstate, hint)
    assert await status_of(owner_conn, mid) == "draft"


async def test_schedule_allows_a_minute_of_grace_and_a_stored_time(
    app_pool: asyncpg.Pool, owner_conn: asyncpg.Connection, cast: Cast
) -> None:
    late = await add_message(owner_conn, cast.a, [cast.group])
    stored = await add_message(owner_conn, cast.a, [cast.group])
    await owner_conn.execute(
        "update public.messages set scheduled_for = now() + interval '3 hours' where id = $1::uuid", stored
    )
    async with session(app_pool, cast.a, commit=True) as conn:
        row = await conn.fetchrow(
            "select status, scheduled_for, scheduled_for < now() as past"
            " from public.schedule_message($1::uuid, now() - interval '30 seconds')",
            late,
        )
        assert row["status"] == "scheduled" and row["past"]
        row = await conn.fetchrow("select status, scheduled_for from public.schedule_message($1::uuid)", stored)
        assert row["status"] == "scheduled"
    assert await owner_conn.fetchval(
        "select scheduled_for > now() + interval '2 hours' from public.messages where id = $1::uuid", stored
    )


# -----------------------------------------------------------------------------------------------
# Direct updates of status (supabase-js): the same graph
# -----------------------------------------------------------------------------------------------

DIRECT = [
    pytest.param(
        who,
        start,
        target,
        (start, target) in USER_EDGES or (who == "service" and (start, target) in WORKER_EDGES),
        id=f"{who}-{start}-to-{target}-"
        + (
            "ok" if (start, target) in USER_EDGES or (who == "service" and (start, target) in WORKER_EDGES) else "WS409"
        ),
    )
    for who in ("user", "service")
    for start in STATUSES
    for target in STATUSES
    if start != target
]


@pytest.mark.parametrize(("who", "start", "target", "allowed"), DIRECT)
async def test_direct_status_update(
    app_pool: asyncpg.Pool,
    owner_conn: asyncpg.Connection,
    cast: Cast,
    who: str,
    start: str,
    target: str,
    allowed: bool,
) -> None:
    mid = await message_in(owner_conn, cast, start)
    actor = cast.a if who == "user" else SERVICE
    sql = "update public.messages set status = $2 where id = $1::uuid returning status"
    async with session(app_pool, actor, commit=True) as conn:
        if allowed:
            assert await conn.fetchval(sql, mid, target) == target
        else:
            await refused(conn.fetchval(sql, mid, target), "WS409", "invalid_transition")
    assert await status_of(owner_conn, mid) == (target if allowed else start)


@pytest.mark.parametrize(
    ("start", "target", "allowed"),
    [
        ("paused", "sending", False),  # nothing fanned out: it would "send" with no deliveries
        ("paused", "scheduled", True),
        ("paused_fanned_out", "sending", True),
        ("paused_fanned_out", "scheduled", False),  # resume goes on sending what it started
    ],
    ids=["unfanned-to-sending-WS409", "unfanned-to-scheduled-ok", "fanned-to-sending-ok", "fanned-to-scheduled-WS409"],
)
async def test_resuming_directly_follows_the_fan_out(
    app_pool: asyncpg.Pool, owner_conn: asyncpg.Connection, cast: Cast, start: str, target: str, allowed: bool
) -> None:
    mid = await message_in(owner_conn, cast, start)
    sql = "update public.messages set status = $2 where id = $1::uuid returning status"
    async with session(app_pool, cast.a) as conn:
        if allowed:
            assert await conn.fetchval(sql, mid, target) == target
        else:
            await refused(conn.fetchval(sql, mid, target), "WS409", "invalid_transition")


@pytest.mark.parametrize(
    ("offset", "groups", "sqlstate", "hint"),
    [
        (None, "group", "WS422", "scheduled_for_required"),
        ("-2 minutes", "group", "WS423", "scheduled_in_past"),
        ("1 year 1 day", "group", "WS424", "scheduled_too_far"),
        ("1 hour", None, "WS425", "no_recipients"),
        ("1 hour", "empty_group", "WS425", "no_recipients"),
    ],
    ids=["no-time-WS422", "past-WS423", "too-far-WS424", "no-groups-WS425", "unreachable-WS425"],
)
async def test_scheduling_directly_obeys_the_same_rules(
    app_pool: asyncpg.Pool,
    owner_conn: asyncpg.Connection,
    cast: Cast,
    offset: str | None,
    groups: str | None,
    sqlstate: str,
    hint: str,
) -> None:
    mid = await add_message(owner_conn, cast.a, [getattr(cast, groups)] if groups else [])
    async with session(app_pool, cast.a) as conn:
        await refused(
            conn.execute(
                "update public.messages set status = 'scheduled', scheduled_for = now() + $2::text::interval"
                " where id = $1::uuid",
                mid,
                offset,
            ),
            sqlstate,
            hint,
        )


@pytest.mark.parametrize("start", ["scheduled", "paused"])
@pytest.mark.parametrize(
    ("offset", "sqlstate", "hint"),
    [
        (None, "WS422", "scheduled_for_required"),
        ("-2 minutes", "WS423", "scheduled_in_past"),
        ("1 year 1 day", "WS424", "scheduled_too_far"),
        ("2 hours", None, None),
    ],
    ids=["null-WS422", "past-WS423", "too-far-WS424", "later-ok"],
)
async def test_rescheduling_directly_obeys_the_same_rules(
    app_pool: asyncpg.Pool,
    owner_conn: asyncpg.Connection,
    cast: Cast,
    start: str,
    offset: str | None,
    sqlstate: str | None,
    hint: str | None,
) -> None:
    mid = await message_in(owner_conn, cast, start)
    sql = "update public.messages set scheduled_for = now() + $2::text::interval where id = $1::uuid"
    async with session(app_pool, cast.a) as conn:
        if sqlstate is None:
            assert await conn.execute(sql, mid, offset) == "UPDATE 1"
        else:
            await refused(conn.execute(sql, mid, offset), sqlstate, hint)


async def test_a_draft_may_hold_no_time_but_not_a_past_one(
    app_pool: asyncpg.Pool, owner_conn: asyncpg.Connection, cast: Cast
) -> None:
    """As the API answers: a send time, whenever it is set, obeys the scheduling rules."""
    mid = await add_message(owner_conn, cast.a, [cast.group])
    async with session(app_pool, cast.a) as conn:
        await refused(
            conn.execute(
                "update public.messages set scheduled_for = now() - interval '1 day' where id = $1::uuid", mid
            ),
            "WS423",
            "scheduled_in_past",
        )
    async with session(app_pool, cast.a) as conn:
        await refused(
            conn.execute(
                "insert into public.messages (content, scheduled_for) values ('x', now() + interval '2 years')"
            ),
            "WS424",
            "scheduled_too_far",
        )
    async with session(app_pool, cast.a) as conn:
        await refused(conn.fetchval(*_args(call("schedule", mid, None))), "WS422", "scheduled_for_required")


# -----------------------------------------------------------------------------------------------
# What users cannot change
# -----------------------------------------------------------------------------------------------


async def test_users_cannot_change_counters_or_send_times(
    app_pool: asyncpg.Pool, owner_conn: asyncpg.Connection, cast: Cast
) -> None:
    mid = await message_in(owner_conn, cast, "sending")
    await owner_conn.execute("update public.deliveries set state = 'sent' where message_id = $1::uuid", mid)
    cols = "recipient_count, delivered_count, failed_count, sent_at"
    before = await owner_conn.fetchrow(f"select {cols} from public.messages where id = $1::uuid", mid)
    assert before["recipient_count"] == 1 and before["delivered_count"] == 1
    for assignment in ("recipient_count = 99", "delivered_count = 50", "failed_count = 7", "sent_at = now()"):
        async with session(app_pool, cast.a) as conn:
            await refused(conn.execute(f"update public.messages set {assignment} where id = $1::uuid", mid), "42501")
    after = await owner_conn.fetchrow(f"select {cols} from public.messages where id = $1::uuid", mid)
    assert dict(after) == dict(before)


async def test_a_new_message_from_a_user_starts_as_an_empty_draft(app_pool: asyncpg.Pool, cast: Cast) -> None:
    for values in ("status = 'scheduled'", "recipient_count = 3", "delivered_count = 1"):
        column, value = values.split(" = ")
        async with session(app_pool, cast.a) as conn:
            await refused(
                conn.execute(f"insert into public.messages (content, {column}) values ('x', {value})"), "42501"
            )
    async with session(app_pool, cast.a) as conn:
        status = await conn.fetchval("insert into public.messages (content) values ('x') returning status")
    assert status == "draft"


EDITS = {
    "content": "content = 'edited'",
    "scheduled_for": "scheduled_for = now() + interval '2 hours'",
    "recurrence": "recurrence = '0 9 * * *'",
}


@pytest.mark.parametrize("field", list(EDITS))
@pytest.mark.parametrize("start", STATUSES)
async def test_editing_a_message(
    app_pool: asyncpg.Pool, owner_conn: asyncpg.Connection, cast: Cast, start: str, field: str
) -> None:
    mid = await message_in(owner_conn, cast, start)
    sql = f"update public.messages set {EDITS[field]} where id = $1::uuid"
    async with session(app_pool, cast.a) as conn:
        if start in ("draft", "scheduled", "paused"):
            assert await conn.execute(sql, mid) == "UPDATE 1"
        else:
            await refused(conn.execute(sql, mid), "WS410", "not_editable")


GROUP_CHANGES = {
    "add": "insert into public.message_groups (message_id, group_id) values ($1::uuid, $2::uuid)",
    "remove": "delete from public.message_groups where message_id = $1::uuid and group_id <> $2::uuid",
    "replace": "update public.message_groups set group_id = $2::uuid where message_id = $1::uuid",
}


@pytest.mark.parametrize("change", list(GROUP_CHANGES))
@pytest.mark.parametrize("start", STATUSES)
async def test_changing_a_messages_groups(
    app_pool: asyncpg.Pool, owner_conn: asyncpg.Connection, cast: Cast, start: str, change: str
) -> None:
    mid = await message_in(owner_conn, cast, start)
    async with session(app_pool, cast.a) as conn:
        if start in ("draft", "scheduled", "paused"):
            assert await conn.execute(GROUP_CHANGES[change], mid, cast.other_group) in (
                "INSERT 0 1",
                "DELETE 1",
                "UPDATE 1",
            )
        else:
            await refused(conn.execute(GROUP_CHANGES[change], mid, cast.other_group), "WS410", "not_editable")


async def test_a_sending_message_cannot_be_deleted_by_its_owner(
    app_pool: asyncpg.Pool, owner_conn: asyncpg.Connection, cast: Cast
) -> None:
    mid = await message_in(owner_conn, cast, "sending")
    async with session(app_pool, cast.a) as conn:
        await refused(conn.execute("delete from public.messages where id = $1::uuid", mid), "WS409", "message_sending")
    async with session(app_pool, cast.a, commit=True) as conn:
        assert (await conn.fetchval(*_args(call("pause", mid)))) == "paused"
        assert await conn.execute("delete from public.messages where id = $1::uuid", mid) == "DELETE 1"


# -----------------------------------------------------------------------------------------------
# The worker's transitions and what resume undoes
# -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("end", ["sent", "failed"])
async def test_the_worker_runs_scheduled_to_sending_to_the_end(
    app_pool: asyncpg.Pool, owner_conn: asyncpg.Connection, cast: Cast, end: str
) -> None:
    mid = await message_in(owner_conn, cast, "scheduled")
    sql = "update public.messages set status = $2 where id = $1::uuid returning status"
    for status in ("sending", end):
        async with session(app_pool, cast.a) as conn:
            await refused(conn.fetchval(sql, mid, status), "WS409", "invalid_transition")
        async with session(app_pool, SERVICE, commit=True) as conn:
            assert await conn.fetchval(sql, mid, status) == status
    assert await status_of(owner_conn, mid) == end


async def test_resume_after_the_fan_out_goes_back_to_sending(
    app_pool: asyncpg.Pool, owner_conn: asyncpg.Connection, cast: Cast
) -> None:
    mid = await message_in(owner_conn, cast, "sending")
    async with session(app_pool, cast.a, commit=True) as conn:
        assert await conn.fetchval(*_args(call("pause", mid))) == "paused"
        assert await conn.fetchval("select status from public.resume_message($1::uuid)", mid) == "sending"
    assert await status_of(owner_conn, mid) == "sending"


async def test_duplicate_makes_a_new_draft_with_the_same_content_and_groups(
    app_pool: asyncpg.Pool, owner_conn: asyncpg.Connection, cast: Cast
) -> None:
    mid = await message_in(owner_conn, cast, "sent", groups=[cast.group, cast.other_group])
    await owner_conn.execute(
        "update public.messages set content = 'Recordatorio', recurrence = '0 9 * * 1' where id = $1::uuid", mid
    )
    async with session(app_pool, cast.a, commit=True) as conn:
        copy = await conn.fetchrow("select * from public.duplicate_message($1::uuid)", mid)
    assert copy["id"] != uuid.UUID(mid)
    assert copy["status"] == "draft" and copy["content"] == "Recordatorio" and copy["recurrence"] == "0 9 * * 1"
    assert str(copy["created_by"]) == cast.a.id
    assert copy["scheduled_for"] is None and copy["sent_at"] is None and copy["recurrence_parent_id"] is None
    assert (copy["recipient_count"], copy["delivered_count"], copy["failed_count"]) == (0, 0, 0)
    groups = "select array_agg(group_id::text order by group_id) from public.message_groups where message_id = $1"
    assert await owner_conn.fetchval(groups, copy["id"]) == await owner_conn.fetchval(groups, uuid.UUID(mid))
    assert sorted(await owner_conn.fetchval(groups, copy["id"])) == sorted([cast.group, cast.other_group])
    assert await owner_conn.fetchval("select count(*) from public.deliveries where message_id = $1", copy["id"]) == 0
    assert await status_of(owner_conn, mid) == "sent"


# -----------------------------------------------------------------------------------------------
# A schedule racing a cancel on the same draft, from two connections of the same user
# -----------------------------------------------------------------------------------------------


async def _attempt(conn: asyncpg.Connection, cast: Cast, sql: str, args: list[Any], delay: float) -> tuple[str, Any]:
    await asyncio.sleep(delay)
    try:
        async with conn.transaction():
            await become(conn, cast.a)
            return "ok", await conn.fetchval(sql, *args)
    except asyncpg.PostgresError as exc:
        return "error", exc.sqlstate


async def test_schedule_and_cancel_racing_end_cancelled(
    prepared: Prepared, owner_conn: asyncpg.Connection, cast: Cast
) -> None:
    first = await asyncpg.connect(prepared.app_url)
    second = await asyncpg.connect(prepared.app_url)
    rng = random.Random(7)
    # Twenty schedules in a few seconds: lift the per-minute limit for this race only.
    limit = await owner_conn.fetchval("select schedule_per_minute from private.settings")
    await owner_conn.execute("update private.settings set schedule_per_minute = 1000")
    try:
        for _ in range(20):
            mid = await add_message(owner_conn, cast.a, [cast.group])  # no send time until schedule sets one
            schedule, cancel = await asyncio.gather(
                _attempt(
                    first,
                    cast,
                    "select (m).status from public.schedule_message($1::uuid, now() + interval '1 hour') m",
                    [mid],
                    rng.random() * 0.004,
                ),
                _attempt(
                    second,
                    cast,
                    "select (m).status from public.cancel_message($1::uuid) m",
                    [mid],
                    rng.random() * 0.004,
                ),
            )
            # Cancel succeeds from draft and from scheduled; schedule came first or found it cancelled.
            assert cancel == ("ok", "cancelled")
            assert schedule in (("ok", "scheduled"), ("error", "WS409"))
            row = await owner_conn.fetchrow(
                "select status, scheduled_for is not null as timed from public.messages where id = $1::uuid", mid
            )
            # The schedule's write survives exactly when the schedule succeeded (then it was cancelled).
            assert dict(row) == {"status": "cancelled", "timed": schedule[0] == "ok"}
    finally:
        await owner_conn.execute("update private.settings set schedule_per_minute = $1", limit)
        await first.close()
        await second.close()

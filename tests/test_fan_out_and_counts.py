"""Fan-out, derived counts and realtime events, on the real database.

A message to several groups becomes one delivery per distinct reachable phone when the worker
claims it; the message's counters and each group's contact_count are kept exact by triggers,
whatever the batch; claims never hand one message to two workers; and each change leaves the
database as exactly one event on the owner's topic, in the guide's shape.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
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
    claim,
    create_person,
    delete_people,
    lifted_schedule_limit,
    phone,
    refused,
    session,
    status_of,
)

from whatsched.db.setup import Prepared

ISO_Z = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")


@pytest.fixture(scope="module")
async def people(owner_conn: asyncpg.Connection) -> AsyncIterator[list[Person]]:
    made: list[Person] = []
    yield made
    await delete_people(owner_conn, made)


@pytest.fixture
async def someone(owner_conn: asyncpg.Connection, people: list[Person]) -> Person:
    """A fresh owner per test: counts and events of one test never mix with another's."""
    person = await create_person(owner_conn)
    people.append(person)
    return person


@dataclass
class Audience:
    message: str
    groups: list[str]
    reachable_phones: set[str]
    unreachable_phones: set[str]


async def audience(admin: asyncpg.Connection, owner: Person) -> Audience:
    """Three groups that overlap, with an inactive and an opted-out member: 6 reachable phones."""
    numbers = [phone() for _ in range(8)]
    c = [await add_contact(admin, owner, number=n) for n in numbers[:6]]
    inactive = await add_contact(admin, owner, number=numbers[6], active=False)
    opted_out = await add_contact(admin, owner, number=numbers[7], opted_out=True)
    g1 = await add_group(admin, owner, [c[0], c[1], c[2], inactive])
    g2 = await add_group(admin, owner, [c[1], c[2], c[3], opted_out])
    g3 = await add_group(admin, owner, [c[2], c[4], c[5], inactive])
    message = await add_message(admin, owner, [g1, g2, g3], content="Reunión mañana")
    return Audience(message, [g1, g2, g3], set(numbers[:6]), set(numbers[6:]))


async def schedule_then_make_due(pool: asyncpg.Pool, admin: asyncpg.Connection, owner: Person, mid: str) -> None:
    """Scheduled by its owner for later, then moved into the past (as if time had passed)."""
    async with session(pool, owner, commit=True) as conn:
        await conn.execute("select public.schedule_message($1::uuid, now() + interval '1 hour')", mid)
    # Far in the past: claims take the oldest first, ahead of anything other suites left due.
    await admin.execute(
        "update public.messages set scheduled_for = '1999-01-01'::timestamptz + random() * interval '1 minute'"
        " where id = $1::uuid",
        mid,
    )


async def claim_as_service(pool: asyncpg.Pool, limit: int = 10) -> list[str]:
    async with session(pool, SERVICE, commit=True) as conn:
        return await claim(conn, limit, 60)


async def counters(admin: asyncpg.Connection, mid: str) -> dict[str, int]:
    row = await admin.fetchrow(
        "select recipient_count, delivered_count, failed_count from public.messages where id = $1::uuid", mid
    )
    return dict(row)


async def recount(admin: asyncpg.Connection, mid: str) -> dict[str, int]:
    """The counters recomputed from the deliveries themselves."""
    row = await admin.fetchrow(
        """select count(*)::int as recipient_count,
                  (count(*) filter (where state in ('sent', 'delivered', 'read')))::int as delivered_count,
                  (count(*) filter (where state = 'failed'))::int as failed_count
           from public.deliveries where message_id = $1::uuid""",
        mid,
    )
    return dict(row)


# -----------------------------------------------------------------------------------------------
# Fan-out
# -----------------------------------------------------------------------------------------------


async def test_claim_starts_a_due_message_with_one_delivery_per_reachable_phone(
    app_pool: asyncpg.Pool, owner_conn: asyncpg.Connection, someone: Person
) -> None:
    aud = await audience(owner_conn, someone)
    async with session(app_pool, someone) as conn:
        assert await conn.fetchval("select public.message_recipient_count($1::uuid)", aud.message) == 6
    await schedule_then_make_due(app_pool, owner_conn, someone, aud.message)

    assert aud.message in await claim_as_service(app_pool)

    assert await status_of(owner_conn, aud.message) == "sending"
    rows = await owner_conn.fetch(
        "select phone, state, created_by::text as owner from public.deliveries where message_id = $1::uuid",
        aud.message,
    )
    phones = [r["phone"] for r in rows]
    assert sorted(phones) == sorted(aud.reachable_phones)  # each once: no duplicates, nobody unreachable
    assert {r["state"] for r in rows} == {"pending"} and {r["owner"] for r in rows} == {someone.id}
    assert await counters(owner_conn, aud.message) == {"recipient_count": 6, "delivered_count": 0, "failed_count": 0}
    # A second claim does not start it again.
    assert aud.message not in await claim_as_service(app_pool)
    assert (
        await owner_conn.fetchval("select count(*) from public.deliveries where message_id = $1::uuid", aud.message)
        == 6
    )


async def test_a_message_not_due_yet_is_not_claimed(
    app_pool: asyncpg.Pool, owner_conn: asyncpg.Connection, someone: Person
) -> None:
    aud = await audience(owner_conn, someone)
    async with session(app_pool, someone, commit=True) as conn:
        await conn.execute("select public.schedule_message($1::uuid, now() + interval '1 day')", aud.message)
    assert aud.message not in await claim_as_service(app_pool)
    assert await status_of(owner_conn, aud.message) == "scheduled"


async def test_users_cannot_claim(app_pool: asyncpg.Pool, someone: Person) -> None:
    async with session(app_pool, someone) as conn:
        with pytest.raises(asyncpg.PostgresError) as info:
            await claim(conn)
    assert info.value.sqlstate == "42501"


# -----------------------------------------------------------------------------------------------
# Message counters follow the deliveries
# -----------------------------------------------------------------------------------------------


async def test_delivery_updates_move_the_counters_exactly(
    app_pool: asyncpg.Pool, owner_conn: asyncpg.Connection, someone: Person
) -> None:
    aud = await audience(owner_conn, someone)
    await schedule_then_make_due(app_pool, owner_conn, someone, aud.message)
    await claim_as_service(app_pool)
    ids = [
        r["id"]
        for r in await owner_conn.fetch(
            "select id::text from public.deliveries where message_id = $1::uuid order by phone", aud.message
        )
    ]

    async def step(sql: str, *args: Any, expect: tuple[int, int, int]) -> None:
        async with session(app_pool, SERVICE, commit=True) as conn:
            await conn.execute(sql, *args)
        now = await counters(owner_conn, aud.message)
        assert now == await recount(owner_conn, aud.message)
        assert (now["recipient_count"], now["delivered_count"], now["failed_count"]) == expect

    by_ids = "update public.deliveries set state = $2 where id = any($1::uuid[])"
    await step(by_ids, ids[:1], "sent", expect=(6, 1, 0))
    await step(by_ids, ids[1:3], "sent", expect=(6, 3, 0))  # a batch
    await step(by_ids, ids[3:4], "failed", expect=(6, 3, 1))
    await step(by_ids, ids[:2], "delivered", expect=(6, 3, 1))  # sent → delivered: still accepted
    await step(by_ids, ids[:1], "read", expect=(6, 3, 1))
    await step(by_ids, ids[3:4], "pending", expect=(6, 3, 0))  # a retry
    # One statement moving deliveries in every direction at once.
    await step(
        """update public.deliveries set state = case
             when id = $2::uuid then 'failed' when id = $3::uuid then 'failed'
             when id = $4::uuid then 'sent' else state end
           where message_id = $1::uuid""",
        aud.message,
        ids[0],
        ids[4],
        ids[5],
        expect=(6, 3, 2),
    )
    await step("update public.deliveries set state = 'sent' where message_id = $1::uuid", aud.message, expect=(6, 6, 0))
    await step("delete from public.deliveries where id = $1::uuid", ids[5], expect=(5, 5, 0))


async def test_cancel_marks_pending_deliveries_cancelled(
    app_pool: asyncpg.Pool, owner_conn: asyncpg.Connection, someone: Person
) -> None:
    aud = await audience(owner_conn, someone)
    await schedule_then_make_due(app_pool, owner_conn, someone, aud.message)
    await claim_as_service(app_pool)
    ids = [
        r["id"]
        for r in await owner_conn.fetch(
            "select id from public.deliveries where message_id = $1::uuid order by phone", aud.message
        )
    ]
    async with session(app_pool, SERVICE, commit=True) as conn:
        await conn.execute("update public.deliveries set state = 'sent' where id = any($1::uuid[])", ids[:2])
        await conn.execute("update public.deliveries set state = 'failed' where id = $1", ids[2])
        await conn.execute("update public.deliveries set state = 'sending' where id = $1", ids[3])
    async with session(app_pool, someone, commit=True) as conn:
        assert (
            await conn.fetchval("select (m).status from public.cancel_message($1::uuid) m", aud.message) == "cancelled"
        )
    states = await owner_conn.fetch(
        "select state from public.deliveries where message_id = $1::uuid order by phone", aud.message
    )
    # Pending ones are cancelled; what was sent, failed or in flight stays as the worker left it.
    assert [r["state"] for r in states] == ["sent", "sent", "failed", "sending", "cancelled", "cancelled"]
    assert await counters(owner_conn, aud.message) == {"recipient_count": 6, "delivered_count": 2, "failed_count": 1}


async def test_a_cancel_by_a_direct_update_cancels_pending_deliveries_only_for_the_owner(
    app_pool: asyncpg.Pool, owner_conn: asyncpg.Connection, someone: Person, people: list[Person]
) -> None:
    """`update messages set status = 'cancelled'` (supabase-js) leaves no work behind, like the
    API's cancel; a stranger's same update reaches no row, so nothing is cancelled."""
    stranger = await create_person(owner_conn)
    people.append(stranger)
    mid = await add_message(
        owner_conn, someone, [await add_group(owner_conn, someone, [await add_contact(owner_conn, someone)])]
    )
    await owner_conn.execute(
        "insert into public.deliveries (message_id, created_by, phone, idempotency_key)"
        " values ($1::uuid, $2::uuid, $3, $4)",
        mid,
        someone.id,
        phone(),
        uuid.uuid4().hex,
    )
    update = "update public.messages set status = 'cancelled' where id = $1::uuid"
    async with session(app_pool, stranger, commit=True) as conn:
        assert await conn.execute(update, mid) == "UPDATE 0"
    assert (
        await owner_conn.fetchval("select state from public.deliveries where message_id = $1::uuid", mid) == "pending"
    )
    async with session(app_pool, someone, commit=True) as conn:
        assert await conn.execute(update, mid) == "UPDATE 1"
    assert (
        await owner_conn.fetchval("select state from public.deliveries where message_id = $1::uuid", mid) == "cancelled"
    )


# -----------------------------------------------------------------------------------------------
# groups.contact_count
# -----------------------------------------------------------------------------------------------


async def assert_group_counts_exact(admin: asyncpg.Connection, owner: Person) -> dict[str, int]:
    rows = await admin.fetch(
        """select g.id::text, g.contact_count,
                  (select count(*) from public.group_contacts gc where gc.group_id = g.id)::int as real
           from public.groups g where g.created_by = $1::uuid""",
        owner.id,
    )
    assert [(r["id"], r["contact_count"]) for r in rows] == [(r["id"], r["real"]) for r in rows]
    return {r["id"]: r["contact_count"] for r in rows}


async def test_group_contact_counts_stay_exact_through_bulk_changes(
    app_pool: asyncpg.Pool, owner_conn: asyncpg.Connection, someone: Person
) -> None:
    async with session(app_pool, someone, commit=True) as conn:
        g1 = await conn.fetchval("insert into public.groups (name) values ('Uno') returning id::text")
        g2 = await conn.fetchval("insert into public.groups (name) values ('Dos') returning id::text")
        g3 = await conn.fetchval("insert into public.groups (name) values ('Tres') returning id::text")
        contacts = [
            r["id"]
            for r in await conn.fetch(
                """insert into public.contacts (name, phone)
                   select 'C' || n, '+5690' || lpad(n::text, 7, '0') || $1 from generate_series(1, 300) n
                   returning id::text""",
                str(uuid.uuid4().int % 10),
            )
        ]
        # One statement, two groups, 450 rows.
        await conn.execute(
            """insert into public.group_contacts (group_id, contact_id)
               select $1::uuid, c from unnest($3::uuid[]) c
               union all select $2::uuid, c from unnest($4::uuid[]) c""",
            g1,
            g2,
            contacts,
            contacts[:150],
        )
    assert await assert_group_counts_exact(owner_conn, someone) == {g1: 300, g2: 150, g3: 0}

    async with session(app_pool, someone, commit=True) as conn:
        await conn.execute(
            "delete from public.group_contacts where group_id = $1::uuid and contact_id = any($2::uuid[])",
            g1,
            contacts[200:],
        )
    assert await assert_group_counts_exact(owner_conn, someone) == {g1: 200, g2: 150, g3: 0}

    # Deleting contacts removes their memberships in every group (cascade).
    async with session(app_pool, someone, commit=True) as conn:
        await conn.execute("delete from public.contacts where id = any($1::uuid[])", contacts[100:160])
    assert await assert_group_counts_exact(owner_conn, someone) == {g1: 140, g2: 100, g3: 0}

    # Moving memberships between groups.
    async with session(app_pool, someone, commit=True) as conn:
        await conn.execute(
            "update public.group_contacts set group_id = $2::uuid where group_id = $1::uuid and contact_id = any($3::uuid[])",
            g1,
            g3,
            contacts[160:200],
        )
    assert await assert_group_counts_exact(owner_conn, someone) == {g1: 100, g2: 100, g3: 40}

    # Deleting a group leaves the others exact.
    async with session(app_pool, someone, commit=True) as conn:
        await conn.execute("delete from public.groups where id = $1::uuid", g2)
    assert await assert_group_counts_exact(owner_conn, someone) == {g1: 100, g3: 40}


async def test_group_contact_counts_stay_exact_under_concurrent_inserts(
    prepared: Prepared, owner_conn: asyncpg.Connection, someone: Person
) -> None:
    group = await add_group(owner_conn, someone)
    batches = [[await add_contact(owner_conn, someone) for _ in range(20)] for _ in range(4)]
    conns = [await asyncpg.connect(prepared.app_url) for _ in batches]

    async def add(conn: asyncpg.Connection, ids: list[str]) -> None:
        for chunk in (ids[:10], ids[10:]):
            async with conn.transaction():
                await become(conn, someone)
                await conn.execute(
                    "insert into public.group_contacts (group_id, contact_id) select $1::uuid, c from unnest($2::uuid[]) c",
                    group,
                    chunk,
                )

    try:
        await asyncio.gather(*(add(c, ids) for c, ids in zip(conns, batches, strict=True)))
    finally:
        for c in conns:
            await c.close()
    assert (await assert_group_counts_exact(owner_conn, someone))[group] == 80


# -----------------------------------------------------------------------------------------------
# Claims: SKIP LOCKED, leases
# -----------------------------------------------------------------------------------------------


async def due_messages(pool: asyncpg.Pool, admin: asyncpg.Connection, owner: Person, n: int) -> list[str]:
    group = await add_group(admin, owner, [await add_contact(admin, owner), await add_contact(admin, owner)])
    made = []
    for _ in range(n):
        mid = await add_message(admin, owner, [group])
        await schedule_then_make_due(pool, admin, owner, mid)
        made.append(mid)
    return made


async def test_a_claim_skips_messages_another_claim_holds(
    prepared: Prepared, app_pool: asyncpg.Pool, owner_conn: asyncpg.Connection, people: list[Person]
) -> None:
    first_owner, second_owner = await create_person(owner_conn), await create_person(owner_conn)
    people.extend([first_owner, second_owner])
    held_ones = await due_messages(app_pool, owner_conn, first_owner, 3)
    # The oldest due messages are the first owner's: worker-1 (limit 3) takes exactly those.
    await owner_conn.execute(
        "update public.messages set scheduled_for = scheduled_for - interval '1 day' where id = any($1::uuid[])",
        held_ones,
    )
    rest = await due_messages(app_pool, owner_conn, second_owner, 3)
    holder = await asyncpg.connect(prepared.app_url)
    try:
        tx = holder.transaction()
        await tx.start()
        await become(holder, SERVICE)
        held = set(await claim(holder, 3, 60))
        assert held == set(held_ones)
        # While worker-1's transaction is open, worker-2 neither waits for nor repeats its messages.
        async with session(app_pool, SERVICE, commit=True) as conn:
            await conn.execute("set local lock_timeout = '2s'")
            second = set(await claim(conn, 10, 60))
        await tx.commit()
    finally:
        await holder.close()
    assert not held & second
    assert set(rest) <= second
    rows = await owner_conn.fetch(
        """select m.status, (select count(*) from public.deliveries d where d.message_id = m.id) as n
           from public.messages m where m.id = any($1::uuid[])""",
        held_ones + rest,
    )
    assert [(r["status"], r["n"]) for r in rows] == [("sending", 2)] * 6  # each fanned out once


async def test_claims_of_one_owners_messages_do_not_wait_for_each_other(
    prepared: Prepared, app_pool: asyncpg.Pool, owner_conn: asyncpg.Connection, someone: Person
) -> None:
    mine = await due_messages(app_pool, owner_conn, someone, 4)
    holder = await asyncpg.connect(prepared.app_url)
    try:
        tx = holder.transaction()
        await tx.start()
        await become(holder, SERVICE)
        held = set(await claim(holder, 2, 60))
        try:
            async with session(app_pool, SERVICE, commit=True) as conn:
                await conn.execute("set local lock_timeout = '300ms'")
                second = set(await claim(conn, 10, 60))
        finally:
            await tx.commit()
    finally:
        await holder.close()
    assert set(mine) <= held | second and not held & second


async def counts_by_status(admin: asyncpg.Connection, owner: Person) -> tuple[dict[str, int], dict[str, int]]:
    """(what public.message_counts says, what counting the messages says), zeros left out."""
    kept = await admin.fetch(
        "select status, sum(n)::int as n from public.message_counts where created_by = $1::uuid"
        " group by status having sum(n) <> 0",
        owner.id,
    )
    real = await admin.fetch(
        "select status, count(*)::int as n from public.messages where created_by = $1::uuid group by status",
        owner.id,
    )
    return {r["status"]: r["n"] for r in kept}, {r["status"]: r["n"] for r in real}


async def test_message_counts_stay_exact_through_changes_and_compaction(
    prepared: Prepared, app_pool: asyncpg.Pool, owner_conn: asyncpg.Connection, someone: Person
) -> None:
    await due_messages(app_pool, owner_conn, someone, 5)
    drafts = [await add_message(owner_conn, someone, []) for _ in range(3)]
    async with session(app_pool, someone, commit=True) as conn:
        await conn.execute("select public.cancel_message($1::uuid)", drafts[0])
        await conn.execute("delete from public.messages where id = $1::uuid", drafts[1])
    await claim_as_service(app_pool, 2)
    kept, real = await counts_by_status(owner_conn, someone)
    assert kept == real and sum(real.values()) == 7, (kept, real)
    # Each transaction wrote its own rows; the compaction folds them, one row per status.
    assert await owner_conn.fetchval(
        "select count(*) from public.message_counts where created_by = $1::uuid and shard <> 0", someone.id
    ) > len(real)
    folded = await owner_conn.fetchval("select private.compact_message_counts()")
    assert folded > 0
    kept, real = await counts_by_status(owner_conn, someone)
    assert kept == real, (kept, real)
    rows = await owner_conn.fetch(
        "select status, shard from public.message_counts where created_by = $1::uuid", someone.id
    )
    assert {r["shard"] for r in rows} == {0} and len(rows) == len({r["status"] for r in rows})
    # Users cannot run it.
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        async with session(app_pool, someone) as conn:
            await conn.fetchval("select private.compact_message_counts()")


async def test_concurrent_claims_never_return_the_same_message(
    prepared: Prepared, app_pool: asyncpg.Pool, owner_conn: asyncpg.Connection, someone: Person
) -> None:
    for _ in range(3):
        async with lifted_schedule_limit(owner_conn):
            mine = set(await due_messages(app_pool, owner_conn, someone, 8))
        conns = [await asyncpg.connect(prepared.app_url) for _ in range(3)]

        async def run(conn: asyncpg.Connection) -> list[str]:
            async with conn.transaction():
                await become(conn, SERVICE)
                return await claim(conn, 3, 60)

        try:
            results = await asyncio.gather(*(run(c) for c in conns))
        finally:
            for c in conns:
                await c.close()
        claimed = [m for r in results for m in r]
        assert len(claimed) == len(set(claimed))
        # Whatever was left is claimed by the next call, still once.
        rest = await claim_as_service(app_pool, 20)
        assert not set(rest) & set(claimed)
        assert mine <= set(claimed) | set(rest)
        assert await owner_conn.fetchval(
            "select count(*) from public.deliveries where message_id = any($1::uuid[])", list(mine)
        ) == 2 * len(mine)


async def test_an_expired_lease_is_reclaimable(
    app_pool: asyncpg.Pool, owner_conn: asyncpg.Connection, someone: Person
) -> None:
    """Leases are on deliveries: a live one keeps other workers out, an expired one does not."""
    (mid,) = await due_messages(app_pool, owner_conn, someone, 1)
    assert mid in await claim_as_service(app_pool)
    first = await claim_deliveries(app_pool, "worker-1")
    mine = [d for d in first if d["message_id"] == mid]
    assert len(mine) == 2
    assert not [d for d in await claim_deliveries(app_pool, "worker-2") if d["message_id"] == mid]
    await owner_conn.execute(
        "update public.deliveries set lease_expires_at = now() - interval '1 second' where id = $1", mine[0]["id"]
    )
    again = [d for d in await claim_deliveries(app_pool, "worker-2") if d["message_id"] == mid]
    assert [d["id"] for d in again] == [mine[0]["id"]]
    row = await owner_conn.fetchrow(
        "select state, claimed_by, attempts from public.deliveries where id = $1", mine[0]["id"]
    )
    assert dict(row) == {"state": "sending", "claimed_by": "worker-2", "attempts": 2}
    assert await owner_conn.fetchval("select count(*) from public.deliveries where message_id = $1::uuid", mid) == 2


async def claim_deliveries(pool: asyncpg.Pool, worker: str) -> list[dict[str, Any]]:
    """private.claim_deliveries with a named request (pacing, caps and quiet hours left out: off)."""
    request = {"worker": worker, "batch_limit": 100, "lease_seconds": 60}  # the app pool encodes jsonb
    async with session(pool, SERVICE, commit=True) as conn:
        rows = await conn.fetch("select id, message_id::text from private.claim_deliveries($1::jsonb)", request)
    return [dict(r) for r in rows]


# -----------------------------------------------------------------------------------------------
# Realtime events: one per change, on the owner's topic, in the guide's shape
# -----------------------------------------------------------------------------------------------


class Listener:
    def __init__(self, topic: str) -> None:
        self.topic = topic
        self.events: list[dict[str, Any]] = []
        self.done = asyncio.Event()

    def __call__(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        event = json.loads(payload)
        if event.get("topic") != self.topic:
            return
        if event.get("event") == "sentinel":
            self.done.set()
        else:
            self.events.append(event)


async def test_each_change_is_one_event_on_the_owners_topic(
    prepared: Prepared, app_pool: asyncpg.Pool, owner_conn: asyncpg.Connection, someone: Person
) -> None:
    aud = await audience(owner_conn, someone)
    topic = "user:" + someone.id
    listener = Listener(topic)
    listen = await asyncpg.connect(prepared.admin_url)
    await listen.add_listener("realtime", listener)
    mid = aud.message
    try:
        await schedule_then_make_due(app_pool, owner_conn, someone, mid)  # scheduled; the time move is silent
        assert mid in await claim_as_service(app_pool)  # sending + first progress
        ids = [
            r["id"]
            for r in await owner_conn.fetch(
                "select id from public.deliveries where message_id = $1::uuid order by phone", mid
            )
        ]
        async with session(app_pool, SERVICE, commit=True) as conn:
            await conn.execute("update public.deliveries set state = 'sent' where id = any($1::uuid[])", ids[:2])
        async with session(app_pool, SERVICE, commit=True) as conn:
            await conn.execute("update public.deliveries set state = 'failed' where id = $1", ids[2])
        async with session(app_pool, someone, commit=True) as conn:
            await conn.execute("select public.pause_message($1::uuid)", mid)
            await conn.execute("update public.messages set content = 'Reunión el jueves' where id = $1::uuid", mid)
        async with session(app_pool, someone, commit=True) as conn:
            await conn.execute("select public.resume_message($1::uuid)", mid)
        async with session(app_pool, SERVICE, commit=True) as conn:
            await conn.execute("update public.deliveries set state = 'sent' where id = any($1::uuid[])", ids[3:])
            await conn.execute("update public.messages set status = 'sent', sent_at = now() where id = $1::uuid", mid)
        async with session(app_pool, SERVICE, commit=True) as conn:
            notification = await conn.fetchrow(
                """insert into public.notifications (user_id, type, title, message, related_entity_type, related_entity_id)
                   values ($1::uuid, 'success', 'Mensaje enviado', 'Enviado a 5 de 6', 'message', $2::uuid)
                   returning id::text, created_at""",
                someone.id,
                mid,
            )
        await owner_conn.execute("select realtime.send('{}'::jsonb, 'sentinel', $1, true)", topic)
        await asyncio.wait_for(listener.done.wait(), 10)
    finally:
        await listen.close()

    events = listener.events
    assert {(e["topic"], e["private"]) for e in events} == {(topic, True)}
    assert all(e["event"] == e["payload"]["type"] for e in events)
    payloads = [e["payload"] for e in events]
    for p in payloads:
        if p["type"] == "message_status_update":
            assert set(p) == {"type", "message_id", "status", "timestamp"}
            assert ISO_Z.match(p["timestamp"]), p["timestamp"]
    summary = [
        (p["type"], p.get("status") or (p.get("sent"), p.get("total"), p.get("failed")))
        for p in payloads
        if p["type"] != "new_notification"
    ]
    assert summary == [
        ("message_status_update", "scheduled"),
        ("message_status_update", "sending"),
        ("message_progress", (0, 6, 0)),
        ("message_progress", (2, 6, 0)),
        ("message_progress", (2, 6, 1)),
        ("message_status_update", "paused"),
        ("message_status_update", "sending"),
        ("message_progress", (5, 6, 1)),
        ("message_status_update", "sent"),
    ]
    assert {p["message_id"] for p in payloads if p["type"] != "new_notification"} == {mid}
    assert [p["type"] for p in payloads][-1] == "new_notification"
    note = payloads[-1]["notification"]
    assert {k: note[k] for k in ("id", "type", "title", "message")} == {
        "id": notification["id"],
        "type": "success",
        "title": "Mensaje enviado",
        "message": "Enviado a 5 de 6",
    }
    assert ISO_Z.match(note["timestamp"])
    stamped = datetime.fromisoformat(note["timestamp"].replace("Z", "+00:00"))
    assert abs(stamped - notification["created_at"]) < timedelta(milliseconds=1)
    assert note["related_entity_type"] == "message" and note["related_entity_id"] == mid


async def test_a_change_nobody_sees_emits_nothing(
    prepared: Prepared, app_pool: asyncpg.Pool, owner_conn: asyncpg.Connection, someone: Person
) -> None:
    """Edits, rolled-back changes and counter writes a user attempts send no event."""
    mid = await add_message(
        owner_conn, someone, [await add_group(owner_conn, someone, [await add_contact(owner_conn, someone)])]
    )
    topic = "user:" + someone.id
    listener = Listener(topic)
    listen = await asyncpg.connect(prepared.admin_url)
    await listen.add_listener("realtime", listener)
    try:
        async with session(app_pool, someone, commit=True) as conn:
            await conn.execute("update public.messages set content = 'Otro' where id = $1::uuid", mid)
        async with session(app_pool, someone) as conn:  # refused: the column is the triggers'
            await refused(
                conn.execute("update public.messages set recipient_count = 5 where id = $1::uuid", mid), "42501"
            )
        async with session(app_pool, someone) as conn:  # rolled back
            await conn.execute("select public.schedule_message($1::uuid, now() + interval '1 hour')", mid)
        await owner_conn.execute("select realtime.send('{}'::jsonb, 'sentinel', $1, true)", topic)
        await asyncio.wait_for(listener.done.wait(), 10)
    finally:
        await listen.close()
    assert listener.events == []

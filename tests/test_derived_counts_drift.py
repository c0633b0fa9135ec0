"""Derived counts never drift, whatever the order and shape of the changes.

Seeded random batches of inserts, updates that move rows to another parent or change their state,
and deletes, one row or many per statement, as an owner (authenticated, as supabase-js writes) and
as the service. After each batch every count 20261129000500_derived_counts keeps is compared with
the same count made from scratch by a plain query: groups.contact_count, the messages' recipient,
delivered and failed counts, public.message_counts and public.message_audiences. A failure names
the seed, the batch and the changes it made.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field

import asyncpg
import pytest
from schema_helpers import SERVICE, Actor, Person, create_person, delete_people, session

BATCHES = 40
STATES = ("pending", "pending", "sending", "sent", "delivered", "read", "failed", "cancelled", "skipped")

# Each count as stored and as recounted from the rows it derives from ($1: the owners).
RECOUNTS = {
    "groups.contact_count": """
        select g.name as what, g.contact_count as stored,
               (select count(*) from public.group_contacts gc where gc.group_id = g.id)::int as recounted
        from public.groups g where g.created_by = any($1::uuid[])""",
    "messages.recipient_count, delivered_count, failed_count": """
        select m.content as what, array[m.recipient_count, m.delivered_count, m.failed_count] as stored,
               array[count(d.id),
                     count(d.id) filter (where d.state in ('sent', 'delivered', 'read')),
                     count(d.id) filter (where d.state = 'failed')]::int[] as recounted
        from public.messages m left join public.deliveries d on d.message_id = m.id
        where m.created_by = any($1::uuid[])
        group by m.id""",
    "message_counts": """
        select created_by::text || ' ' || status as what, coalesce(c.n, 0) as stored, coalesce(r.n, 0) as recounted
        from (select created_by, status, sum(n)::int as n from public.message_counts
              where created_by = any($1::uuid[]) group by 1, 2) c
        full join (select created_by, status, count(*)::int as n from public.messages
                   where created_by = any($1::uuid[]) group by 1, 2) r using (created_by, status)""",
    # Messages not fanned out ($2: the ones given deliveries are not).
    "message_audiences": """
        select m.content as what, coalesce(a.recipients, 0) as stored,
               (select count(distinct c.phone) from public.message_groups mg
                join public.group_contacts gc on gc.group_id = mg.group_id
                join public.contacts c on c.id = gc.contact_id
                where mg.message_id = m.id and c.is_active and c.opted_out_at is null)::int as recounted
        from public.messages m left join public.message_audiences a on a.message_id = m.id
        where m.created_by = any($1::uuid[]) and m.status in ('draft', 'scheduled', 'paused')
          and m.id <> all($2::uuid[])""",
}


@dataclass
class World:
    """The owners' rows and the random choices made on them. Rows are listed in the order of the
    names, phones and texts the RNG gave them, so one seed makes the same changes every run."""

    rng: random.Random
    admin: asyncpg.Connection
    pool: asyncpg.Pool
    owners: list[Person]
    fanned_out: list[str] = field(default_factory=list)  # messages with deliveries: only these get any
    phones: set[str] = field(default_factory=set)
    made: int = 0
    commit: bool = True

    def name(self, prefix: str) -> str:
        self.made += 1
        return f"{prefix} {self.made:04d}"

    def phone(self) -> str:
        while (number := f"+569{self.rng.randrange(10**8):08d}") in self.phones:
            pass
        self.phones.add(number)
        return number

    def owner(self) -> Person:
        return self.rng.choice(self.owners)

    def actor(self, owner: Person) -> Actor:
        return owner if self.rng.random() < 0.6 else SERVICE

    def some(self, items: list[str], most: int) -> list[str]:
        return self.rng.sample(items, min(len(items), self.rng.randint(1, most)))

    def session(self, actor: Actor) -> AbstractAsyncContextManager[asyncpg.Connection]:
        return session(self.pool, actor, commit=self.commit)

    async def ids(self, sql: str, *args: object) -> list[str]:
        return [str(r[0]) for r in await self.admin.fetch(sql, *args)]


def who(actor: Actor) -> str:
    return "service" if actor == SERVICE else "owner"


# -----------------------------------------------------------------------------------------------
# Changes. Each picks its rows, makes one kind of change and says what it did (None: nothing to do).
# -----------------------------------------------------------------------------------------------

GROUPS = "select id from public.groups where created_by = $1::uuid order by name"
CONTACTS = "select id from public.contacts where created_by = $1::uuid order by phone"
NOT_IN_GROUP = """select id from public.contacts c where created_by = $1::uuid
                  and not exists (select 1 from public.group_contacts gc where gc.group_id = $2::uuid and gc.contact_id = c.id)
                  order by phone"""
# Members of group $1 that group $2 lacks (every member when $2 is null).
IN_GROUP_ONLY = """select gc.contact_id from public.group_contacts gc join public.contacts c on c.id = gc.contact_id
                   where gc.group_id = $1::uuid and not exists (
                     select 1 from public.group_contacts o where o.group_id = $2::uuid and o.contact_id = gc.contact_id)
                   order by c.phone"""
# Messages whose groups and text may change: not fanned out, not final.
EDITABLE = """select id from public.messages where created_by = $1::uuid and status in ('draft', 'scheduled', 'paused')
              and id <> all($2::uuid[]) order by content"""
DELIVERIES = """select d.id from public.deliveries d join public.messages m on m.id = d.message_id
                where d.created_by = any($1::uuid[]) order by m.content, d.phone"""


async def add_members(w: World) -> str | None:
    owner = w.owner()
    groups = await w.ids(GROUPS, owner.id)
    if not groups:
        return None
    group = w.rng.choice(groups)
    new = w.some(await w.ids(NOT_IN_GROUP, owner.id, group), 6)
    if not new:
        return None
    # Sometimes with members it already has: `on conflict do nothing` leaves them out of new_rows.
    again = w.some(await w.ids(IN_GROUP_ONLY, group, None), 2)
    again = again if w.rng.random() < 0.3 else []
    actor = w.actor(owner)
    async with w.session(actor) as conn:
        await conn.execute(
            """insert into public.group_contacts (group_id, contact_id, created_by)
               select $1::uuid, c, $3::uuid from unnest($2::uuid[]) c on conflict do nothing""",
            group,
            new + again,
            owner.id,
        )
    return f"{who(actor)} adds {len(new)} members (+{len(again)} already in)"


async def remove_members(w: World) -> str | None:
    owner = w.owner()
    actor = w.actor(owner)
    # The service's statement may take rows of every owner at once.
    owners = [p.id for p in w.owners] if actor == SERVICE else [owner.id]
    rows = await w.admin.fetch(
        """select gc.group_id, gc.contact_id from public.group_contacts gc
           join public.groups g on g.id = gc.group_id join public.contacts c on c.id = gc.contact_id
           where gc.created_by = any($1::uuid[]) order by g.name, c.phone""",
        owners,
    )
    chosen = w.rng.sample(rows, min(len(rows), w.rng.randint(1, 6)))
    if not chosen:
        return None
    async with w.session(actor) as conn:
        await conn.execute(
            """delete from public.group_contacts gc using unnest($1::uuid[], $2::uuid[]) u (g, c)
               where gc.group_id = u.g and gc.contact_id = u.c""",
            [r["group_id"] for r in chosen],
            [r["contact_id"] for r in chosen],
        )
    return f"{who(actor)} removes {len(chosen)} members"


async def move_members(w: World) -> str | None:
    owner = w.owner()
    groups = await w.ids(GROUPS, owner.id)
    if len(groups) < 2:
        return None
    source, target = w.rng.sample(groups, 2)
    moving = w.some(await w.ids(IN_GROUP_ONLY, source, target), 5)
    if not moving:
        return None
    actor = w.actor(owner)
    async with w.session(actor) as conn:
        await conn.execute(
            "update public.group_contacts set group_id = $2::uuid where group_id = $1::uuid and contact_id = any($3::uuid[])",
            source,
            target,
            moving,
        )
    return f"{who(actor)} moves {len(moving)} members to another group"


async def swap_members(w: World) -> str | None:
    """One statement moving members both ways between two groups (the counts may not move at all)."""
    owner = w.owner()
    groups = await w.ids(GROUPS, owner.id)
    if len(groups) < 2:
        return None
    a, b = w.rng.sample(groups, 2)
    from_a, from_b = await w.ids(IN_GROUP_ONLY, a, b), await w.ids(IN_GROUP_ONLY, b, a)
    if not from_a or not from_b:
        return None
    k = w.rng.randint(1, min(len(from_a), len(from_b), 3))
    extra = w.rng.randint(0, 1)
    from_a, from_b = w.rng.sample(from_a, min(len(from_a), k + extra)), w.rng.sample(from_b, k)
    async with w.session(owner) as conn:
        await conn.execute(
            """update public.group_contacts set group_id = case when group_id = $1::uuid then $2::uuid else $1::uuid end
               where (group_id = $1::uuid and contact_id = any($3::uuid[]))
                  or (group_id = $2::uuid and contact_id = any($4::uuid[]))""",
            a,
            b,
            from_a,
            from_b,
        )
    return f"owner swaps {len(from_a)} and {len(from_b)} members between two groups"


async def touch_members(w: World) -> str | None:
    owner = w.owner()
    groups = await w.ids(GROUPS, owner.id)
    if not groups:
        return None
    async with w.session(owner) as conn:
        status = await conn.execute(
            "update public.group_contacts set added_at = now() where group_id = $1::uuid", w.rng.choice(groups)
        )
    return f"owner touches a group's members without moving them ({status})"


async def change_reach(w: World) -> str | None:
    """Contacts becoming (un)reachable or changing phone: the audiences follow."""
    owner = w.owner()
    chosen = w.some(await w.ids(CONTACTS, owner.id), 4)
    if not chosen:
        return None
    how = w.rng.choice(["active", "opt-out", "phone"])
    async with w.session(owner) as conn:
        if how == "active":
            await conn.execute(
                "update public.contacts set is_active = not is_active where id = any($1::uuid[])", chosen
            )
        elif how == "opt-out":
            await conn.execute(
                """update public.contacts set opted_out_at = case when opted_out_at is null then now() end
                   where id = any($1::uuid[])""",
                chosen,
            )
        else:
            await conn.execute(
                "update public.contacts c set phone = u.p from unnest($1::uuid[], $2::text[]) u (id, p) where c.id = u.id",
                chosen,
                [w.phone() for _ in chosen],
            )
    return f"owner changes {how} of {len(chosen)} contacts"


async def add_contacts(w: World) -> str | None:
    owner = w.owner()
    n = w.rng.randint(1, 3)
    async with w.session(owner) as conn:
        await conn.execute(
            "insert into public.contacts (name, phone) select unnest($1::text[]), unnest($2::text[])",
            [w.name("Contacto") for _ in range(n)],
            [w.phone() for _ in range(n)],
        )
    return f"owner adds {n} contacts"


async def delete_contacts(w: World) -> str | None:
    owner = w.owner()
    contacts = await w.ids(CONTACTS, owner.id)
    if len(contacts) < 10:
        return None
    chosen = w.some(contacts, 2)
    async with w.session(owner) as conn:
        await conn.execute("delete from public.contacts where id = any($1::uuid[])", chosen)
    return f"owner deletes {len(chosen)} contacts (their memberships go with them)"


async def add_group(w: World) -> str | None:
    owner = w.owner()
    if len(await w.ids(GROUPS, owner.id)) >= 7:
        return None
    async with w.session(SERVICE) as conn:
        await conn.execute(
            "insert into public.groups (created_by, name) values ($1::uuid, $2)", owner.id, w.name("Grupo")
        )
    return "service adds a group"


async def delete_group(w: World) -> str | None:
    owner = w.owner()
    groups = await w.ids(GROUPS, owner.id)
    if len(groups) < 4:
        return None
    async with w.session(owner) as conn:
        await conn.execute("delete from public.groups where id = $1::uuid", w.rng.choice(groups))
    return "owner deletes a group (its members and message links go with it)"


async def add_messages(w: World) -> str | None:
    """Drafts and their groups, two statements in one transaction (as the API writes them)."""
    owner = w.owner()
    groups = await w.ids(GROUPS, owner.id)
    n = w.rng.randint(1, 3)
    contents = [w.name("Aviso") for _ in range(n)]
    picks = [w.rng.sample(groups, min(len(groups), w.rng.randint(0, 3))) for _ in range(n)]
    async with w.session(owner) as conn:
        made = await conn.fetch(
            "insert into public.messages (content) select unnest($1::text[]) returning id, content", contents
        )
        ids = {r["content"]: r["id"] for r in made}
        pairs = [(ids[c], g) for c, gs in zip(contents, picks, strict=True) for g in gs]
        await conn.execute(
            "insert into public.message_groups (message_id, group_id) select * from unnest($1::uuid[], $2::uuid[])",
            [m for m, _ in pairs],
            [g for _, g in pairs],
        )
    return f"owner adds {n} messages with {len(pairs)} group links"


async def change_links(w: World) -> str | None:
    owner = w.owner()
    messages = await w.ids(EDITABLE, owner.id, w.fanned_out)
    groups = await w.ids(GROUPS, owner.id)
    if not messages or not groups:
        return None
    message = w.rng.choice(messages)
    linked = await w.ids("select group_id from public.message_groups where message_id = $1::uuid", message)
    unlinked = [g for g in groups if g not in linked]
    how = w.rng.choice(["add", "remove", "move", "unlink group"])
    actor = w.actor(owner)
    async with w.session(actor) as conn:
        if how == "add" and unlinked:
            await conn.execute(
                """insert into public.message_groups (message_id, group_id, created_by)
                   select $1::uuid, g, $3::uuid from unnest($2::uuid[]) g""",
                message,
                w.some(unlinked, 2),
                owner.id,
            )
        elif how == "remove" and linked:
            await conn.execute(
                "delete from public.message_groups where message_id = $1::uuid and group_id = any($2::uuid[])",
                message,
                w.some(linked, 2),
            )
        elif how == "move" and linked and unlinked:
            await conn.execute(
                "update public.message_groups set group_id = $3::uuid where message_id = $1::uuid and group_id = $2::uuid",
                message,
                w.rng.choice(linked),
                w.rng.choice(unlinked),
            )
        elif how == "unlink group" and actor == SERVICE:
            # Every message's link to one group, fanned out or not (the service is not held to editable ones).
            await conn.execute("delete from public.message_groups where group_id = $1::uuid", w.rng.choice(groups))
        else:
            return None
    return f"{who(actor)} changes message groups: {how}"


async def edit_messages(w: World) -> str | None:
    owner = w.owner()
    chosen = w.some(await w.ids(EDITABLE, owner.id, w.fanned_out), 3)
    if not chosen:
        return None
    async with w.session(owner) as conn:
        await conn.execute(
            "update public.messages set content = content || ' (editado)' where id = any($1::uuid[])", chosen
        )
    return f"owner edits {len(chosen)} messages"


async def change_status(w: World) -> str | None:
    """Status changes of messages not fanned out, some moving both ways in one statement."""
    owner = w.owner()
    how = w.rng.choice(["schedule", "pause or resume", "cancel", "owner pauses", "owner cancels"])
    by_status = """select id from public.messages where created_by = $1::uuid and status = any($2::text[])
                   and id <> all($3::uuid[]) order by content"""
    if how == "schedule":
        drafts = await w.ids(by_status, owner.id, ["draft"], w.fanned_out)
        ready = [m for m in drafts if await w.admin.fetchval("select public.message_recipient_count($1::uuid)", m)]
        chosen = w.some(ready, 3)
        sql = "update public.messages set status = 'scheduled', scheduled_for = now() + interval '1 day' where id = any($1::uuid[])"
    elif how == "pause or resume":
        chosen = w.some(await w.ids(by_status, owner.id, ["scheduled", "paused"], w.fanned_out), 4)
        sql = """update public.messages set status = case status when 'scheduled' then 'paused' else 'scheduled' end
                 where id = any($1::uuid[])"""
    elif how == "owner pauses":
        chosen = w.some(await w.ids(by_status, owner.id, ["scheduled"], w.fanned_out), 1)
        sql = "select public.pause_message(id) from unnest($1::uuid[]) id"
    else:
        live = await w.ids(by_status, owner.id, ["draft", "scheduled", "paused"], w.fanned_out)
        chosen = w.some(live, 2) if len(live) > 5 else []
        sql = "update public.messages set status = 'cancelled' where id = any($1::uuid[])"
    if not chosen:
        return None
    actor = owner if how.startswith("owner") else SERVICE
    async with w.session(actor) as conn:
        await conn.execute(sql, chosen)
    return f"{who(actor)} changes status of {len(chosen)} messages: {how}"


async def delete_messages(w: World) -> str | None:
    owner = w.owner()
    messages = await w.ids(
        "select id from public.messages where created_by = $1::uuid and id <> all($2::uuid[]) order by content",
        owner.id,
        w.fanned_out,
    )
    if len(messages) < 6:
        return None
    chosen = w.some(messages, 2)
    async with w.session(owner) as conn:
        await conn.execute("delete from public.messages where id = any($1::uuid[])", chosen)
    return f"owner deletes {len(chosen)} messages"


async def add_deliveries(w: World) -> str | None:
    """The fan-out's insert, with states other than pending too (an import of past sends)."""
    owner = w.owner()
    messages = await w.ids(
        "select id from public.messages where id = any($1::uuid[]) and created_by = $2::uuid order by content",
        w.fanned_out,
        owner.id,
    )
    if not messages:
        return None
    message = w.rng.choice(messages)
    # Contacts' own phones sometimes, so their opt-outs reach these deliveries.
    theirs = await w.ids(
        """select phone from public.contacts c where created_by = $1::uuid
           and not exists (select 1 from public.deliveries d where d.message_id = $2::uuid and d.phone = c.phone)
           order by phone""",
        owner.id,
        message,
    )
    n = w.rng.randint(1, 5)
    phones = [w.rng.choice(theirs) if theirs and w.rng.random() < 0.5 else w.phone() for _ in range(n)]
    phones = list(dict.fromkeys(phones))
    async with w.session(SERVICE) as conn:
        await conn.execute(
            """insert into public.deliveries (message_id, created_by, phone, state, idempotency_key)
               select $1::uuid, $2::uuid, p, s, k from unnest($3::text[], $4::text[], $5::text[]) u (p, s, k)""",
            message,
            owner.id,
            phones,
            [w.rng.choice(STATES) for _ in phones],
            [uuid.uuid4().hex for _ in phones],
        )
    return f"service adds {len(phones)} deliveries"


async def change_deliveries(w: World) -> str | None:
    """Each chosen delivery to a state of its own, across owners, in one statement."""
    chosen = w.some(await w.ids(DELIVERIES, [p.id for p in w.owners]), 8)
    if not chosen:
        return None
    async with w.session(SERVICE) as conn:
        await conn.execute(
            "update public.deliveries d set state = u.s from unnest($1::uuid[], $2::text[]) u (id, s) where d.id = u.id",
            chosen,
            [w.rng.choice(STATES) for _ in chosen],
        )
    return f"service changes the state of {len(chosen)} deliveries"


async def settle_deliveries(w: World) -> str | None:
    """Every delivery of one message in one state to another (a batch ack)."""
    messages = await w.ids("select id from public.messages where id = any($1::uuid[]) order by content", w.fanned_out)
    if not messages:
        return None
    message = w.rng.choice(messages)
    before, after = w.rng.sample(STATES, 2)
    async with w.session(SERVICE) as conn:
        status = await conn.execute(
            "update public.deliveries set state = $3 where message_id = $1::uuid and state = $2",
            message,
            before,
            after,
        )
    return f"service moves one message's deliveries {before} -> {after} ({status})"


async def move_deliveries(w: World) -> str | None:
    owner = w.owner()
    messages = await w.ids(
        "select id from public.messages where id = any($1::uuid[]) and created_by = $2::uuid order by content",
        w.fanned_out,
        owner.id,
    )
    if len(messages) < 2:
        return None
    source, target = w.rng.sample(messages, 2)
    movable = await w.ids(
        """select d.id from public.deliveries d where d.message_id = $1::uuid and not exists (
             select 1 from public.deliveries t where t.message_id = $2::uuid and t.phone = d.phone)
           order by d.phone""",
        source,
        target,
    )
    chosen = w.some(movable, 4)
    if not chosen:
        return None
    async with w.session(SERVICE) as conn:
        await conn.execute(
            "update public.deliveries set message_id = $2::uuid where id = any($1::uuid[])", chosen, target
        )
    return f"service moves {len(chosen)} deliveries to another message"


async def delete_deliveries(w: World) -> str | None:
    chosen = w.some(await w.ids(DELIVERIES, [p.id for p in w.owners]), 4)
    if not chosen:
        return None
    async with w.session(SERVICE) as conn:
        await conn.execute("delete from public.deliveries where id = any($1::uuid[])", chosen)
    return f"service deletes {len(chosen)} deliveries"


async def pause_or_resume_sending(w: World) -> str | None:
    """Messages being sent paused and resumed, both ways in one statement."""
    chosen = w.some(
        await w.ids(
            """select id from public.messages m where id = any($1::uuid[]) and status in ('sending', 'paused')
               and exists (select 1 from public.deliveries d where d.message_id = m.id) order by content""",
            w.fanned_out,
        ),
        3,
    )
    if not chosen:
        return None
    async with w.session(SERVICE) as conn:
        await conn.execute(
            """update public.messages set status = case status when 'sending' then 'paused' else 'sending' end
               where id = any($1::uuid[])""",
            chosen,
        )
    return f"service pauses or resumes {len(chosen)} messages being sent"


async def compact(w: World) -> str | None:
    async with w.session(SERVICE) as conn:
        folded = await conn.fetchval("select private.compact_message_counts()")
    return f"service compacts message_counts ({folded} rows folded)"


Change = Callable[[World], Awaitable[str | None]]
CHANGES: list[tuple[Change, int]] = [
    (add_members, 4),
    (remove_members, 3),
    (move_members, 3),
    (swap_members, 2),
    (touch_members, 1),
    (change_reach, 2),
    (add_contacts, 1),
    (delete_contacts, 1),
    (add_group, 1),
    (delete_group, 1),
    (add_messages, 2),
    (change_links, 3),
    (edit_messages, 1),
    (change_status, 5),
    (delete_messages, 1),
    (add_deliveries, 3),
    (change_deliveries, 4),
    (settle_deliveries, 1),
    (move_deliveries, 2),
    (delete_deliveries, 2),
    (pause_or_resume_sending, 2),
    (compact, 1),
]


# -----------------------------------------------------------------------------------------------
# The world each seed starts from, and the recount
# -----------------------------------------------------------------------------------------------


async def build(w: World) -> None:
    """Per owner: contacts (one inactive, one opted out), groups with random members, drafts
    linked to groups, and two messages fanned out (scheduled, then sending) with deliveries."""
    admin = w.admin
    for owner in w.owners:
        contacts = [
            str(
                await admin.fetchval(
                    """insert into public.contacts (created_by, name, phone, is_active, opted_out_at)
                       values ($1::uuid, $2, $3, $4, case when $5 then now() end) returning id""",
                    owner.id,
                    w.name("Contacto"),
                    w.phone(),
                    i != 0,
                    i == 1,
                )
            )
            for i in range(12)
        ]
        groups = []
        for _ in range(4):
            group = str(
                await admin.fetchval(
                    "insert into public.groups (created_by, name) values ($1::uuid, $2) returning id",
                    owner.id,
                    w.name("Grupo"),
                )
            )
            # The first group always reaches someone, so its messages can be scheduled.
            members = [c for c in contacts if w.rng.random() < 0.5] + ([contacts[2]] if not groups else [])
            await admin.execute(
                """insert into public.group_contacts (group_id, contact_id, created_by)
                   select $1::uuid, c, $3::uuid from unnest($2::uuid[]) c on conflict do nothing""",
                group,
                members,
                owner.id,
            )
            groups.append(group)
        for i in range(7):
            message = str(
                await admin.fetchval(
                    "insert into public.messages (created_by, content) values ($1::uuid, $2) returning id",
                    owner.id,
                    w.name("Aviso"),
                )
            )
            linked = [groups[0]] if i < 2 else w.rng.sample(groups, w.rng.randint(0, 3))
            await admin.execute(
                """insert into public.message_groups (message_id, group_id, created_by)
                   select $1::uuid, g, $3::uuid from unnest($2::uuid[]) g""",
                message,
                linked,
                owner.id,
            )
            if i < 2:
                w.fanned_out.append(message)
                async with session(w.pool, SERVICE, commit=True) as conn:
                    await conn.execute(
                        """update public.messages set status = 'scheduled', scheduled_for = now() + interval '1 day'
                           where id = $1::uuid""",
                        message,
                    )
                    await conn.execute("update public.messages set status = 'sending' where id = $1::uuid", message)
    for _ in range(4):
        await add_deliveries(w)


async def drift(w: World) -> list[str]:
    """Every stored count that differs from its recount, as `count (row): stored != recounted`."""
    owners = [p.id for p in w.owners]
    found = []
    for count, sql in RECOUNTS.items():
        args = (owners, w.fanned_out) if "$2" in sql else (owners,)
        rows = await w.admin.fetch(
            f"select what, stored::text, recounted::text from ({sql}) x where stored is distinct from recounted"
            " order by what",
            *args,
        )
        found += [f"{count} ({r['what']}): stored {r['stored']} != recounted {r['recounted']}" for r in rows]
    return found


@pytest.fixture
async def owners(owner_conn: asyncpg.Connection) -> AsyncIterator[list[Person]]:
    people = [await create_person(owner_conn) for _ in range(2)]
    yield people
    await delete_people(owner_conn, people)


@pytest.mark.parametrize("seed", [23, 1129])
async def test_counts_match_a_recount_after_random_changes(
    seed: int, app_pool: asyncpg.Pool, owner_conn: asyncpg.Connection, owners: list[Person]
) -> None:
    w = World(random.Random(seed), owner_conn, app_pool, owners)
    await build(w)
    assert await drift(w) == []
    changes, weights = zip(*CHANGES, strict=True)
    # The first batch commits every kind of change once, in a random order; the others draw them.
    batches = [w.rng.sample(changes, len(changes))] + [
        w.rng.choices(changes, weights, k=w.rng.randint(2, 6)) for _ in range(BATCHES)
    ]
    made: set[str] = set()
    for batch, drawn in enumerate(batches):
        log = []
        for change in drawn:
            # Now and then the change is rolled back: a transaction that never happened counts nothing.
            w.commit = batch == 0 or w.rng.random() > 0.1
            did = await change(w)
            if did:
                log.append(did + ("" if w.commit else " (rolled back)"))
                made |= {change.__name__} if w.commit else set()
        w.commit = True
        found = await drift(w)
        assert not found, f"seed {seed}, batch {batch}: counts drifted\n" + "\n".join([*found, "after:", *log])
    # Every kind of change was committed at least once, so the recount had something to catch.
    assert made == {c.__name__ for c in changes}

"""Issue #19, classes 8 and 9, on both paths: through /api (and the API's socket hub) and as
supabase-js runs it (SQL as `authenticated` with the user's claims, one transaction per call).

- Replies go to whoever wrote: a reply is kept for the users who sent that phone a message within
  REPLY_WINDOW_DAYS (the send ledger says who; its rows are written here as the dispatcher's claim
  writes them), never for a user who only has the phone as a contact; a keyword opt-out still acts
  on every user's contact with the phone, and an opt-in lifts what a keyword did.
- Events only onto one's own topic: no user can call private.broadcast, realtime.send as a user
  reaches no socket, a trigger running on a user's request may name only that user's topic, the
  Realtime read policy compares each row's own topic, and the hub relays a message's events to
  its subscribers only from its owner's topic.

Every refusal comes with its positive control: the user who did write sees the reply, the owner's
own topic still gets their events, a user still reads their own topic's rows."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from test_rules_both_paths import direct, direct_error

from whatsched.api.deps import Resources
from whatsched.db.pool import service_tx, user_tx
from whatsched.realtime.hub import Hub
from whatsched.whatsapp import queries as whatsapp

GUARD_S = 10  # a hang guard, never a speed assertion


def new_phone() -> str:
    return "+569" + str(uuid.uuid4().int)[:8]


# ---------------------------------------------------------------------------------------------
# Helpers: who wrote (the ledger), replies arriving, what reaches the hubs
# ---------------------------------------------------------------------------------------------


async def campaign(admin: asyncpg.Connection, owner: Any, phone: str, days_ago: float = 0) -> str:
    """A message of `owner` that reached `phone`: the message, the owner's contact, and the ledger
    row the dispatcher's claim writes when it marks the delivery sending."""
    message_id = str(
        await admin.fetchval(
            "insert into public.messages (created_by, content) values ($1::uuid, $2) returning id",
            owner.id,
            "Campaña " + uuid.uuid4().hex[:8],
        )
    )
    await admin.execute(
        "insert into public.contacts (created_by, name, phone) values ($1::uuid, 'Cliente', $2)"
        " on conflict (created_by, phone) do nothing",
        owner.id,
        phone,
    )
    await admin.execute(
        "insert into private.send_ledger (created_by, sender, phone, message_id, at)"
        " values ($1::uuid, 'default', $2, $3::uuid, clock_timestamp() - $4 * interval '1 day')",
        owner.id,
        phone,
        message_id,
        days_ago,
    )
    return message_id


async def reply(res: Resources, phone: str, text: str) -> int:
    """An incoming WhatsApp message, recorded as the bridge's event is (as the service)."""
    async with service_tx(res.pool) as conn:
        return await whatsapp.record_reply(conn, phone, text, "wa-" + uuid.uuid4().hex, None)


async def contact_id(admin: asyncpg.Connection, owner: Any, phone: str) -> str:
    return str(
        await admin.fetchval(
            "select id from public.contacts where created_by = $1::uuid and phone = $2", owner.id, phone
        )
    )


class Relay:
    """Every NOTIFY on channel 'realtime' (what the API's hubs relay), in commit order."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn
        self.events: list[dict[str, Any]] = []
        self._arrived = asyncio.Event()

    def _on(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        self.events.append(json.loads(payload))
        self._arrived.set()

    async def before_sentinel(self, admin: asyncpg.Connection) -> list[dict[str, Any]]:
        """Everything relayed before a service event sent now: anything committed earlier that
        notified has arrived by then (a listener gets notifications in commit order)."""
        topic = f"sentinel:{uuid.uuid4()}"
        await admin.execute("select realtime.send('{}'::jsonb, 'sentinel', $1, true)", topic)
        async with asyncio.timeout(GUARD_S):
            while not any(e.get("topic") == topic for e in self.events):
                self._arrived.clear()
                await self._arrived.wait()
        index = next(i for i, e in enumerate(self.events) if e.get("topic") == topic)
        before, self.events = self.events[:index], self.events[index + 1 :]
        return before


@pytest.fixture
async def relay(prepared: Any) -> AsyncIterator[Relay]:
    conn = await asyncpg.connect(prepared.admin_url)
    listener = Relay(conn)
    await conn.add_listener("realtime", listener._on)
    try:
        yield listener
    finally:
        await conn.close()


# =============================================================================================
# Class 8: replies go to whoever wrote
# =============================================================================================


async def test_a_phone_added_after_someone_elses_campaign_shows_none_of_its_answers(
    client: httpx.AsyncClient, res: Resources, admin: asyncpg.Connection, make_user: Any
) -> None:
    alice, bob, carol = await make_user(), await make_user(), await make_user()
    phone = new_phone()
    sent = await campaign(admin, alice, phone)
    # After Alice's campaign, Bob adds the phone through the API and Carol through supabase-js.
    added = await client.post("/api/contacts", json={"name": "Curioso", "phone": phone}, headers=bob.headers)
    assert added.status_code == 201, added.text
    await direct(res, carol, "insert into public.contacts (name, phone) values ('Curiosa', $1)", phone)

    assert await reply(res, phone, "¿A qué hora abren mañana?") == 1

    # API: only Alice, with her contact and her message.
    mine = (await client.get("/api/replies", headers=alice.headers)).json()
    assert [(r["phone"], r["text"], r["contact_id"], r["message_id"]) for r in mine["items"]] == [
        (phone, "¿A qué hora abren mañana?", await contact_id(admin, alice, phone), sent)
    ]
    assert (await client.get("/api/replies", headers=bob.headers)).json()["total"] == 0
    by_contact = await client.get(f"/api/replies?contact_id={added.json()['id']}", headers=bob.headers)
    assert by_contact.json()["total"] == 0
    # supabase-js: the same.
    count = "select count(*) from public.replies where phone = $1"
    assert await direct(res, alice, count, phone) == 1
    assert await direct(res, bob, count, phone) == 0
    assert await direct(res, carol, count, phone) == 0

    # Writing is what counts: once Bob's own campaign reaches the phone, the next answer is his too.
    bobs = await campaign(admin, bob, phone)
    assert await reply(res, phone, "Gracias") == 2
    theirs = (await client.get("/api/replies", headers=bob.headers)).json()["items"]
    assert [(r["text"], r["contact_id"], r["message_id"]) for r in theirs] == [("Gracias", added.json()["id"], bobs)]
    assert await direct(res, bob, count, phone) == 1
    assert await direct(res, alice, count, phone) == 2


async def test_only_sends_within_reply_window_days_count(
    client: httpx.AsyncClient, res: Resources, admin: asyncpg.Connection, make_user: Any
) -> None:
    old, recent = await make_user(), await make_user()
    phone = new_phone()
    await campaign(admin, old, phone, days_ago=31)
    await campaign(admin, recent, phone, days_ago=29)
    assert await reply(res, phone, "¿Sigue la oferta?") == 1
    assert (await client.get("/api/replies", headers=old.headers)).json()["total"] == 0
    assert (await client.get("/api/replies", headers=recent.headers)).json()["total"] == 1

    window = await admin.fetchval("select reply_window_days from private.settings")
    await admin.execute("update private.settings set reply_window_days = 45")
    try:
        assert await reply(res, phone, "¿Y la otra?") == 2
        assert await direct(res, old, "select count(*) from public.replies where phone = $1", phone) == 1
    finally:
        await admin.execute("update private.settings set reply_window_days = $1", window)


async def test_deleting_the_message_does_not_forget_who_wrote(
    client: httpx.AsyncClient, res: Resources, admin: asyncpg.Connection, make_user: Any
) -> None:
    user = await make_user()
    phone = new_phone()
    sent = await campaign(admin, user, phone)
    assert await direct(res, user, "delete from public.messages where id = $1::uuid returning 1", sent) == 1
    assert await reply(res, phone, "Recibido") == 1
    [kept] = (await client.get("/api/replies", headers=user.headers)).json()["items"]
    assert kept["text"] == "Recibido" and kept["message_id"] is None


async def test_users_cannot_read_write_or_delete_the_send_ledger(
    res: Resources, admin: asyncpg.Connection, make_user: Any
) -> None:
    user = await make_user()
    phone = new_phone()
    await campaign(admin, user, phone)
    assert await direct_error(res, user, "select count(*) from private.send_ledger") == "42501"
    assert (
        await direct_error(
            res,
            user,
            "insert into private.send_ledger (created_by, sender, phone, message_id)"
            " values ((select auth.uid()), 'default', $1, gen_random_uuid())",
            new_phone(),
        )
        == "42501"
    )
    assert await direct_error(res, user, "delete from private.send_ledger where phone = $1", phone) == "42501"
    assert (
        await direct_error(res, user, "select private.record_reply($1, 'hola', 'wa-forged', now())", phone) == "42501"
    )
    # Positive control: the service reads it (the row is there).
    async with service_tx(res.pool) as conn:
        assert await conn.fetchval("select count(*) from private.send_ledger where phone = $1", phone) == 1


async def test_an_opt_out_holds_for_every_users_contact_and_an_opt_in_lifts_it_for_all(
    client: httpx.AsyncClient, res: Resources, admin: asyncpg.Connection, make_user: Any
) -> None:
    writer, holder, by_hand = await make_user(), await make_user(), await make_user()
    phone = new_phone()
    await campaign(admin, writer, phone)
    added = await client.post("/api/contacts", json={"name": "Cliente", "phone": phone}, headers=holder.headers)
    assert added.status_code == 201, added.text
    await direct(
        res, by_hand, "insert into public.contacts (name, phone, opted_out_at) values ('Cliente', $1, now())", phone
    )

    assert await reply(res, phone, "BAJA") == 1  # the reply is the writer's alone
    assert (await client.get("/api/replies", headers=holder.headers)).json()["total"] == 0

    state = "select can_receive, opted_out_keyword from public.contacts where phone = $1"
    holder_contact = (await client.get(f"/api/contacts/{added.json()['id']}", headers=holder.headers)).json()
    assert holder_contact["opted_out_at"] is not None and holder_contact["opted_out_keyword"] == "BAJA"
    assert tuple(await direct_row(res, writer, state, phone)) == (False, "BAJA")
    assert tuple(await direct_row(res, by_hand, state, phone)) == (False, None)  # already out, by hand
    # Told: the owners whose contact the keyword opted out, not the one already out.
    for user, told in ((writer, True), (holder, True), (by_hand, False)):
        notes = (await client.get("/api/notifications", headers=user.headers)).json()["items"]
        assert any(n["type"] == "warning" and phone in n["message"] for n in notes) is told

    assert await reply(res, phone, "ALTA") == 1
    assert (await client.get(f"/api/contacts/{added.json()['id']}", headers=holder.headers)).json()[
        "opted_out_at"
    ] is None
    assert tuple(await direct_row(res, writer, state, phone)) == (True, None)
    assert tuple(await direct_row(res, by_hand, state, phone)) == (False, None)  # the owner's to lift


async def direct_row(res: Resources, user: Any, sql: str, *args: Any) -> asyncpg.Record:
    async with user_tx(res.pool, user.claims) as conn:
        row: asyncpg.Record = await conn.fetchrow(sql, *args)
        return row


# =============================================================================================
# Class 9: events only onto one's own topic
# =============================================================================================


async def test_no_user_may_call_broadcast_whatever_the_topic(
    res: Resources, admin: asyncpg.Connection, make_user: Any, relay: Relay
) -> None:
    alice, bob = await make_user(), await make_user()
    call = "select private.broadcast('{\"type\": \"new_notification\"}'::jsonb, 'new_notification', $1)"
    for topic in (f"user:{bob.id}", f"user:{alice.id}", "whatsapp"):
        assert await direct_error(res, alice, call, topic) == "42501"
    # Positive control: the service still broadcasts (the bridge's whatsapp_status goes this way).
    async with service_tx(res.pool) as conn:
        await conn.execute(call, f"user:{alice.id}")
    assert [(e["topic"], e["event"]) for e in await relay.before_sentinel(admin)] == [
        (f"user:{alice.id}", "new_notification")
    ]


async def test_realtime_send_as_a_user_reaches_no_socket_and_stores_nothing(
    res: Resources, admin: asyncpg.Connection, make_user: Any, relay: Relay
) -> None:
    """Supabase grants realtime.send to every role; RLS refuses a user's insert, and the local
    send relays only what was stored."""
    alice, bob = await make_user(), await make_user()
    send = "select realtime.send('{\"type\": \"new_notification\"}'::jsonb, 'new_notification', $1, true)"
    for topic in (f"user:{bob.id}", f"user:{alice.id}", "whatsapp"):
        await direct(res, alice, send, topic)
    assert await relay.before_sentinel(admin) == []
    stored = "select count(*) from realtime.messages where topic = any($1::text[]) and event = 'new_notification'"
    assert await admin.fetchval(stored, [f"user:{bob.id}", f"user:{alice.id}"]) == 0
    # Positive control: the same call as the service reaches the topic.
    async with service_tx(res.pool) as conn:
        await conn.execute(send, f"user:{bob.id}")
    assert [e["topic"] for e in await relay.before_sentinel(admin)] == [f"user:{bob.id}"]


async def test_what_runs_on_a_users_request_may_name_only_their_topic(
    res: Resources, admin: asyncpg.Connection, make_user: Any, relay: Relay
) -> None:
    alice, bob, boss = await make_user(), await make_user(), await make_user(admin=True)
    # supabase-js: a notification for someone else is refused before any trigger runs...
    insert = "insert into public.notifications (user_id, type, title, message) values ($1::uuid, 'info', 't', 'm')"
    assert await direct_error(res, alice, insert, bob.id) == "42501"
    # ...and one for herself reaches her topic (the owner's own topic still gets their events).
    await direct(res, alice, insert, alice.id)
    assert [(e["topic"], e["event"]) for e in await relay.before_sentinel(admin)] == [
        (f"user:{alice.id}", "new_notification")
    ]
    # A security definer trigger on Alice's request that named Bob's topic: the one way out refuses.
    # (Run as the triggers run: the definer's rights, the request's claims.)
    call = "select private.broadcast('{}'::jsonb, 'probe', $1)"

    async def as_request_of(user: Any, topic: str) -> None:
        async with admin.transaction():
            await admin.execute("select set_config('request.jwt.claims', $1, true)", json.dumps(user.claims))
            await admin.execute(call, topic)

    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await as_request_of(alice, f"user:{bob.id}")
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await as_request_of(alice, "whatsapp")
    await as_request_of(alice, f"user:{alice.id}")
    await as_request_of(boss, f"user:{bob.id}")  # an admin acting on Bob's rows reaches Bob
    assert [e["topic"] for e in await relay.before_sentinel(admin)] == [f"user:{alice.id}", f"user:{bob.id}"]


async def test_import_progress_goes_to_the_callers_own_topic_on_both_paths(
    client: httpx.AsyncClient, res: Resources, admin: asyncpg.Connection, make_user: Any, relay: Relay
) -> None:
    user = await make_user()
    import_id = str(uuid.uuid4())
    # API: an import's progress events, all on the caller's topic.
    files = {"file": ("c.csv", f"nombre,telefono\nAna,{new_phone()}\n".encode(), "text/csv")}
    done = await client.post("/api/contacts/import", headers=user.headers, files=files, data={"import_id": import_id})
    assert done.status_code == 200, done.text
    events = [e for e in await relay.before_sentinel(admin) if e["event"] == "import_progress"]
    assert {e["topic"] for e in events} == {f"user:{user.id}"}
    assert events[-1]["payload"] == {
        "type": "import_progress",
        "import_id": import_id,
        "stage": "done",
        "processed": 1,
        "total": 1,
    }
    # supabase-js: the function names no topic; the service (nobody's import) is refused.
    await direct(res, user, "select private.send_import_progress($1::uuid, 'reading', 0, 0)", import_id)
    assert [e["topic"] for e in await relay.before_sentinel(admin)] == [f"user:{user.id}"]
    async with service_tx(res.pool) as conn:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("select private.send_import_progress($1::uuid, 'reading', 0, 0)", import_id)


async def test_the_realtime_read_policy_compares_each_rows_own_topic(
    res: Resources, admin: asyncpg.Connection, make_user: Any
) -> None:
    alice, bob, boss = await make_user(), await make_user(), await make_user(admin=True)
    rows = {
        topic: str(
            await admin.fetchval(
                "insert into realtime.messages (topic, extension, event, payload, private)"
                " values ($1, 'broadcast', 'probe', '{}', true) returning id",
                topic,
            )
        )
        for topic in (f"user:{alice.id}", f"user:{bob.id}", "whatsapp")
    }

    async def seen(user: Any, channel: str) -> set[str]:
        async with user_tx(res.pool, user.claims) as conn:
            await conn.execute("select set_config('realtime.topic', $1, true)", channel)
            found = await conn.fetch(
                "select topic from realtime.messages where id = any($1::uuid[])", list(rows.values())
            )
        return {r["topic"] for r in found}

    a, b = f"user:{alice.id}", f"user:{bob.id}"
    assert await seen(alice, a) == {a}  # her own channel: her own rows only, never Bob's
    assert await seen(alice, b) == set()
    assert await seen(alice, "whatsapp") == {"whatsapp"}
    assert await seen(bob, b) == {b}
    assert await seen(boss, b) == {b}  # admins join any topic, and read that topic's rows


class Socket:
    """One socket on the in-process hub, as the hub sees it: whose path, which caller."""

    def __init__(self, path_user: str, claims: dict[str, Any]) -> None:
        self.user_id = path_user
        self.claims = claims
        self.subscriptions: dict[str, int] = {}
        self.closed = False
        self.frames: list[dict[str, Any]] = []
        self._arrived = asyncio.Event()

    def push(self, frame: str) -> None:
        self.frames.append(json.loads(frame))
        self._arrived.set()

    def close(self, *_args: Any) -> None:
        self.closed = True

    async def until(self, match: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
        """Frames up to and including the first that matches; they are consumed."""
        async with asyncio.timeout(GUARD_S):
            while not any(match(f) for f in self.frames):
                self._arrived.clear()
                await self._arrived.wait()
        index = next(i for i, f in enumerate(self.frames) if match(f))
        taken, self.frames = self.frames[: index + 1], self.frames[index + 1 :]
        return taken


async def test_the_hub_relays_a_topic_to_its_user_and_a_messages_events_only_from_its_owner(
    app: FastAPI, admin: asyncpg.Connection, make_user: Any
) -> None:
    hub: Hub = app.state.hub
    alice, bob, boss = await make_user(), await make_user(), await make_user(admin=True)
    message_id = str(
        await admin.fetchval(
            "insert into public.messages (created_by, content) values ($1::uuid, 'Hola') returning id", alice.id
        )
    )
    hers, his, watching = Socket(alice.id, alice.claims), Socket(bob.id, bob.claims), Socket(alice.id, boss.claims)
    for sock in (hers, his, watching):
        hub.add(sock)  # type: ignore[arg-type]
    try:
        assert await hub.subscribe(hers, message_id)  # type: ignore[arg-type]
        assert [f["type"] for f in hers.frames] == ["message_status_update", "message_progress"]  # the snapshot
        hers.frames.clear()

        send = "select realtime.send($1::jsonb, $2, $3, true)"

        async def event(topic_of: Any, name: str, **payload: Any) -> None:
            await admin.execute(send, json.dumps({"type": name, **payload}), name, f"user:{topic_of.id}")

        # On Bob's topic, naming Alice's message (as no user can cause any more): not hers.
        await event(bob, "message_status_update", message_id=message_id, status="failed", timestamp="t")
        await event(bob, "message_progress", message_id=message_id, sent=9, total=9, failed=9)
        await event(bob, "new_notification", notification={"title": "for bob"})
        # On Alice's own topic: hers, and the admin's who opened her path.
        await event(alice, "message_progress", message_id=message_id, sent=1, total=2, failed=0)
        await event(alice, "message_status_update", message_id=message_id, status="sending", timestamp="t")

        last = await hers.until(lambda f: f["type"] == "message_status_update")
        assert [(f["type"], f.get("status"), f.get("sent")) for f in last] == [
            ("message_progress", None, 1),
            ("message_status_update", "sending", None),
        ]
        seen_by_boss = await watching.until(lambda f: f["type"] == "message_status_update")
        assert [f["type"] for f in seen_by_boss] == ["message_status_update"]  # path events; not subscribed
        bobs = await his.until(lambda f: f["type"] == "new_notification")
        assert bobs[-1]["notification"] == {"title": "for bob"}  # the owner's own topic gets his events
        assert all(f.get("message_id") != message_id or f["status"] == "failed" for f in bobs)  # only his topic's
    finally:
        for sock in (hers, his, watching):
            hub.remove(sock)  # type: ignore[arg-type]

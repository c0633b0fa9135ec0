"""Replies and opt-out end to end: the real bridge (simulator driver) posts an injected reply to
the API on a real port, a real worker sends. What a user sees: the reply only for the user whose
campaign reached the phone (the worker's claim writes the send ledger that says so), not for one
who merely has the phone as a contact; the opt-out on every user's contact, the campaign in
flight skipping them, later campaigns leaving them out, ALTA bringing them back, the reply through
GET /api/replies and the socket's event, nothing kept (or logged) from a stranger."""

from __future__ import annotations

import json
import logging
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from bridge_process import (
    BridgeProcess,
    WorkerProcess,
    delivery_states,
    eventually,
    new_message,
    schedule,
    sent_for,
    workers_listening,
)

from whatsched.config import Settings
from whatsched.db.setup import Prepared

pytestmark = pytest.mark.slow

EVENTS = "/api/bridge/events"


async def inject(bridge: BridgeProcess, phone: str, text: str, wa_id: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"from": phone, "text": text}
    if wa_id:
        body["whatsapp_message_id"] = wa_id
    async with httpx.AsyncClient(timeout=10) as http:
        resp = await http.post(bridge.url + "/simulator/inbound", json=body, headers=bridge.headers)
    assert resp.status_code == 200, resp.text
    answer: dict[str, Any] = resp.json()
    return answer


async def contact_state(admin: asyncpg.Connection, owner: str, phone: str) -> tuple[bool, str | None]:
    row = await admin.fetchrow(
        "select can_receive, opted_out_keyword from public.contacts where created_by = $1::uuid and phone = $2",
        owner,
        phone,
    )
    return bool(row["can_receive"]), row["opted_out_keyword"]


async def test_a_baja_reply_opts_out_everywhere_skips_sends_and_alta_brings_them_back(
    admin: asyncpg.Connection,
    prepared: Prepared,
    settings: Settings,
    api_url: str,
    client: httpx.AsyncClient,
    make_user: Any,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    a, b = await make_user(), await make_user()
    owner_a, owner_b = uuid.UUID(a.id), uuid.UUID(b.id)
    base = 56_930_000_000 + (uuid.uuid4().int % 9_000_000) * 10
    leaving, staying, other = (f"+{base + i}" for i in range(3))
    phones = [leaving, staying, other]

    bridge = BridgeProcess(
        tmp_path / "bridge", token=settings.bridge_token, events_url=api_url + EVENTS, ack_delay_ms=20
    )
    bridge.start()
    worker = WorkerProcess(
        prepared.admin_url, prepared.app_url, bridge.url, tmp_path / "worker.log", token=settings.bridge_token
    )
    worker.start()
    frames: list[dict[str, Any]] = []
    listen = await asyncpg.connect(prepared.admin_url)
    await listen.add_listener("realtime", lambda *args: frames.append(json.loads(args[3])))
    try:
        await eventually(lambda: workers_listening(admin), lambda n: n == 1, what="the worker to listen")
        # A first campaign reaches everyone, so replies can name it.
        first = await new_message(admin, owner_a, phones, content="Primera campaña {{name}}")
        await new_message(admin, owner_b, [leaving], content="Hola de B")  # B has `leaving`, never writes
        await schedule(admin, owner_a, first)
        await eventually(lambda: delivery_states(admin, first), lambda s: s == {"read": 3}, what="the first campaign")

        # A campaign fanned out but not yet due when the reply arrives.
        in_flight = await new_message(admin, owner_a, phones, content="Segunda campaña {{name}}")
        await schedule(admin, owner_a, in_flight, in_seconds=3)
        await eventually(
            lambda: delivery_states(admin, in_flight), lambda s: s == {"pending": 3}, what="the fan-out ahead of time"
        )

        sent = await inject(bridge, leaving, "BAJA")
        for owner in (a.id, b.id):
            assert await eventually(
                lambda o=owner: contact_state(admin, o, leaving), lambda s: not s[0], what="the opt-out"
            ) == (False, "BAJA")
        assert await contact_state(admin, a.id, staying) == (True, None)
        # The bridge retries (at-least-once): the same reply is kept once.
        await inject(bridge, leaving, "BAJA", sent["whatsapp_message_id"])

        await eventually(
            lambda: delivery_states(admin, in_flight),
            lambda s: s == {"read": 2, "skipped": 1},
            what="the campaign in flight to finish without the opted-out recipient",
        )
        skipped = await admin.fetchrow(
            "select phone, last_error_code from public.deliveries where message_id = $1 and state = 'skipped'",
            in_flight,
        )
        assert dict(skipped) == {"phone": leaving, "last_error_code": "opted_out"}
        assert leaving not in [m["to"] for m in sent_for(await bridge.outbox(), in_flight)]

        # What the owner sees through the API.
        replies = (await client.get("/api/replies", headers=a.headers)).json()
        assert replies["total"] == 1
        [reply] = replies["items"]
        assert (reply["phone"], reply["text"], reply["kind"], reply["message_id"]) == (
            leaving,
            "BAJA",
            "opt_out",
            str(first),
        )
        by_message = await client.get(f"/api/replies?message_id={first}", headers=a.headers)
        assert [r["id"] for r in by_message.json()["items"]] == [reply["id"]]
        assert (await client.get(f"/api/replies?message_id={in_flight}", headers=a.headers)).json()["total"] == 0
        # B has the phone as a contact but never wrote to it: the answer to A's campaign is not B's,
        # while the opt-out (the number is shared) holds for B's contact too, and B is told.
        assert (await client.get("/api/replies", headers=b.headers)).json()["total"] == 0
        b_notes = (await client.get("/api/notifications", headers=b.headers)).json()["items"]
        assert any(n["type"] == "warning" and leaving in n["message"] for n in b_notes)
        contacts = (await client.get("/api/contacts?page_size=100", headers=a.headers)).json()["items"]
        [gone] = [c for c in contacts if c["phone"] == leaving]
        assert gone["opted_out_at"] is not None and gone["opted_out_keyword"] == "BAJA"
        notes = (await client.get("/api/notifications", headers=a.headers)).json()["items"]
        assert any(n["type"] == "warning" and leaving in n["message"] for n in notes)
        stats = (await client.get(f"/api/messages/{first}/stats", headers=a.headers)).json()
        assert (stats["replies"], stats["opt_outs"]) == (1, 1)
        assert (await client.get(f"/api/messages/{in_flight}/stats", headers=a.headers)).json()["states"][
            "skipped"
        ] == 1
        dashboard = (await client.get("/api/messages/dashboard", headers=a.headers)).json()
        assert dashboard["opt_outs_30d"] == 1 and dashboard["opt_out_rate_30d"] == round(1 / 5, 4)
        events = [f for f in frames if f.get("event") == "reply_received" and f.get("topic") == f"user:{a.id}"]
        assert [e["payload"]["reply"]["id"] for e in events] == [reply["id"]]

        # A campaign scheduled afterwards leaves them out from the start.
        after = await new_message(admin, owner_a, phones, content="Tercera campaña {{name}}")
        await schedule(admin, owner_a, after)
        await eventually(lambda: delivery_states(admin, after), lambda s: s == {"read": 2}, what="the third campaign")

        # ALTA brings them back.
        await inject(bridge, leaving, "Alta")
        assert await eventually(lambda: contact_state(admin, a.id, leaving), lambda s: s[0], what="the opt-in") == (
            True,
            None,
        )
        again = await new_message(admin, owner_a, phones, content="Cuarta campaña {{name}}")
        await schedule(admin, owner_a, again)
        await eventually(lambda: delivery_states(admin, again), lambda s: s == {"read": 3}, what="the fourth campaign")

        # A stranger's message: nothing kept, the text logged nowhere.
        secret = "mensaje personal " + uuid.uuid4().hex
        stranger = f"+{base + 9}"
        await inject(bridge, stranger, secret)
        await inject(
            bridge, staying, "gracias"
        )  # a known sender after the stranger: when it lands, so has the stranger's
        await eventually(
            lambda: admin.fetchval("select count(*) from public.replies where phone = $1", staying),
            lambda n: n == 1,
            what="the reply after the stranger's",
        )
        assert await admin.fetchval("select count(*) from public.replies where phone = $1", stranger) == 0
        assert await admin.fetchval("select count(*) from public.replies where text = $1", secret) == 0
        assert secret not in bridge.log() and secret not in worker.log()
        assert not [r for r in caplog.records if secret in r.getMessage()]
        assert (
            await admin.fetchval(
                "select count(*) from public.replies where whatsapp_message_id = $1", sent["whatsapp_message_id"]
            )
            == 1
        )
    finally:
        await listen.close()
        assert worker.stop() == 0, worker.log()
        bridge.stop()

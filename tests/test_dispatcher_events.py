"""POST /api/bridge/events: the signature check, acks moving deliveries forward, WhatsApp status
relayed to every socket (realtime topic `whatsapp`) with a warning on disconnection, and the real
bridge posting its events to the API served on a real port."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from bridge_process import (
    BridgeProcess,
    WorkerProcess,
    as_owner,
    delivery_states,
    eventually,
    heal_default_number,
    message_row,
    new_message,
    new_owner,
    numbers,
    schedule,
    workers_listening,
)

from whatsched.api.routes.bridge_events import sign
from whatsched.config import Settings
from whatsched.db.setup import Prepared

URL = "/api/bridge/events"


async def post_event(
    client: httpx.AsyncClient, token: str, event: dict[str, Any], at: float | None = None, signature: str | None = None
) -> httpx.Response:
    raw = json.dumps(event).encode()
    timestamp = str(int(at if at is not None else time.time()))
    headers = {
        "Content-Type": "application/json",
        "X-Bridge-Timestamp": timestamp,
        "X-Bridge-Signature": signature or sign(token, timestamp, raw),
    }
    return await client.post(URL, content=raw, headers=headers)


# ---------------------------------------------------------------------------------------------
# Signature
# ---------------------------------------------------------------------------------------------


async def test_unsigned_badly_signed_or_stale_events_are_refused_with_401(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    event = {"type": "whatsapp_status", "status": "connected"}
    raw = json.dumps(event).encode()

    unsigned = await client.post(URL, content=raw, headers={"Content-Type": "application/json"})
    wrong_key = await post_event(client, "not-the-token", event)
    tampered = await post_event(client, settings.bridge_token, event, signature=sign(settings.bridge_token, 1, raw))
    stale = await post_event(client, settings.bridge_token, event, at=time.time() - 6 * 60)
    future = await post_event(client, settings.bridge_token, event, at=time.time() + 6 * 60)
    for answer in (unsigned, wrong_key, tampered, stale, future):
        assert answer.status_code == 401
        assert answer.json() == {
            "detail": "The event is not signed by the bridge, or its signature expired.",
            "code": "invalid_signature",
            "errors": [],
        }

    assert (await post_event(client, settings.bridge_token, event)).status_code == 204
    slightly_skewed = await post_event(client, settings.bridge_token, event, at=time.time() - 4 * 60)
    assert slightly_skewed.status_code == 204
    # A newer bridge's event type is accepted and ignored; a malformed known one is refused.
    assert (await post_event(client, settings.bridge_token, {"type": "battery", "level": 3})).status_code == 204
    bad = await post_event(client, settings.bridge_token, {"type": "message_ack", "ack": "seen"})
    assert bad.status_code == 422 and bad.json()["code"] == "validation_error"


async def test_the_events_endpoint_is_internal_and_not_in_the_openapi_document(client: httpx.AsyncClient) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]
    assert not any(p.startswith("/api/bridge") for p in paths)


# ---------------------------------------------------------------------------------------------
# Acks
# ---------------------------------------------------------------------------------------------


async def sending_message(admin: asyncpg.Connection, phones: list[str]) -> tuple[uuid.UUID, list[str]]:
    """A message being sent, its deliveries in flight; returns it and their idempotency keys."""
    owner = await new_owner(admin)
    message = await new_message(admin, owner, phones)
    await admin.execute("update public.messages set status = 'scheduled', scheduled_for = now() where id = $1", message)
    await admin.execute("update public.messages set status = 'sending' where id = $1", message)
    await admin.execute(
        """
        insert into public.deliveries (message_id, created_by, phone, contact_name, idempotency_key, state, attempts)
        select $1::uuid, $2, p, 'x', $1::uuid::text || ':' || p, 'sending', 1 from unnest($3::text[]) p
        """,
        message,
        owner,
        phones,
    )
    return message, [f"{message}:{p}" for p in phones]


async def test_acks_move_deliveries_forward_and_never_back(
    client: httpx.AsyncClient, admin: asyncpg.Connection, settings: Settings
) -> None:
    phones = numbers(3, series=30)
    message, (k1, k2, k3) = await sending_message(admin, phones)
    token = settings.bridge_token

    async def ack(wa: str, key: str | None, kind: str) -> None:
        event = {"type": "message_ack", "whatsapp_message_id": wa, "idempotency_key": key, "ack": kind}
        event["at"] = "2026-01-01T10:00:00.000Z"
        assert (await post_event(client, token, event)).status_code == 204

    async def state(key: str) -> asyncpg.Record:
        row: asyncpg.Record = await admin.fetchrow(
            "select state, whatsapp_message_id, sent_at, delivered_at, read_at from public.deliveries"
            " where idempotency_key = $1",
            key,
        )
        return row

    # The ack beats the worker's completion: found by idempotency key, the WhatsApp id recorded.
    await ack("wa-1", k1, "sent")
    first = await state(k1)
    assert (first["state"], first["whatsapp_message_id"]) == ("sent", "wa-1")
    await ack("wa-1", None, "read")  # by WhatsApp id alone
    await ack("wa-1", None, "delivered")  # late: no step back
    await ack("wa-1", None, "failed")  # after delivery: ignored
    first = await state(k1)
    assert first["state"] == "read" and first["delivered_at"] is not None and first["read_at"] is not None

    await ack("wa-2", k2, "sent")
    await ack("wa-2", k2, "failed")  # failed before delivered: it failed
    await ack("wa-3", k3, "delivered")
    await ack("wa-unknown", "nobody:+1", "read")  # not ours: nothing happens

    assert await delivery_states(admin, message) == {"read": 1, "failed": 1, "delivered": 1}
    row = await message_row(admin, message)
    assert (row["recipient_count"], row["delivered_count"], row["failed_count"]) == (3, 2, 1)


# ---------------------------------------------------------------------------------------------
# WhatsApp status
# ---------------------------------------------------------------------------------------------


@pytest.fixture
async def realtime_frames(prepared: Prepared) -> AsyncIterator[list[dict[str, Any]]]:
    """What realtime.send emits on topic `whatsapp` (pg_notify 'realtime' on plain Postgres)."""
    conn = await asyncpg.connect(prepared.admin_url)
    frames: list[dict[str, Any]] = []

    def on_notify(_c: Any, _pid: int, _channel: str, payload: str) -> None:
        frame = json.loads(payload)
        if frame.get("topic") == "whatsapp":
            frames.append(frame)

    await conn.add_listener("realtime", on_notify)
    try:
        yield frames
    finally:
        await conn.close()


async def warnings_for(admin: asyncpg.Connection, owner: uuid.UUID) -> list[str]:
    rows = await admin.fetch(
        "select message from public.notifications where user_id = $1 and title = 'WhatsApp desconectado'", owner
    )
    return [r["message"] for r in rows]


async def test_whatsapp_status_is_relayed_to_everyone_and_a_disconnection_warns_users_with_pending_messages(
    client: httpx.AsyncClient, admin: asyncpg.Connection, settings: Settings, realtime_frames: list[dict[str, Any]]
) -> None:
    token = settings.bridge_token
    waiting = await new_owner(admin)
    idle = await new_owner(admin)
    pending = await new_message(admin, waiting, numbers(2, series=31))
    await schedule(admin, waiting, pending, in_seconds=3600)
    await new_message(admin, idle, numbers(2, series=32))  # a draft: nothing waits

    async def status(**event: Any) -> None:
        assert (await post_event(client, token, {"type": "whatsapp_status", **event})).status_code == 204

    await status(status="initializing", phone=None, last_error=None)  # the guide's set: told as disconnected
    await status(status="connected", phone="+15550000001", since="2026-01-01T00:00:00.000Z", last_error=None)
    await status(status="qr_needed", qr_code="data:image/png;base64,AAAA", phone=None, last_error=None)
    await status(status="disconnected", last_error="phone offline")
    await status(status="disconnected", last_error="still offline")  # no transition: no second warning
    await eventually(lambda: asyncio.sleep(0, len(realtime_frames)), lambda n: n >= 5, what="5 relayed frames")

    # A bridge that names no number reports the default one; the event says which.
    default_id = str(await admin.fetchval("select id from public.whatsapp_numbers where is_default"))
    assert [f["payload"].pop("number_id") for f in realtime_frames] == [default_id] * len(realtime_frames)
    assert [(f["event"], f["private"], f["payload"]) for f in realtime_frames] == [
        ("whatsapp_status", True, {"type": "whatsapp_status", "status": "disconnected"}),
        ("whatsapp_status", True, {"type": "whatsapp_status", "status": "connected"}),
        (
            "whatsapp_status",
            True,
            {"type": "whatsapp_status", "status": "qr_needed", "qr_code": "data:image/png;base64,AAAA"},
        ),
        ("whatsapp_status", True, {"type": "whatsapp_status", "status": "disconnected"}),
        ("whatsapp_status", True, {"type": "whatsapp_status", "status": "disconnected"}),
    ]
    [warning] = await warnings_for(admin, waiting)
    assert "phone offline" in warning and "1 mensaje(s)" in warning
    assert await warnings_for(admin, idle) == []

    await status(status="connected", phone="+15550000001")
    await status(status="disconnected", last_error="again")
    assert len(await warnings_for(admin, waiting)) == 2
    await as_owner(admin, waiting, "select public.cancel_message($1)", pending)
    # Its disconnects count against the default number's health (three in minutes pause it): the
    # tests after this one start from a healthy number.
    await heal_default_number(admin)


# ---------------------------------------------------------------------------------------------
# The real bridge posting to the API on a real port
# ---------------------------------------------------------------------------------------------


async def test_acks_from_the_real_bridge_reach_delivered_and_read(
    admin: asyncpg.Connection, prepared: Prepared, settings: Settings, api_url: str, tmp_path: Path
) -> None:
    bridge = BridgeProcess(tmp_path / "bridge", token=settings.bridge_token, events_url=api_url + URL, ack_delay_ms=30)
    bridge.start()
    worker = WorkerProcess(
        prepared.admin_url, prepared.app_url, bridge.url, tmp_path / "worker.log", token=settings.bridge_token
    )
    worker.start()
    try:
        owner = await new_owner(admin)
        message = await new_message(admin, owner, numbers(10, series=33))
        await eventually(lambda: workers_listening(admin), lambda n: n == 1, what="the worker to listen")
        await schedule(admin, owner, message)

        states = await eventually(
            lambda: delivery_states(admin, message), lambda s: s == {"read": 10}, what="every delivery read"
        )
        assert states == {"read": 10}
        rows = await admin.fetch(
            "select sent_at, delivered_at, read_at, whatsapp_message_id from public.deliveries where message_id = $1",
            message,
        )
        assert all(r["sent_at"] <= r["delivered_at"] <= r["read_at"] and r["whatsapp_message_id"] for r in rows)
        row = await message_row(admin, message)
        assert (row["status"], row["delivered_count"], row["failed_count"]) == ("sent", 10, 0)

        # The bridge's own status events arrive too: a forced disconnection warns the waiting owner.
        later = await new_message(admin, owner, numbers(2, series=34))
        await schedule(admin, owner, later, in_seconds=3600)
        await bridge.force_state("disconnected", "simulated outage")
        warnings = await eventually(
            lambda: warnings_for(admin, owner), lambda w: len(w) == 1, what="the disconnection warning"
        )
        assert "simulated outage" in warnings[0]
        await bridge.force_state("connected")
        await eventually(
            lambda: admin.fetchval("select status from public.whatsapp_numbers where is_default"),
            lambda s: s == "connected",
            what="the reconnection to be recorded",
        )
        await as_owner(admin, owner, "select public.cancel_message($1)", later)
    finally:
        assert worker.stop() == 0, worker.log()
        bridge.stop()


async def test_an_ack_settling_the_last_open_delivery_lets_the_worker_finish_the_message(
    client: httpx.AsyncClient, admin: asyncpg.Connection, prepared: Prepared, settings: Settings, tmp_path: Path
) -> None:
    # The last delivery was sent by a worker that died before recording it; its lease runs for an
    # hour and the housekeeping sweep is far away: only the ack's wake-up can finish the message.
    message, [key] = await sending_message(admin, numbers(1, series=35))
    await admin.execute(
        "update public.deliveries set claimed_by = 'ghost', lease_expires_at = now() + interval '1 hour'"
        " where message_id = $1",
        message,
    )
    worker = WorkerProcess(
        prepared.admin_url,
        prepared.app_url,
        "http://127.0.0.1:9",  # no bridge needed: nothing is left to send
        tmp_path / "worker.log",
        token=settings.bridge_token,
        DISPATCH_HOUSEKEEPING_S="600",
    )
    worker.start()
    try:
        await eventually(lambda: workers_listening(admin), lambda n: n == 1, what="the worker to listen")
        event = {"type": "message_ack", "whatsapp_message_id": "wa-ghost", "idempotency_key": key, "ack": "delivered"}
        assert (await post_event(client, settings.bridge_token, event)).status_code == 204
        row = await eventually(
            lambda: message_row(admin, message), lambda m: m["status"] == "sent", within=10, what="the message to end"
        )
        assert (row["delivered_count"], row["failed_count"]) == (1, 0)
    finally:
        assert worker.stop() == 0, worker.log()

"""The event catalog (contracts/events.json) is the one source of the events a user receives: every
emitter's events validate against it, for every type, on both channels (the socket /ws/{user_id}
of the API served on a real port, and Supabase Realtime: realtime.send's pg_notify on plain
Postgres, and the stored broadcast Supabase delivers); every event name the SQL emits is in it; the
lists derived from it (Python, TypeScript) are its own."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from test_dispatcher_events import post_event
from test_import_files import post_import
from test_number_health import paused_number
from test_realtime import deliver, new_message, notify_user, open_socket, recv, set_status, subscribe
from test_replies_and_topics import Relay, campaign, new_phone, relay, reply  # noqa: F401 (relay: a fixture)

from whatsched import contracts, events
from whatsched.api.deps import Resources
from whatsched.config import Settings
from whatsched.imports import progress
from whatsched.realtime import protocol

ROOT = Path(__file__).resolve().parent.parent
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
# The events delivered on a topic (the socket and Realtime); one without a topic is a webhook's own.
RELAYED = tuple(name for name, entry in events.EVENTS.items() if entry.get("topic"))


class InProcessApi:
    """conftest's api_url (the session's app on a real port) as test_realtime's socket helpers take an API."""

    def __init__(self, url: str) -> None:
        self.url = url

    def ws_url(self, user_id: str) -> str:
        return self.url.replace("http://", "ws://", 1) + f"/ws/{user_id}"


def topic_of(name: str, user_id: str) -> str:
    return str(events.EVENTS[name]["topic"]).format(user_id=user_id)


def valid(where: str, event: dict[str, Any]) -> str:
    """The event's type, once it validated (the failure names the channel, type and path)."""
    try:
        events.validate(event)
    except events.EventError as exc:
        pytest.fail(f"{where}: {exc}\n{json.dumps(event, ensure_ascii=False)}")
    return str(event["type"])


def seen(payloads: Iterable[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [p for p in payloads if p.get("type") == name]


# ---------------------------------------------------------------------------------------------
# Every emitter, on both channels
# ---------------------------------------------------------------------------------------------


async def test_every_emitter_produces_catalog_events_on_the_socket_and_on_realtime(
    api_url: str,
    client: httpx.AsyncClient,
    settings: Settings,
    res: Resources,
    admin: asyncpg.Connection,
    make_user: Any,
    relay: Relay,  # noqa: F811
) -> None:
    user, boss = await make_user(), await make_user(admin=True)
    started = await admin.fetchval("select localtimestamp")  # realtime.messages.inserted_at's clock
    ws = await open_socket(InProcessApi(api_url), user)  # type: ignore[arg-type]

    # message_status_update, message_progress: the triggers (the worker's updates) and, on the
    # socket, the subscription's snapshot (realtime/snapshots.py) and the hub's progress frames.
    message_id = await new_message(admin, user.id, recipients=3)
    await subscribe(ws, message_id)
    await deliver(admin, message_id, 1)
    await deliver(admin, message_id, 1, state="failed")
    await deliver(admin, message_id, 1)
    await set_status(admin, message_id, "sent")

    # new_notification: one about nothing, one about the message.
    await notify_user(admin, user.id, "Sin entidad")
    await admin.execute(
        "insert into public.notifications (user_id, type, title, message, related_entity_type, related_entity_id)"
        " values ($1::uuid, 'success', 'Enviado', 'Listo', 'message', $2::uuid)",
        user.id,
        message_id,
    )

    # import_progress: imports/progress.py through private.send_import_progress, one import that
    # ends done and one that fails.
    done = await post_import(client, user, f"nombre,telefono\nAna,{new_phone()}\nBeto,{new_phone()}\n".encode())
    assert done.status_code == 200, done.text
    failed = await post_import(client, user, b"nombre\nAna\n")
    assert failed.status_code == 422, failed.text

    # reply_received: the bridge's incoming message (whatsapp/queries.py -> private.record_reply),
    # a reply and an opt-out keyword.
    phone = new_phone()
    await campaign(admin, user, phone)
    assert await reply(res, phone, "Hola, me interesa") == 1
    assert await reply(res, phone, "BAJA") == 1

    # whatsapp_status: the bridge's report (private.record_number_status; the default number's QR
    # goes to every user), a pause by health (private.judge_health) and an admin's resume.
    for report in ({"status": "qr_needed", "qr_code": "data:image/png;base64,QUJD"}, {"status": "connected"}):
        answer = await post_event(client, settings.bridge_token, {"type": "whatsapp_status", **report})
        assert answer.status_code == 204, answer.text
    number = await paused_number(admin, "Catálogo")
    resumed = await client.post(f"/api/whatsapp/numbers/{number}/resume", headers=boss.headers)
    assert resumed.status_code == 200, resumed.text

    # The socket: everything before a last notification (events arrive in commit order).
    await notify_user(admin, user.id, "Fin")
    frames: list[dict[str, Any]] = []
    while not frames or frames[-1].get("notification", {}).get("title") != "Fin":
        frames.append(await recv(ws))
    await ws.close()
    assert {f["type"] for f in frames} <= set(RELAYED), "only catalog events were sent after auth_ok"
    on_socket = [f for f in frames if valid("socket", f)]

    # Supabase Realtime: what realtime.send notified (the API's hubs relay it; on Supabase the same
    # pg_notify), and what it stored (the broadcast Supabase delivers, with Realtime's own "id").
    notified = await relay.before_sentinel(admin)
    for sent in notified:  # this user's, the admins' (health's notices) and the whatsapp topic's
        assert sent["event"] == valid("realtime.send", sent["payload"]), sent
        assert sent["topic"] == topic_of(sent["event"], sent["topic"].removeprefix(protocol.USER_TOPIC_PREFIX)), sent
        assert sent["private"] is True, sent
    on_realtime = [s["payload"] for s in notified if s["topic"] in (f"user:{user.id}", protocol.WHATSAPP_TOPIC)]
    rows = await admin.fetch(
        "select event, topic, payload from realtime.messages where inserted_at >= $1 and topic = any($2::text[])"
        " order by inserted_at",
        started,
        [f"user:{user.id}", protocol.WHATSAPP_TOPIC],
    )
    stored = []
    for row in rows:
        payload = json.loads(row["payload"])
        assert UUID.match(str(payload.pop("id"))), row  # Realtime's own, on every broadcast
        assert row["event"] == valid("realtime.messages", payload) and row["topic"] == topic_of(row["event"], user.id)
        stored.append(payload)

    everything = set(RELAYED)
    assert {f["type"] for f in on_socket} == everything
    assert {p["type"] for p in on_realtime} == everything
    assert {p["type"] for p in stored} == everything
    assert len(stored) == len(on_realtime)

    # Each variant of a shape was produced (else its schema went unchecked).
    for payloads in (on_socket, on_realtime):
        statuses = seen(payloads, "whatsapp_status")
        assert any("qr_code" in s for s in statuses)
        assert any(s.get("number_status") == "paused" and s.get("reason") for s in statuses)
        assert any(s.get("number_status") == "connected" and "reason" not in s for s in statuses)
        assert {i["stage"] for i in seen(payloads, "import_progress")} >= {"reading", "done", "failed"}
        kinds = {n["notification"]["related_entity_type"] for n in seen(payloads, "new_notification")}
        assert {None, "message"} <= kinds
        assert {r["reply"]["kind"] for r in seen(payloads, "reply_received")} == {"reply", "opt_out"}
        assert "sent" in {m["status"] for m in seen(payloads, "message_status_update")}
        assert {"message_id": message_id, "sent": 2, "total": 3, "failed": 1} in [
            {k: p[k] for k in ("message_id", "sent", "total", "failed")} for p in seen(payloads, "message_progress")
        ]


# ---------------------------------------------------------------------------------------------
# Every name, every list
# ---------------------------------------------------------------------------------------------


async def test_every_event_the_database_emits_is_in_the_catalog_on_its_topic(admin: asyncpg.Connection) -> None:
    sources = {
        r["name"]: r["src"]
        for r in await admin.fetch(
            "select p.oid::regprocedure::text as name, p.prosrc as src from pg_proc p"
            " join pg_namespace n on n.oid = p.pronamespace"
            " where n.nspname in ('public', 'private') and p.prosrc ~ 'realtime\\.send|private\\.broadcast'"
        )
    }
    # Only private.broadcast calls realtime.send: its callers are every emitter.
    assert [name for name, src in sources.items() if "realtime.send" in src] == ["private.broadcast(jsonb,text,text)"]
    calls = [
        (name, event, topic)
        for name, src in sources.items()
        for event, topic in re.findall(r"'(\w+)',\s*'(whatsapp|user:)'", src)
    ]
    types = {t for src in sources.values() for t in re.findall(r"'type',\s*'(\w+)'", src)}
    assert len({name for name, _, _ in calls}) >= 6, calls  # the regexes still find the emitters
    assert {event for _, event, _ in calls} == types == set(RELAYED)
    for name, event, topic in calls:
        assert topic_of(event, "") == topic, (name, event, topic)


def test_the_python_and_typescript_lists_are_the_catalogs() -> None:
    assert events.catalog_path() == ROOT / "contracts" / "events.json"
    assert {
        protocol.MESSAGE_STATUS_UPDATE,
        protocol.MESSAGE_PROGRESS,
        protocol.NEW_NOTIFICATION,
        protocol.REPLY_RECEIVED,
        protocol.WHATSAPP_STATUS,
        progress.EVENT,
    } == set(RELAYED)
    generated = (ROOT / "clients" / "js" / "src" / "events.ts").read_text(encoding="utf-8")
    listed = re.search(r"export const EVENT_TYPES = \[(.*?)\] as const", generated, re.S)
    assert listed is not None
    assert tuple(re.findall(r'"(\w+)"', listed.group(1))) == RELAYED
    for entry in events.EVENTS.values():
        assert entry["schema"]["title"] in generated  # each event's interface (MessageStatusUpdate, ...)
        assert entry["version"] >= 1 and entry["description"]


def test_validate_names_the_type_and_the_failing_path() -> None:
    for entry in events.EVENTS.values():
        for example in entry["schema"]["examples"]:
            events.validate(example)
    example = dict(events.EVENTS["new_notification"]["schema"]["examples"][0])
    example["notification"] = {**example["notification"], "timestamp": "2026-11-29 10:00:00"}
    with pytest.raises(events.EventError) as caught:
        events.validate(example)
    assert (caught.value.event_type, caught.value.path) == ("new_notification", "$.notification.timestamp")
    extra = {**events.EVENTS["message_progress"]["schema"]["examples"][0], "delivered": 1}
    with pytest.raises(events.EventError, match=r"message_progress event at \$: .*'delivered'"):
        events.validate(extra)
    for frame in ({"type": "pong"}, {"type": "resync", "reason": "x"}, {}):
        with pytest.raises(events.EventError, match="not an event type"):
            events.validate(frame)


def test_the_catalogs_phone_and_whatsapp_states_are_contracts_limits() -> None:
    """The catalog's phone format and a number's states copy contracts/limits.json; the guide's
    connection words are among the bridge's."""
    assert events.CATALOG["$defs"]["phone"]["pattern"] == contracts.E164_PATTERN
    status = events.EVENTS["whatsapp_status"]["schema"]["properties"]
    assert status["number_status"]["enum"] == list(contracts.NUMBER_STATES)
    assert set(status["status"]["enum"]) <= set(contracts.CONNECTION_STATES)


async def test_the_catalogs_enums_are_the_databases_check_constraints(admin: asyncpg.Connection) -> None:
    """An enum of the catalog copies a column's check constraint: the copies must agree."""

    async def allowed(table: str, column: str) -> set[str]:
        definitions = await admin.fetch(
            "select pg_get_constraintdef(c.oid) as def from pg_constraint c"
            " where c.conrelid = $1::regclass and c.contype = 'c'",
            table,
        )
        for row in definitions:
            if re.search(rf"\({column} = ANY|\(\({column} = ANY", row["def"]):
                return set(re.findall(r"'(\w+)'::text", row["def"]))
        raise AssertionError(f"no check constraint on {table}.{column}")

    def enum(name: str, *path: str) -> set[str]:
        schema = events.EVENTS[name]["schema"]
        for key in path:
            schema = schema["properties"][key]
        return {v for v in schema["enum"] if v is not None}

    assert enum("message_status_update", "status") == await allowed("public.messages", "status")
    assert enum("new_notification", "notification", "type") == await allowed("public.notifications", "type")
    assert enum("new_notification", "notification", "related_entity_type") == await allowed(
        "public.notifications", "related_entity_type"
    )
    assert enum("reply_received", "reply", "kind") == await allowed("public.replies", "kind")
    assert enum("whatsapp_status", "number_status") == await allowed("public.whatsapp_numbers", "status")
    stages = await admin.fetchval("select prosrc from pg_proc where proname = 'send_import_progress'")
    assert enum("import_progress", "stage") == set(re.findall(r"'(\w+)'", stages.split("not in (")[1].split(")")[0]))

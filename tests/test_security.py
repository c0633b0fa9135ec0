"""Security checks against the real database (and real API processes where a process matters):
the cross-user matrix over every route of the OpenAPI schema, token tampering on HTTP and on the
WebSocket, rate limits shared by two API processes through Redis, hostile uploads (path traversal
names, huge bodies, zip bombs, spreadsheet formulas), HTML refused in messages, and an audit log
nobody can alter.

The matrix reads the routes from `app.openapi()`, so a new route is covered the day it is added (or
the test says what it needs to cover it).
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import random
import re
import secrets
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import openpyxl
import pytest
import redis
from api_processes import ApiProcess
from bridge_process import as_owner, new_message
from fastapi import FastAPI
from test_auth import TAMPERED, _tampered_tokens
from test_import_api import _lie_about_size, _zip_with
from test_import_files import post_import
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from whatsched.api.deps import Resources
from whatsched.config import Settings

GUARD_S = 30  # hang guards only
REDIS_URL = "redis://127.0.0.1:6379/13"  # a database of its own, flushed before and after
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"

# Path parameters that name a user's resource, and the kind of resource each names. A route with a
# new kind of id fails the matrix until it is added here (and to `Owned`).
ID_KINDS = {
    "message_id": "message",
    "group_id": "group",
    "contact_id": "contact",
    "notification_id": "notification",
    "number_id": "number",
    "user_id": "account",
    "endpoint_id": "webhook",
    "media_id": "media",
}
# Path parameters that are not ids: the value the matrix uses.
LITERALS = {"action": "restart"}
# Routes only admins may use: a user gets 403 even on what they can see (their own assigned
# number), as long as the refusal says nothing of the other user's id.
ADMIN_ONLY = {"/api/whatsapp/numbers/{number_id}/users/{user_id}"}
# Body fields that link to other resources.
LINK_KINDS = {
    "group_ids": "group",
    "contact_ids": "contact",
    "number_id": "number",
    "delivery_id": "delivery",
    "media_id": "media",
}


def phone() -> str:
    return f"+5699{random.randrange(10**7):07d}"


def in_an_hour() -> str:
    return (datetime.now(UTC) + timedelta(hours=1)).isoformat()


# ---------------------------------------------------------------------------------------------
# One user's data, made the way a user makes it
# ---------------------------------------------------------------------------------------------


@dataclass
class Owned:
    user: Any
    message: str  # a draft, linked to the group
    sent_message: str  # a finished campaign with one delivery
    group: str
    contact: str  # a member of the group
    notification: str
    number: str  # a WhatsApp number assigned to this user alone
    account: str  # the user's id
    webhook: str  # a webhook endpoint of the user's
    delivery: str  # a delivery (a test ping) of that endpoint
    media: str  # an uploaded file (an attachment)
    private: list[str] = field(default_factory=list)  # every id and text only this user's data holds

    def id_of(self, kind: str) -> str:
        value: str = getattr(self, kind)
        return value


async def created(answer: httpx.Response) -> str:
    assert answer.status_code == 201, answer.text
    value: str = answer.json()["id"]
    return value


async def make_owned(client: httpx.AsyncClient, admin: asyncpg.Connection, user: Any) -> Owned:
    tag = secrets.token_hex(5)
    headers = user.headers
    group = await created(await client.post("/api/groups", json={"name": f"grupo-{tag}"}, headers=headers))
    number = phone()
    contact = await created(
        await client.post(
            "/api/contacts",
            json={"name": f"Contacto-{tag}", "phone": number, "email": f"c-{tag}@example.com", "group_ids": [group]},
            headers=headers,
        )
    )
    message = await created(
        await client.post(
            "/api/messages", json={"content": f"Mensaje-{tag} {{{{name}}}}", "group_ids": [group]}, headers=headers
        )
    )
    # A finished campaign (as the worker leaves it) and a notification (as the worker writes it).
    sent = await admin.fetchval(
        "insert into public.messages (created_by, content, status) values ($1, $2, 'sending') returning id::text",
        user.id,
        f"Enviado-{tag}",
    )
    await admin.execute(
        """insert into public.deliveries (message_id, created_by, contact_id, phone, contact_name, state,
                                          idempotency_key, sent_at)
           values ($1::uuid, $2, $3::uuid, $4, $5, 'sent', $1 || ':' || $4, now())""",
        sent,
        user.id,
        contact,
        number,
        f"Contacto-{tag}",
    )
    await admin.execute("update public.messages set status = 'sent', sent_at = now() where id = $1::uuid", sent)
    notification = await admin.fetchval(
        "insert into public.notifications (user_id, type, title, message, related_entity_type, related_entity_id)"
        " values ($1, 'success', $2, 'ok', 'message', $3::uuid) returning id::text",
        user.id,
        f"Aviso-{tag}",
        sent,
    )
    whatsapp = await admin.fetchval(
        "insert into public.whatsapp_numbers (label, shared) values ($1, false) returning id::text", f"Numero-{tag}"
    )
    await admin.execute(
        "insert into public.whatsapp_number_users (number_id, user_id) values ($1::uuid, $2)", whatsapp, user.id
    )
    webhook = await created(
        await client.post("/api/webhooks", json={"url": f"https://example.com/hook-{tag}"}, headers=user.headers)
    )
    ping = await client.post(f"/api/webhooks/{webhook}/test", headers=user.headers)
    assert ping.status_code == 202, ping.text
    delivery: str = ping.json()["delivery_id"]
    uploaded = await client.post(
        "/api/media", files={"file": (f"menu-{tag}.pdf", b"%PDF-1.4\n%%EOF\n", "application/pdf")}, headers=user.headers
    )
    media = await created(uploaded)
    private = [
        media,
        webhook,
        delivery,
        user.id,
        user.email,
        group,
        contact,
        message,
        sent,
        notification,
        tag,
        number,
        number.lstrip("+"),
        whatsapp,
    ]
    return Owned(
        user, message, sent, group, contact, notification, whatsapp, user.id, webhook, delivery, media, private
    )


async def snapshot(admin: asyncpg.Connection, owner: str) -> str:
    """Everything a user owns, as one JSON text: equal before and after means nothing changed."""
    text: str = await admin.fetchval(
        """select json_build_object(
             'messages', (select json_agg(m order by m.id) from public.messages m where created_by = $1),
             'groups', (select json_agg(g order by g.id) from public.groups g where created_by = $1),
             'contacts', (select json_agg(c order by c.id) from public.contacts c where created_by = $1),
             'members', (select json_agg(gc order by gc.group_id, gc.contact_id)
                         from public.group_contacts gc where created_by = $1),
             'targets', (select json_agg(mg order by mg.message_id, mg.group_id)
                         from public.message_groups mg where created_by = $1),
             'deliveries', (select json_agg(d order by d.id) from public.deliveries d where created_by = $1),
             'notifications', (select json_agg(n order by n.id) from public.notifications n where user_id = $1)
           )::text""",
        owner,
    )
    return text


@pytest.fixture
async def two_users(client: httpx.AsyncClient, admin: asyncpg.Connection, make_user: Any) -> tuple[Owned, Owned]:
    """A (whose data B goes after) and B, each with a full set of their own data."""
    return await make_owned(client, admin, await make_user()), await make_owned(client, admin, await make_user())


# ---------------------------------------------------------------------------------------------
# The OpenAPI schema, walked
# ---------------------------------------------------------------------------------------------


def operations(app: FastAPI) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, ops in app.openapi()["paths"].items():
        for method, op in ops.items():
            yield method.upper(), path, op


def resolve(app: FastAPI, schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if ref:
        return resolve(app, app.openapi()["components"]["schemas"][ref.rsplit("/", 1)[-1]])
    return schema


def json_body_schema(app: FastAPI, op: dict[str, Any]) -> tuple[dict[str, Any] | None, bool]:
    """The JSON request body's schema (resolved) and whether the body is required."""
    body = op.get("requestBody")
    if not body:
        return None, False
    content = body.get("content", {}).get("application/json")
    if content is None:
        return None, bool(body.get("required"))
    schema = content["schema"]
    if "anyOf" in schema:  # Optional[Model]
        schema = next(s for s in schema["anyOf"] if s.get("type") != "null")
    return resolve(app, schema), bool(body.get("required"))


def bodies(b: Owned) -> dict[tuple[str, str], dict[str, Any]]:
    """A valid body for each route that takes one: refusals must come from whose data it is, not
    from a malformed request."""
    return {
        ("POST", "/api/messages"): {"content": "hola de B", "group_ids": [b.group]},
        ("PUT", "/api/messages/{message_id}"): {"content": "cambiado por B", "group_ids": [b.group]},
        ("POST", "/api/messages/{message_id}/schedule"): {"scheduled_for": in_an_hour()},
        ("PUT", "/api/groups/{group_id}"): {"name": "cambiado por B"},
        ("POST", "/api/groups/{group_id}/contacts"): {"contact_ids": [b.contact]},
        ("POST", "/api/contacts"): {"name": "de B", "phone": phone(), "group_ids": [b.group]},
        ("PUT", "/api/contacts/{contact_id}"): {"name": "cambiado por B", "group_ids": [b.group]},
        ("PUT", "/api/whatsapp/numbers/{number_id}"): {"label": "cambiado por B"},
        ("POST", "/api/webhooks"): {"url": "https://example.com/de-b"},
        ("PUT", "/api/webhooks/{endpoint_id}"): {"description": "cambiado por B"},
        ("POST", "/api/webhooks/{endpoint_id}/replay"): {"since": in_an_hour()},
    }


def fill(path: str, ids: dict[str, str]) -> str:
    return re.sub(r"{(\w+)}", lambda m: {**LITERALS, **ids}[m.group(1)], path)


def leaks(text: str, owned: Owned, sent: tuple[str, ...] = ()) -> list[str]:
    """What of `owned`'s data the text shows, beyond the ids the caller sent (an echo tells nothing)."""
    for value in sent:
        text = text.replace(value, "")
    return [secret for secret in owned.private if secret in text]


def same_refusal(a: httpx.Response, b: httpx.Response, ids: list[str]) -> bool:
    """Two refusals a client cannot tell apart (the ids it sent aside)."""

    def shape(resp: httpx.Response) -> str:
        text = resp.text
        for value in ids:
            text = text.replace(value, "<id>")
        return f"{resp.status_code} {re.sub(r'[0-9a-f]{8}-[0-9a-f-]{27}', '<id>', text)}"

    return shape(a) == shape(b)


# ---------------------------------------------------------------------------------------------
# Cross-user matrix
# ---------------------------------------------------------------------------------------------


async def test_every_route_with_an_id_answers_404_for_another_users_resource(
    app: FastAPI, client: httpx.AsyncClient, admin: asyncpg.Connection, two_users: tuple[Owned, Owned]
) -> None:
    a, b = two_users
    before_a, before_b = await snapshot(admin, a.user.id), await snapshot(admin, b.user.id)
    table = bodies(b)
    covered: list[str] = []
    for method, path, op in operations(app):
        params = [p for p in re.findall(r"{(\w+)}", path) if p not in LITERALS]
        if not params:
            continue
        unknown = [p for p in params if p not in ID_KINDS]
        assert not unknown, f"{method} {path}: add the id kind of {unknown} to ID_KINDS so the matrix covers it"
        _schema, required = json_body_schema(app, op)
        body = table.get((method, path))
        assert body is not None or not required, f"{method} {path}: add a valid body to bodies() for the matrix"
        # A's ids everywhere, then each mix of A's and B's ids (a member route: A's group with B's contact...).
        variants = [{p: a.id_of(ID_KINDS[p]) for p in params}]
        if len(params) > 1:
            for own in params:
                variants.append({p: (b if p == own else a).id_of(ID_KINDS[p]) for p in params})
        for ids in variants:
            url = fill(path, ids)
            answer = await client.request(method, url, json=body, headers=b.user.headers)
            if path in ADMIN_ONLY and answer.status_code == 403:
                assert answer.json()["code"] == "forbidden", answer.text
            else:
                assert answer.status_code == 404, f"{method} {url} as B: {answer.status_code} {answer.text}"
                assert answer.json()["code"].endswith("not_found"), answer.text
            shown = leaks(answer.text, a, tuple(ids.values()))
            assert not shown, f"{method} {url} as B shows A's {shown}"
            # Indistinguishable from an id that exists nowhere: B cannot even learn that A's exists.
            nowhere = {p: (str(uuid.uuid4()) if v in a.private else v) for p, v in ids.items()}
            control = await client.request(method, fill(path, nowhere), json=body, headers=b.user.headers)
            assert same_refusal(answer, control, [*ids.values(), *nowhere.values()]), (answer.text, control.text)
            covered.append(f"{method} {url}")
    assert len(covered) >= 20, covered  # every message, group, contact and notification route
    # Offline sync reaches the same routes: the same refusals, one by one.
    ops = [
        {"client_op_id": "1", "method": "DELETE", "path": f"/api/messages/{a.message}"},
        {"client_op_id": "2", "method": "PUT", "path": f"/api/groups/{a.group}", "body": {"name": "B"}},
        {"client_op_id": "3", "method": "POST", "path": f"/api/messages/{a.message}/cancel"},
        {"client_op_id": "4", "method": "DELETE", "path": f"/api/notifications/{a.notification}"},
    ]
    synced = await client.post("/api/sync", json={"operations": ops}, headers=b.user.headers)
    assert synced.status_code == 200, synced.text
    assert [r["status"] for r in synced.json()["results"]] == [404, 404, 404, 404]
    assert not leaks(synced.text, a, (a.message, a.group, a.notification))

    assert await snapshot(admin, a.user.id) == before_a, "B changed A's data"
    assert await snapshot(admin, b.user.id) == before_b, "B gained something from A's data (a copy, a link)"


async def test_another_users_resources_cannot_be_linked_to_your_own(
    app: FastAPI, client: httpx.AsyncClient, admin: asyncpg.Connection, two_users: tuple[Owned, Owned]
) -> None:
    a, b = two_users
    before_a, before_b = await snapshot(admin, a.user.id), await snapshot(admin, b.user.id)
    table = bodies(b)
    linked: list[str] = []
    for method, path, op in operations(app):
        schema, _ = json_body_schema(app, op)
        fields = [name for name in (schema or {}).get("properties", {}) if name.endswith(("_id", "_ids"))]
        for name in fields:
            assert name in LINK_KINDS, f"{method} {path}: add the kind of body field {name!r} to LINK_KINDS"
            body = table.get((method, path))
            assert body is not None, f"{method} {path}: add a valid body to bodies() for the link check"
            one = name.endswith("_id")  # a single link (a message's number) or a list of them
            mine, stranger = a.id_of(LINK_KINDS[name]), str(uuid.uuid4())
            theirs = {**body, name: mine if one else [mine]}
            url = fill(path, {p: b.id_of(ID_KINDS[p]) for p in re.findall(r"{(\w+)}", path) if p not in LITERALS})
            answer = await client.request(method, url, json=theirs, headers=b.user.headers)
            # A number is refused as one the caller may not use, whether it is A's or exists nowhere.
            expected = (422, "number_not_allowed") if name == "number_id" else (404, "related_not_found")
            assert (answer.status_code, answer.json()["code"]) == expected, f"{method} {url} {name}=A's: {answer.text}"
            assert not leaks(answer.text, a, (mine,))
            nowhere = {**body, name: stranger if one else [stranger]}
            control = await client.request(method, url, json=nowhere, headers=b.user.headers)
            assert same_refusal(answer, control, [mine, stranger]), (answer.text, control.text)
            linked.append(f"{method} {path} {name}")
    assert len(linked) >= 5, linked
    # The import's group_ids (a multipart form, not JSON).
    answer = await post_import(client, b.user, f"name,phone\nX,{phone()}\n".encode(), group_ids=a.group)
    assert (answer.status_code, answer.json()["code"]) == (404, "related_not_found"), answer.text

    assert await snapshot(admin, a.user.id) == before_a
    assert await snapshot(admin, b.user.id) == before_b


def _text_of(answer: httpx.Response) -> str:
    if answer.headers.get("content-type", "").startswith(XLSX):
        book = openpyxl.load_workbook(io.BytesIO(answer.content), read_only=True)
        return "\n".join(str(v) for sheet in book.worksheets for row in sheet.iter_rows(values_only=True) for v in row)
    return answer.text


def list_variants(app: FastAPI, op: dict[str, Any], owned: Owned) -> list[dict[str, str]]:
    """Query strings for a collection route: every value of each enum parameter (required ones in
    every combination), and any id filter set to `owned`'s resource."""
    required: list[list[tuple[str, str]]] = [[]]
    optional: list[tuple[str, str]] = []
    for param in op.get("parameters", []):
        if param["in"] != "query":
            continue
        schema = resolve(app, param.get("schema", {}))
        choices = schema.get("enum") or next((s["enum"] for s in schema.get("anyOf", []) if "enum" in s), None)
        name = param["name"]
        if name in ID_KINDS:
            optional.append((name, owned.id_of(ID_KINDS[name])))
        elif choices and param.get("required"):
            required = [[*r, (name, str(c))] for r in required for c in choices]
        elif choices:
            optional.extend((name, str(c)) for c in choices)
    return [dict(r) | extra for r in required for extra in [{}, *({k: v} for k, v in optional)]]


async def test_lists_analytics_and_exports_of_another_user_show_none_of_your_data(
    app: FastAPI, client: httpx.AsyncClient, two_users: tuple[Owned, Owned]
) -> None:
    a, b = two_users
    seen_by_a: set[str] = set()
    calls = 0
    for method, path, op in operations(app):
        if method != "GET" or "{" in path:
            continue
        for query in list_variants(app, op, a):
            answer = await client.get(path, params=query, headers=b.user.headers)
            assert answer.status_code < 500 or str(answer.status_code) in op["responses"], (path, query, answer.text)
            shown = leaks(_text_of(answer), a, tuple(query.values()))
            assert not shown, f"GET {path} {query} as B shows A's {shown}"
            calls += 1
            # The same call as A does show A's data: the check above is looking at the right things.
            mine = await client.get(path, params=query, headers=a.user.headers)
            seen_by_a.update(
                s for s in (a.message, a.sent_message, a.group, a.contact, a.notification) if s in _text_of(mine)
            )
    assert seen_by_a == {a.message, a.sent_message, a.group, a.contact, a.notification}
    assert calls >= 30


# ---------------------------------------------------------------------------------------------
# Real API processes sharing Redis (rate limits, WebSocket, uploads)
# ---------------------------------------------------------------------------------------------


def flush_redis() -> None:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.flushdb()
    finally:
        client.close()


@pytest.fixture(scope="module")
async def apis(settings: Settings, res: Resources) -> AsyncIterator[tuple[ApiProcess, ApiProcess]]:
    flush_redis()
    env = {"REDIS_URL": REDIS_URL, "WS_AUTH_TIMEOUT_S": "2"}
    pair = (ApiProcess(settings, env=env).start(), ApiProcess(settings, env=env).start())
    try:
        await asyncio.gather(*(asyncio.to_thread(p.wait_ready) for p in pair))
        yield pair
    finally:
        for process in pair:
            process.stop()
        flush_redis()


def http_to(api: ApiProcess) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=f"http://127.0.0.1:{api.port}", timeout=GUARD_S)


@pytest.mark.slow
async def test_login_limit_holds_across_two_api_processes(apis: tuple[ApiProcess, ApiProcess], make_user: Any) -> None:
    flush_redis()
    user = await make_user()
    wrong = {"email": user.email, "password": "not the password"}
    right = {"email": user.email, "password": user.password}
    async with http_to(apis[0]) as first, http_to(apis[1]) as second:
        answers = [await (first, second)[i % 2].post("/api/auth/login", json=wrong) for i in range(5)]
        answers.append(await second.post("/api/auth/login", json=right))
    assert [r.status_code for r in answers] == [401, 401, 401, 401, 401, 429], [r.text for r in answers]
    limited = answers[-1]
    assert limited.json()["code"] == "rate_limited"
    assert int(limited.headers["Retry-After"]) > 0
    assert [r.headers["X-RateLimit-Remaining"] for r in answers[:5]] == ["4", "3", "2", "1", "0"]


@pytest.mark.slow
async def test_schedule_limit_holds_across_two_api_processes(
    apis: tuple[ApiProcess, ApiProcess], make_user: Any, admin: asyncpg.Connection
) -> None:
    flush_redis()
    user = await make_user()
    messages = [
        await new_message(admin, uuid.UUID(user.id), [phone()], content=f"Campaña {i} {secrets.token_hex(3)}")
        for i in range(11)
    ]
    async with http_to(apis[0]) as first, http_to(apis[1]) as second:
        answers = [
            await (first, second)[i % 2].post(
                f"/api/messages/{m}/schedule", json={"scheduled_for": in_an_hour()}, headers=user.headers
            )
            for i, m in enumerate(messages)
        ]
    assert [r.status_code for r in answers] == [200] * 10 + [429], [r.text for r in answers]
    assert answers[-1].json()["code"] == "rate_limited" and int(answers[-1].headers["Retry-After"]) > 0
    statuses = await admin.fetch("select id, status from public.messages where id = any($1)", messages)
    assert {r["id"]: r["status"] for r in statuses} == {
        m: ("draft" if m == messages[-1] else "scheduled") for m in messages
    }


# -- WebSocket ---------------------------------------------------------------------------------


async def recv(ws: ClientConnection) -> dict[str, Any]:
    async with asyncio.timeout(GUARD_S):
        frame: dict[str, Any] = json.loads(await ws.recv())
        return frame


async def refused_with(ws: ClientConnection) -> tuple[list[dict[str, Any]], int | None]:
    frames = []
    try:
        while True:
            frames.append(await recv(ws))
    except ConnectionClosed as exc:
        return frames, exc.rcvd.code if exc.rcvd else None


async def test_tampered_tokens_are_refused_on_http(client: httpx.AsyncClient, res: Resources, make_user: Any) -> None:
    user = await make_user()
    mine = await created(await client.post("/api/messages", json={"content": "mío"}, headers=user.headers))
    forged = _tampered_tokens(res, user.id)
    for kind in TAMPERED:
        headers = {"Authorization": f"Bearer {forged[kind]}"}
        for method, url, body in (
            ("GET", "/api/messages", None),
            ("GET", f"/api/messages/{mine}", None),
            ("PUT", f"/api/messages/{mine}", {"content": "forjado"}),
            ("DELETE", f"/api/messages/{mine}", None),
        ):
            answer = await client.request(method, url, json=body, headers=headers)
            assert (answer.status_code, answer.json()["code"]) == (401, "invalid_token"), (kind, method, url)
            assert answer.headers["WWW-Authenticate"] == "Bearer"
    kept = await client.get(f"/api/messages/{mine}", headers=user.headers)
    assert (kept.status_code, kept.json()["content"]) == (200, "mío")


@pytest.mark.slow
async def test_tampered_tokens_and_someone_elses_path_are_refused_on_the_websocket(
    apis: tuple[ApiProcess, ApiProcess], res: Resources, make_user: Any
) -> None:
    user, other = await make_user(), await make_user()
    forged = _tampered_tokens(res, user.id)
    cases = [(kind, user.id, forged[kind], "invalid_token") for kind in TAMPERED]
    cases.append(("someone else's user_id in the path", other.id, user.token, "forbidden"))
    for what, path_user, token, code in cases:
        ws = await connect(apis[0].ws_url(path_user), proxy=None)
        await ws.send(json.dumps({"type": "auth", "token": token}))
        frames, close_code = await refused_with(ws)
        assert close_code == 4401, what
        assert [(f["type"], f["code"]) for f in frames] == [("error", code)], (what, frames)
    # The genuine token on the genuine path is accepted: the refusals above are about the token.
    ws = await connect(apis[1].ws_url(user.id), proxy=None)
    await ws.send(json.dumps({"type": "auth", "token": user.token}))
    assert await recv(ws) == {"type": "auth_ok"}
    await ws.close()


@pytest.mark.slow
async def test_another_users_message_cannot_be_subscribed_to_nor_its_events_received(
    apis: tuple[ApiProcess, ApiProcess], client: httpx.AsyncClient, admin: asyncpg.Connection, make_user: Any
) -> None:
    a = await make_owned(client, admin, await make_user())
    b = await make_user()
    live = await admin.fetchval(
        "insert into public.messages (created_by, content, status) values ($1, 'en curso', 'sending') returning id::text",
        a.user.id,
    )
    await admin.execute(
        "insert into public.deliveries (message_id, created_by, phone, idempotency_key)"
        " values ($1::uuid, $2, $3, $1 || ':x')",
        live,
        a.user.id,
        phone(),
    )
    ws = await connect(apis[0].ws_url(b.id), proxy=None)
    await ws.send(json.dumps({"type": "auth", "token": b.token}))
    assert await recv(ws) == {"type": "auth_ok"}
    refusals = []
    for message_id in (a.message, live, a.sent_message, str(uuid.uuid4())):
        await ws.send(json.dumps({"type": "subscribe_message", "message_id": message_id}))
        frame = await recv(ws)
        refusals.append(json.loads(json.dumps(frame).replace(message_id, "<id>")))
        assert not leaks(json.dumps(frame), a, (message_id,))
    assert all(r == refusals[-1] for r in refusals), refusals  # A's messages look like no message at all
    assert refusals[-1]["type"] == "error" and refusals[-1]["code"] == "message_not_found"

    # A's message moves and A is notified; B's next frame is B's own sentinel, nothing of A's before it.
    await admin.execute("update public.deliveries set state = 'sent', sent_at = now() where message_id = $1", live)
    await admin.execute("update public.messages set status = 'sent' where id = $1", live)
    await admin.execute(
        "insert into public.notifications (user_id, type, title, message) values ($1, 'info', 'para A', 'x')",
        a.user.id,
    )
    await admin.execute(
        "insert into public.notifications (user_id, type, title, message) values ($1, 'info', 'centinela', 'x')", b.id
    )
    frame = await recv(ws)
    assert frame["type"] == "new_notification" and frame["notification"]["title"] == "centinela", frame
    await ws.close()


# -- Uploads -------------------------------------------------------------------------------------


def peak_rss(api: ApiProcess) -> int:
    """The process's high-water mark of resident memory (VmHWM), in bytes."""
    for line in Path(f"/proc/{api.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


@pytest.mark.slow
async def test_zip_bombs_are_refused_without_memory_blowing_up(
    apis: tuple[ApiProcess, ApiProcess], make_user: Any, admin: asyncpg.Connection
) -> None:
    user = await make_user()
    sheet = "xl/worksheets/sheet1.xml"
    honest = await asyncio.to_thread(_zip_with, sheet, 512 * 1024 * 1024)  # 512 MB of zeros, well under 1 MB
    liar = _lie_about_size(honest, sheet, 1024)  # and the same, claiming to hold 1 KB
    api = apis[1]
    async with http_to(api) as http:
        # Warm the route first, so the high-water mark below measures only the bombs.
        warm = await post_import(http, user, f"name,phone\nAna,{phone()}\n".encode())  # type: ignore[arg-type]
        assert warm.status_code == 200, warm.text
        before = peak_rss(api)
        for bomb in (honest, liar):
            answer = await post_import(http, user, bomb, "nomina.xlsx")  # type: ignore[arg-type]
            assert (answer.status_code, answer.json()["code"]) == (413, "zip_bomb"), answer.text
    grown = peak_rss(api) - before
    print(f"peak RSS grew by {grown / 2**20:.1f} MB over two 512 MB zip bombs")
    assert grown < 100 * 1024 * 1024, f"the API process grew by {grown / 2**20:.0f} MB on a zip bomb"
    assert await admin.fetchval("select count(*) from public.contacts where created_by = $1", user.id) == 1


@pytest.mark.slow
async def test_huge_uploads_are_refused_with_413_before_being_read(
    apis: tuple[ApiProcess, ApiProcess], make_user: Any, settings: Settings
) -> None:
    user = await make_user()
    limit = settings.import_max_bytes
    api = apis[0]
    async with http_to(api) as http:
        # Declared far too big: refused on the headers, the rest of the body is never read.
        reader, writer = await asyncio.open_connection("127.0.0.1", api.port)
        head = (
            "POST /api/contacts/import HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: {user.headers['Authorization']}\r\n"
            "Content-Type: multipart/form-data; boundary=b\r\n"
            f"Content-Length: {10 * 1024**3}\r\n\r\n"
        )
        writer.write(head.encode() + b"x" * 1024)
        await writer.drain()
        async with asyncio.timeout(GUARD_S):
            status_line = await reader.readline()
            headers = {}
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode().partition(":")
                headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers["content-length"]))
        writer.close()
        assert status_line.split()[1] == b"413", status_line
        assert json.loads(body)["code"] == "file_too_large"

        # Streamed without a length, over the limit: refused while streaming.
        chunk = b"Nombre,+56912345678\n" * 5000
        chunks = (limit // len(chunk)) * 2

        async def endless() -> AsyncIterator[bytes]:
            yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="big.csv"\r\n\r\n'
            for _ in range(chunks):
                yield chunk
            yield b"\r\n--b--\r\n"

        try:
            answer = await http.post(
                "/api/contacts/import",
                content=endless(),
                headers={**user.headers, "Content-Type": "multipart/form-data; boundary=b"},
            )
            assert (answer.status_code, answer.json()["code"]) == (413, "file_too_large"), answer.text
        except httpx.TransportError:
            pass  # the server answered 413 and closed while we were still sending: refused all the same
        assert (await http.get("/api/health/db")).status_code == 200  # and the process is fine


@pytest.mark.slow
async def test_path_traversal_file_names_never_touch_the_file_system(
    apis: tuple[ApiProcess, ApiProcess], make_user: Any, admin: asyncpg.Connection, tmp_path: Path
) -> None:
    user = await make_user()
    target = tmp_path / "traversal"
    names = [
        "../../etc/passwd.csv",
        "../../../../../../etc/passwd.csv",
        f"../../../../../../..{target}/owned.csv",
        f"{target}/owned.csv",
        "..\\..\\..\\windows\\win.ini.csv",
    ]
    api = apis[0]
    workdir = Path(api._workdir.name)

    def file_system() -> tuple[bytes, int, bool, list[str]]:
        """/etc/passwd, the folder the names point into, and the folder the API process runs in."""
        passwd = Path("/etc/passwd")
        return (
            passwd.read_bytes(),
            passwd.stat().st_mtime_ns,
            target.exists(),
            sorted(p.name for p in workdir.iterdir()),
        )

    before = await asyncio.to_thread(file_system)
    async with http_to(api) as http:
        for name in names:
            number = phone()
            answer = await post_import(http, user, f"name,phone\nAna,{number}\n".encode(), name)  # type: ignore[arg-type]
            assert answer.status_code == 200, (name, answer.text)
            assert answer.json()["created"] == 1
    assert await asyncio.to_thread(file_system) == before  # nothing read into, nothing written, anywhere
    assert before[2] is False
    logged = await admin.fetch(
        "select details->>'file' as file from public.audit_log where actor_id = $1 and action = 'contacts.import'"
        " order by created_at",
        user.id,
    )
    assert all("/" not in r["file"] and "\\" not in r["file"] for r in logged), logged


FORMULAS = [
    '=HYPERLINK(A1&B1,"clic")',  # (one with a web address is refused: names hold no links)
    "+SUM(1+1)*cmd|' /C calc'!A0",
    "-2+3+cmd|' /C calc'!A0",
    "@SUM(1+9)*cmd|' /C calc'!A0",
]


async def test_formula_payloads_are_stored_as_text_and_neutralised_in_exports(
    client: httpx.AsyncClient, make_user: Any, admin: asyncpg.Connection
) -> None:
    user = await make_user()
    rows = [(name, phone()) for name in FORMULAS]
    out = io.StringIO()
    csv.writer(out).writerows([("nombre", "telefono"), *rows])
    answer = await post_import(client, user, out.getvalue().encode())
    assert answer.status_code == 200 and answer.json()["created"] == len(rows), answer.text
    # Stored exactly as written: text, never evaluated.
    stored = dict(
        (r["phone"], r["name"])
        for r in await admin.fetch("select phone, name from public.contacts where created_by = $1", user.id)
    )
    assert stored == {p: n for n, p in rows}
    listed = await client.get("/api/contacts", params={"page_size": 100}, headers=user.headers)
    assert {c["phone"]: c["name"] for c in listed.json()["items"]} == stored

    exported = await client.get("/api/reports/export", params={"type": "contacts"}, headers=user.headers)
    table = list(csv.DictReader(io.StringIO(exported.content.decode("utf-8-sig"))))
    assert {r["phone"]: r["name"] for r in table} == {p: "'" + n for n, p in rows}  # phones stay as they are

    exported = await client.get(
        "/api/reports/export", params={"type": "contacts", "format": "xlsx"}, headers=user.headers
    )
    sheet = openpyxl.load_workbook(io.BytesIO(exported.content)).worksheets[0]
    header = [c.value for c in sheet[1]]
    cells = {row[header.index("phone")].value: row[header.index("name")] for row in sheet.iter_rows(min_row=2)}
    assert {p: c.value for p, c in cells.items()} == {p: "'" + n for n, p in rows}
    assert all(c.data_type == "s" for c in cells.values())  # strings, not formulas


# ---------------------------------------------------------------------------------------------
# HTML and script in messages
# ---------------------------------------------------------------------------------------------

HOSTILE = [
    "<script>alert(1)</script>",
    "Hola <ScRiPt src=//evil.example/x.js></script>",
    '<img src=x onerror="alert(1)">',
    '<a href="javascript:alert(1)">premio</a>',
    "<svg onload=alert(1)>",
    "<iframe src=https://evil.example></iframe>",
    "hola <b>negrita</b>",
    "<!-- oculto -->hola",
    "haz clic: javascript:alert(document.cookie)",
    "data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==",
    '<div style="x" onclick="steal()">hola</div>',
]


async def test_html_and_script_are_refused_on_create_and_update(client: httpx.AsyncClient, make_user: Any) -> None:
    user = await make_user()
    mine = await created(await client.post("/api/messages", json={"content": "original"}, headers=user.headers))
    for content in HOSTILE:
        for method, url in (("POST", "/api/messages"), ("PUT", f"/api/messages/{mine}")):
            answer = await client.request(method, url, json={"content": content}, headers=user.headers)
            assert answer.status_code == 422, (method, content, answer.text)
            body = answer.json()
            assert body["code"] == "html_not_allowed" and body["errors"][0]["field"] == "content", body
    synced = await client.post(
        "/api/sync",
        json={
            "operations": [
                {"client_op_id": "h", "method": "POST", "path": "/api/messages", "body": {"content": HOSTILE[0]}}
            ]
        },
        headers=user.headers,
    )
    assert synced.json()["results"][0]["status"] == 422
    listed = await client.get("/api/messages", params={"page_size": 100}, headers=user.headers)
    assert [m["content"] for m in listed.json()["items"]] == ["original"]  # nothing hostile was stored
    # Prose with angle brackets is not HTML: the filter refuses markup, not the characters.
    prose = await client.post(
        "/api/messages", json={"content": "si a < b y b > c, entonces a < c"}, headers=user.headers
    )
    assert prose.status_code == 201, prose.text


# ---------------------------------------------------------------------------------------------
# The audit log
# ---------------------------------------------------------------------------------------------


async def test_no_route_writes_or_deletes_the_audit_log(
    app: FastAPI, client: httpx.AsyncClient, make_user: Any
) -> None:
    boss = await make_user(admin=True)
    for method, path, _op in operations(app):
        assert "audit" not in path.lower(), f"{method} {path} exposes the audit log"
    for path in ("/api/audit", "/api/audit-log", "/api/audit_log", "/api/audit/logs", "/audit_log"):
        for method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
            answer = await client.request(method, path, json={}, headers=boss.headers)
            assert answer.status_code in (404, 405), (method, path, answer.status_code)


async def test_the_audit_log_cannot_be_altered_through_sql_as_a_user_or_an_admin(
    client: httpx.AsyncClient, admin: asyncpg.Connection, make_user: Any
) -> None:
    user, boss = await make_user(), await make_user(admin=True)
    await client.post("/api/messages", json={"content": "para auditar"}, headers=user.headers)
    entries = await admin.fetchval("select count(*) from public.audit_log")
    own = await admin.fetchval("select id from public.audit_log where actor_id = $1 limit 1", user.id)
    assert own is not None
    for who in (user, boss):
        owner = uuid.UUID(who.id)
        for statement in (
            "update public.audit_log set action = 'nada' where id = $1",
            "delete from public.audit_log where id = $1",
            "update public.audit_log set details = '{}'::jsonb",
            "delete from public.audit_log",
            "truncate public.audit_log",
        ):
            args = (own,) if "$1" in statement else ()
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await as_owner(admin, owner, statement, *args)
        # Appending in someone else's name is refused too.
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await as_owner(
                admin,
                owner,
                "insert into public.audit_log (actor_id, action) values ($1, 'forged')",
                uuid.UUID(boss.id if who is user else user.id),
            )
    assert await admin.fetchval("select count(*) from public.audit_log") == entries
    assert await admin.fetchval("select action from public.audit_log where id = $1", own) == "message.create"


async def test_critical_actions_appear_in_the_audit_log(
    client: httpx.AsyncClient, admin: asyncpg.Connection, make_user: Any
) -> None:
    user = await make_user()
    h = user.headers
    await client.post("/api/auth/login", json={"email": user.email, "password": "wrong password"})
    await client.post("/api/auth/login", json={"email": user.email, "password": user.password})
    group = await created(await client.post("/api/groups", json={"name": "auditado"}, headers=h))
    contact = await created(
        await client.post("/api/contacts", json={"name": "Ana", "phone": phone(), "group_ids": [group]}, headers=h)
    )
    message = await created(
        await client.post("/api/messages", json={"content": "hola {{name}}", "group_ids": [group]}, headers=h)
    )
    assert (
        await client.post(f"/api/messages/{message}/schedule", json={"scheduled_for": in_an_hour()}, headers=h)
    ).status_code == 200
    assert (await client.post(f"/api/messages/{message}/cancel", headers=h)).status_code == 200
    assert (await client.delete(f"/api/messages/{message}", headers=h)).status_code == 204
    assert (await client.get("/api/reports/export", params={"type": "contacts"}, headers=h)).status_code == 200
    assert (await post_import(client, user, f"name,phone\nBea,{phone()}\n".encode())).status_code == 200
    assert (await client.delete(f"/api/contacts/{contact}", headers=h)).status_code == 204
    assert (await client.delete(f"/api/groups/{group}", headers=h)).status_code == 204

    rows = await admin.fetch(
        "select action, entity_id from public.audit_log where actor_id = $1 order by created_at, id", user.id
    )
    actions = [r["action"] for r in rows]
    for action in (
        "login_success",
        "message.create",
        "message.schedule",
        "message.cancel",
        "message.delete",
        "report.export",
        "contacts.import",
        "contact.delete",
        "group.delete",
    ):
        assert action in actions, f"{action} is not audited: {actions}"
    assert {r["entity_id"] for r in rows if r["action"].startswith("message.")} == {message}
    failure = await admin.fetchval(
        "select count(*) from public.audit_log where action = 'login_failure' and details->>'email' = $1", user.email
    )
    assert failure == 1

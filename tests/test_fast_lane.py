"""The fast lane (whatsched.api.fast_lane) answers the guide's hot reads exactly as FastAPI does,
serves only the requests it may, and leaves every other one to FastAPI."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from prometheus_client import REGISTRY

from whatsched.api.fast_lane import FastLane, compile_route
from whatsched.api.routes import messages as messages_routes


def the_lane(app: FastAPI) -> FastLane:
    layer: Any = app.middleware_stack
    while not isinstance(layer, FastLane):
        layer = layer.app
    return layer


@pytest.fixture
def lane(app: FastAPI) -> FastLane:
    return the_lane(app)


class Behind:
    """FastAPI behind the lane, replaced by a stand-in that counts and refuses what reaches it."""

    def __init__(self) -> None:
        self.reached: list[str] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.reached.append(scope["path"] + "?" + scope.get("query_string", b"").decode())
        await send({"type": "http.response.start", "status": 599, "headers": []})
        await send({"type": "http.response.body", "body": b""})


@pytest.fixture
def lane_only(lane: FastLane, monkeypatch: pytest.MonkeyPatch) -> Iterator[Behind]:
    behind = Behind()
    monkeypatch.setattr(lane, "app", behind)
    yield behind


@pytest.fixture
async def data(client: httpx.AsyncClient, make_user: Any, admin: asyncpg.Connection) -> AsyncIterator[dict[str, Any]]:
    ana = await make_user()
    group = (await client.post("/api/groups", json={"name": "Clientes"}, headers=ana.headers)).json()
    for i in range(4):
        contact = {"name": f"Contacto {i}", "phone": f"+3461200{i:04d}", "group_ids": [group["id"]]}
        assert (await client.post("/api/contacts", json=contact, headers=ana.headers)).status_code == 201
    messages = []
    for i in range(5):
        body = {"content": f"Hola {{{{name}}}}, aviso {i}", "group_ids": [group["id"]]}
        messages.append((await client.post("/api/messages", json=body, headers=ana.headers)).json())
    await admin.execute(
        "insert into public.notifications (user_id, type, title, message) values ($1, 'info', 'Hola', 'Aviso')", ana.id
    )
    yield {"user": ana, "messages": messages}


def reads(data: dict[str, Any]) -> list[str]:
    one = data["messages"][2]["id"]
    return [
        f"/api/messages/{one}",
        f"/api/messages/{uuid.uuid4()}",  # not found: the endpoint's own 404
        "/api/messages",
        "/api/messages?page=2&page_size=2",
        "/api/messages?page_size=100&page=1",
        "/api/contacts",
        "/api/contacts?page=1&page_size=3",
        "/api/groups",
        "/api/notifications",
        "/api/notifications?page=1",
        "/api/replies",
    ]


async def answer(client: httpx.AsyncClient, path: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    resp = await client.get(path, headers=headers)
    kept = {k: v for k, v in resp.headers.items() if k not in ("date",)}
    return resp.status_code, kept, resp.content


async def test_each_fast_answer_is_fastapis(
    client: httpx.AsyncClient, data: dict[str, Any], lane: FastLane, monkeypatch: pytest.MonkeyPatch
) -> None:
    headers = {**data["user"].headers, "Origin": "http://localhost:3000"}
    behind = Behind()
    fastapi = lane.app
    for path in reads(data):
        monkeypatch.setattr(lane, "app", behind)
        fast = await answer(client, path, headers)
        monkeypatch.setattr(lane, "app", fastapi)
        monkeypatch.setattr(lane, "exact", {})
        monkeypatch.setattr(lane, "templated", [])
        slow = await answer(client, path, headers)
        monkeypatch.undo()
        assert behind.reached == [], path  # the lane answered it alone
        assert fast == slow, path
        assert fast[0] in (200, 404) and fast[1]["content-type"] == "application/json"
    # The ETag the lane's answer carries turns the next one into 304, as FastAPI's does.
    path = reads(data)[0]
    etag = (await client.get(path, headers=headers)).headers["etag"]
    again = await client.get(path, headers={**headers, "If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""


async def test_what_the_lane_may_not_judge_goes_to_fastapi(
    client: httpx.AsyncClient, data: dict[str, Any], lane_only: Behind
) -> None:
    user = data["user"]
    one = data["messages"][0]["id"]
    others = [
        ("/api/messages?status=draft", user.headers),  # a filter
        ("/api/messages?page=0", user.headers),  # out of bounds
        ("/api/messages?page_size=101", user.headers),
        ("/api/messages?page=1e3", user.headers),  # not digits
        ("/api/messages?page=%31", user.headers),  # encoded
        ("/api/messages?page=99999999999", user.headers),
        ("/api/messages?sort=created_at", user.headers),
        ("/api/messages?scope=all", user.headers),
        (f"/api/messages/{one}?page=1", user.headers),  # a route without paging takes no query
        ("/api/messages/not-a-uuid", user.headers),
        ("/api/messages/" + one.replace("-", ""), user.headers),  # a UUID, but not the lane's spelling
        ("/api/messages/1234-5678-12345678-1234-567812345678", user.headers),  # uuid.UUID's, not pydantic's
        ("/api/messages", {}),  # no token
        ("/api/messages", {"Authorization": "Bearer not.a.token"}),
        ("/api/messages", {"Authorization": "Basic abc"}),
        ("/api/messages/dashboard", user.headers),  # a read not in the lane
    ]
    for path, headers in others:
        resp = await client.get(path, headers=headers)
        assert resp.status_code == 599, (path, resp.status_code, resp.text)
    assert len(lane_only.reached) == len(others)
    # Not a GET: never the lane's.
    resp = await client.post("/api/messages", json={"content": "hola"}, headers=user.headers)
    assert resp.status_code == 599


async def test_fastapi_still_answers_what_the_lane_passes_on(client: httpx.AsyncClient, data: dict[str, Any]) -> None:
    user = data["user"]
    resp = await client.get("/api/messages?page=0", headers=user.headers)
    assert resp.status_code == 422 and resp.json()["code"] == "validation_error"
    resp = await client.get("/api/messages", headers={"Authorization": "Bearer not.a.token"})
    assert resp.status_code == 401 and resp.json()["code"] == "invalid_token"
    resp = await client.get("/api/messages/not-a-uuid", headers=user.headers)
    assert resp.status_code == 422
    resp = await client.get("/api/messages/1234-5678-12345678-1234-567812345678", headers=user.headers)
    assert resp.status_code == 422
    drafts = await client.get("/api/messages?status=draft&page_size=2", headers=user.headers)
    assert drafts.status_code == 200 and len(drafts.json()["items"]) == 2


async def test_a_fast_answer_is_timed_under_its_route(
    client: httpx.AsyncClient, data: dict[str, Any], lane_only: Behind
) -> None:
    labels = {"method": "GET", "route": "/api/messages/{message_id}", "status": "200"}
    name = "whatsched_http_request_duration_seconds_count"
    before = REGISTRY.get_sample_value(name, labels) or 0.0
    resp = await client.get(f"/api/messages/{data['messages'][1]['id']}", headers=data["user"].headers)
    assert resp.status_code == 200 and lane_only.reached == []
    assert REGISTRY.get_sample_value(name, labels) == before + 1


async def test_another_users_message_is_not_found_in_the_lane(
    client: httpx.AsyncClient, data: dict[str, Any], make_user: Any, lane_only: Behind
) -> None:
    """RLS decides in the lane as in FastAPI: the caller's own transaction."""
    bea = await make_user()
    resp = await client.get(f"/api/messages/{data['messages'][0]['id']}", headers=bea.headers)
    assert resp.status_code == 404 and resp.json()["code"] == "message_not_found"
    listed = await client.get("/api/messages", headers=bea.headers)
    assert listed.status_code == 200 and listed.json()["items"] == [] and lane_only.reached == []


def test_a_route_the_lane_cannot_serve_is_refused_at_startup() -> None:
    update = next(
        r for r in messages_routes.router.routes if isinstance(r, APIRoute) and r.endpoint.__name__ == "update_message"
    )
    with pytest.raises(RuntimeError, match="the fast lane serves GETs"):
        compile_route(update)

"""Offline sync: operations applied in order as the caller, replays answered from the stored
result without acting again, failures not stopping later operations, forbidden paths refused."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest


def _create(op_id: str, content: str) -> dict[str, Any]:
    return {"client_op_id": op_id, "method": "POST", "path": "/api/messages", "body": {"content": content}}


async def _sync(client: httpx.AsyncClient, user: Any, *ops: dict[str, Any]) -> httpx.Response:
    return await client.post("/api/sync", json={"operations": list(ops)}, headers=user.headers)


async def _messages(admin: Any, user: Any) -> list[str]:
    rows = await admin.fetch(
        "select content from public.messages where created_by = $1::uuid order by created_at", user.id
    )
    return [r["content"] for r in rows]


async def test_a_replayed_operation_acts_once_and_returns_the_same_result(
    client: httpx.AsyncClient, make_user: Any, admin: Any
) -> None:
    user = await make_user()
    op = _create("offline-1", "Escrito sin conexión")

    first = await _sync(client, user, op)
    second = await _sync(client, user, op)

    assert first.status_code == 200 and second.status_code == 200
    (a,) = first.json()["results"]
    (b,) = second.json()["results"]
    assert a["client_op_id"] == "offline-1" and a["status"] == 201 and a["replayed"] is False
    assert a["body"]["content"] == "Escrito sin conexión" and a["body"]["status"] == "draft"
    assert b["replayed"] is True
    assert (b["status"], b["body"]) == (a["status"], a["body"])
    assert await _messages(admin, user) == ["Escrito sin conexión"]
    stored = await admin.fetchval(
        "select status from public.sync_operations where user_id = $1::uuid and client_op_id = 'offline-1'", user.id
    )
    assert stored == 201


async def test_a_repeated_id_within_one_sync_runs_once(client: httpx.AsyncClient, make_user: Any, admin: Any) -> None:
    user = await make_user()
    resp = await _sync(client, user, _create("dup", "una vez"), _create("dup", "una vez"))
    first, second = resp.json()["results"]
    assert (first["replayed"], second["replayed"]) == (False, True)
    assert second["body"] == first["body"]
    assert await _messages(admin, user) == ["una vez"]


async def test_a_failing_operation_does_not_stop_the_next_ones(
    client: httpx.AsyncClient, make_user: Any, admin: Any
) -> None:
    user = await make_user()
    missing = str(uuid.uuid4())

    resp = await _sync(
        client,
        user,
        _create("a", "primero"),
        {"client_op_id": "b", "method": "PUT", "path": f"/api/messages/{missing}", "body": {"content": "x"}},
        {"client_op_id": "c", "method": "POST", "path": "/api/messages", "body": {"content": ""}},
        _create("d", "último"),
    )

    assert resp.status_code == 200
    results = resp.json()["results"]
    assert [r["client_op_id"] for r in results] == ["a", "b", "c", "d"]
    assert [r["status"] for r in results] == [201, 404, 422, 201]
    assert results[1]["body"]["code"] == "message_not_found"
    assert await _messages(admin, user) == ["primero", "último"]


async def test_operations_run_as_the_caller(client: httpx.AsyncClient, make_user: Any, admin: Any) -> None:
    owner, stranger = await make_user(), await make_user()
    created = (await _sync(client, owner, _create("mine", "de owner"))).json()["results"][0]["body"]

    # The same client_op_id belongs to each user separately, and RLS hides the owner's message.
    resp = await _sync(
        client,
        stranger,
        {"client_op_id": "mine", "method": "DELETE", "path": f"/api/messages/{created['id']}"},
    )

    (result,) = resp.json()["results"]
    assert result["replayed"] is False and result["status"] == 404
    assert await _messages(admin, owner) == ["de owner"]
    actor = await admin.fetchval(
        "select actor_id::text from public.audit_log where action = 'message.create' and entity_id = $1", created["id"]
    )
    assert actor == owner.id


async def test_an_operation_with_no_body_and_a_204(client: httpx.AsyncClient, make_user: Any, admin: Any) -> None:
    user = await make_user()
    note = await admin.fetchval(
        "insert into public.notifications (user_id, type, title, message) values ($1::uuid, 'info', 't', 'm')"
        " returning id::text",
        user.id,
    )
    op = {"client_op_id": "del", "method": "DELETE", "path": f"/api/notifications/{note}"}

    first = (await _sync(client, user, op)).json()["results"][0]
    replay = (await _sync(client, user, op)).json()["results"][0]

    assert (first["status"], first["body"]) == (204, None)
    # Acting again would answer 404: the stored 204 proves it did not.
    assert (replay["status"], replay["body"], replay["replayed"]) == (204, None, True)


@pytest.mark.parametrize(
    "path",
    [
        "/api/sync",
        "/api/sync/",
        "/api/auth/logout",
        "/api/auth",
        "/api/%61uth/logout",
        "/api/messages/../sync",
        "/api//auth/logout",
        "/health",
        "http://evil.example/api/messages",
        "api/messages",
    ],
)
async def test_forbidden_paths_are_refused(client: httpx.AsyncClient, make_user: Any, admin: Any, path: str) -> None:
    user = await make_user()
    resp = await _sync(
        client, user, _create("ok", "no debe crearse"), {"client_op_id": "x", "method": "POST", "path": path}
    )
    assert resp.status_code == 422
    body = resp.json()
    assert body["code"] == "validation_error"
    assert body["errors"][0]["field"] == "operations.1.path"  # the second operation is the one named
    assert await _messages(admin, user) == []  # nothing ran


@pytest.mark.parametrize(
    "payload",
    [
        {"operations": []},
        {"operations": [_create("", "x")]},
        {"operations": [_create("x" * 101, "x")]},
        {"operations": [{"client_op_id": "g", "method": "GET", "path": "/api/messages"}]},
        {"operations": [_create(f"op{i}", "x") for i in range(101)]},
    ],
)
async def test_malformed_syncs_are_422(client: httpx.AsyncClient, make_user: Any, payload: dict[str, Any]) -> None:
    user = await make_user()
    resp = await client.post("/api/sync", json=payload, headers=user.headers)
    assert resp.status_code == 422


async def test_sync_requires_a_token(client: httpx.AsyncClient) -> None:
    resp = await client.post("/api/sync", json={"operations": [_create("a", "x")]})
    assert resp.status_code == 401

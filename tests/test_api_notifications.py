"""Notifications: the caller's inbox, filters, unread count, marking read and deleting, and
another user's notification being a 404."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import httpx


async def _notify(
    admin: asyncpg.Connection,
    user_id: str,
    *,
    kind: str = "info",
    title: str = "Hola",
    minutes_ago: int = 0,
    is_read: bool = False,
    related: str | None = None,
) -> str:
    """A notification as the system writes it (the admin connection: RLS does not apply)."""
    return str(
        await admin.fetchval(
            """insert into public.notifications
                 (user_id, type, title, message, is_read, related_entity_type, related_entity_id, created_at)
               values ($1::uuid, $2, $3, 'cuerpo', $4, case when $5::uuid is null then null else 'message' end,
                       $5::uuid, now() - make_interval(mins => $6))
               returning id""",
            user_id,
            kind,
            title,
            is_read,
            related,
            minutes_ago,
        )
    )


async def _unread(client: httpx.AsyncClient, headers: dict[str, str]) -> int:
    resp = await client.get("/api/notifications/unread-count", headers=headers)
    assert resp.status_code == 200
    count: int = resp.json()["count"]
    return count


async def test_list_is_newest_first_in_the_guides_shape(client: httpx.AsyncClient, make_user: Any, admin: Any) -> None:
    user = await make_user()
    message_id = str(uuid.uuid4())
    old = await _notify(admin, user.id, title="antigua", minutes_ago=30)
    new = await _notify(admin, user.id, kind="success", title="nueva", minutes_ago=1, related=message_id)

    resp = await client.get("/api/notifications", headers=user.headers)

    assert resp.status_code == 200
    body = resp.json()
    assert body["total"] == 2 and body["page"] == 1 and body["page_size"] == 20
    assert [n["id"] for n in body["items"]] == [new, old]
    first = body["items"][0]
    assert set(first) == {
        "id",
        "type",
        "title",
        "message",
        "is_read",
        "related_entity_type",
        "related_entity_id",
        "created_at",
    }
    assert first["type"] == "success" and first["title"] == "nueva" and first["is_read"] is False
    assert first["related_entity_type"] == "message" and first["related_entity_id"] == message_id
    assert first["created_at"].endswith("Z")
    assert body["items"][1]["related_entity_type"] is None


async def test_filters_and_pages(client: httpx.AsyncClient, make_user: Any, admin: Any) -> None:
    user = await make_user()
    for i in range(3):
        await _notify(admin, user.id, kind="error", title=f"error {i}", minutes_ago=10 + i)
    await _notify(admin, user.id, kind="info", is_read=True)

    errors = (await client.get("/api/notifications?type=error", headers=user.headers)).json()
    read = (await client.get("/api/notifications?is_read=true", headers=user.headers)).json()
    page2 = (await client.get("/api/notifications?type=error&page=2&page_size=2", headers=user.headers)).json()
    past_end = (await client.get("/api/notifications?page=9", headers=user.headers)).json()
    bad = await client.get("/api/notifications?type=nope", headers=user.headers)

    assert errors["total"] == 3 and {n["type"] for n in errors["items"]} == {"error"}
    assert read["total"] == 1 and read["items"][0]["is_read"] is True
    assert page2["total"] == 3 and [n["title"] for n in page2["items"]] == ["error 2"]
    assert past_end["items"] == [] and past_end["total"] == 4
    assert bad.status_code == 422 and bad.json()["code"] == "validation_error"


async def test_unread_count_follows_inserts_and_marks(client: httpx.AsyncClient, make_user: Any, admin: Any) -> None:
    user = await make_user()
    assert await _unread(client, user.headers) == 0
    first = await _notify(admin, user.id)
    await _notify(admin, user.id)
    await _notify(admin, user.id, is_read=True)
    assert await _unread(client, user.headers) == 2

    marked = await client.post(f"/api/notifications/mark-read/{first}", headers=user.headers)

    assert marked.status_code == 200
    assert marked.json()["id"] == first and marked.json()["is_read"] is True
    assert await _unread(client, user.headers) == 1

    everything = await client.post("/api/notifications/mark-all-read", headers=user.headers)

    assert everything.status_code == 200 and everything.json() == {"updated": 1}
    assert await _unread(client, user.headers) == 0


async def test_delete_removes_it(client: httpx.AsyncClient, make_user: Any, admin: Any) -> None:
    user = await make_user()
    gone = await _notify(admin, user.id)
    kept = await _notify(admin, user.id)

    resp = await client.delete(f"/api/notifications/{gone}", headers=user.headers)

    assert resp.status_code == 204 and resp.content == b""
    listed = (await client.get("/api/notifications", headers=user.headers)).json()
    assert [n["id"] for n in listed["items"]] == [kept]
    again = await client.delete(f"/api/notifications/{gone}", headers=user.headers)
    assert again.status_code == 404 and again.json()["code"] == "notification_not_found"


async def test_another_users_notification_is_not_found(client: httpx.AsyncClient, make_user: Any, admin: Any) -> None:
    owner, stranger = await make_user(), await make_user()
    theirs = await _notify(admin, owner.id)

    mark = await client.post(f"/api/notifications/mark-read/{theirs}", headers=stranger.headers)
    delete = await client.delete(f"/api/notifications/{theirs}", headers=stranger.headers)
    everything = await client.post("/api/notifications/mark-all-read", headers=stranger.headers)
    listed = (await client.get("/api/notifications", headers=stranger.headers)).json()

    assert mark.status_code == 404 and mark.json()["code"] == "notification_not_found"
    assert delete.status_code == 404
    assert everything.json() == {"updated": 0}
    assert listed["total"] == 0
    assert await admin.fetchval("select is_read from public.notifications where id = $1::uuid", theirs) is False
    assert await _unread(client, owner.headers) == 1


async def test_an_admins_inbox_holds_only_their_own(client: httpx.AsyncClient, make_user: Any, admin: Any) -> None:
    # RLS lets an admin read everyone's notifications; the inbox still shows only theirs.
    boss, user = await make_user(admin=True), await make_user()
    await _notify(admin, user.id)
    mine = await _notify(admin, boss.id)

    listed = (await client.get("/api/notifications", headers=boss.headers)).json()
    other = await client.post(f"/api/notifications/mark-read/{await _notify(admin, user.id)}", headers=boss.headers)

    assert [n["id"] for n in listed["items"]] == [mine]
    assert await _unread(client, boss.headers) == 1
    assert other.status_code == 404


async def test_requires_a_token(client: httpx.AsyncClient) -> None:
    resp = await client.get("/api/notifications/unread-count")
    assert resp.status_code == 401 and resp.json()["code"] == "unauthenticated"

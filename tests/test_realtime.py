"""The real-time socket `/ws/{user_id}` against two real API processes (uvicorn) and the real
database: events are caused in SQL exactly as the worker and the triggers cause them."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import httpx
import pytest
from api_processes import ApiProcess
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from whatsched.api.deps import Resources
from whatsched.auth.tokens import issue_access_token
from whatsched.config import Settings

GUARD_S = 15  # a hang guard, never a speed assertion
PROGRESS_INTERVAL_S = 0.2
SEND_QUEUE = 32


# ---------------------------------------------------------------------------------------------
# Two API processes, as two instances behind no load balancer
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def apis(settings: Settings, res: Resources) -> AsyncIterator[tuple[ApiProcess, ApiProcess]]:
    """A: the default keepalive; B: a fast keepalive (0.5 s) to show dead peers are closed."""
    env = {
        "WS_AUTH_TIMEOUT_S": "1",
        "WS_SEND_QUEUE": str(SEND_QUEUE),
        "WS_PROGRESS_INTERVAL_S": str(PROGRESS_INTERVAL_S),
    }
    a = ApiProcess(settings, env=env).start()
    b = ApiProcess(settings, env=env, ws_ping_interval=0.5, ws_ping_timeout=0.5).start()
    try:
        await asyncio.gather(asyncio.to_thread(a.wait_ready), asyncio.to_thread(b.wait_ready))
        yield a, b
    finally:
        a.stop()
        b.stop()


@pytest.fixture
def api(apis: tuple[ApiProcess, ApiProcess]) -> ApiProcess:
    return apis[0]


# ---------------------------------------------------------------------------------------------
# Helpers: sockets and the database changes the worker makes
# ---------------------------------------------------------------------------------------------


async def raw_socket(api: ApiProcess, user_id: str, **kwargs: Any) -> ClientConnection:
    return await connect(api.ws_url(user_id), proxy=None, **kwargs)


async def recv(ws: ClientConnection) -> dict[str, Any]:
    async with asyncio.timeout(GUARD_S):
        frame: dict[str, Any] = json.loads(await ws.recv())
        return frame


async def open_socket(api: ApiProcess, user: Any, token: str | None = None, path_user: str | None = None) -> Any:
    ws = await raw_socket(api, path_user or user.id)
    await ws.send(json.dumps({"type": "auth", "token": token or user.token}))
    assert await recv(ws) == {"type": "auth_ok"}
    return ws


async def until(ws: ClientConnection, match: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
    """Frames received up to and including the first that matches."""
    frames = []
    while True:
        frame = await recv(ws)
        frames.append(frame)
        if match(frame):
            return frames


async def closed_with(ws: ClientConnection) -> tuple[list[dict[str, Any]], int | None, str | None]:
    """Frames received before the close, and the close code and reason the server sent."""
    frames = []
    try:
        while True:
            frames.append(await recv(ws))
    except ConnectionClosed as exc:
        return frames, exc.rcvd.code if exc.rcvd else None, exc.rcvd.reason if exc.rcvd else None


async def sync(ws: ClientConnection) -> None:
    """Frames are answered in order: once the pong arrives, everything sent before was handled."""
    await ws.send(json.dumps({"type": "ping"}))
    assert await recv(ws) == {"type": "pong"}


async def subscribe(ws: ClientConnection, message_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Subscribe and return the snapshot (status, progress). Progress events relayed while the
    snapshot is read may come before it; the snapshot is the only status frame of a message whose
    status does not change meanwhile."""
    await ws.send(json.dumps({"type": "subscribe_message", "message_id": message_id}))
    frames = await until(ws, lambda f: f["type"] == "message_status_update" and f["message_id"] == message_id)
    assert all(f["type"] == "message_progress" for f in frames[:-1])
    progress = await recv(ws)
    assert progress["type"] == "message_progress" and progress["message_id"] == message_id
    return frames[-1], progress


async def new_message(admin: asyncpg.Connection, owner: str, recipients: int = 0) -> str:
    """A message the worker has claimed, with its deliveries (as private.claim_messages makes them)."""
    message_id = str(
        await admin.fetchval(
            "insert into public.messages (created_by, content, status) values ($1, 'hola', 'sending') returning id",
            uuid.UUID(owner),
        )
    )
    if recipients:
        await admin.execute(
            """
            insert into public.deliveries (message_id, created_by, phone, idempotency_key)
            select $1::uuid, $2::uuid, '+5691' || lpad(n::text, 7, '0'), $1::uuid::text || ':' || n
            from generate_series(1, $3) n
            """,
            uuid.UUID(message_id),
            uuid.UUID(owner),
            recipients,
        )
    return message_id


async def deliver(admin: asyncpg.Connection, message_id: str, n: int = 1, state: str = "sent") -> None:
    """The worker finishing n pending deliveries in one commit."""
    await admin.execute(
        """
        update public.deliveries set state = $3, sent_at = now()
        where id in (select id from public.deliveries where message_id = $1 and state = 'pending'
                     order by phone limit $2)
        """,
        uuid.UUID(message_id),
        n,
        state,
    )


async def set_status(admin: asyncpg.Connection, message_id: str, status: str) -> None:
    await admin.execute("update public.messages set status = $2 where id = $1", uuid.UUID(message_id), status)


async def notify_user(admin: asyncpg.Connection, user_id: str, title: str, message: str = "") -> str:
    return str(
        await admin.fetchval(
            "insert into public.notifications (user_id, type, title, message) values ($1, 'info', $2, $3) returning id",
            uuid.UUID(user_id),
            title,
            message,
        )
    )


# ---------------------------------------------------------------------------------------------
# Authentication
# ---------------------------------------------------------------------------------------------


async def test_auth_frame_opens_the_socket_and_ping_gets_pong(api: ApiProcess, make_user: Any) -> None:
    user = await make_user()
    ws = await open_socket(api, user)
    await ws.send(json.dumps({"type": "ping"}))
    assert await recv(ws) == {"type": "pong"}
    await ws.close()


async def test_a_bad_token_is_refused_with_4401(api: ApiProcess, make_user: Any) -> None:
    user = await make_user()
    forged = user.token[:-4] + ("AAAA" if not user.token.endswith("AAAA") else "BBBB")
    for frame in (
        {"type": "auth", "token": forged},
        {"type": "auth", "token": "not-a-jwt"},
        {"type": "auth"},
        {"type": "ping"},
    ):
        ws = await raw_socket(api, user.id)
        await ws.send(json.dumps(frame))
        frames, code, reason = await closed_with(ws)
        assert code == 4401, frame
        assert [f["type"] for f in frames] == ["error"]
        assert frames[0]["code"] in {"invalid_token", "auth_required"}
        assert reason


async def test_an_expired_token_is_refused(api: ApiProcess, make_user: Any, res: Resources) -> None:
    user = await make_user()
    assert res.local_key is not None
    expired, _ = issue_access_token(
        res.local_key,
        issuer=res.settings.effective_public_url + "/auth/v1",
        user={"id": user.id, "email": user.email},
        session_id=str(uuid.uuid4()),
        lifetime_s=60,
        now=1_700_000_000,
    )
    ws = await raw_socket(api, user.id)
    await ws.send(json.dumps({"type": "auth", "token": expired}))
    frames, code, _ = await closed_with(ws)
    assert code == 4401 and frames[0]["code"] == "invalid_token"


async def test_someone_elses_user_id_is_refused_but_an_admin_may_watch_it(
    api: ApiProcess, make_user: Any, admin: asyncpg.Connection
) -> None:
    owner, other, boss = await make_user(), await make_user(), await make_user(admin=True)
    ws = await raw_socket(api, owner.id)
    await ws.send(json.dumps({"type": "auth", "token": other.token}))
    frames, code, _ = await closed_with(ws)
    assert code == 4401 and frames == [{"type": "error", "code": "forbidden", "message": frames[0]["message"]}]

    watcher = await open_socket(api, boss, path_user=owner.id)
    await notify_user(admin, owner.id, "for the owner")
    frame = await recv(watcher)
    assert frame["type"] == "new_notification" and frame["notification"]["title"] == "for the owner"
    await watcher.close()

    # On their own path, an admin may follow anyone's message (RLS lets them see it).
    own_path = await open_socket(api, boss)
    message_id = await new_message(admin, owner.id, recipients=2)
    await subscribe(own_path, message_id)
    await deliver(admin, message_id, 2)
    frames = await until(own_path, lambda f: f["type"] == "message_progress" and f["sent"] == 2)
    assert frames[-1]["message_id"] == message_id
    await own_path.close()


async def test_no_auth_frame_in_time_closes_with_4408_and_nothing_is_sent_before(
    api: ApiProcess, make_user: Any, admin: asyncpg.Connection
) -> None:
    user = await make_user()
    ws = await raw_socket(api, user.id)
    await notify_user(admin, user.id, "must not leak before auth")
    frames, code, _ = await closed_with(ws)
    assert code == 4408
    assert [f["type"] for f in frames] == ["error"] and frames[0]["code"] == "auth_timeout"


async def test_a_fresh_token_keeps_the_socket_and_an_expiring_one_closes_it(
    api: ApiProcess, make_user: Any, res: Resources
) -> None:
    user = await make_user()
    assert res.local_key is not None
    short, _ = issue_access_token(
        res.local_key,
        issuer=res.settings.effective_public_url + "/auth/v1",
        user={"id": user.id, "email": user.email},
        session_id=str(uuid.uuid4()),
        lifetime_s=2,
    )
    kept = await open_socket(api, user, token=short)
    await kept.send(json.dumps({"type": "auth", "token": user.token}))  # refreshed before expiry
    assert await recv(kept) == {"type": "auth_ok"}
    expiring = await open_socket(api, user, token=short)
    frames, code, _ = await closed_with(expiring)
    assert code == 4401 and frames[-1]["code"] == "token_expired"
    await sync(kept)  # the refreshed socket outlived the short token
    await kept.close()


# ---------------------------------------------------------------------------------------------
# Subscriptions and events
# ---------------------------------------------------------------------------------------------


async def test_before_fan_out_the_progress_total_is_the_messages_audience(
    api: ApiProcess, make_user: Any, admin: asyncpg.Connection
) -> None:
    user = await make_user()
    owner = uuid.UUID(user.id)
    group = await admin.fetchval("insert into public.groups (created_by, name) values ($1, 'g') returning id", owner)
    await admin.execute(
        """with c as (
             insert into public.contacts (created_by, name, phone)
             select $1, 'C' || n, '+5691' || lpad(n::text, 7, '0') from generate_series(1, 3) n returning id)
           insert into public.group_contacts (group_id, contact_id, created_by) select $2, id, $1 from c""",
        owner,
        group,
    )
    draft = await admin.fetchval(
        "insert into public.messages (created_by, content) values ($1, 'hola') returning id", owner
    )
    await admin.execute(
        "insert into public.message_groups (message_id, group_id, created_by) values ($1, $2, $3)", draft, group, owner
    )
    ws = await open_socket(api, user)
    status, progress = await subscribe(ws, str(draft))
    assert status["status"] == "draft"
    assert progress == {"type": "message_progress", "message_id": str(draft), "sent": 0, "total": 3, "failed": 0}
    await ws.close()


async def test_subscribing_sends_the_current_status_and_progress(
    api: ApiProcess, make_user: Any, admin: asyncpg.Connection
) -> None:
    user = await make_user()
    message_id = await new_message(admin, user.id, recipients=5)
    await deliver(admin, message_id, 2)
    await deliver(admin, message_id, 1, state="failed")
    ws = await open_socket(api, user)
    status, progress = await subscribe(ws, message_id)
    assert status["status"] == "sending" and status["timestamp"].endswith("Z")
    assert progress == {"type": "message_progress", "message_id": message_id, "sent": 2, "total": 5, "failed": 1}

    await deliver(admin, message_id, 2)
    assert await recv(ws) == {"type": "message_progress", "message_id": message_id, "sent": 4, "total": 5, "failed": 1}
    await set_status(admin, message_id, "sent")
    frame = await recv(ws)
    assert (frame["type"], frame["status"]) == ("message_status_update", "sent")

    await ws.send(json.dumps({"type": "unsubscribe_message", "message_id": message_id}))
    await sync(ws)
    second = await new_message(admin, user.id, recipients=1)
    await deliver(admin, message_id, 1)  # progress of the unsubscribed message: not relayed
    await set_status(admin, second, "sent")  # own status: relayed without subscribing
    frame = await recv(ws)
    assert (frame["type"], frame["message_id"], frame["status"]) == ("message_status_update", second, "sent")
    await ws.close()


async def test_subscribing_to_a_message_you_cannot_see_is_an_error(
    api: ApiProcess, make_user: Any, admin: asyncpg.Connection
) -> None:
    user, other = await make_user(), await make_user()
    theirs = await new_message(admin, other.id, recipients=2)
    ws = await open_socket(api, user)
    for message_id, code in ((theirs, "message_not_found"), (str(uuid.uuid4()), "message_not_found"), ("7", None)):
        await ws.send(json.dumps({"type": "subscribe_message", "message_id": message_id}))
        frame = await recv(ws)
        assert frame["type"] == "error"
        assert frame["code"] == (code or "invalid_message_id")
    await ws.send("not json")
    assert (await recv(ws))["code"] == "invalid_frame"
    await ws.send(json.dumps({"type": "dance"}))
    assert (await recv(ws))["code"] == "unknown_type"
    await deliver(admin, theirs, 1)
    await notify_user(admin, user.id, "sentinel")
    frame = await recv(ws)  # the other user's progress never arrived before our own event
    assert frame["type"] == "new_notification" and frame["notification"]["title"] == "sentinel"
    await ws.close()


async def test_a_user_never_receives_another_users_events(
    api: ApiProcess, make_user: Any, admin: asyncpg.Connection
) -> None:
    alice, bob = await make_user(), await make_user()
    alice_ws = await open_socket(api, alice)
    bob_ws = await open_socket(api, bob)
    bobs = await new_message(admin, bob.id, recipients=3)
    await subscribe(bob_ws, bobs)
    await deliver(admin, bobs, 3)
    await set_status(admin, bobs, "sent")
    note = await notify_user(admin, bob.id, "for bob only")
    await admin.execute(
        "select realtime.send(jsonb_build_object('type', 'import_progress', 'processed', 5), "
        "'import_progress', 'user:' || $1::text, true)",
        bob.id,
    )
    bob_frames = await until(bob_ws, lambda f: f["type"] == "import_progress")
    # (a progress event of the message's creation may still arrive after the snapshot: same counts)
    kinds = [f["type"] for f in bob_frames if f["type"] != "message_progress" or f["sent"] == 3]
    assert kinds == ["message_progress", "message_status_update", "new_notification", "import_progress"]
    notification = bob_frames[-2]["notification"]
    assert notification["id"] == note and notification["title"] == "for bob only"
    assert set(notification) >= {"id", "type", "title", "message", "timestamp"}

    await notify_user(admin, alice.id, "alice's own")
    frame = await recv(alice_ws)  # her first event is her own: none of bob's came before it
    assert frame["notification"]["title"] == "alice's own"
    await alice_ws.close()
    await bob_ws.close()


async def test_whatsapp_status_reaches_every_socket_with_qr_only_when_needed(
    apis: tuple[ApiProcess, ApiProcess], make_user: Any, admin: asyncpg.Connection
) -> None:
    a, b = apis
    one, two = await make_user(), await make_user()
    sockets = [await open_socket(a, one), await open_socket(b, two)]
    send = "select realtime.send($1::jsonb, 'whatsapp_status', 'whatsapp', true)"
    qr = base64.b64encode(b"qr-image").decode()
    await admin.execute(send, json.dumps({"type": "whatsapp_status", "status": "qr_needed", "qr_code": qr}))
    await admin.execute(send, json.dumps({"type": "whatsapp_status", "status": "connected", "qr_code": qr}))
    for ws in sockets:
        assert await recv(ws) == {"type": "whatsapp_status", "status": "qr_needed", "qr_code": qr}
        assert await recv(ws) == {"type": "whatsapp_status", "status": "connected"}
        await ws.close()


async def test_progress_is_coalesced_and_the_final_counts_always_arrive(
    api: ApiProcess, make_user: Any, admin: asyncpg.Connection
) -> None:
    user = await make_user()
    commits = 60
    message_id = await new_message(admin, user.id, recipients=commits)
    ws = await open_socket(api, user)
    await subscribe(ws, message_id)
    loop = asyncio.get_running_loop()
    started = loop.time()
    for _ in range(commits):
        await deliver(admin, message_id)  # one commit, one trigger event each
    elapsed = loop.time() - started
    frames = await until(ws, lambda f: f["type"] == "message_progress" and f["sent"] == commits)
    assert frames[-1] == {
        "type": "message_progress",
        "message_id": message_id,
        "sent": commits,
        "total": commits,
        "failed": 0,
    }
    sents = [f["sent"] for f in frames]
    assert sents == sorted(sents)
    # At most one frame per interval (+ the one opening the window, the last flush and a late
    # creation event): never one per commit.
    assert len(frames) <= 3 + elapsed / PROGRESS_INTERVAL_S
    assert len(frames) < commits
    await ws.close()


# ---------------------------------------------------------------------------------------------
# Several processes, a lost LISTEN connection, slow and dead clients
# ---------------------------------------------------------------------------------------------


async def test_an_event_reaches_sockets_on_every_api_process(
    apis: tuple[ApiProcess, ApiProcess], make_user: Any, admin: asyncpg.Connection
) -> None:
    a, b = apis
    user = await make_user()
    on_a, on_b = await open_socket(a, user), await open_socket(b, user)
    message_id = await new_message(admin, user.id, recipients=2)
    for ws in (on_a, on_b):
        await subscribe(ws, message_id)
    await deliver(admin, message_id, 2)
    await set_status(admin, message_id, "sent")
    for ws in (on_a, on_b):
        frames = await until(ws, lambda f: f["type"] == "message_status_update")
        # the final counts come before the final status (a late creation event may precede them)
        assert frames[-2] == {"type": "message_progress", "message_id": message_id, "sent": 2, "total": 2, "failed": 0}
        assert frames[-1]["status"] == "sent"

    # An event caused through process A's HTTP API reaches the socket on B.
    second = await new_message(admin, user.id, recipients=1)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{a.port}", trust_env=False) as http:
        response = await http.post(f"/api/messages/{second}/pause", headers=user.headers)
    assert response.status_code == 200, response.text
    frames = await until(on_b, lambda f: f["type"] == "message_status_update")
    assert (frames[-1]["message_id"], frames[-1]["status"]) == (second, "paused")
    for ws in (on_a, on_b):
        await ws.close()


async def test_a_lost_listen_connection_reconnects_and_resyncs_clients(
    apis: tuple[ApiProcess, ApiProcess], make_user: Any, admin: asyncpg.Connection
) -> None:
    a, _ = apis
    user = await make_user()
    message_id = await new_message(admin, user.id, recipients=4)
    ws = await open_socket(a, user)
    await subscribe(ws, message_id)

    killed = await admin.fetchval(
        "select count(pg_terminate_backend(pid)) from pg_stat_activity where application_name = $1",
        f"whatsched-realtime:{a.pid}",
    )
    assert killed == 1
    await deliver(admin, message_id, 1)  # committed while nobody in A listens: lost unless resynced
    frames = await until(ws, lambda f: f["type"] == "message_progress" and f["sent"] == 1)
    assert frames[0]["type"] == "resync"
    assert {"type": "message_progress", "message_id": message_id, "sent": 1, "total": 4, "failed": 0} in frames

    await deliver(admin, message_id, 3)  # and live events flow again
    await until(ws, lambda f: f["type"] == "message_progress" and f["sent"] == 4)
    await ws.close()


async def test_a_client_that_never_reads_is_cut_off_while_another_keeps_receiving(
    api: ApiProcess, make_user: Any, admin: asyncpg.Connection
) -> None:
    user = await make_user()
    fast = await open_socket(api, user)
    # The slow client: a tiny receive buffer, and its library stops reading after one frame.
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", api.port))
    slow = await connect(api.ws_url(user.id), proxy=None, sock=sock, max_queue=1, compression=None)
    await slow.send(json.dumps({"type": "auth", "token": user.token}))
    assert await recv(slow) == {"type": "auth_ok"}

    flood, body = 600, "x" * 2000
    for _ in range(3):  # 3 commits of 600 notifications of ~2 KB: far beyond any socket buffer
        await admin.execute(
            "insert into public.notifications (user_id, type, title, message) "
            "select $1, 'info', 'flood ' || n, $2 from generate_series(1, $3) n",
            uuid.UUID(user.id),
            body,
            flood,
        )
    received = 0
    while received < 3 * flood:  # the other client gets every one of them
        frame = await recv(fast)
        assert frame["type"] == "new_notification"
        received += 1

    frames, code, reason = await closed_with(slow)
    assert code == 4429
    assert reason and "slowly" in reason
    assert len(frames) < 3 * flood
    await sync(fast)  # the fast client is still served
    await fast.close()


def _masked_text(text: str) -> bytes:
    """A client text frame (clients must mask), for a peer written by hand."""
    data, mask = text.encode(), os.urandom(4)
    assert len(data) < 65536
    head = (
        bytes([0x81, 0x80 | 126]) + len(data).to_bytes(2, "big")
        if len(data) >= 126
        else bytes([0x81, 0x80 | len(data)])
    )
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data))


def _server_frames(data: bytes) -> list[tuple[int, bytes]]:
    """(opcode, payload) of unmasked server frames."""
    frames, i = [], 0
    while i + 2 <= len(data):
        opcode, length, i = data[i] & 0x0F, data[i + 1] & 0x7F, i + 2
        if length == 126:
            length, i = int.from_bytes(data[i : i + 2], "big"), i + 2
        elif length == 127:
            length, i = int.from_bytes(data[i : i + 8], "big"), i + 8
        frames.append((opcode, data[i : i + length]))
        i += length
    return frames


async def test_the_server_pings_and_closes_a_dead_peer(apis: tuple[ApiProcess, ApiProcess], make_user: Any) -> None:
    _, b = apis  # B pings every 0.5 s and waits 0.5 s for the pong
    user = await make_user()
    reader, writer = await asyncio.open_connection("127.0.0.1", b.port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            f"GET /ws/{user.id} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    async with asyncio.timeout(GUARD_S):
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101")
        writer.write(_masked_text(json.dumps({"type": "auth", "token": user.token})))
        rest = await reader.read()  # this peer never answers a ping: the server ends the connection
    writer.close()
    frames = _server_frames(rest)
    assert (0x1, b'{"type":"auth_ok"}') in frames  # authenticated, so not the auth timeout
    assert 0x9 in [opcode for opcode, _ in frames]  # it was pinged
    assert frames[-1][0] == 0x8 and int.from_bytes(frames[-1][1][:2], "big") == 1011

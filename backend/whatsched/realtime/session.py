"""The conversation with one client: the auth frame first (nothing is sent before it), then pings,
subscriptions and token refreshes until the socket closes. Events reach the socket through the hub.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Mapping
from typing import Any

import asyncpg
from starlette.websockets import WebSocket, WebSocketState

from whatsched.auth import queries as auth_queries
from whatsched.auth.tokens import InvalidToken, Verifier
from whatsched.db.errors import DATABASE_ERRORS
from whatsched.db.pool import user_tx
from whatsched.realtime import protocol
from whatsched.realtime.hub import Hub
from whatsched.realtime.protocol import Auth, FrameError, Ping, Subscribe, Unsubscribe
from whatsched.realtime.sockets import Client

log = logging.getLogger("whatsched.realtime")


class Refused(Exception):
    """The caller may not use this socket: an error frame, then close code `close_code`."""

    def __init__(self, code: str, message: str, close_code: int = protocol.CLOSE_UNAUTHORIZED) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.close_code = close_code


async def is_admin(pool: asyncpg.Pool, claims: Mapping[str, Any]) -> bool:
    async with user_tx(pool, claims) as conn:
        return await auth_queries.is_admin(conn)


async def check_token(verifier: Verifier, pool: asyncpg.Pool, token: str, user_id: str) -> dict[str, Any]:
    """Verified claims of a caller allowed on user_id's socket: that user, or an admin."""
    if canonical_user_id(user_id) != user_id:
        raise Refused("invalid_user_id", "The path must be /ws/<user id>, a UUID.")
    try:
        claims = await verifier.verify(token)
    except InvalidToken:
        raise Refused("invalid_token", "The access token is invalid or has expired.") from None
    if str(claims["sub"]) == user_id:
        return claims
    try:
        allowed = await is_admin(pool, claims)
    except DATABASE_ERRORS:
        raise Refused("unavailable", "The database is unavailable; try again.", 1011) from None
    if not allowed:
        raise Refused("forbidden", "This socket belongs to another user.")
    return claims


async def _first_frame(websocket: WebSocket, timeout_s: float) -> str | None:
    """The first text frame, or None if the client left. Raises Refused on a timeout."""
    try:
        async with asyncio.timeout(timeout_s):
            message = await websocket.receive()
    except TimeoutError:
        raise Refused(
            "auth_timeout", f"Send an auth frame within {timeout_s:g} s.", protocol.CLOSE_AUTH_TIMEOUT
        ) from None
    if message["type"] == "websocket.disconnect":
        return None
    text = message.get("text")
    if not isinstance(text, str):
        raise Refused("auth_required", 'The first frame must be {"type": "auth", "token": "<jwt>"}.')
    return text


async def authenticate(websocket: WebSocket, hub: Hub, verifier: Verifier, user_id: str) -> dict[str, Any] | None:
    """The caller's claims once they proved who they are; None after refusing (socket closed) or if
    the client left."""
    try:
        text = await _first_frame(websocket, hub.config.ws_auth_timeout_s)
        if text is None:
            return None
        try:
            frame = protocol.parse(text)
        except FrameError as exc:
            raise Refused(exc.code if exc.code == "invalid_token" else "auth_required", exc.message) from None
        if not isinstance(frame, Auth):
            raise Refused("auth_required", 'The first frame must be {"type": "auth", "token": "<jwt>"}.')
        return await check_token(verifier, hub.pool, frame.token, user_id)
    except Refused as refusal:
        if websocket.application_state == WebSocketState.CONNECTED:
            try:
                await websocket.send_text(protocol.error(refusal.code, refusal.message))
                await websocket.close(refusal.close_code, refusal.message[:120])
            except Exception:  # the client left while we refused it
                pass
        return None


def canonical_user_id(raw: str) -> str | None:
    try:
        return str(uuid.UUID(raw))
    except ValueError:
        return None


def _expiry(client: Client, claims: Mapping[str, Any]) -> asyncio.TimerHandle:
    """Close the socket when its token expires, unless the client sends a fresh auth frame first."""
    delay = max(0.0, float(claims["exp"]) - time.time())
    last = protocol.error("token_expired", "The access token expired; reconnect with a fresh one.")
    return asyncio.get_running_loop().call_later(
        delay, client.close, protocol.CLOSE_UNAUTHORIZED, "access token expired", last
    )


async def serve(websocket: WebSocket, hub: Hub, verifier: Verifier, client: Client) -> None:
    """Answer the client's frames until the socket closes."""
    expiry = _expiry(client, client.claims)
    try:
        while not client.closed:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            text = message.get("text")
            if not isinstance(text, str):
                client.push(protocol.error("invalid_frame", "Frames are JSON text, not binary."))
                continue
            try:
                frame = protocol.parse(text)
            except FrameError as exc:
                client.push(protocol.error(exc.code, exc.message, exc.message_id))
                continue
            if isinstance(frame, Ping):
                client.push(protocol.PONG)
            elif isinstance(frame, Subscribe):
                await hub.subscribe(client, frame.message_id)
            elif isinstance(frame, Unsubscribe):
                hub.unsubscribe(client, frame.message_id)
            elif isinstance(frame, Auth):
                try:
                    claims = await check_token(verifier, hub.pool, frame.token, client.user_id)
                except Refused as refusal:
                    client.push(protocol.error(refusal.code, refusal.message))
                    continue
                if str(claims["sub"]) != client.caller_id:
                    client.push(protocol.error("forbidden", "A fresh token must be for the same caller."))
                    continue
                client.claims = claims
                expiry.cancel()
                expiry = _expiry(client, claims)
                client.push(protocol.AUTH_OK)
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if client.closed and task is not None and task.uncancel() == 0:
            return  # the client was cut off and could not even take a close frame: we are done
        raise
    finally:
        expiry.cancel()

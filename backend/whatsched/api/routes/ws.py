"""The guide's real-time socket, `/ws/{user_id}`: authenticate with the first frame, then receive
the user's events (relayed by this process's hub from Postgres) and follow messages by id."""

from __future__ import annotations

from fastapi import APIRouter, WebSocket

from whatsched.api.deps import resources_of
from whatsched.realtime import protocol, session
from whatsched.realtime.hub import Hub
from whatsched.realtime.sockets import Client

router = APIRouter(tags=["realtime"])


@router.websocket("/ws/{user_id}")
async def realtime_socket(websocket: WebSocket, user_id: str) -> None:
    res = resources_of(websocket)
    hub: Hub = websocket.app.state.hub
    user_id = session.canonical_user_id(user_id) or user_id
    await websocket.accept()
    claims = await session.authenticate(websocket, hub, res.verifier, user_id)
    if claims is None:
        return
    client = Client(websocket, user_id, claims, limit=hub.config.ws_send_queue, on_close=hub.remove)
    client.push(protocol.AUTH_OK)  # first in the queue: before any event
    hub.add(client)
    try:
        await session.serve(websocket, hub, res.verifier, client)
    finally:
        hub.remove(client)
        client.discard()

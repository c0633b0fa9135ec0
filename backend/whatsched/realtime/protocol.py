"""The socket's wire protocol (the guide's "WebSocket Events (Real-time)"): the frames a client may
send, the frames the server sends, the error codes and the close codes, all named in one place.

The events themselves (names and shapes) are the catalog's (contracts/events.json, whatsched.events);
the socket's own frames (auth_ok, pong, error, resync) are not events and are named here only."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from whatsched import events

# Close codes: 4000 + the HTTP status that means the same thing.
CLOSE_UNAUTHORIZED = 4401
CLOSE_AUTH_TIMEOUT = 4408
CLOSE_TOO_SLOW = 4429
CLOSE_GOING_AWAY = 1001

MAX_FRAME_CHARS = 16 * 1024  # client frames are tiny; a JWT is well under this

# Events relayed from Postgres (the `event` of realtime.send and the `type` on the wire), by their
# catalog names; the hub routes these specially and relays any other user-topic event as it is.
MESSAGE_STATUS_UPDATE = events.named("message_status_update")
MESSAGE_PROGRESS = events.named("message_progress")
NEW_NOTIFICATION = events.named("new_notification")
REPLY_RECEIVED = events.named("reply_received")  # relayed like any user-topic event (no special routing)
WHATSAPP_STATUS = events.named("whatsapp_status")
WHATSAPP_TOPIC: str = events.EVENTS[WHATSAPP_STATUS]["topic"]  # "whatsapp"
USER_TOPIC_PREFIX: str = events.EVENTS[MESSAGE_STATUS_UPDATE]["topic"].removesuffix("{user_id}")  # "user:"
# The optional fields of whatsapp_status relayed when the database's event has them (qr_code has
# its own rule): number_id, number_status, reason.
_WHATSAPP_FIELDS = tuple(
    key for key in events.EVENTS[WHATSAPP_STATUS]["schema"]["properties"] if key not in ("type", "status", "qr_code")
)


@dataclass(frozen=True, slots=True)
class Auth:
    token: str


@dataclass(frozen=True, slots=True)
class Ping:
    pass


@dataclass(frozen=True, slots=True)
class Subscribe:
    message_id: str


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    message_id: str


ClientFrame = Auth | Ping | Subscribe | Unsubscribe


class FrameError(Exception):
    """A client frame we cannot act on; answered with an error frame, the socket stays open."""

    def __init__(self, code: str, message: str, message_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.message_id = message_id


def _message_id(body: dict[str, Any]) -> str:
    raw = body.get("message_id")
    try:
        return str(uuid.UUID(str(raw)))
    except ValueError:
        raise FrameError("invalid_message_id", "message_id must be a message's id (a UUID).") from None


def parse(text: str) -> ClientFrame:
    if len(text) > MAX_FRAME_CHARS:
        raise FrameError("frame_too_large", f"Frames are limited to {MAX_FRAME_CHARS} characters.")
    try:
        body = json.loads(text)
    except ValueError:
        raise FrameError("invalid_frame", "Frames are JSON objects with a type.") from None
    if not isinstance(body, dict):
        raise FrameError("invalid_frame", "Frames are JSON objects with a type.")
    kind = body.get("type")
    if kind == "ping":
        return Ping()
    if kind == "subscribe_message":
        return Subscribe(_message_id(body))
    if kind == "unsubscribe_message":
        return Unsubscribe(_message_id(body))
    if kind == "auth":
        token = body.get("token")
        if not isinstance(token, str) or not token:
            raise FrameError("invalid_token", "The auth frame needs a token.")
        return Auth(token)
    raise FrameError(
        "unknown_type", "Unknown frame type; expected auth, ping, subscribe_message or unsubscribe_message."
    )


def dump(body: dict[str, Any]) -> str:
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)


def error(code: str, message: str, message_id: str | None = None) -> str:
    body: dict[str, Any] = {"type": "error", "code": code, "message": message}
    if message_id is not None:
        body["message_id"] = message_id
    return dump(body)


AUTH_OK = dump({"type": "auth_ok"})
PONG = dump({"type": "pong"})


def resync(reason: str) -> str:
    """Events may have been missed (the server's event stream was interrupted): refetch what you
    show; snapshots of your subscribed messages follow this frame."""
    return dump({"type": "resync", "reason": reason})


def status_update(message_id: str, status: str, timestamp: str) -> str:
    return dump({"type": MESSAGE_STATUS_UPDATE, "message_id": message_id, "status": status, "timestamp": timestamp})


def progress(message_id: str, sent: int, total: int, failed: int) -> str:
    return dump({"type": MESSAGE_PROGRESS, "message_id": message_id, "sent": sent, "total": total, "failed": failed})


def whatsapp_status(payload: dict[str, Any]) -> str:
    """The guide's shape: qr_code only while the status is qr_needed; number_id (which WhatsApp
    number) when the event names one; number_status (ours: `paused`) and reason (the evidence)
    when health paused or a person resumed the number."""
    body: dict[str, Any] = {"type": WHATSAPP_STATUS, "status": payload.get("status")}
    if payload.get("status") == "qr_needed" and payload.get("qr_code") is not None:
        body["qr_code"] = payload["qr_code"]
    for key in _WHATSAPP_FIELDS:
        if payload.get(key) is not None:
            body[key] = payload[key]
    return dump(body)

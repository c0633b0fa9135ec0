"""POST /api/bridge/events: what the WhatsApp bridge reports (internal; not in the OpenAPI docs).

Every event is signed by the bridge: X-Bridge-Timestamp (unix seconds) and X-Bridge-Signature
`sha256=<hex HMAC-SHA256 of "<timestamp>.<raw body>" keyed with BRIDGE_TOKEN>`. A wrong or
missing signature, or a timestamp more than 5 minutes away from our clock, is refused with 401.

- `message_ack` {whatsapp_message_id, idempotency_key, ack: sent|delivered|read|failed, at}:
  the delivery moves forward (private.apply_ack: never backwards; failed only before
  delivered). An ack that settles a delivery the worker still had open wakes the workers, so
  they finish its message.
- `whatsapp_status` {status, qr_code, phone, since, last_error}: relayed to every user's socket
  (realtime topic `whatsapp`, the guide's frame, qr_code only when qr_needed); on a transition to
  `disconnected`, a warning notification for each user with scheduled or sending messages.

- `inbound_message` {phone, text, whatsapp_message_id, at}: a reply (private.record_reply): kept
  once per user who wrote to the sender within REPLY_WINDOW_DAYS, and an opt-out or opt-in
  keyword applied to every user's contact with that phone; from anyone else it is dropped, never
  stored, and its text is never logged.

Events are idempotent (the bridge retries them), and unknown event types are accepted and
ignored, so a newer bridge does not make an older backend drop its queue.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from whatsched.api.deps import Resources, ResourcesDep
from whatsched.api.errors import ApiError
from whatsched.db.pool import service_tx
from whatsched.dispatcher import notify
from whatsched.whatsapp import queries

router = APIRouter(prefix="/api/bridge", tags=["bridge"], include_in_schema=False)
log = logging.getLogger("whatsched.bridge_events")

TIMESTAMP_HEADER = "X-Bridge-Timestamp"
SIGNATURE_HEADER = "X-Bridge-Signature"
MAX_SKEW_S = 300


class MessageAck(BaseModel):
    type: Literal["message_ack"]
    whatsapp_message_id: str = Field(min_length=1, max_length=300)
    idempotency_key: str | None = Field(default=None, max_length=300)
    ack: Literal["sent", "delivered", "read", "failed"]
    at: datetime | None = None


class WhatsAppStatus(BaseModel):
    type: Literal["whatsapp_status"]
    status: Literal["connected", "disconnected", "qr_needed", "initializing"]
    qr_code: str | None = None
    phone: str | None = Field(default=None, max_length=40)
    since: str | None = None
    last_error: str | None = Field(default=None, max_length=2000)


class InboundMessage(BaseModel):
    type: Literal["inbound_message"]
    phone: str = Field(pattern=r"^\+[1-9]\d{1,14}$")
    # Whatever WhatsApp allowed; what is kept is cut to 4096 characters (the longest message).
    text: str = Field(max_length=65_536)
    whatsapp_message_id: str = Field(min_length=1, max_length=300)
    at: datetime | None = None


class OtherEvent(BaseModel):
    type: str


_EVENT: TypeAdapter[MessageAck | WhatsAppStatus | InboundMessage] = TypeAdapter(
    Annotated[MessageAck | WhatsAppStatus | InboundMessage, Field(discriminator="type")]
)
KNOWN = frozenset({"message_ack", "whatsapp_status", "inbound_message"})


def sign(token: str, timestamp: int | str, raw: bytes) -> str:
    """The signature the bridge sends for these bytes (bridge/src/events.js signEvent)."""
    digest = hmac.new(token.encode(), f"{timestamp}.".encode() + raw, hashlib.sha256).hexdigest()
    return "sha256=" + digest


def verify(token: str, timestamp: str | None, signature: str | None, raw: bytes, now: float | None = None) -> None:
    refused = ApiError(401, "invalid_signature", "The event is not signed by the bridge, or its signature expired.")
    if not timestamp or not signature:
        raise refused
    try:
        sent_at = int(timestamp)
    except ValueError:
        raise refused from None
    if abs((now if now is not None else time.time()) - sent_at) > MAX_SKEW_S:
        raise refused
    if not hmac.compare_digest(sign(token, timestamp, raw), signature.strip()):
        raise refused


@router.post("/events", status_code=204)
async def bridge_event(request: Request, res: ResourcesDep) -> Response:
    raw = await request.body()
    verify(res.settings.bridge_token, request.headers.get(TIMESTAMP_HEADER), request.headers.get(SIGNATURE_HEADER), raw)
    try:
        payload: Any = json.loads(raw)
        kind = OtherEvent.model_validate(payload).type
        if kind not in KNOWN:
            return Response(status_code=204)
        event = _EVENT.validate_python(payload)
    except (ValueError, ValidationError) as exc:
        errors = (
            [{"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"]} for e in exc.errors()]
            if isinstance(exc, ValidationError)
            else []
        )
        raise ApiError(422, "validation_error", "The event is not one the backend understands.", errors) from None
    if isinstance(event, MessageAck):
        await _apply_ack(res, event)
    elif isinstance(event, InboundMessage):
        await _record_reply(res, event)
    else:
        await _relay_status(res, event)
    return Response(status_code=204)


async def _apply_ack(res: Resources, event: MessageAck) -> None:
    async with service_tx(res.pool) as conn:
        await queries.apply_ack(conn, event.whatsapp_message_id, event.idempotency_key, event.ack, event.at)


async def _record_reply(res: Resources, event: InboundMessage) -> None:
    async with service_tx(res.pool) as conn:
        await queries.record_reply(conn, event.phone, event.text, event.whatsapp_message_id, event.at)


async def _relay_status(res: Resources, event: WhatsAppStatus) -> None:
    # The guide's event knows connected | disconnected | qr_needed: a bridge still starting is not
    # connected yet. The database keeps the bridge's own word (health shows it).
    shown = "disconnected" if event.status == "initializing" else event.status
    frame: dict[str, Any] = {"type": "whatsapp_status", "status": shown}
    if event.status == "qr_needed":
        frame["qr_code"] = event.qr_code
    async with service_tx(res.pool) as conn:
        previous = await queries.record_status(conn, event.status, event.phone, event.last_error)
        await queries.broadcast_status(conn, frame)
        if event.status == "disconnected" and previous != "disconnected":
            told = await notify.disconnected(conn, event.last_error)
            log.warning("WhatsApp disconnected (%s); %s user(s) notified", event.last_error or "no reason given", told)

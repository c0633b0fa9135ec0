"""POST /api/bridge/events: what the WhatsApp bridge reports (internal; not in the OpenAPI docs).

Every event is signed by the bridge: X-Bridge-Timestamp (unix seconds) and X-Bridge-Signature
`sha256=<hex HMAC-SHA256 of "<timestamp>.<raw body>" keyed with BRIDGE_TOKEN>`. A wrong or
missing signature, or a timestamp more than 5 minutes away from our clock, is refused with 401.

- `message_ack` {whatsapp_message_id, idempotency_key, ack: sent|delivered|read|failed, at}:
  the delivery moves forward (private.apply_ack: never backwards; failed only before
  delivered). An ack that settles a delivery the worker still had open wakes the workers, so
  they finish its message.
- `whatsapp_status` {status, qr_code, phone, since, last_error, raw_state, last_disconnect_reason}:
  kept on the number's row (private.record_number_status, which maps the bridge's word to the
  number's state) and relayed to every user's socket (realtime topic `whatsapp`, the guide's frame
  with number_id; qr_code only when qr_needed, and only the default number's); on a transition to
  `disconnected`, a warning notification for each user with scheduled or sending messages.
- `bridge_registered` {url}: where the bridge process driving the number listens
  (private.register_bridge), so workers on any machine find it through Postgres.

Every event may carry `number_id`, the number the bridge drives; without it, the default number
(a single-number install's bridge knows nothing of numbers). An unknown number_id is refused
(404 number_not_found: the bridge does not retry it).

- `inbound_message` {phone, text, whatsapp_message_id, at}: a reply to the event's number
  (private.record_reply): kept once per user who wrote to the sender from that number within
  REPLY_WINDOW_DAYS, and an opt-out or opt-in keyword applied to the contacts with that phone of
  the users the number concerns (every user, unless it is a self-service number); from anyone
  else it is dropped, never stored, and its text is never logged.

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
from uuid import UUID

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from whatsched.api.deps import Resources, ResourcesDep
from whatsched.api.errors import ApiError
from whatsched.contracts import E164_PATTERN, WHATSAPP_MESSAGE_ID_MAX_CHARS
from whatsched.db.pool import service_tx
from whatsched.dispatcher import notify
from whatsched.whatsapp import queries

router = APIRouter(prefix="/api/bridge", tags=["bridge"], include_in_schema=False)
log = logging.getLogger("whatsched.bridge_events")

TIMESTAMP_HEADER = "X-Bridge-Timestamp"
SIGNATURE_HEADER = "X-Bridge-Signature"
MAX_SKEW_S = 300


class BridgeEvent(BaseModel):
    # The number the sending bridge drives; absent: the default number.
    number_id: UUID | None = None


class MessageAck(BridgeEvent):
    type: Literal["message_ack"]
    whatsapp_message_id: str = Field(min_length=1, max_length=WHATSAPP_MESSAGE_ID_MAX_CHARS)
    idempotency_key: str | None = Field(default=None, max_length=300)
    ack: Literal["sent", "delivered", "read", "failed"]
    at: datetime | None = None


class WhatsAppStatus(BridgeEvent):
    type: Literal["whatsapp_status"]
    # contracts/limits.json's connection_states (a test holds them equal), and `starting`, a
    # number's own word for initializing, which private.number_status takes alike.
    status: Literal["connected", "disconnected", "qr_needed", "initializing", "stopped", "starting"]
    qr_code: str | None = None
    phone: str | None = Field(default=None, max_length=40)
    since: str | None = None
    last_error: str | None = Field(default=None, max_length=2000)
    raw_state: str | None = Field(default=None, max_length=100)
    last_disconnect_reason: str | None = Field(default=None, max_length=2000)


class BridgeRegistered(BridgeEvent):
    type: Literal["bridge_registered"]
    url: str = Field(pattern=r"^https?://\S+$", max_length=500)


class InboundMessage(BridgeEvent):
    type: Literal["inbound_message"]
    phone: str = Field(pattern=E164_PATTERN)
    # Whatever WhatsApp allowed; what is kept is cut to 4096 characters (the longest message).
    text: str = Field(max_length=65_536)
    whatsapp_message_id: str = Field(min_length=1, max_length=WHATSAPP_MESSAGE_ID_MAX_CHARS)
    at: datetime | None = None


class OtherEvent(BaseModel):
    type: str


Event = MessageAck | WhatsAppStatus | InboundMessage | BridgeRegistered
_EVENT: TypeAdapter[Event] = TypeAdapter(Annotated[Event, Field(discriminator="type")])
KNOWN = frozenset({"message_ack", "whatsapp_status", "inbound_message", "bridge_registered"})


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
    elif isinstance(event, BridgeRegistered):
        async with service_tx(res.pool) as conn:
            await queries.register_bridge(conn, _number(event), event.url)
    else:
        await _relay_status(res, event)
    return Response(status_code=204)


async def _apply_ack(res: Resources, event: MessageAck) -> None:
    async with service_tx(res.pool) as conn:
        await queries.apply_ack(conn, event.whatsapp_message_id, event.idempotency_key, event.ack, event.at)


async def _record_reply(res: Resources, event: InboundMessage) -> None:
    async with service_tx(res.pool) as conn:
        await queries.record_reply(conn, event.phone, event.text, event.whatsapp_message_id, event.at, _number(event))


def _number(event: BridgeEvent) -> str | None:
    return str(event.number_id) if event.number_id else None


async def _relay_status(res: Resources, event: WhatsAppStatus) -> None:
    # The database keeps the number's state and broadcasts the guide's event (connected |
    # disconnected | qr_needed: a bridge still starting is not connected yet), number_id added.
    async with service_tx(res.pool) as conn:
        previous = await queries.record_status(
            conn,
            _number(event),
            event.status,
            event.raw_state,
            event.phone,
            event.last_disconnect_reason or event.last_error,
            event.qr_code,
        )
        if event.status == "disconnected" and previous not in queries.DOWN_STATES:
            told = await notify.disconnected(conn, event.last_error)
            log.warning("WhatsApp disconnected (%s); %s user(s) notified", event.last_error or "no reason given", told)

"""Deliver: send one claimed batch through the bridge, concurrently, and sort the answers into
sends the bridge accepted and refusals (permanent or transient)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from uuid import UUID

from whatsched import metrics
from whatsched.bridge_client import BridgeClient, BridgeError
from whatsched.dispatcher.claim import Claimed


@dataclass(frozen=True, slots=True)
class Sent:
    id: UUID
    whatsapp_message_id: str
    replayed: bool


@dataclass(frozen=True, slots=True)
class Refused:
    id: UUID
    code: str
    message: str
    permanent: bool


async def _send_one(bridge: BridgeClient, delivery: Claimed, body: str) -> Sent | Refused:
    try:
        result = await bridge.send(delivery.phone, body, delivery.idempotency_key)
    except BridgeError as exc:
        metrics.BRIDGE_ERRORS.labels(exc.code).inc()
        return Refused(delivery.id, exc.code, exc.message, not exc.transient)
    except Exception as exc:  # a malformed answer is the bridge failing, and worth a retry
        metrics.BRIDGE_ERRORS.labels("send_failed").inc()
        return Refused(delivery.id, "send_failed", f"unexpected answer from the bridge: {exc!r}", False)
    return Sent(delivery.id, result.whatsapp_message_id, result.replayed)


async def send_batch(bridge: BridgeClient, batch: list[Claimed]) -> tuple[list[Sent], list[Refused]]:
    """Send what the claim rendered and passed; skipped and held deliveries have no body and stay here."""
    answers = await asyncio.gather(*(_send_one(bridge, d, d.body) for d in batch if d.body is not None))
    sent = [a for a in answers if isinstance(a, Sent)]
    refused = [a for a in answers if isinstance(a, Refused)]
    return sent, refused

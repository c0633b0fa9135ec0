"""Deliver: send one claimed batch through the bridge, concurrently, and sort the answers into
sends the bridge accepted and refusals (permanent or transient)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any
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


def media_request(media: dict[str, Any] | None, media_base: str) -> dict[str, Any] | None:
    """What the bridge needs to fetch an attachment once (by its SHA-256) and send it: a reference,
    never the bytes (GET {media_base}/api/bridge/media/{id} with the bridge's token)."""
    if media is None:
        return None
    return {
        "url": f"{media_base}/api/bridge/media/{media['id']}",
        "sha256": media["sha256"],
        "size": media["size"],
        "mime_type": media["mime_type"],
        "filename": media["filename"],
        "kind": media["kind"],
    }


async def _send_one(bridge: BridgeClient, delivery: Claimed, body: str, media_base: str) -> Sent | Refused:
    try:
        result = await bridge.send(
            delivery.phone, body, delivery.idempotency_key, media_request(delivery.media, media_base)
        )
    except BridgeError as exc:
        metrics.BRIDGE_ERRORS.labels(exc.code).inc()
        return Refused(delivery.id, exc.code, exc.message, not exc.transient)
    except Exception as exc:  # a malformed answer is the bridge failing, and worth a retry
        metrics.BRIDGE_ERRORS.labels("send_failed").inc()
        return Refused(delivery.id, "send_failed", f"unexpected answer from the bridge: {exc!r}", False)
    return Sent(delivery.id, result.whatsapp_message_id, result.replayed)


async def send_batch(
    bridge: BridgeClient, batch: list[Claimed], media_base: str = ""
) -> tuple[list[Sent], list[Refused]]:
    """Send what the claim rendered and passed; skipped and held deliveries have no body and stay
    here. `media_base`: the API's URL the bridge fetches attachments from."""
    answers = await asyncio.gather(*(_send_one(bridge, d, d.body, media_base) for d in batch if d.body is not None))
    sent = [a for a in answers if isinstance(a, Sent)]
    refused = [a for a in answers if isinstance(a, Refused)]
    return sent, refused

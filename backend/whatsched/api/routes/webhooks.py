"""The webhooks API: endpoints (create, list, read, change, delete), their secret's rotation, the
delivery log, replays and a test ping.

Each route runs the database's statement or function for it in the caller's transaction
(whatsched.webhooks.queries), so a supabase-js caller meets the same rules: another user's endpoint
is a 404 webhook_not_found, a deployment-wide one is an admin's (403 forbidden), a URL on a private
address is a 422 webhook_url_not_allowed, every change is audited (webhook.*). Deliveries are sent
by the workers (whatsched.webhooks.sender).
"""

from __future__ import annotations

from typing import Literal
from uuid import UUID

from fastapi import APIRouter, Query, Response

from whatsched.api.common import Page, pg_json
from whatsched.api.deps import PagingDep, UserConn
from whatsched.api.errors import ApiError, responses
from whatsched.webhooks import queries
from whatsched.webhooks.models import (
    Ping,
    Replay,
    Replayed,
    SecretRotation,
    WebhookCreate,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEndpointCreated,
    WebhookSecret,
    WebhookUpdate,
)

router = APIRouter(prefix="/api/webhooks", tags=["webhooks"])


def _not_found(endpoint_id: UUID) -> ApiError:
    return ApiError(404, queries.NOT_FOUND, f"Webhook {endpoint_id} was not found.")


@router.get("", response_model=list[WebhookEndpoint], responses=responses(401, 422))
async def list_webhooks(conn: UserConn) -> Response:
    """Your endpoints, newest first (admins: every endpoint, deployment-wide ones included)."""
    return pg_json(await queries.list_endpoints(conn))


@router.post("", response_model=WebhookEndpointCreated, status_code=201, responses=responses(400, 401, 403, 422))
async def create_webhook(body: WebhookCreate, conn: UserConn) -> Response:
    """A new endpoint, enabled, with its secret: shown this once. Events you receive on the socket
    are POSTed to it, signed (Standard Webhooks). `deployment_wide`: every user's events (admins)."""
    text = await queries.create_endpoint(conn, body.url, body.event_types, body.description, body.deployment_wide)
    return pg_json(text, 201)


@router.get("/{endpoint_id}", response_model=WebhookEndpoint, responses=responses(401, 404, 422))
async def get_webhook(endpoint_id: UUID, conn: UserConn) -> Response:
    text = await queries.endpoint_json(conn, str(endpoint_id))
    if text is None:
        raise _not_found(endpoint_id)
    return pg_json(text)


@router.put("/{endpoint_id}", response_model=WebhookEndpoint, responses=responses(400, 401, 404, 422))
async def update_webhook(endpoint_id: UUID, body: WebhookUpdate, conn: UserConn) -> Response:
    """Partial update; `enabled: true` turns on again an endpoint the database disabled."""
    clear = "description" in body.model_fields_set and body.description is None
    text = await queries.update_endpoint(
        conn, str(endpoint_id), body.url, body.event_types, body.description, clear, body.enabled
    )
    if text is None:
        raise _not_found(endpoint_id)
    return pg_json(text)


@router.delete("/{endpoint_id}", status_code=204, response_class=Response, responses=responses(401, 404, 422))
async def delete_webhook(endpoint_id: UUID, conn: UserConn) -> Response:
    """Removes the endpoint and its delivery log; nothing more is sent to it."""
    if not await queries.delete_endpoint(conn, str(endpoint_id)):
        raise _not_found(endpoint_id)
    return Response(status_code=204)


@router.post("/{endpoint_id}/rotate-secret", response_model=WebhookSecret, responses=responses(400, 401, 404, 422))
async def rotate_webhook_secret(endpoint_id: UUID, conn: UserConn, body: SecretRotation | None = None) -> Response:
    """A new secret, shown this once. For `grace_hours` (24) requests carry two signatures, the new
    secret's and the old one's, so a receiver can switch without losing an event."""
    grace = (body or SecretRotation()).grace_hours
    secret = await queries.rotate_secret(conn, str(endpoint_id), grace)
    return pg_json(WebhookSecret(secret=secret).model_dump_json())


@router.get("/{endpoint_id}/deliveries", response_model=Page[WebhookDelivery], responses=responses(401, 404, 422))
async def list_deliveries(
    endpoint_id: UUID,
    conn: UserConn,
    paging: PagingDep,
    state: Literal["pending", "delivered", "failed"] | None = Query(None, description="only deliveries in this state"),
) -> Response:
    """The delivery log, newest first: each event sent to the endpoint with its attempts (status
    code, latency, error)."""
    if await queries.endpoint_json(conn, str(endpoint_id)) is None:
        raise _not_found(endpoint_id)
    return pg_json(await queries.deliveries_page(conn, str(endpoint_id), state, paging.page, paging.page_size))


@router.post("/{endpoint_id}/replay", response_model=Replayed, status_code=202, responses=responses(400, 401, 404, 422))
async def replay_deliveries(endpoint_id: UUID, body: Replay, conn: UserConn) -> Response:
    """Sends events again with their `webhook-id` unchanged: one delivery, or every delivery
    created in [since, until). Their retry schedule starts afresh."""
    delivery = str(body.delivery_id) if body.delivery_id else None
    queued = await queries.replay(conn, str(endpoint_id), delivery, body.since, body.until)
    return pg_json(Replayed(queued=queued).model_dump_json(), 202)


@router.post("/{endpoint_id}/test", response_model=Ping, status_code=202, responses=responses(401, 404, 422))
async def ping_webhook(endpoint_id: UUID, conn: UserConn) -> Response:
    """Queues a `webhook_test` event to this endpoint alone, whatever its filter."""
    delivery = await queries.ping(conn, str(endpoint_id))
    return pg_json(Ping(delivery_id=delivery).model_dump_json(), 202)

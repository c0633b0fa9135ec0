"""Request bodies and the documented response shapes of the webhooks API."""

from __future__ import annotations

from datetime import datetime
from typing import Literal
from uuid import UUID

from pydantic import BaseModel, Field

from whatsched.models import UtcDateTime

DeliveryState = Literal["pending", "delivered", "failed"]

EVENT_TYPES_DOC = "Event types to receive (contracts/events.json, docs/events.md); empty: all of them"


class WebhookCreate(BaseModel):
    url: str = Field(max_length=2000, description="http(s) URL; not a loopback, private or metadata address")
    event_types: list[str] = Field(default_factory=list, max_length=50, description=EVENT_TYPES_DOC)
    description: str | None = Field(default=None, max_length=500)
    deployment_wide: bool = Field(default=False, description="Every user's events (admins only)")


class WebhookUpdate(BaseModel):
    """Partial: only the fields present change (`description: null` clears it)."""

    url: str | None = Field(default=None, max_length=2000)
    event_types: list[str] | None = Field(default=None, max_length=50, description=EVENT_TYPES_DOC)
    description: str | None = Field(default=None, max_length=500)
    enabled: bool | None = Field(default=None, description="true again after the database disabled it")


class WebhookEndpoint(BaseModel):
    id: str
    owner_id: str | None = Field(description="Whose events it receives; null: every user's (deployment-wide)")
    deployment_wide: bool
    url: str
    description: str | None
    event_types: list[str] = Field(description=EVENT_TYPES_DOC)
    enabled: bool
    disabled_reason: str | None = Field(description="Why the database disabled it (a 410, days of failures)")
    failing_since: UtcDateTime | None = Field(description="Its first failure since its last success")
    secret_rotated_at: UtcDateTime | None
    created_at: UtcDateTime
    updated_at: UtcDateTime


class WebhookEndpointCreated(WebhookEndpoint):
    secret: str = Field(description="`whsec_...`: shown this once; keep it to verify signatures")


class SecretRotation(BaseModel):
    grace_hours: float = Field(
        default=24, ge=0, le=168, description="The previous secret also signs for this long (two signatures)"
    )


class WebhookSecret(BaseModel):
    secret: str = Field(description="The new `whsec_...` secret, shown this once")


class WebhookAttempt(BaseModel):
    attempt: int
    at: UtcDateTime
    status_code: int | None
    latency_ms: int | None
    error: str | None


class WebhookDelivery(BaseModel):
    id: str = Field(description="The `webhook-id` header: the receiver's idempotency key")
    event_type: str
    state: DeliveryState
    attempts: int
    next_attempt_at: UtcDateTime | None = Field(description="When a pending delivery is tried next")
    last_status_code: int | None
    last_error: str | None
    delivered_at: UtcDateTime | None
    created_at: UtcDateTime
    attempt_log: list[WebhookAttempt]


class Replay(BaseModel):
    """One delivery again, or every delivery created in [since, until)."""

    delivery_id: UUID | None = None
    since: datetime | None = None
    until: datetime | None = None


class Replayed(BaseModel):
    queued: int


class Ping(BaseModel):
    delivery_id: str = Field(description="The webhook_test delivery queued for this endpoint")

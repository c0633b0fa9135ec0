"""Request bodies and the documented response shapes of the messages API."""

from __future__ import annotations

from datetime import datetime
from typing import Literal
from uuid import UUID

from croniter import croniter
from pydantic import BaseModel, Field, field_validator

from whatsched.models import UtcDateTime

Status = Literal["draft", "scheduled", "sending", "sent", "paused", "cancelled", "failed"]
STATUSES: tuple[str, ...] = ("draft", "scheduled", "sending", "sent", "paused", "cancelled", "failed")
Sort = Literal["created_at", "-created_at", "scheduled_for", "-scheduled_for", "updated_at", "-updated_at"]
DeliveryState = Literal["pending", "sending", "sent", "delivered", "read", "failed", "cancelled", "skipped"]


def validate_cron(value: str | None) -> str | None:
    """A 5-field cron expression (minute hour day month weekday), read in the owner's timezone."""
    if value is None:
        return None
    expr = " ".join(value.split())
    if len(expr.split(" ")) != 5 or not croniter.is_valid(expr):
        raise ValueError("must be a 5-field cron expression, e.g. '0 9 * * 1'")
    return expr


class MessageWrite(BaseModel):
    # Raw content may be longer than 4096: the database cleans it, then counts (private.clean_content).
    content: str = Field(
        max_length=20_000,
        description="Plain text, at most 4096 characters after cleaning; with media_id the caption, may be empty",
    )
    group_ids: list[UUID] = Field(default_factory=list, max_length=100)
    scheduled_for: datetime | None = Field(
        default=None, description="ISO 8601; a time without offset is read in your profile's timezone"
    )
    recurrence: str | None = Field(default=None, max_length=100, description="5-field cron expression")
    number_id: UUID | None = Field(
        default=None,
        description="The WhatsApp number it leaves from (one you may use: GET /api/whatsapp/numbers); "
        "null: your default number, else the deployment's",
    )
    media_id: UUID | None = Field(
        default=None,
        description="An attachment (POST /api/media): your own file, ready when the message is scheduled",
    )

    @field_validator("recurrence")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        return validate_cron(value)

    @field_validator("content")
    @classmethod
    def _without_nul(cls, value: str) -> str:
        # Postgres text cannot carry NUL, so it cannot reach the cleaning that removes every other
        # control character; JSON can. Dropping it here is transport, not a second rule.
        return value.replace("\x00", "")


class MessageCreate(MessageWrite):
    pass


class MessageUpdate(MessageWrite):
    """Partial: only the fields present in the body change (null clears scheduled_for/recurrence)."""

    content: str = Field(default="", max_length=20_000)
    group_ids: list[UUID] = Field(default_factory=list, max_length=100)


class ScheduleBody(BaseModel):
    scheduled_for: datetime | None = Field(
        default=None, description="Overrides the message's scheduled_for; without offset: your timezone"
    )


class MessageGroup(BaseModel):
    id: str
    name: str
    contact_count: int


class Message(BaseModel):
    id: str
    content: str
    scheduled_for: UtcDateTime | None
    status: Status
    groups: list[MessageGroup]
    created_at: UtcDateTime
    updated_at: UtcDateTime
    sent_at: UtcDateTime | None
    recipient_count: int = Field(
        description="Deliveries once fanned out; before that, the live count of distinct reachable phones"
    )
    delivered_count: int
    failed_count: int
    created_by: str
    recurrence: str | None
    number_id: str | None = Field(description="The WhatsApp number chosen for it; null: the owner's default")
    media_id: str | None = Field(
        default=None, description="Its attachment (GET /api/media/{id}); content is its caption"
    )


class MessagePage(BaseModel):
    items: list[Message]
    total: int
    page: int
    page_size: int


class ScheduledMessage(Message):
    warnings: list[Literal["whatsapp_disconnected"]] = Field(
        default_factory=list, description="Scheduled anyway; whatsapp_disconnected also creates a notification"
    )


class PreviewRecipient(BaseModel):
    contact_id: str
    name: str
    phone: str
    content: str


class Excluded(BaseModel):
    inactive: int
    opted_out: int
    duplicates: int


class SpamVerdict(BaseModel):
    verdict: Literal["ok", "suspected"]
    rules: list[str]


class PreviewMedia(BaseModel):
    id: str
    kind: Literal["image", "video", "audio", "document"] | None
    mime_type: str | None
    original_name: str
    size_bytes: int | None
    state: Literal["pending", "ready", "rejected"]
    url: str


class Preview(BaseModel):
    message_id: str
    content: str
    media: PreviewMedia | None = Field(default=None, description="The attachment each recipient receives, if any")
    recipients: list[PreviewRecipient] = Field(description="Up to 10, as each will receive the message")
    recipient_count: int = Field(description="Distinct reachable phones across the message's groups")
    excluded: Excluded
    spam: SpamVerdict


class StateCounts(BaseModel):
    pending: int
    sending: int
    sent: int
    delivered: int
    read: int
    failed: int
    cancelled: int
    skipped: int


class TimelinePoint(BaseModel):
    minute: UtcDateTime
    sent: int
    failed: int


class Stats(BaseModel):
    message_id: str
    total: int
    states: StateCounts
    success_rate: float | None = Field(description="(sent+delivered+read) / (those + failed); null before any")
    held: int = Field(
        description="Of the skipped, held at the exit: the text rendered for that recipient broke a rule"
        " (deliveries' last_error_code held_by_rules), so it was never sent"
    )
    replies: int = Field(description="Replies whose last message received was this one")
    opt_outs: int = Field(description="Of those, opt-outs (BAJA, STOP, ...): the recipient asked not to be messaged")
    first_sent_at: UtcDateTime | None
    last_sent_at: UtcDateTime | None
    timeline: list[TimelinePoint]


class DayPoint(BaseModel):
    date: str
    sent: int
    failed: int


class Dashboard(BaseModel):
    scope: Literal["mine", "all"]
    timezone: str
    messages: dict[str, int]
    contacts: int
    active_contacts: int
    groups: int
    deliveries: dict[str, int]
    success_rate: float | None
    opt_outs_30d: int = Field(description="Opt-out replies over the last 30 days")
    opt_out_rate_30d: float | None = Field(
        description="opt_outs_30d per delivery WhatsApp accepted in those 30 days; null before any. A rising "
        "rate is the early sign of a ban"
    )
    series: list[DayPoint] = Field(description="The last 30 days (your timezone), oldest first")

"""Request bodies and the documented response shapes of the WhatsApp numbers API."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from whatsched.models import UtcDateTime

# contracts/limits.json's number_states (tests/test_contracts.py holds them equal).
NumberStatus = Literal["stopped", "starting", "qr_needed", "connected", "failed", "paused", "blocked"]
NumberAction = Literal["start", "stop", "restart", "logout"]


class NumberCreate(BaseModel):
    label: str = Field(max_length=1000, description="1-100 characters after cleaning (like a group's name)")
    shared: bool = Field(
        default=True, description="Every user may use it (admins); a user's own number is never shared"
    )


class NumberUpdate(BaseModel):
    """Partial: only the fields present change."""

    label: str | None = Field(default=None, max_length=1000)
    shared: bool | None = None


class WhatsAppNumber(BaseModel):
    id: str
    label: str
    phone: str | None
    status: NumberStatus
    raw_state: str | None = Field(description="whatsapp-web.js's own state, e.g. CONNECTED, TOS_BLOCK, UNPAIRED")
    last_disconnect_reason: str | None
    last_error: str | None
    shared: bool
    owner_id: str | None = Field(description="Who added it (self-service numbers); null: the deployment's")
    is_default: bool
    bridge_url: str | None
    user_ids: list[str] = Field(description="Users it is assigned to (a user sees only themselves)")
    reported_status: NumberStatus | None = Field(
        description="What the bridge last said, in these words but without a health pause (a resume returns to it)"
    )
    health_score: float = Field(
        description="The decaying sum of what WhatsApp did to the number since its last resume; it is paused"
        " at HEALTH_PAUSE_SCORE"
    )
    ramp_until: UtcDateTime | None = Field(description="Until then, after a resume, it sends at a lower pace")
    status_changed_at: UtcDateTime
    created_at: UtcDateTime
    updated_at: UtcDateTime


class NumberCommand(BaseModel):
    id: str
    number_id: str
    action: NumberAction
    requested_by: str | None
    requested_at: UtcDateTime
    done_at: UtcDateTime | None
    result: str | None
    error: str | None


class NumberQr(BaseModel):
    number_id: str
    status: NumberStatus
    qr_code: str | None = Field(description="The QR code to scan (a data URL), while the number waits for one")

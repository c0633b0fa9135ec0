"""The dispatcher's own knobs (DISPATCH_*), next to the careful-sending settings in config.py."""

from __future__ import annotations

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class DispatchSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", env_prefix="DISPATCH_", populate_by_name=True
    )

    # Deliveries claimed and sent concurrently per batch (1 whenever spacing is on).
    batch_size: int = Field(default=200, ge=1, le=1000)
    # Batches in flight per worker: one claims while another sends.
    lanes: int = Field(default=2, ge=1, le=16)
    # Messages started (fanned out) per step, so one huge start does not delay every send.
    start_limit: int = Field(default=4, ge=1, le=1000)
    # Start messages this long before scheduled_for: their deliveries exist (due at scheduled_for)
    # when the time comes, so the first sends are on time. Nothing is sent early.
    start_ahead_s: float = Field(default=5.0, ge=0, le=300)
    # A claimed delivery's lease: after it, another worker re-sends it with the same key.
    lease_s: float = Field(default=120.0, gt=0)
    # Transient failures retry with exponential backoff and jitter, then fail.
    max_attempts: int = Field(default=8, ge=1)
    retry_base_s: float = Field(default=2.0, ge=0)
    retry_max_s: float = Field(default=300.0, ge=0)
    # Per bridge call; capped at half the lease so a call always ends while the lease holds.
    bridge_timeout_s: float = Field(default=30.0, gt=0)
    housekeeping_s: float = Field(default=15.0, gt=0)
    # Warm-up for a new WhatsApp number: the daily cap ramps up over this many days (0 = off).
    warmup_days: int = Field(default=0, ge=0, validation_alias=AliasChoices("SEND_WARMUP_DAYS", "warmup_days"))

    @property
    def bridge_call_timeout_s(self) -> float:
        return min(self.bridge_timeout_s, self.lease_s / 2)

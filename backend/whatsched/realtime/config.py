"""Tunables of the real-time socket, read from the environment (WS_*) like the main settings."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class RealtimeSettings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    # A client must send its auth frame within this many seconds (the guide: 10).
    ws_auth_timeout_s: float = Field(default=10.0, gt=0)
    # Frames waiting for one socket; a client that falls this far behind is cut off.
    ws_send_queue: int = Field(default=256, ge=8)
    # At most one message_progress per message per interval (the last counts always follow).
    ws_progress_interval_s: float = Field(default=0.25, ge=0)
    ws_max_subscriptions: int = Field(default=200, ge=1)
    # How often the idle LISTEN connection is checked (a half-open TCP connection says nothing).
    ws_listen_check_s: float = Field(default=15.0, gt=0)
    ws_reconnect_max_s: float = Field(default=10.0, gt=0)

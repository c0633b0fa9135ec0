"""All configuration, read once from the environment and a `.env` file."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


# The socket's tunables (WS_*), the `realtime` section of Settings.
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


# The dispatcher's knobs (DISPATCH_*), the `dispatch` section of Settings; the careful-sending
# settings are top-level.
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
    # The watch (dispatcher.watch, each housekeeping round): a connected number is restarted when a
    # send waits NUMBER_FROZEN_ACK_S for a delivered ack while newer sends wait too, when its raw
    # state stays OPENING/TIMEOUT for NUMBER_FROZEN_STATE_S, or when its bridge's RSS passes
    # NUMBER_MEMORY_CAP_MB (at a quiet moment); 0 turns a rule off. At most
    # NUMBER_MAX_RESTARTS_PER_HOUR automatic restarts per number, NUMBER_RESTART_BACKOFF_S apart,
    # doubling with each one in the hour.
    frozen_ack_s: float = Field(
        default=600.0, ge=0, validation_alias=AliasChoices("NUMBER_FROZEN_ACK_S", "frozen_ack_s")
    )
    frozen_state_s: float = Field(
        default=120.0, ge=0, validation_alias=AliasChoices("NUMBER_FROZEN_STATE_S", "frozen_state_s")
    )
    memory_cap_mb: float = Field(
        default=1500.0, ge=0, validation_alias=AliasChoices("NUMBER_MEMORY_CAP_MB", "memory_cap_mb")
    )
    max_restarts_per_hour: int = Field(
        default=3, ge=0, validation_alias=AliasChoices("NUMBER_MAX_RESTARTS_PER_HOUR", "max_restarts_per_hour")
    )
    restart_backoff_s: float = Field(
        default=60.0, ge=0, validation_alias=AliasChoices("NUMBER_RESTART_BACKOFF_S", "restart_backoff_s")
    )

    @property
    def bridge_call_timeout_s(self) -> float:
        return min(self.bridge_timeout_s, self.lease_s / 2)


class Settings(BaseSettings):
    """Every setting, read once at an entry point (the CLI, create_app) and passed down. The
    socket's (WS_*) and the dispatcher's (DISPATCH_*) tunables are the nested `realtime` and
    `dispatch` sections, read with their own environment names when Settings is built."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    # Database: empty means the embedded PostgreSQL under DATA_DIR.
    database_url: str | None = None
    # The connection the API and worker use; derived (role `authenticator`) when empty.
    app_database_url: str | None = None
    authenticator_password: str | None = None
    data_dir: Path = Path(".data")
    embedded_pg_port: int = 54329

    api_host: str = "127.0.0.1"
    api_port: int = 8000
    # The API's public base URL (token issuer of the local provider). Default http://API_HOST:API_PORT.
    public_url: str | None = None
    bridge_host: str = "127.0.0.1"
    bridge_port: int = 3001
    bridge_url: str | None = None
    bridge_token: str = "dev-bridge-token"
    whatsapp_driver: Literal["simulator", "wwebjs"] = "simulator"
    # How many WhatsApp numbers `whatsched dev` runs, one bridge process each: the default number
    # on BRIDGE_PORT, the others on the ports after it ("Número 2", ... rows it creates).
    whatsapp_numbers: int = Field(default=1, ge=1, le=20)
    whatsapp_session_path: Path | None = None
    whatsapp_puppeteer_args: str = "--no-sandbox"
    # System Chromium of the wwebjs driver: the bridge reads CHROME_PATH itself; the doctor checks it.
    chrome_path: str = "/usr/bin/chromium"

    # Auth
    auth_provider: Literal["local", "supabase"] | None = None
    jwt_secret: str | None = None
    jwt_expire_hours: float = 24
    refresh_token_days: int = 30
    allow_signup: bool = False
    supabase_url: str | None = None
    supabase_anon_key: str | None = None
    # Only for the command line on Supabase (`users create`, `users promote`, `contacts import
    # --user`): Supabase Auth's admin API. A secret that bypasses RLS; the API never reads it.
    supabase_service_role_key: str | None = None
    trusted_proxies: str = ""

    redis_url: str | None = None
    allowed_origins: str = "http://localhost:3000"
    # FastAPI's native OpenTelemetry (spans, metrics and logs to the global providers). Off, the
    # API skips its per-request check for a configured provider; /metrics (Prometheus) is always on.
    api_opentelemetry: bool = False

    # Careful sending
    send_spacing_min_s: float = Field(default=8.0, ge=0)
    send_spacing_max_s: float = Field(default=20.0, ge=0)
    send_hourly_cap: int = Field(default=200, ge=0)
    send_daily_cap: int = Field(default=1000, ge=0)
    quiet_hours: str = "21:00-08:00"

    # Statement timeout of each user transaction (e.g. "8s"); empty: the `authenticated` role's
    # own setting, as PostgREST applies it (Supabase: 8 s).
    user_statement_timeout: str | None = None

    # The guide's per-user limits (per minute), enforced by Postgres on every path.
    schedule_per_minute: int = Field(default=10, ge=1)
    group_create_per_minute: int = Field(default=5, ge=1)
    # Whole-message reply keywords (comma-separated), matched ignoring case, accents and punctuation.
    opt_out_keywords: str = "baja,stop,alto,cancelar,desuscribir,unsubscribe,no mas,parar,stopall,end,quit"
    opt_in_keywords: str = "alta,start,unstop,suscribir,subscribe"
    # The spam guard's other signals: the longest run of one character, a word list (comma-separated,
    # empty: the Spanish and English defaults of private.settings) and how many of its words make spam.
    spam_max_char_run: int = Field(default=12, ge=2, le=254)
    spam_words: str = ""
    spam_word_limit: int = Field(default=3, ge=0)
    # Replies are kept for the users who messaged that phone within this many days.
    reply_window_days: int = Field(default=30, ge=1)
    # Users may add and connect their own WhatsApp numbers (seen only by them and admins).
    self_service_numbers: bool = False
    # A WhatsApp number's health (README, "Health"): facts weigh their kind's weight, halved every
    # HEALTH_HALF_LIFE_MINUTES; at HEALTH_PAUSE_SCORE the database pauses the number. After a
    # resume, for HEALTH_RAMP_HOURS, it sends HEALTH_RAMP_SHARE of its caps (spacing 1/share longer).
    health_half_life_minutes: float = Field(default=60, gt=0)
    health_pause_score: float = Field(default=2.5, gt=0)
    health_weight_restricted: float = Field(default=1, ge=0)
    health_weight_failed_ack: float = Field(default=0.5, ge=0)
    health_weight_disconnect: float = Field(default=1, ge=0)
    health_weight_opt_out: float = Field(default=0.5, ge=0)
    # Silence: of a number's first messages to new contacts over a day (each at least
    # HEALTH_UNANSWERED_WAIT_HOURS old, at least HEALTH_UNANSWERED_MIN of them), this share or
    # more unanswered is one fact of HEALTH_WEIGHT_UNANSWERED an hour.
    health_weight_unanswered: float = Field(default=1, ge=0)
    health_unanswered_share: float = Field(default=0.8, gt=0, le=1)
    health_unanswered_min: int = Field(default=20, ge=1)
    health_unanswered_wait_hours: float = Field(default=6, ge=0)
    health_ramp_hours: float = Field(default=24, ge=0)
    health_ramp_share: float = Field(default=0.25, gt=0, le=1)

    # Webhooks (README, "Webhooks"): each attempt's timeout, how many requests a worker has in flight,
    # whether URLs may reach loopback/private/link-local addresses (tests and closed networks), and
    # after how many days of failures without a success an endpoint is disabled.
    webhook_timeout_s: float = Field(default=10.0, gt=0, le=60)
    webhook_concurrency: int = Field(default=16, ge=1, le=256)
    webhook_allow_private: bool = False
    webhook_disable_after_days: float = Field(default=5, gt=0)

    # Attachments (README, "Attachments"): WhatsApp's limits per kind (bytes), the types allowed as
    # detected from the bytes (comma-separated; empty: the database's list, Meta's), and whether
    # images keep their metadata (EXIF: GPS location, camera) when they are stored and sent.
    media_max_image_bytes: int = Field(default=5 * 1024 * 1024, ge=1)
    media_max_video_bytes: int = Field(default=16 * 1024 * 1024, ge=1)
    media_max_audio_bytes: int = Field(default=16 * 1024 * 1024, ge=1)
    media_max_document_bytes: int = Field(default=100 * 1024 * 1024, ge=1)
    media_types: str = ""
    media_keep_metadata: bool = False

    # Contacts import: the largest upload (bytes) and the most data rows one file may bring.
    import_max_bytes: int = Field(default=20 * 1024 * 1024, ge=1)
    import_max_rows: int = Field(default=200_000, ge=1)

    realtime: RealtimeSettings = Field(default_factory=RealtimeSettings)
    dispatch: DispatchSettings = Field(default_factory=DispatchSettings)

    @field_validator(
        "database_url",
        "app_database_url",
        "redis_url",
        "supabase_url",
        "supabase_service_role_key",
        "jwt_secret",
        "user_statement_timeout",
        mode="before",
    )
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @property
    def effective_auth_provider(self) -> Literal["local", "supabase"]:
        if self.auth_provider is not None:
            return self.auth_provider
        return "supabase" if self.supabase_url else "local"

    @property
    def media_largest_bytes(self) -> int:
        """The largest file any kind may be: an upload past it is refused while it arrives."""
        return max(
            self.media_max_image_bytes,
            self.media_max_video_bytes,
            self.media_max_audio_bytes,
            self.media_max_document_bytes,
        )

    @property
    def effective_public_url(self) -> str:
        return (self.public_url or f"http://{self.api_host}:{self.api_port}").rstrip("/")

    @property
    def effective_bridge_url(self) -> str:
        return self.bridge_url or f"http://{self.bridge_host}:{self.bridge_port}"

    @property
    def origins(self) -> list[str]:
        return [o.strip() for o in self.allowed_origins.split(",") if o.strip()]

    @property
    def session_path(self) -> Path:
        return self.whatsapp_session_path or self.data_dir / "whatsapp-session"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()

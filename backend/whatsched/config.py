"""All configuration, read once from the environment and a `.env` file."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
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
    whatsapp_session_path: Path | None = None
    whatsapp_puppeteer_args: str = "--no-sandbox"

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

    # Contacts import: the largest upload (bytes) and the most data rows one file may bring.
    import_max_bytes: int = Field(default=20 * 1024 * 1024, ge=1)
    import_max_rows: int = Field(default=200_000, ge=1)

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

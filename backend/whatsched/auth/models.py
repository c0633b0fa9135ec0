"""The session and user shapes the auth endpoints answer with (Supabase's session shape)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class Profile(BaseModel):
    display_name: str
    role: str = Field(description="user | admin")
    timezone: str
    default_country: str


class AuthUser(BaseModel):
    id: str
    aud: str = "authenticated"
    role: str = "authenticated"
    email: str | None = None
    phone: str | None = None
    email_confirmed_at: str | None = None
    last_sign_in_at: str | None = None
    app_metadata: dict[str, Any] = {}
    user_metadata: dict[str, Any] = {}
    created_at: str | None = None
    updated_at: str | None = None
    is_anonymous: bool = False
    profile: Profile | None = None


class Session(BaseModel):
    access_token: str
    token_type: str = "bearer"
    expires_in: int
    expires_at: int
    refresh_token: str
    user: AuthUser


class AuthFailure(Exception):
    """Login, refresh or logout refused. `code` is stable; the message is safe to show."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

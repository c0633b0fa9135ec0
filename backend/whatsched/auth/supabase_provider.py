"""The Supabase provider: login, refresh and logout go to Supabase Auth (GoTrue) through the
official client library; tokens are verified locally like any other (see tokens.Verifier)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from supabase_auth import AsyncGoTrueClient
from supabase_auth.errors import AuthApiError, AuthError

from whatsched.auth.models import AuthFailure, AuthUser, Session

INVALID_LOGIN = AuthFailure("invalid_credentials", "Invalid email or password.")


def _iso(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    return str(value)


def _user(user: Any) -> AuthUser:
    return AuthUser(
        id=str(user.id),
        aud=user.aud or "authenticated",
        role=user.role or "authenticated",
        email=user.email,
        phone=user.phone or None,
        email_confirmed_at=_iso(user.email_confirmed_at),
        last_sign_in_at=_iso(user.last_sign_in_at),
        app_metadata=dict(user.app_metadata or {}),
        user_metadata=dict(user.user_metadata or {}),
        created_at=_iso(user.created_at),
        updated_at=_iso(user.updated_at),
        is_anonymous=bool(getattr(user, "is_anonymous", False)),
    )


def _session(session: Any) -> Session:
    return Session(
        access_token=session.access_token,
        token_type=session.token_type or "bearer",
        expires_in=int(session.expires_in),
        expires_at=int(session.expires_at or 0),
        refresh_token=session.refresh_token,
        user=_user(session.user),
    )


class SupabaseProvider:
    name = "supabase"

    def __init__(self, supabase_url: str, anon_key: str) -> None:
        self.url = supabase_url.rstrip("/") + "/auth/v1"
        self.anon_key = anon_key

    def _client(self) -> AsyncGoTrueClient:
        # One client per call: the server keeps no session state of its own.
        return AsyncGoTrueClient(
            url=self.url,
            headers={"apikey": self.anon_key, "Authorization": f"Bearer {self.anon_key}"},
            auto_refresh_token=False,
            persist_session=False,
        )

    async def login(self, email: str, password: str, ip: str | None, user_agent: str | None) -> Session:
        try:
            answer = await self._client().sign_in_with_password({"email": email, "password": password})
        except AuthApiError as exc:
            if exc.status in (400, 401, 422):
                raise INVALID_LOGIN from exc
            raise AuthFailure("auth_unavailable", "Supabase Auth refused the request.") from exc
        except AuthError as exc:
            raise AuthFailure("auth_unavailable", "Supabase Auth could not be reached.") from exc
        if answer.session is None:
            raise INVALID_LOGIN
        return _session(answer.session)

    async def signup(self, email: str, password: str, name: str) -> AuthUser:
        try:
            answer = await self._client().sign_up(
                {"email": email, "password": password, "options": {"data": {"name": name} if name else {}}}
            )
        except AuthApiError as exc:
            raise AuthFailure("signup_refused", exc.message or "Supabase Auth refused the signup.") from exc
        except AuthError as exc:
            raise AuthFailure("auth_unavailable", "Supabase Auth could not be reached.") from exc
        if answer.user is None:
            raise AuthFailure("signup_refused", "Supabase Auth refused the signup.")
        return _user(answer.user)

    async def refresh(self, refresh_token: str) -> Session:
        try:
            answer = await self._client().refresh_session(refresh_token)
        except AuthApiError as exc:
            code = getattr(exc, "code", None) or "invalid_refresh_token"
            if code == "refresh_token_already_used":
                raise AuthFailure("refresh_token_reused", "The refresh token was already used.") from exc
            if code == "session_expired":
                raise AuthFailure("session_expired", "The session has expired; sign in again.") from exc
            raise AuthFailure("invalid_refresh_token", "The refresh token is invalid or has been revoked.") from exc
        except AuthError as exc:
            raise AuthFailure("invalid_refresh_token", "The refresh token is invalid or has been revoked.") from exc
        if answer.session is None:
            raise AuthFailure("invalid_refresh_token", "The refresh token is invalid or has been revoked.")
        return _session(answer.session)

    async def session_user(self, refresh_token: str) -> str | None:
        return None  # GoTrue does not say whose a token is without using it

    async def logout(self, claims: dict[str, Any], access_token: str) -> None:
        try:
            await self._client().admin.sign_out(access_token, scope="local")
        except AuthApiError as exc:
            if exc.status not in (401, 403, 404):  # an already-ended session is already logged out
                raise AuthFailure("auth_unavailable", "Supabase Auth refused the logout.") from exc
        except AuthError as exc:
            raise AuthFailure("auth_unavailable", "Supabase Auth could not be reached.") from exc

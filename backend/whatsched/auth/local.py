"""The local provider: users, sessions and refresh tokens in GoTrue's own tables (auth.*),
bcrypt passwords, rotating refresh tokens with reuse detection.

It works on the auth tables as GoTrue does on Supabase: as role `supabase_auth_admin`, their owner
(no other API role may touch them). Profiles are ours, not GoTrue's: read and changed as
`service_role`, in the same transaction."""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import bcrypt

from whatsched.auth.keys import SigningKey
from whatsched.auth.models import AuthFailure, AuthUser, Profile, Session
from whatsched.auth.tokens import issue_access_token

BCRYPT_ROUNDS = 10  # GoTrue's cost
# Compared against when the email is unknown, so both answers take the same time.
_DUMMY_HASH = bcrypt.hashpw(b"not-a-real-password", bcrypt.gensalt(BCRYPT_ROUNDS))
INVALID_LOGIN = AuthFailure("invalid_credentials", "Invalid email or password.")


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def hash_password(password: str) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(BCRYPT_ROUNDS)).decode()


def _check_password(password: str, hashed: str | None) -> bool:
    candidate = (hashed or "").encode() or _DUMMY_HASH
    try:
        return bcrypt.checkpw(password.encode(), candidate)
    except ValueError:
        return False


AUTH_ADMIN = "supabase_auth_admin"


@asynccontextmanager
async def auth_admin_tx(pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Connection]:
    """One transaction as `supabase_auth_admin`, the role GoTrue works as on Supabase (the bootstrap
    lets our login role become it on plain Postgres; on Supabase nothing of ours can)."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(f"set local role {AUTH_ADMIN}")
        yield conn


@asynccontextmanager
async def _as_service(conn: asyncpg.Connection) -> AsyncIterator[asyncpg.Connection]:
    """Within an auth_admin_tx: the profile side (public.profiles), as `service_role`, then back."""
    await conn.execute("set local role service_role")
    yield conn
    await conn.execute(f"set local role {AUTH_ADMIN}")


async def find_user_by_email(pool: asyncpg.Pool, email: str) -> tuple[str, str] | None:
    """(id, email) of the user with this email (any case), read as supabase_auth_admin."""
    async with auth_admin_tx(pool) as conn:
        row = await conn.fetchrow(
            "select id::text as id, email from auth.users where lower(email) = lower($1) order by created_at limit 1",
            email.strip(),
        )
    return None if row is None else (str(row["id"]), str(row["email"]))


def user_from_row(row: asyncpg.Record | dict[str, Any]) -> AuthUser:
    profile = None
    if row.get("profile_role") is not None:
        profile = Profile(
            display_name=row["display_name"],
            role=row["profile_role"],
            timezone=row["timezone"],
            default_country=row["default_country"],
        )
    return AuthUser(
        id=str(row["id"]),
        email=row["email"],
        phone=row["phone"],
        email_confirmed_at=_iso(row["email_confirmed_at"]),
        last_sign_in_at=_iso(row["last_sign_in_at"]),
        app_metadata=row["raw_app_meta_data"] or {},
        user_metadata=row["raw_user_meta_data"] or {},
        created_at=_iso(row["created_at"]),
        updated_at=_iso(row["updated_at"]),
        is_anonymous=row["is_anonymous"],
        profile=profile,
    )


USER = """
    select u.id, u.email, u.phone, u.encrypted_password, u.email_confirmed_at, u.last_sign_in_at,
           u.raw_app_meta_data, u.raw_user_meta_data, u.created_at, u.updated_at, u.is_anonymous,
           u.banned_until, u.deleted_at
    from auth.users u
"""
PROFILE = """
    select display_name, role as profile_role, timezone, default_country from public.profiles where id = $1
"""


async def _with_profile(conn: asyncpg.Connection, row: asyncpg.Record | None) -> dict[str, Any] | None:
    """The auth.users row with its profile's columns (None where it has no profile yet)."""
    if row is None:
        return None
    async with _as_service(conn):
        profile = await conn.fetchrow(PROFILE, row["id"])
    return {**dict(row), **(dict(profile) if profile is not None else {})}


async def _user(conn: asyncpg.Connection, user_id: uuid.UUID) -> dict[str, Any] | None:
    return await _with_profile(conn, await conn.fetchrow(USER + " where u.id = $1", user_id))


class LocalProvider:
    name = "local"

    def __init__(self, pool: asyncpg.Pool, key: SigningKey, issuer: str, lifetime_s: int, refresh_days: int) -> None:
        self.pool = pool
        self.key = key
        self.issuer = issuer
        self.lifetime_s = lifetime_s
        self.refresh_days = refresh_days

    # ---------------------------------------------------------------- users

    async def create_user(self, email: str, password: str, *, admin: bool = False, name: str = "") -> AuthUser:
        hashed = await asyncio.to_thread(hash_password, password)
        now = datetime.now(UTC)
        async with auth_admin_tx(self.pool) as conn:
            exists = await conn.fetchval("select 1 from auth.users where lower(email) = lower($1)", email)
            if exists:
                raise AuthFailure("user_exists", "A user with this email already exists.")
            user_id = uuid.uuid4()
            await conn.execute(
                """insert into auth.users (instance_id, id, aud, role, email, encrypted_password,
                       email_confirmed_at, raw_app_meta_data, raw_user_meta_data, created_at, updated_at,
                       confirmation_token, recovery_token, email_change_token_new, email_change)
                   values ('00000000-0000-0000-0000-000000000000', $1, 'authenticated', 'authenticated',
                       lower($2), $3, $4, $5, $6, $4, $4, '', '', '', '')""",
                user_id,
                email,
                hashed,
                now,
                {"provider": "email", "providers": ["email"]},
                {"name": name} if name else {},
            )
            if admin:
                async with _as_service(conn):
                    await conn.execute("update public.profiles set role = 'admin' where id = $1", user_id)
            row = await _user(conn, user_id)
        assert row is not None
        return user_from_row(row)

    async def signup(self, email: str, password: str, name: str) -> AuthUser:
        return await self.create_user(email, password, name=name)

    async def set_role(self, email: str, role: str) -> AuthUser:
        async with auth_admin_tx(self.pool) as conn:
            user_id = await conn.fetchval(
                "select id from auth.users where lower(email) = lower($1) order by created_at limit 1", email
            )
            changed = None
            if user_id is not None:
                async with _as_service(conn):
                    changed = await conn.fetchval(
                        "update public.profiles set role = $2 where id = $1 returning id", user_id, role
                    )
            if changed is None:
                raise AuthFailure("user_not_found", f"No user with email {email}.")
            user = await _user(conn, user_id)
        assert user is not None
        return user_from_row(user)

    async def get_user(self, user_id: str) -> AuthUser | None:
        async with auth_admin_tx(self.pool) as conn:
            row = await _user(conn, uuid.UUID(user_id))
        return user_from_row(row) if row else None

    # ---------------------------------------------------------------- sessions

    async def _new_session(
        self, conn: asyncpg.Connection, row: asyncpg.Record | dict[str, Any], ip: str | None, user_agent: str | None
    ) -> tuple[str, str]:
        session_id = uuid.uuid4()
        now = datetime.now(UTC)
        await conn.execute(
            "insert into auth.sessions (id, user_id, created_at, updated_at, aal, not_after, ip, user_agent)"
            " values ($1, $2, $3, $3, 'aal1', $4, $5::inet, $6)",
            session_id,
            row["id"],
            now,
            now + timedelta(days=self.refresh_days),
            ip,
            user_agent,
        )
        token = await self._new_refresh_token(conn, row["id"], session_id, parent=None)
        return str(session_id), token

    async def _new_refresh_token(
        self, conn: asyncpg.Connection, user_id: uuid.UUID, session_id: uuid.UUID, parent: str | None
    ) -> str:
        token = secrets.token_urlsafe(32)
        now = datetime.now(UTC)
        await conn.execute(
            "insert into auth.refresh_tokens (instance_id, token, user_id, revoked, created_at, updated_at,"
            " parent, session_id) values ('00000000-0000-0000-0000-000000000000', $1, $2, false, $3, $3, $4, $5)",
            token,
            str(user_id),
            now,
            parent,
            session_id,
        )
        return token

    def _session(self, row: asyncpg.Record | dict[str, Any], session_id: str, refresh_token: str) -> Session:
        user = user_from_row(row)
        claims_user: dict[str, Any] = {
            "id": row["id"],
            "email": row["email"],
            "phone": row["phone"],
            "raw_app_meta_data": row["raw_app_meta_data"],
            "raw_user_meta_data": row["raw_user_meta_data"],
            "is_anonymous": row["is_anonymous"],
        }
        token, expires_at = issue_access_token(
            self.key, issuer=self.issuer, user=claims_user, session_id=session_id, lifetime_s=self.lifetime_s
        )
        return Session(
            access_token=token,
            expires_in=self.lifetime_s,
            expires_at=expires_at,
            refresh_token=refresh_token,
            user=user,
        )

    async def login(self, email: str, password: str, ip: str | None, user_agent: str | None) -> Session:
        async with auth_admin_tx(self.pool) as conn:
            row = await conn.fetchrow(USER + " where lower(u.email) = lower($1)", email)
        hashed = row["encrypted_password"] if row else None
        ok = await asyncio.to_thread(_check_password, password, hashed)
        if row is None or not ok:
            raise INVALID_LOGIN
        now = datetime.now(UTC)
        if row["deleted_at"] is not None or (row["banned_until"] is not None and row["banned_until"] > now):
            raise INVALID_LOGIN
        async with auth_admin_tx(self.pool) as conn:
            await conn.execute("update auth.users set last_sign_in_at = $2 where id = $1", row["id"], now)
            session_id, refresh = await self._new_session(conn, row, ip, user_agent)
            signed_in = await _user(conn, row["id"])
        assert signed_in is not None
        return self._session(signed_in, session_id, refresh)

    async def refresh(self, refresh_token: str) -> Session:
        """Rotate: the presented token is revoked and a child issued. Presenting a revoked token
        again means it leaked: the whole session is revoked."""
        refusal: AuthFailure | None = None
        async with auth_admin_tx(self.pool) as conn:
            current = await conn.fetchrow(
                "select t.id, t.token, t.revoked, t.session_id, t.user_id, s.not_after"
                " from auth.refresh_tokens t join auth.sessions s on s.id = t.session_id"
                " where t.token = $1 for update of t",
                refresh_token,
            )
            row: dict[str, Any] | None = None
            if current is None:
                refusal = AuthFailure("invalid_refresh_token", "The refresh token is invalid or has been revoked.")
            elif current["revoked"]:
                await conn.execute("delete from auth.sessions where id = $1", current["session_id"])
                refusal = AuthFailure(
                    "refresh_token_reused", "The refresh token was already used; the session is revoked."
                )
            elif current["not_after"] is not None and current["not_after"] < datetime.now(UTC):
                await conn.execute("delete from auth.sessions where id = $1", current["session_id"])
                refusal = AuthFailure("session_expired", "The session has expired; sign in again.")
            else:
                await conn.execute(
                    "update auth.refresh_tokens set revoked = true, updated_at = now() where id = $1", current["id"]
                )
                await conn.execute(
                    "update auth.sessions set refreshed_at = now(), updated_at = now() where id = $1",
                    current["session_id"],
                )
                row = await _user(conn, uuid.UUID(current["user_id"]))
                if row is None:
                    refusal = AuthFailure("invalid_refresh_token", "The refresh token is invalid or has been revoked.")
                else:
                    token = await self._new_refresh_token(conn, row["id"], current["session_id"], parent=refresh_token)
        # Raised after the transaction commits, so a revocation sticks.
        if refusal is not None or current is None or row is None:
            raise refusal or AuthFailure("invalid_refresh_token", "The refresh token is invalid or has been revoked.")
        return self._session(row, str(current["session_id"]), token)

    async def session_user(self, refresh_token: str) -> str | None:
        """Whose refresh token this is (for the audit log), without changing anything."""
        async with auth_admin_tx(self.pool) as conn:
            value = await conn.fetchval("select user_id from auth.refresh_tokens where token = $1", refresh_token)
        return str(value) if value else None

    async def logout(self, claims: dict[str, Any], access_token: str) -> None:
        session_id = claims.get("session_id")
        if not session_id:
            return
        async with auth_admin_tx(self.pool) as conn:
            await conn.execute(
                "delete from auth.sessions where id = $1 and user_id = $2",
                uuid.UUID(str(session_id)),
                uuid.UUID(str(claims["sub"])),
            )

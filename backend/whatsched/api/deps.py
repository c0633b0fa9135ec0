"""Shared request dependencies: the app's resources, who is calling, a transaction as them, and
pagination; and their `Annotated` aliases, which every route uses:

- `ResourcesDep`: the app's Resources (settings, pools, clients);
- `CallerDep`: the verified caller (401 without a valid bearer token);
- `UserConn`: a transaction as the caller (RLS applies; request.headers carries their IP and user
  agent, as PostgREST passes them). Its scope is "function": the transaction commits when the
  route returns, before the response is sent, so an answer describes what was committed and a
  failing commit is answered as an error;
- `caller_tx(res, who)`: the same transaction opened by the route itself, for the guide's hot
  reads (FastAPI's handling of a generator dependency costs about 0.1 ms of CPU a request);
- `PagingDep`: the page and page_size query parameters.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Annotated, Any, Protocol

import asyncpg
from fastapi import Depends, Query, Request
from fastapi.security import HTTPBearer
from limits import RateLimitItem
from pydantic import BaseModel
from starlette.requests import HTTPConnection

from whatsched.api.errors import ApiError
from whatsched.auth.client_ip import client_ip
from whatsched.auth.keys import SigningKey
from whatsched.auth.models import AuthUser, Session
from whatsched.auth.ratelimit import RateLimits
from whatsched.auth.tokens import InvalidToken, Verifier
from whatsched.bridge_client import BridgeClient
from whatsched.config import Settings
from whatsched.db.pool import begun_tx, request_headers, user_begin


class AuthProvider(Protocol):
    name: str

    async def login(self, email: str, password: str, ip: str | None, user_agent: str | None) -> Session: ...
    async def refresh(self, refresh_token: str) -> Session: ...
    async def logout(self, claims: dict[str, Any], access_token: str) -> None: ...
    async def signup(self, email: str, password: str, name: str) -> AuthUser: ...
    async def session_user(self, refresh_token: str) -> str | None: ...


@dataclass
class Resources:
    settings: Settings
    pool: asyncpg.Pool
    bridge: BridgeClient
    verifier: Verifier
    provider: AuthProvider
    limits: RateLimits
    local_key: SigningKey | None


def resources_of(conn: HTTPConnection) -> Resources:
    res: Resources = conn.app.state.resources
    return res


async def resources(conn: HTTPConnection) -> Resources:  # async: no thread-pool hop per request
    return resources_of(conn)


ResourcesDep = Annotated[Resources, Depends(resources)]


@dataclass(frozen=True)
class Caller:
    """A verified caller: the claims are exactly what Postgres receives as request.jwt.claims."""

    id: str
    claims: dict[str, Any]
    token: str
    ip: str
    user_agent: str | None

    @property
    def email(self) -> str | None:
        value = self.claims.get("email")
        return str(value) if value else None

    @property
    def request_headers(self) -> dict[str, str]:
        """What Postgres receives as request.headers: the client as this API resolved it."""
        return request_headers(self.ip, self.user_agent)

    @property
    def tx_begin(self) -> str:
        """The text that opens a transaction as this caller (db.pool.user_begin). A token's claims
        never change, so it is built once per token, IP and user agent (40 µs of JSON and quoting
        a request otherwise), and only after the token was verified for this request."""
        key = (self.token, self.ip, self.user_agent)
        text = _TX_BEGIN.get(key)
        if text is None:
            if len(_TX_BEGIN) >= TX_BEGIN_MAX:
                _TX_BEGIN.clear()
            text = _TX_BEGIN[key] = user_begin(self.claims, self.request_headers)
        return text


TX_BEGIN_MAX = 10_000
_TX_BEGIN: dict[tuple[str, str, str | None], str] = {}


UNAUTHENTICATED = {"WWW-Authenticate": "Bearer"}


def bearer_token(conn: HTTPConnection) -> str:
    header = conn.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(
            401,
            "unauthenticated",
            "Authentication required: send Authorization: Bearer <token>.",
            headers=UNAUTHENTICATED,
        )
    return token.strip()


async def verify_token(res: Resources, token: str) -> dict[str, Any]:
    try:
        return await res.verifier.verify(token)
    except InvalidToken as exc:
        raise ApiError(
            401, "invalid_token", "The access token is invalid or has expired.", headers=UNAUTHENTICATED
        ) from exc


class BearerCaller(HTTPBearer):
    """The verified caller, as one dependency that is also the security scheme OpenAPI declares
    (Swagger's Authorize button). bearer_token() reads the header, so a missing or malformed one is
    answered with our own 401 body. One call per request: the scheme, the resources and the caller
    as separate sub-dependencies cost FastAPI about 0.12 ms of CPU a request to solve."""

    async def __call__(self, request: Request) -> Caller:  # type: ignore[override]
        res = resources_of(request)
        token = bearer_token(request)
        claims = await verify_token(res, token)
        return Caller(
            id=str(claims["sub"]),
            claims=claims,
            token=token,
            ip=client_ip(request, res.settings.trusted_proxies),
            user_agent=request.headers.get("user-agent"),
        )


caller = BearerCaller(
    scheme_name="HTTPBearer",
    auto_error=False,
    description="An access token from POST /api/auth/login (or Supabase Auth).",
)
CallerDep = Annotated[Caller, Depends(caller)]


def caller_tx(res: Resources, who: Caller) -> AbstractAsyncContextManager[asyncpg.Connection]:
    """A transaction as the caller: RLS decides what it sees, and the database's audit trail
    records the caller's IP and user agent. Three round trips for a read: BEGIN with the settings,
    the query, COMMIT (db.pool.begun_tx)."""
    return begun_tx(res.pool, who.tx_begin)


async def user_conn(who: CallerDep, res: ResourcesDep) -> AsyncIterator[asyncpg.Connection]:
    async with caller_tx(res, who) as conn:
        yield conn


# scope="function": the transaction ends (commits) when the route returns, before the response is sent.
UserConn = Annotated[asyncpg.Connection, Depends(user_conn, scope="function")]


class PageParams(BaseModel):
    """A validated page request; its LIMIT and OFFSET come from db.paging.limit_offset."""

    page: int
    page_size: int


async def page_params(
    page: int = Query(1, ge=1, le=100_000, description="1-based page number"),
    page_size: int = Query(20, ge=1, le=100, description="items per page (max 100)"),
) -> PageParams:
    return PageParams(page=page, page_size=page_size)


PagingDep = Annotated[PageParams, Depends(page_params)]


async def enforce_limit(res: Resources, item: RateLimitItem, *keys: str, count: bool = True) -> dict[str, str]:
    """429 with Retry-After when nothing remains; otherwise count one hit (unless `count` is
    False: the caller counts only failures, see `count_failure`). Returns the X-RateLimit-* headers."""
    verdict = await (res.limits.hit(item, *keys) if count else res.limits.peek(item, *keys))
    if not verdict.allowed:
        raise ApiError(
            429, "rate_limited", f"Too many requests; retry in {verdict.retry_after} s.", headers=verdict.headers()
        )
    return verdict.headers()


async def count_failure(res: Resources, item: RateLimitItem, *keys: str) -> dict[str, str]:
    """Count one failed attempt; returns the X-RateLimit-* headers after it."""
    verdict = await res.limits.hit(item, *keys)
    headers = verdict.headers()
    headers.pop("Retry-After", None)  # this answer is the failure itself, not a refusal
    return headers

"""Authentication endpoints: login, refresh, logout, me, signup, and the local JWKS."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, EmailStr, Field, field_validator

from whatsched import audit
from whatsched.api.deps import CallerDep, Resources, ResourcesDep, UserConn, count_failure, enforce_limit
from whatsched.api.errors import ApiError, responses
from whatsched.auth import queries, ratelimit
from whatsched.auth.client_ip import client_ip
from whatsched.auth.models import AuthFailure, AuthUser, Session
from whatsched.db.pool import request_headers, service_tx

router = APIRouter(prefix="/api/auth", tags=["auth"])
jwks_router = APIRouter(tags=["auth"])

ERRORS = responses(400, 401, 422, 429)


class LoginBody(BaseModel):
    email: EmailStr = Field(max_length=320)
    password: str = Field(min_length=1, max_length=1024)


class SignupBody(LoginBody):
    # bcrypt (ours and GoTrue's) reads at most 72 bytes: longer would be refused or silently cut.
    password: str = Field(min_length=8, max_length=72)
    name: str = Field(default="", max_length=200)

    @field_validator("password")
    @classmethod
    def _fits_bcrypt(cls, value: str) -> str:
        if len(value.encode()) > 72:
            raise ValueError("must be at most 72 bytes in UTF-8")
        return value


class RefreshBody(BaseModel):
    refresh_token: str = Field(min_length=1, max_length=1024)


async def _audit(res: Resources, action: str, actor_id: str | None, request: Request, **details: str) -> None:
    """As the service (no user acts yet, or any more), with the request's IP and user agent."""
    headers = request_headers(client_ip(request, res.settings.trusted_proxies), request.headers.get("user-agent"))
    async with service_tx(res.pool, headers) as conn:
        await audit.record(conn, action, actor_id=actor_id, entity_type="user", entity_id=actor_id, details=details)


def _refused(exc: AuthFailure) -> ApiError:
    status = 503 if exc.code == "auth_unavailable" else 401
    return ApiError(status, exc.code, exc.message)


@router.post("/login", response_model=Session, responses=ERRORS)
async def login(body: LoginBody, request: Request, response: Response, res: ResourcesDep) -> Session:
    ip = client_ip(request, res.settings.trusted_proxies)
    # Failed attempts count, 5 per 15 minutes per IP; a successful login uses none of the budget,
    # so an office behind one address can all log in at 9:00. Once it is spent, every attempt waits.
    headers = await enforce_limit(res, ratelimit.LOGIN, "login", ip, count=False)
    try:
        session = await res.provider.login(body.email, body.password, ip, request.headers.get("user-agent"))
    except AuthFailure as exc:
        await _audit(res, "login_failure", None, request, email=body.email.lower(), reason=exc.code)
        refused = _refused(exc)
        if exc.code != "auth_unavailable":
            refused.headers = await count_failure(res, ratelimit.LOGIN, "login", ip)
        raise refused from None
    await _audit(res, "login_success", session.user.id, request)
    response.headers.update(headers)
    response.headers["Cache-Control"] = "no-store"
    return session


@router.post("/refresh", response_model=Session, responses=ERRORS)
async def refresh(body: RefreshBody, request: Request, response: Response, res: ResourcesDep) -> Session:
    owner = await res.provider.session_user(body.refresh_token)
    try:
        session = await res.provider.refresh(body.refresh_token)
    except AuthFailure as exc:
        if exc.code == "refresh_token_reused":
            await _audit(res, "refresh_token_reuse_detected", owner, request)
        raise _refused(exc) from None
    response.headers["Cache-Control"] = "no-store"
    return session


@router.post("/logout", status_code=204, response_class=Response, responses=ERRORS)
async def logout(request: Request, who: CallerDep, res: ResourcesDep) -> Response:
    """Ends the current session: its refresh token stops working at once. The access token itself
    stays valid until it expires (JWT_EXPIRE_HOURS); clients should drop it."""
    try:
        await res.provider.logout(who.claims, who.token)
    except AuthFailure as exc:
        raise _refused(exc) from None
    await _audit(res, "logout", who.id, request)
    return Response(status_code=204)


@router.get("/me", response_model=AuthUser, responses=ERRORS)
async def me(response: Response, who: CallerDep, conn: UserConn) -> AuthUser:
    profile = await queries.profile(conn, who.id)
    response.headers["Cache-Control"] = "private, max-age=300"
    claims = who.claims
    return AuthUser(
        id=who.id,
        email=claims.get("email") or None,
        phone=claims.get("phone") or None,
        app_metadata=claims.get("app_metadata") or {},
        user_metadata=claims.get("user_metadata") or {},
        is_anonymous=bool(claims.get("is_anonymous", False)),
        profile=profile,
    )


@router.post(
    "/signup",
    response_model=AuthUser,
    status_code=201,
    responses=responses(400, 403, 409, 422, 429),
)
async def signup(body: SignupBody, request: Request, res: ResourcesDep) -> AuthUser:
    if not res.settings.allow_signup:
        raise ApiError(403, "signup_disabled", "Sign-up is disabled on this server.")
    ip = client_ip(request, res.settings.trusted_proxies)
    await enforce_limit(res, ratelimit.LOGIN, "signup", ip)
    try:
        user = await res.provider.signup(body.email, body.password, body.name)
    except AuthFailure as exc:
        status = 409 if exc.code == "user_exists" else 422
        raise ApiError(status, exc.code, exc.message) from None
    await _audit(res, "signup", user.id, request)
    return user


@jwks_router.get("/auth/v1/.well-known/jwks.json", include_in_schema=False)
async def jwks(res: ResourcesDep) -> JSONResponse:
    keys = res.local_key.jwks() if res.local_key else {"keys": []}
    return JSONResponse(keys, headers={"Cache-Control": "public, max-age=600"})

"""Health checks: the whole service and each component (database, WhatsApp bridge and numbers, Redis)."""

from __future__ import annotations

import time
from typing import Any, Literal

import asyncpg
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from whatsched import __version__
from whatsched.api.deps import Resources, ResourcesDep
from whatsched.auth.tokens import InvalidToken
from whatsched.bridge_client import BridgeError
from whatsched.db.health import ping
from whatsched.db.pool import user_tx
from whatsched.whatsapp.models import NumberStatus
from whatsched.whatsapp.queries import numbers_health

router = APIRouter(prefix="/api/health", tags=["health"])

ComponentStatus = Literal[
    "ok", "down", "not_configured", "connected", "disconnected", "qr_needed", "initializing", "stopped", "unreachable"
]


class Component(BaseModel):
    status: ComponentStatus
    latency_ms: float | None = None
    detail: str | None = None


class WhatsAppComponent(Component):
    phone: str | None = None
    since: str | None = None
    last_error: str | None = None


class NumberHealth(BaseModel):
    id: str
    label: str
    phone: str | None
    status: NumberStatus
    raw_state: str | None
    last_disconnect_reason: str | None
    status_changed_at: str


class WhatsAppHealth(WhatsAppComponent):
    """The default number's bridge as it answers (status, phone, ...), and every number as
    Postgres keeps it (from what each bridge reported)."""

    numbers: list[NumberHealth] = []


class Health(BaseModel):
    status: Literal["ok", "degraded", "down"]
    version: str
    components: dict[str, Component]


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 2)


async def check_db(res: Resources) -> Component:
    start = time.perf_counter()
    try:
        await ping(res.pool, within_s=3)
    except Exception as exc:  # any failure means the database is not usable
        return Component(status="down", latency_ms=_ms(start), detail=type(exc).__name__)
    return Component(status="ok", latency_ms=_ms(start))


async def check_whatsapp(res: Resources) -> WhatsAppComponent:
    start = time.perf_counter()
    try:
        state: dict[str, Any] = await res.bridge.status()
    except BridgeError as exc:
        return WhatsAppComponent(status="unreachable", latency_ms=_ms(start), detail=exc.message)
    return WhatsAppComponent(
        status=state.get("status", "unreachable"),
        latency_ms=_ms(start),
        phone=state.get("phone"),
        since=state.get("since"),
        last_error=state.get("last_error"),
    )


async def check_redis(res: Resources) -> Component:
    if not res.settings.redis_url:
        return Component(status="not_configured")
    import redis.asyncio as redis

    start = time.perf_counter()
    client = redis.from_url(res.settings.redis_url, socket_timeout=3, socket_connect_timeout=3)
    try:
        await client.ping()
    except Exception as exc:  # unreachable, refused, auth: all mean "down"
        return Component(status="down", latency_ms=_ms(start), detail=type(exc).__name__)
    finally:
        await client.aclose()
    return Component(status="ok", latency_ms=_ms(start))


def _answer(model: BaseModel, healthy: bool) -> JSONResponse:
    return JSONResponse(
        model.model_dump(),
        status_code=200 if healthy else 503,
        headers={"Cache-Control": "no-cache, must-revalidate"},
    )


@router.get("", response_model=Health, responses={503: {"model": Health}})
async def health(res: ResourcesDep) -> JSONResponse:
    db = await check_db(res)
    whatsapp = await check_whatsapp(res)
    redis_state = await check_redis(res)
    if db.status != "ok":
        overall: Literal["ok", "degraded", "down"] = "down"
    elif whatsapp.status == "unreachable" or redis_state.status == "down":
        overall = "degraded"
    else:
        overall = "ok"
    body = Health(
        status=overall,
        version=__version__,
        components={"database": db, "whatsapp": whatsapp, "redis": redis_state},
    )
    return _answer(body, db.status == "ok")


@router.get("/db", response_model=Component, responses={503: {"model": Component}})
async def health_db(res: ResourcesDep) -> JSONResponse:
    db = await check_db(res)
    return _answer(db, db.status == "ok")


async def number_states(res: Resources, request: Request) -> list[NumberHealth]:
    """The numbers the caller may use (admins: all), read under their own RLS; none for a probe
    without a valid token, which must learn nothing of who has which number."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return []
    try:
        claims = await res.verifier.verify(token.strip())
        async with user_tx(res.pool, claims) as conn:
            rows = await numbers_health(conn)
    except InvalidToken:
        return []
    except (asyncpg.PostgresError, OSError, asyncpg.InterfaceError):
        return []  # the database's own health says why
    return [NumberHealth(**row) for row in rows]


@router.get("/whatsapp", response_model=WhatsAppHealth, responses={503: {"model": WhatsAppHealth}})
async def health_whatsapp(res: ResourcesDep, request: Request) -> JSONResponse:
    """The default number's bridge as it answers; with a token, also the numbers the caller may use
    (admins: every number) as Postgres keeps them."""
    state = await check_whatsapp(res)
    body = WhatsAppHealth(**state.model_dump(), numbers=await number_states(res, request))
    return _answer(body, state.status != "unreachable")


@router.get("/redis", response_model=Component, responses={503: {"model": Component}})
async def health_redis(res: ResourcesDep) -> JSONResponse:
    state = await check_redis(res)
    return _answer(state, state.status != "down")

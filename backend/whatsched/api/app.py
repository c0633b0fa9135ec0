"""The FastAPI application: resources, middleware, routers and docs."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from whatsched import __version__
from whatsched.api import docs, errors, methods
from whatsched.api.caching import CacheHeaders
from whatsched.api.deps import AuthProvider, Resources
from whatsched.api.fast_lane import FastLane
from whatsched.api.routes import (
    analytics,
    auth,
    bridge_events,
    contacts_import,
    health,
    media,
    notifications,
    numbers,
    replies,
    reports,
    sync,
    webhooks,
)
from whatsched.api.routes import contacts as contacts_routes
from whatsched.api.routes import groups as groups_routes
from whatsched.api.routes import messages as messages_routes
from whatsched.api.routes import metrics as metrics_routes
from whatsched.api.routes import ws as ws_routes
from whatsched.api.timing import RequestTiming
from whatsched.auth.keys import local_signing_key
from whatsched.auth.local import LocalProvider
from whatsched.auth.ratelimit import RateLimits
from whatsched.auth.supabase_provider import SupabaseProvider
from whatsched.auth.tokens import Verifier
from whatsched.bridge_client import BridgeClient
from whatsched.config import Settings, get_settings
from whatsched.db import pool as db_pool
from whatsched.db.setup import resolve_app_url
from whatsched.errors import ConfigError
from whatsched.imports import reader
from whatsched.realtime import Hub
from whatsched.rules import publish_settings

# One router per resource, in the order their paths are matched and documented.
ROUTERS = [
    health.router,
    auth.router,
    auth.jwks_router,
    messages_routes.router,
    groups_routes.router,
    contacts_routes.router,
    contacts_import.router,
    ws_routes.router,
    bridge_events.router,
    numbers.router,
    webhooks.router,
    media.router,
    media.bridge_router,
    notifications.router,
    replies.router,
    analytics.router,
    reports.router,
    sync.router,
    metrics_routes.router,
]


def build_resources(settings: Settings, pool: asyncpg.Pool, bridge: BridgeClient) -> Resources:
    """Auth: one verifier whatever the provider; the provider decides who issues tokens."""
    limits = RateLimits(settings.redis_url)
    if settings.effective_auth_provider == "supabase":
        if not settings.supabase_url or not settings.supabase_anon_key:
            raise ConfigError("AUTH_PROVIDER=supabase needs SUPABASE_URL and SUPABASE_ANON_KEY.")
        base = settings.supabase_url.rstrip("/") + "/auth/v1"
        verifier = Verifier(hs256_secret=settings.jwt_secret, jwks_url=base + "/.well-known/jwks.json", issuer=base)
        provider: AuthProvider = SupabaseProvider(settings.supabase_url, settings.supabase_anon_key)
        return Resources(settings, pool, bridge, verifier, provider, limits, None)
    key = local_signing_key(settings.data_dir, settings.jwt_secret)
    issuer = settings.effective_public_url + "/auth/v1"
    verifier = Verifier(local_key=key, issuer=issuer)
    provider = LocalProvider(pool, key, issuer, int(settings.jwt_expire_hours * 3600), settings.refresh_token_days)
    return Resources(settings, pool, bridge, verifier, provider, limits, key)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        url = await resolve_app_url(settings)
        pool = await db_pool.create_pool(
            url, min_size=2, max_size=10, user_statement_timeout=settings.user_statement_timeout
        )
        async with db_pool.service_tx(pool) as conn:
            await publish_settings(conn, settings)
        bridge = BridgeClient(settings.effective_bridge_url, settings.bridge_token, timeout_s=10)
        app.state.resources = build_resources(settings, pool, bridge)
        # One LISTEN connection per process relays database events to this process's sockets.
        app.state.hub = hub = Hub(url, pool, settings.realtime)
        await hub.start()
        # Made now rather than by the first request: the OpenAPI document (AsDeclared's table of
        # resources comes from it, ~0.1 s) and pandas, which reads every imported file (~0.3 s).
        app.openapi()
        reader.preload()
        # What startup made lives as long as the process: out of the collector's way, a full
        # collection no longer walks ~160k objects (a 64-77 ms pause in a request's p99).
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            await hub.stop()
            await bridge.close()
            await pool.close()

    app = FastAPI(
        title="whatsched",
        version=__version__,
        description="Schedule WhatsApp messages: messages, groups, contacts, notifications, analytics.",
        lifespan=lifespan,
        docs_url=None,  # /docs, /swagger and /redoc come from api/docs.py, assets included
        redoc_url=None,
        openapi_url="/openapi.json",
        # Off unless asked: FastAPI otherwise looks up the global OpenTelemetry providers on every
        # request (three environment reads), ~7 % of its own CPU on a hot read.
        telemetry=None if settings.api_opentelemetry else {"tracing": False, "metrics": False, "logs": False},
    )
    app.add_middleware(FastLane, routers=ROUTERS)  # innermost: every layer below applies to its answers
    app.add_middleware(errors.UnexpectedErrors)  # inside CORS: a 500 carries the CORS headers too
    app.add_middleware(methods.AsDeclared)  # 405 + Allow, one value per scalar query parameter; inside CORS
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.origins,
        allow_credentials=True,
        allow_methods=["GET", "POST", "PUT", "DELETE", "OPTIONS"],
        allow_headers=["Content-Type", "Authorization", "X-Requested-With", "If-None-Match"],
        expose_headers=[
            "ETag",
            "Retry-After",
            "X-RateLimit-Limit",
            "X-RateLimit-Remaining",
            "X-RateLimit-Reset",
            "Content-Disposition",
        ],
    )
    app.add_middleware(CacheHeaders)
    app.add_middleware(RequestTiming)  # outermost of ours: times everything below it
    errors.install(app)
    # routers: one per resource
    for router in ROUTERS:
        app.include_router(router)
    docs.install(app)
    return app


app = create_app  # uvicorn --factory whatsched.api.app:app

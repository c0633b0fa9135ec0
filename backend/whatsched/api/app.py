"""The FastAPI application: resources, middleware, routers and docs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse

from whatsched import __version__
from whatsched.api import errors
from whatsched.api.deps import Resources
from whatsched.api.routes import health
from whatsched.bridge_client import BridgeClient
from whatsched.config import Settings, get_settings
from whatsched.db import pool as db_pool
from whatsched.db.setup import resolve_app_url


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        url = await resolve_app_url(settings)
        pool = await db_pool.create_pool(url, min_size=2, max_size=10)
        bridge = BridgeClient(settings.effective_bridge_url, settings.bridge_token, timeout_s=10)
        app.state.resources = Resources(settings=settings, pool=pool, bridge=bridge)
        try:
            yield
        finally:
            await bridge.close()
            await pool.close()

    app = FastAPI(
        title="whatsched",
        version=__version__,
        description="Schedule WhatsApp messages: messages, groups, contacts, notifications, analytics.",
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url="/redoc",
        openapi_url="/openapi.json",
    )
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
    errors.install(app)
    app.include_router(health.router)

    @app.get("/swagger", include_in_schema=False)
    async def swagger() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="whatsched API")

    return app


app = create_app  # uvicorn --factory whatsched.api.app:app

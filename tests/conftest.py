"""Test fixtures: a throwaway database (embedded, or a fresh one on DATABASE_URL's server)."""

from __future__ import annotations

import asyncio
import os
import secrets
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from whatsched.config import Settings
from whatsched.db.embedded import EmbeddedPostgres, free_port
from whatsched.db.pool import create_pool
from whatsched.db.setup import Prepared, prepare


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


@pytest.fixture(scope="session")
def data_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="whatsched-test-") as folder:
        yield Path(folder)


@pytest.fixture(scope="session")
def server_url(data_dir: Path) -> Iterator[str]:
    """An admin URL to a server we may create databases on."""
    external = os.environ.get("DATABASE_URL")
    if external:
        yield external
        return
    server = EmbeddedPostgres(data_dir / "postgres", free_port())
    server.start()
    try:
        yield server.url
    finally:
        server.remove()


@pytest.fixture(scope="session")
async def database_url(server_url: str) -> AsyncIterator[str]:
    """A fresh database for this run, dropped afterwards."""
    name = "whatsched_test_" + secrets.token_hex(4)
    admin = await asyncpg.connect(server_url)
    await admin.execute(f'create database "{name}"')
    await admin.close()
    try:
        yield _with_database(server_url, name)
    finally:
        admin = await asyncpg.connect(server_url)
        await admin.execute(f'drop database if exists "{name}" with (force)')
        await admin.close()


@pytest.fixture(scope="session")
async def prepared(database_url: str, data_dir: Path) -> Prepared:
    return await prepare(Settings(database_url=database_url, data_dir=data_dir, _env_file=None))  # type: ignore[call-arg]


@pytest.fixture(scope="session")
def settings(prepared: Prepared, data_dir: Path) -> Settings:
    return Settings(  # type: ignore[call-arg]
        _env_file=None,
        database_url=prepared.admin_url,
        app_database_url=prepared.app_url,
        data_dir=data_dir,
        bridge_url="http://127.0.0.1:9",  # nothing listens: tests that need the bridge start one
        send_spacing_min_s=0,
        send_spacing_max_s=0,
        quiet_hours="",
    )


@pytest.fixture
async def admin(prepared: Prepared) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(prepared.admin_url)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture(scope="module", autouse=True)
def healthy_default_number(request: pytest.FixtureRequest) -> Iterator[None]:
    """Each test module leaves the default WhatsApp number healthy for the next: tests that report
    disconnects or refusals pause it by the health rule (as they should), and the next module's
    campaigns would then wait for a person. Only modules that use the database (asked for before
    the module's tests: pytest no longer lets a teardown request a fixture)."""
    used = any(
        item.module is request.module and "prepared" in getattr(item, "fixturenames", ())
        for item in request.session.items
    )
    prepared: Prepared | None = request.getfixturevalue("prepared") if used else None
    yield
    if prepared is not None:
        asyncio.run(_heal_default_number(prepared.admin_url))


async def _heal_default_number(admin_url: str) -> None:
    from bridge_process import heal_default_number

    conn = await asyncpg.connect(admin_url)
    try:
        await heal_default_number(conn)
    finally:
        await conn.close()


@pytest.fixture(scope="module")
async def owner_conn(prepared: Prepared) -> AsyncIterator[asyncpg.Connection]:
    """The schema suites' superuser connection (the migrations' owner), one per test module."""
    conn = await asyncpg.connect(prepared.admin_url)
    yield conn
    await conn.close()


@pytest.fixture(scope="module")
async def app_pool(prepared: Prepared) -> AsyncIterator[asyncpg.Pool]:
    """The app's pool (login role `authenticator`, as PostgREST connects), one per test module."""
    pool = await create_pool(prepared.app_url, min_size=2, max_size=8)
    yield pool
    await pool.close()


# ---------------------------------------------------------------------------------------------
# The API, in process, against the real database
# ---------------------------------------------------------------------------------------------

import dataclasses  # noqa: E402
import uuid  # noqa: E402
from typing import Any  # noqa: E402

import httpx  # noqa: E402
from fastapi import FastAPI  # noqa: E402

from whatsched.api.app import create_app  # noqa: E402
from whatsched.api.deps import Resources  # noqa: E402


@pytest.fixture(scope="session")
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture(scope="session")
def res(app: FastAPI) -> Resources:
    resources: Resources = app.state.resources
    return resources


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http


@dataclasses.dataclass
class User:
    id: str
    email: str
    password: str
    token: str
    refresh_token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    @property
    def claims(self) -> dict[str, Any]:
        return {"sub": self.id, "role": "authenticated", "email": self.email}


@pytest.fixture(scope="session")
def make_user(res: Resources) -> Any:
    """Create a user through the local provider and sign them in (no HTTP, so no login limit)."""

    async def make(admin: bool = False) -> User:
        email = f"user-{uuid.uuid4().hex[:10]}@example.com"
        password = "correct horse battery"
        provider: Any = res.provider
        await provider.create_user(email, password, admin=admin)
        session = await provider.login(email, password, "127.0.0.1", "pytest")
        return User(session.user.id, email, password, session.access_token, session.refresh_token)

    return make


@pytest.fixture
async def api_url(app: FastAPI) -> AsyncIterator[str]:
    """The test app (lifespan already running) served by uvicorn on a real port, in this loop, so a
    real bridge process can post its events to it."""
    import asyncio

    import uvicorn
    from bridge_process import eventually, free_port

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_level="warning"))
    task = asyncio.create_task(server.serve())
    await eventually(lambda: asyncio.sleep(0, server.started), bool, within=10, what="uvicorn to start")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task

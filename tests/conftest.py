"""Test fixtures: a throwaway database (embedded, or a fresh one on DATABASE_URL's server)."""

from __future__ import annotations

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

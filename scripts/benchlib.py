"""What the benchmark scripts share: a throwaway database to run on, a percentile, and recording a
figure for scripts/bench_all.py's table.

Each benchmark prints its own report; when BENCH_RESULTS names a file, every figure is also
appended there as one JSON line {benchmark, figure, value, unit, target}.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import secrets
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from whatsched.config import Settings
from whatsched.db.embedded import EmbeddedPostgres, free_port
from whatsched.db.setup import Prepared, prepare


def record(benchmark: str, figure: str, value: float, unit: str, target: str = "") -> None:
    path = os.environ.get("BENCH_RESULTS")
    if not path:
        return
    with open(path, "a", encoding="utf-8") as out:
        out.write(json.dumps({"benchmark": benchmark, "figure": figure, "value": value, "unit": unit,
                              "target": target}) + "\n")  # fmt: skip


def nearest_rank(values: list[float], pct: float) -> float:
    """The nearest-rank percentile (pct in 0..100) of `values`; NaN when there are none."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)] if ordered else float("nan")


@dataclass(frozen=True)
class Throwaway:
    """A migrated database of its own: `url` as the server's user, `prepared` its admin and app URLs."""

    url: str
    prepared: Prepared
    embedded: bool  # on an embedded server this run started, not DATABASE_URL's


class _Server:
    """DATABASE_URL's server, else an embedded PostgreSQL in tmp/postgres; one database created on it."""

    def __init__(self, tmp: Path) -> None:
        self.embedded: EmbeddedPostgres | None = None
        server = os.environ.get("DATABASE_URL")
        if not server:
            self.embedded = EmbeddedPostgres(tmp / "postgres", free_port())
            self.embedded.start()
            server = self.embedded.url
        self.server = server
        self.name = "whatsched_bench_" + secrets.token_hex(4)
        parts = urlsplit(server)
        self.url = urlunsplit((parts.scheme, parts.netloc, "/" + self.name, parts.query, parts.fragment))

    async def execute(self, sql: str) -> None:
        conn = await asyncpg.connect(self.server)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    async def create(self) -> None:
        await self.execute(f'create database "{self.name}"')

    async def prepare(self, data_dir: Path | None) -> Throwaway:
        if data_dir is None:
            settings = Settings(_env_file=None, database_url=self.url)  # type: ignore[call-arg]
        else:
            settings = Settings(_env_file=None, database_url=self.url, data_dir=data_dir)  # type: ignore[call-arg]
        prepared = await prepare(settings)
        return Throwaway(self.url, prepared, self.embedded is not None)

    async def drop(self) -> None:
        await self.execute(f'drop database if exists "{self.name}" with (force)')

    def remove(self) -> None:
        if self.embedded is not None:
            self.embedded.remove()


@asynccontextmanager
async def throwaway_database(tmp: Path, data_dir: Path | None = None) -> AsyncIterator[Throwaway]:
    """A fresh database migrated by whatsched.db.setup.prepare (with `data_dir` in its Settings when
    given), dropped on the way out, also on an error or Ctrl-C; an embedded server is removed too."""
    server = _Server(tmp)
    try:
        await server.create()
        try:
            yield await server.prepare(data_dir)
        finally:
            await server.drop()
    finally:
        server.remove()


@contextmanager
def throwaway_database_sync(tmp: Path, data_dir: Path | None = None) -> Iterator[Throwaway]:
    """throwaway_database for a script without an event loop of its own (each step its own asyncio.run)."""
    server = _Server(tmp)
    try:
        asyncio.run(server.create())
        try:
            yield asyncio.run(server.prepare(data_dir))
        finally:
            asyncio.run(server.drop())
    finally:
        server.remove()

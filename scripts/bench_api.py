"""Benchmark the messages API's hot reads against the same queries run directly.

    .venv/bin/python scripts/bench_api.py [--duration 10] [--concurrency 50]

Creates a throwaway database (on DATABASE_URL's server, or an embedded PostgreSQL it starts),
seeds one user with 10,000 messages and 50,000 contacts in 50 groups, starts the API as a real
process (uvicorn, one worker), and drives GET /api/messages?page=1 and GET /api/messages/{id}
with N concurrent keep-alive clients (aiohttp) for D seconds each. Then it runs the same SQL
directly with asyncpg, in the same RLS transaction (role authenticated + claims), as the floor.
Prints requests/s and p50/p99 latency for each, and the API/direct throughput ratio.
Target on a 2-core machine: p99 < 50 ms and >= 1,000 req/s, within 3x of direct.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
import jwt

from whatsched.auth.keys import local_signing_key
from whatsched.auth.local import LocalProvider
from whatsched.config import Settings
from whatsched.db.embedded import EmbeddedPostgres, free_port
from whatsched.db.pool import create_pool, user_tx
from whatsched.db.setup import prepare
from whatsched.messages import queries

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib

ROOT = Path(__file__).resolve().parent.parent

SEED = [
    """insert into public.contacts (created_by, name, phone, is_active, opted_out_at, created_at)
       select $1, 'Contact ' || i, '+1555' || lpad(i::text, 7, '0'), i % 50 <> 0,
              case when i % 97 = 0 then now() end, now() - make_interval(mins => i)
       from generate_series(1, $2::integer) i""",
    """insert into public.groups (created_by, name, description)
       select $1, 'Group ' || lpad(g::text, 2, '0'), 'bench group ' || g from generate_series(1, 50) g""",
    # Every contact in one group; one in ten also in a second (overlaps make de-duplication real).
    """with g as (select id, row_number() over (order by name) - 1 as n from public.groups where created_by = $1),
            c as (select id, row_number() over (order by phone) as i from public.contacts where created_by = $1)
       insert into public.group_contacts (group_id, contact_id, created_by)
       select g.id, c.id, $1 from c join g on g.n = c.i % 50
       union all
       select g.id, c.id, $1 from c join g on g.n = (c.i / 10) % 50
       where c.i % 10 = 0 and (c.i / 10) % 50 <> c.i % 50""",
    # A year of messages, one an hour: the newest 200 drafts/scheduled/paused (live audience),
    # the rest sent, failed or cancelled with their counters.
    """insert into public.messages (created_by, content, status, scheduled_for, sent_at, recipient_count,
                                    delivered_count, failed_count, created_at, updated_at)
       select $1, 'Hola {{name}}, este es el aviso número ' || i || ' de la semana.', s.status,
              case when s.status <> 'draft' then now() - make_interval(hours => i - 400) end,
              case when s.status in ('sent', 'failed') then now() - make_interval(hours => i - 400) end,
              case when s.status in ('sent', 'failed', 'cancelled') then 1000 else 0 end,
              case when s.status = 'sent' then 980 when s.status = 'failed' then 10 else 0 end,
              case when s.status = 'sent' then 20 when s.status = 'failed' then 990 else 0 end,
              now() - make_interval(hours => i), now() - make_interval(hours => i)
       from generate_series(1, $2::integer) i
       cross join lateral (select case
         when i <= 200 then (array['draft', 'scheduled', 'paused'])[1 + i % 3]
         when i % 20 = 0 then 'failed' when i % 15 = 0 then 'cancelled' else 'sent' end as status) s""",
    """with m as (select id, row_number() over (order by created_at) as i from public.messages where created_by = $1),
            g as (select id, row_number() over (order by name) - 1 as n from public.groups where created_by = $1)
       insert into public.message_groups (message_id, group_id, created_by)
       select m.id, g.id, $1 from m join g on g.n = m.i % 50 or (m.i % 3 = 0 and g.n = (m.i + 7) % 50)""",
]


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))] * 1000


async def drive(call: Callable[[], Awaitable[None]], concurrency: int, duration: float) -> tuple[float, list[float]]:
    """`concurrency` workers call `call` back to back for `duration` seconds; returns (req/s, latencies)."""
    latencies: list[float] = []
    deadline = time.perf_counter() + duration

    async def worker() -> None:
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return len(latencies) / (time.perf_counter() - start), latencies


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def run_wrk(base: str, path: str, token: str, concurrency: int, duration: float, ids: list[str] | None) -> Wrk:
    """Drive the API with wrk (C, 2 threads): the load generator the reference figures used, which
    leaves the CPU to the API instead of spending it in a Python client."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        if ids:
            script.write("local ids = {" + ",".join(f'"{i}"' for i in ids) + "}\n")
            script.write(
                'request = function() return wrk.format("GET", "' + path + '" .. ids[math.random(#ids)]) end\n'
            )
    command = ["wrk", "-t2", f"-c{concurrency}", f"-d{int(duration)}s", "--latency",
               "-H", f"Authorization: Bearer {token}", "-s", script.name, base + (path if not ids else path + ids[0])]  # fmt: skip
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    os.unlink(script.name)
    if "Non-2xx" in out:
        raise SystemExit("wrk saw error answers:\n" + out)
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    lat = {p: _ms(v, u) for p, v, u in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)}
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    return Wrk(rate, lat["50"], lat["99"], total)


@dataclass
class Wrk:
    rate: float
    p50_ms: float
    p99_ms: float
    requests: int


def figure(rate: float, lat: list[float]) -> Wrk:
    return Wrk(rate, pct(lat, 0.50), pct(lat, 0.99), len(lat))


def report(name: str, fig: Wrk) -> None:
    print(
        f"  {name:<34} {fig.requests:>7} req  {fig.rate:>8.0f} req/s  p50 {fig.p50_ms:6.2f} ms  p99 {fig.p99_ms:6.2f} ms",
        flush=True,
    )


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--concurrency", type=int, default=50)
    ap.add_argument("--messages", type=int, default=10_000)
    ap.add_argument("--contacts", type=int, default=50_000)
    args = ap.parse_args()

    tmp = tempfile.TemporaryDirectory(prefix="whatsched-bench-")
    data_dir = Path(tmp.name)
    embedded = None
    server = os.environ.get("DATABASE_URL")
    if not server:
        embedded = EmbeddedPostgres(data_dir / "postgres", free_port())
        embedded.start()
        server = embedded.url
    name = "whatsched_bench_" + secrets.token_hex(4)
    conn = await asyncpg.connect(server)
    await conn.execute(f'create database "{name}"')
    await conn.close()
    db_url = with_database(server, name)
    api: asyncio.subprocess.Process | None = None
    try:
        prepared = await prepare(Settings(_env_file=None, database_url=db_url, data_dir=data_dir))  # type: ignore[call-arg]
        port = free_port()
        public_url = f"http://127.0.0.1:{port}"
        key = local_signing_key(data_dir, None)
        pool = await create_pool(prepared.app_url, min_size=10, max_size=10)
        provider = LocalProvider(pool, key, public_url + "/auth/v1", 3600, 30)
        await provider.create_user("bench@example.com", "bench password 1")
        session = await provider.login("bench@example.com", "bench password 1", "127.0.0.1", "bench")
        user_id = session.user.id

        started = time.perf_counter()
        admin = await asyncpg.connect(prepared.admin_url)
        for i, sql in enumerate(SEED):
            n = args.contacts if i == 0 else args.messages
            await admin.execute(sql, user_id, n) if "$2" in sql else await admin.execute(sql, user_id)
        await admin.execute("vacuum analyze")
        ids = [str(r["id"]) for r in await admin.fetch("select id from public.messages where created_by = $1", user_id)]
        await admin.close()
        print(
            f"seeded {len(ids)} messages, {args.contacts} contacts in {time.perf_counter() - started:.1f} s", flush=True
        )

        env = {
            **os.environ,
            "DATABASE_URL": db_url,
            "APP_DATABASE_URL": prepared.app_url,
            "DATA_DIR": str(data_dir),
            "PUBLIC_URL": public_url,
            "BRIDGE_URL": "http://127.0.0.1:9",
        }
        command = ["-m", "uvicorn", "--factory", "whatsched.api.app:app", "--host", "127.0.0.1", "--port", str(port)]
        command += ["--workers", "1", "--no-access-log", "--log-level", "warning"]
        api = await asyncio.create_subprocess_exec(sys.executable, *command, env=env, cwd=ROOT)
        print(f"API process {api.pid} on {public_url}", flush=True)
        headers = {"Authorization": f"Bearer {session.access_token}"}
        connector = aiohttp.TCPConnector(limit=args.concurrency, keepalive_timeout=60)
        async with aiohttp.ClientSession(public_url, headers=headers, connector=connector) as http:
            for _ in range(200):
                try:
                    async with http.get("/api/messages?page=1") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
            else:
                raise SystemExit("the API did not start")

            async def get(path: str) -> None:
                async with http.get(path) as resp:
                    await resp.read()
                    if resp.status != 200:
                        raise SystemExit(f"{path} answered {resp.status}")

            async def api_list() -> None:
                await get("/api/messages?page=1")

            async def api_one() -> None:
                await get("/api/messages/" + random.choice(ids))

            async def warm() -> None:
                await drive(api_list, args.concurrency, 1.0)
                await drive(api_one, args.concurrency, 1.0)

            await warm()
            if shutil.which("wrk"):
                print(f"API (wrk -t2 -c{args.concurrency}, {args.duration:.0f} s each):", flush=True)
                token = session.access_token
                api_list_fig = await asyncio.to_thread(
                    run_wrk, public_url, "/api/messages?page=1", token, args.concurrency, args.duration, None
                )
                api_one_fig = await asyncio.to_thread(
                    run_wrk, public_url, "/api/messages/", token, args.concurrency, args.duration, ids
                )
            else:
                print(f"API ({args.concurrency} aiohttp clients, {args.duration:.0f} s each; install wrk for"
                      " a lighter load generator):", flush=True)  # fmt: skip
                api_list_fig = figure(*await drive(api_list, args.concurrency, args.duration))
                api_one_fig = figure(*await drive(api_one, args.concurrency, args.duration))
            report("GET /api/messages?page=1", api_list_fig)
            report("GET /api/messages/{id}", api_one_fig)

        api.terminate()
        await asyncio.wait_for(api.wait(), 15)
        api = None

        # The floor: the API's own transaction (db.pool.user_tx: BEGIN + claims in one round trip).
        direct = await create_pool(prepared.app_url, min_size=10, max_size=10)
        claims = jwt.decode(session.access_token, options={"verify_signature": False})  # what the API hands Postgres
        list_sql, list_args = queries.list_query(queries.ListFilters(), "-created_at", 1, 20)

        async def in_tx(sql: str, *values: object) -> None:
            async with user_tx(direct, claims) as conn:
                await conn.fetchval(sql, *values)

        async def direct_list() -> None:
            await in_tx(list_sql, *list_args)

        async def direct_one() -> None:
            await in_tx(queries.ONE_MESSAGE, random.choice(ids))

        await drive(direct_list, args.concurrency, 1.0)
        print(f"direct asyncpg, same SQL and RLS transaction (pool of 10, {args.concurrency} tasks):", flush=True)
        direct_list_fig = figure(*await drive(direct_list, args.concurrency, args.duration))
        report("list page 1", direct_list_fig)
        direct_one_fig = figure(*await drive(direct_one, args.concurrency, args.duration))
        report("one message", direct_one_fig)
        await direct.close()
        await pool.close()

        print("API / direct throughput:")
        print(
            f"  list {api_list_fig.rate / direct_list_fig.rate:.2f}   one {api_one_fig.rate / direct_one_fig.rate:.2f}"
        )
        pairs = ((api_list_fig, direct_list_fig), (api_one_fig, direct_one_fig))
        ok = all(a.rate >= 1000 and a.p99_ms < 50 and a.rate * 3 >= d.rate for a, d in pairs)
        print(f"target (>= 1000 req/s, p99 < 50 ms, within 3x of direct): {'met' if ok else 'MISSED'}")
        for label, fig in (("list", api_list_fig), ("one", api_one_fig)):
            benchlib.record(
                "api",
                f"GET /api/messages{'?page=1' if label == 'list' else '/{id}'} req/s",
                fig.rate,
                "req/s",
                ">= 1000",
            )
            benchlib.record(
                "api", f"GET /api/messages{'?page=1' if label == 'list' else '/{id}'} p99", fig.p99_ms, "ms", "< 50"
            )
        benchlib.record("api", "direct asyncpg list req/s (floor)", direct_list_fig.rate, "req/s", "")
    finally:
        if api is not None:
            api.terminate()
            await asyncio.wait_for(api.wait(), 15)
        conn = await asyncpg.connect(server)
        await conn.execute(f'drop database if exists "{name}" with (force)')
        await conn.close()
        if embedded is not None:
            embedded.remove()
        tmp.cleanup()


if __name__ == "__main__":
    asyncio.run(main())

"""The API's hot reads against their floor: the same SQL run directly with asyncpg, measured in
alternating short rounds so that the ratio, not the machine's mood, is the figure.

    .venv/bin/python scripts/bench_api.py [--rounds 5] [--duration 3] [--concurrency 50] [--light 4]

Creates a throwaway database (on DATABASE_URL's server, or an embedded PostgreSQL it starts),
seeds one user with 10,000 messages and 50,000 contacts in 50 groups, starts the API as a real
process (uvicorn, one worker unless --workers) and drives GET /api/messages?page=1 and GET /api/messages/{id} (wrk
when installed, else aiohttp clients). The floor is the API's own transaction (db.pool.user_tx:
BEGIN + role, claims and statement timeout in one round trip, the query, COMMIT) run by asyncpg in
this process with the same pool size. Each round runs the API then the floor for `duration`
seconds, for each read: with `concurrency` clients (throughput; the ratio API/floor) and with
`light` clients (latency; the ratio of p99s). Prints every round, then the median ratio and its
spread (min-max over the rounds). Targets (issue #23): throughput >= 0.8 of the floor with 50
clients, p99 within 1.5x of the floor's at 4 clients.

The floor does no HTTP. So each round also runs the HTTP floor (scripts/bench_api_http_floor.py):
the same two reads served by a bare ASGI application on the same server (uvicorn, one process),
with the same token check, transaction and SQL, and no framework. HTTP floor / floor is what
serving HTTP from Python costs on this machine; API / HTTP floor is what FastAPI and our layers
(routing, parameters, dependencies, middleware, ETags) add to it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import asyncpg
import jwt
import psutil

from whatsched.auth.keys import local_signing_key
from whatsched.auth.local import LocalProvider
from whatsched.db.embedded import free_port
from whatsched.db.pool import create_pool, user_tx
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


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))] * 1000


@dataclass
class Figure:
    rate: float
    p50_ms: float
    p99_ms: float
    requests: int
    cpu_us: float = 0.0  # CPU time of the serving process (API or floor) per request


async def drive(call: Callable[[], Awaitable[None]], concurrency: int, duration: float) -> Figure:
    """`concurrency` workers call `call` back to back for `duration` seconds."""
    latencies: list[float] = []
    deadline = time.perf_counter() + duration

    async def worker() -> None:
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    rate = len(latencies) / (time.perf_counter() - start)
    return Figure(rate, pct(latencies, 0.50), pct(latencies, 0.99), len(latencies))


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def run_wrk(base: str, path: str, token: str, concurrency: int, duration: float, ids: list[str] | None) -> Figure:
    """Drive the API with wrk (C, 2 threads at most): the load generator the reference figures used,
    which leaves the CPU to the API instead of spending it in a Python client."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        if ids:
            script.write("local ids = {" + ",".join(f'"{i}"' for i in ids) + "}\n")
            script.write(
                'request = function() return wrk.format("GET", "' + path + '" .. ids[math.random(#ids)]) end\n'
            )
    threads = min(2, concurrency)
    command = ["wrk", f"-t{threads}", f"-c{concurrency}", f"-d{max(1, round(duration))}s", "--latency",
               "-H", f"Authorization: Bearer {token}", "-s", script.name, base + (path if not ids else path + ids[0])]  # fmt: skip
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    os.unlink(script.name)
    if "Non-2xx" in out:
        raise SystemExit("wrk saw error answers:\n" + out)
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    lat = {p: _ms(v, u) for p, v, u in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)}
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    return Figure(rate, lat["50"], lat["99"], total)


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} (min {min(values):.2f}, max {max(values):.2f})"


@dataclass
class Read:
    """One read as the API serves it and as its floor runs it."""

    name: str
    api: Callable[[int, float], Awaitable[Figure]]
    http: Callable[[int, float], Awaitable[Figure]]
    floor: Callable[[int, float], Awaitable[Figure]]
    # Per round: API/floor req/s at `concurrency` clients, API/floor p99 at `light` clients, the
    # same two for the HTTP floor (HTTP floor/floor) and for the API against it (API/HTTP floor),
    # and the CPU µs per request of the API process, the HTTP floor's and the floor's.
    throughput: list[float] = field(default_factory=list)
    p99: list[float] = field(default_factory=list)
    http_throughput: list[float] = field(default_factory=list)
    http_p99: list[float] = field(default_factory=list)
    over_http_throughput: list[float] = field(default_factory=list)
    over_http_p99: list[float] = field(default_factory=list)
    cpu: list[tuple[float, float, float]] = field(default_factory=list)


async def measure(args: argparse.Namespace, db: benchlib.Throwaway, data_dir: Path) -> None:
    prepared, db_url = db.prepared, db.url
    api: asyncio.subprocess.Process | None = None
    http_floor: asyncio.subprocess.Process | None = None
    try:
        port = free_port()
        public_url = f"http://127.0.0.1:{port}"
        key = local_signing_key(data_dir, None)
        pool = await create_pool(prepared.app_url, min_size=1, max_size=2)
        provider = LocalProvider(pool, key, public_url + "/auth/v1", 3600, 30)
        await provider.create_user("bench@example.com", "bench password 1")
        session = await provider.login("bench@example.com", "bench password 1", "127.0.0.1", "bench")
        await pool.close()
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

        async def serve(factory: str, port: int, *extra: str) -> asyncio.subprocess.Process:
            """One uvicorn server as the API runs (`--workers` processes, no access log)."""
            command = ["-m", "uvicorn", "--factory", factory, *extra, "--host", "127.0.0.1", "--port", str(port)]
            command += ["--workers", str(args.workers), "--no-access-log", "--log-level", "warning"]
            return await asyncio.create_subprocess_exec(sys.executable, *command, env=env, cwd=ROOT)

        api = await serve("whatsched.api.app:app", port)
        print(f"API process {api.pid} on {public_url}", flush=True)
        http_port = free_port()
        http_url = f"http://127.0.0.1:{http_port}"
        http_floor = await serve("bench_api_http_floor:create", http_port, "--app-dir", str(ROOT / "scripts"))
        print(f"HTTP floor process {http_floor.pid} on {http_url}", flush=True)

        # The floor: the API's own transaction, in this process, with as many connections as the
        # API's processes have (a pool of 10 each).
        pool_size = 10 * args.workers
        direct = await create_pool(prepared.app_url, min_size=pool_size, max_size=pool_size)
        claims = jwt.decode(session.access_token, options={"verify_signature": False})  # what the API hands Postgres
        list_sql, list_args = queries.list_query(queries.ListFilters(), "-created_at", 1, 20)

        async def in_tx(sql: str, *values: object) -> None:
            async with user_tx(direct, claims) as conn:
                await conn.fetchval(sql, *values)

        async def floor_list() -> None:
            await in_tx(list_sql, *list_args)

        async def floor_one() -> None:
            await in_tx(queries.ONE_MESSAGE, random.choice(ids))

        token = session.access_token
        headers = {"Authorization": f"Bearer {token}"}
        connector = aiohttp.TCPConnector(limit=args.concurrency, keepalive_timeout=60)
        use_wrk = shutil.which("wrk") is not None

        def server_cpu(server: psutil.Process) -> float:
            total = 0.0
            for process in (server, *server.children(recursive=True)):
                times = process.cpu_times()
                total += times.user + times.system
            return total

        async with aiohttp.ClientSession(headers=headers, connector=connector) as http:
            for base in (public_url, http_url):
                for _ in range(200):
                    try:
                        async with http.get(base + "/api/messages?page=1") as resp:
                            if resp.status == 200:
                                break
                    except aiohttp.ClientError:
                        pass
                    await asyncio.sleep(0.1)
                else:
                    raise SystemExit(f"{base} did not start")

            async def get(url: str) -> None:
                async with http.get(url) as resp:
                    await resp.read()
                    if resp.status != 200:
                        raise SystemExit(f"{url} answered {resp.status}")

            def server_run(
                base: str, server: asyncio.subprocess.Process, path: str, by_id: bool
            ) -> Callable[[int, float], Awaitable[Figure]]:
                """Drive one HTTP server (the API or the HTTP floor) on one read."""
                process = psutil.Process(server.pid)

                async def call() -> None:
                    await get(base + path + (random.choice(ids) if by_id else ""))

                async def run(clients: int, seconds: float) -> Figure:
                    before = server_cpu(process)
                    if use_wrk:
                        fig = await asyncio.to_thread(
                            run_wrk, base, path, token, clients, seconds, ids if by_id else None
                        )
                    else:
                        fig = await drive(call, clients, seconds)
                    fig.cpu_us = (server_cpu(process) - before) / fig.requests * 1e6
                    return fig

                return run

            def floor_run(call: Callable[[], Awaitable[None]]) -> Callable[[int, float], Awaitable[Figure]]:
                async def run(clients: int, seconds: float) -> Figure:
                    before = time.process_time()
                    fig = await drive(call, clients, seconds)
                    fig.cpu_us = (time.process_time() - before) / fig.requests * 1e6
                    return fig

                return run

            reads = [
                Read(
                    "GET /api/messages?page=1",
                    server_run(public_url, api, "/api/messages?page=1", False),
                    server_run(http_url, http_floor, "/api/messages?page=1", False),
                    floor_run(floor_list),
                ),
                Read(
                    "GET /api/messages/{id}",
                    server_run(public_url, api, "/api/messages/", True),
                    server_run(http_url, http_floor, "/api/messages/", True),
                    floor_run(floor_one),
                ),
            ]
            for read in reads:  # warm every side: connections, prepared statements, caches
                await read.api(args.concurrency, 1.0)
                await read.http(args.concurrency, 1.0)
                await read.floor(args.concurrency, 1.0)

            generator = f"wrk -t2 -c{args.concurrency}" if use_wrk else f"{args.concurrency} aiohttp clients"
            print(
                f"{args.rounds} rounds of {args.duration:g} s per run; API driven by {generator}"
                f"{'' if use_wrk else ' (install wrk for a lighter load generator)'}; floor: asyncpg, pool of {pool_size}",
                flush=True,
            )
            last: dict[tuple[str, str, int], Figure] = {}
            for n in range(1, args.rounds + 1):
                for read in reads:
                    for clients, by_rate in ((args.concurrency, True), (args.light, False)):
                        api_fig = await read.api(clients, args.duration)
                        http_fig = await read.http(clients, args.duration)
                        floor_fig = await read.floor(clients, args.duration)
                        last[(read.name, "api", clients)] = api_fig
                        last[(read.name, "floor", clients)] = floor_fig
                        ratios = (
                            (read.throughput, read.http_throughput, read.over_http_throughput)
                            if by_rate
                            else (read.p99, read.http_p99, read.over_http_p99)
                        )
                        pairs = ((api_fig, floor_fig), (http_fig, floor_fig), (api_fig, http_fig))
                        for into, (a, b) in zip(ratios, pairs, strict=True):
                            into.append(a.rate / b.rate if by_rate else a.p99_ms / b.p99_ms)
                        print(
                            f"  round {n} {read.name:<25} {clients:>3} clients:"
                            + "".join(
                                f" {label} {fig.rate:5.0f} req/s p50 {fig.p50_ms:5.2f} p99 {fig.p99_ms:6.2f} ms"
                                f" ({fig.cpu_us:4.0f} µs CPU) |"
                                for label, fig in (("API", api_fig), ("HTTP floor", http_fig), ("floor", floor_fig))
                            )
                            + f" {'throughput' if by_rate else 'p99'} API/floor {ratios[0][-1]:.2f}",
                            flush=True,
                        )
                        if by_rate:
                            read.cpu.append((api_fig.cpu_us, http_fig.cpu_us, floor_fig.cpu_us))

        # What a round trip costs. Alone: an empty statement inside a user transaction, one client,
        # back to back. Under load: the floor's one-message transaction (BEGIN + settings, query,
        # COMMIT) against the same with one more, empty, round trip, in alternating rounds.
        async def floor_one_more() -> None:
            async with user_tx(direct, claims) as conn:
                await conn.execute("select")
                await conn.fetchval(queries.ONE_MESSAGE, random.choice(ids))

        bare: list[float] = []
        async with user_tx(direct, claims) as conn:
            for _ in range(5):
                started = time.perf_counter()
                for _ in range(1000):
                    await conn.execute("select")
                bare.append((time.perf_counter() - started) / 1000 * 1e6)
        more: list[float] = []
        for _ in range(args.rounds):
            three = await drive(floor_one, args.concurrency, 2.0)
            four = await drive(floor_one_more, args.concurrency, 2.0)
            more.append(four.rate / three.rate)
        await direct.close()
        print(
            f"A round trip: {statistics.median(bare):.0f} µs alone (an empty statement, one client, median of 5 x 1000);"
            f" one more in the one-message transaction at {args.concurrency} clients: {spread(more)} of the throughput"
        )
        benchlib.record("api", "one round trip alone (empty statement, one client)", statistics.median(bare), "µs", "")
        benchlib.record(
            "api",
            f"throughput with one more round trip per transaction, {args.concurrency} clients",
            statistics.median(more),
            "x",
            "",
        )

        print("API / floor, median of the rounds (spread):")
        for read in reads:
            print(f"  {read.name:<25} throughput at {args.concurrency} clients {spread(read.throughput)}")
            print(f"  {read.name:<25} p99 at {args.light} clients         {spread(read.p99)}")
            api_cpu, http_cpu, floor_cpu = (statistics.median(c[i] for c in read.cpu) for i in range(3))
            print(
                f"  {read.name:<25} CPU per request: API process {api_cpu:.0f} µs, HTTP floor process"
                f" {http_cpu:.0f} µs, floor process {floor_cpu:.0f} µs"
            )
        print(
            "HTTP floor / floor (what serving HTTP from Python costs), and API / HTTP floor (what the framework adds):"
        )
        for read in reads:
            print(
                f"  {read.name:<25} throughput HTTP floor/floor {spread(read.http_throughput)},"
                f" API/HTTP floor {spread(read.over_http_throughput)}"
            )
            print(
                f"  {read.name:<25} p99        HTTP floor/floor {spread(read.http_p99)},"
                f" API/HTTP floor {spread(read.over_http_p99)}"
            )
        rate_ok = all(statistics.median(r.throughput) >= 0.8 for r in reads)
        p99_ok = all(statistics.median(r.p99) <= 1.5 for r in reads)
        print(f"target throughput >= 0.8 of the floor at {args.concurrency} clients: {'met' if rate_ok else 'MISSED'}")
        print(f"target p99 within 1.5x of the floor's at {args.light} clients: {'met' if p99_ok else 'MISSED'}")
        for read, label in zip(reads, ("list", "one message"), strict=True):
            api_fig = last[(read.name, "api", args.concurrency)]
            benchlib.record(
                "api", f"{read.name} req/s ({args.concurrency} clients, last round)", api_fig.rate, "req/s", ""
            )
            benchlib.record(
                "api",
                f"{label}: API / floor throughput, {args.concurrency} clients (median of {args.rounds})",
                statistics.median(read.throughput),
                "x",
                ">= 0.8",
            )
            benchlib.record(
                "api",
                f"{label}: API / floor p99, {args.light} clients (median of {args.rounds})",
                statistics.median(read.p99),
                "x",
                "<= 1.5",
            )
            for what, values in (
                (f"HTTP floor / floor throughput, {args.concurrency} clients", read.http_throughput),
                (f"API / HTTP floor throughput, {args.concurrency} clients", read.over_http_throughput),
                (f"API / HTTP floor p99, {args.light} clients", read.over_http_p99),
            ):
                benchlib.record("api", f"{label}: {what} (median of {args.rounds})", statistics.median(values), "x", "")
    finally:
        for server in (api, http_floor):
            if server is not None:
                server.terminate()
                await asyncio.wait_for(server.wait(), 15)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=float, default=3.0, help="seconds of each API or floor run")
    ap.add_argument("--concurrency", type=int, default=50, help="clients for the throughput ratio")
    ap.add_argument("--light", type=int, default=4, help="clients for the p99 ratio")
    ap.add_argument("--workers", type=int, default=1, help="API processes (the floor's pool grows to match)")
    ap.add_argument("--messages", type=int, default=10_000)
    ap.add_argument("--contacts", type=int, default=50_000)
    args = ap.parse_args()

    tmp = tempfile.TemporaryDirectory(prefix="whatsched-bench-")
    data_dir = Path(tmp.name)
    try:
        async with benchlib.throwaway_database(data_dir, data_dir) as db:
            await measure(args, db, data_dir)
    finally:
        tmp.cleanup()


if __name__ == "__main__":
    try:
        import uvloop  # the event loop uvicorn runs the API on: the floor gets the same
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())

"""Webhook benchmark: events delivered per second to a local receiver by real worker processes
(1, then 2), against a floor measured in the same run, and the lag from commit to the receiver's
arrival at a stated load.

    .venv/bin/python scripts/bench_webhooks.py                     # embedded PostgreSQL
    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres .venv/bin/python scripts/bench_webhooks.py

- Throughput: --events notifications are committed for one user with one endpoint (each writes its
  outbox row in its transaction), then the workers start; events/s is counted from the first
  arrival to the last. The floor: the same number of signed POSTs of the same bodies, with the
  same HTTP client and concurrency (WEBHOOK_CONCURRENCY, 16), from one other process with no
  database at all (what one worker could do if Postgres cost nothing).
- Lag: with the workers running, one event is committed every 1/--rate s for --seconds s, each in
  its own transaction; the lag is the receiver's arrival time minus the outbox row's created_at
  (the transaction's start, a little before its commit), p50 and p99.

The receiver verifies every request with the Standard Webhooks library and counts duplicates.
A fresh database is created on the server and dropped afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import httpx
from aiohttp import web
from standardwebhooks.webhooks import Webhook

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.bridge_process import WorkerProcess  # noqa: E402

sys.path.insert(0, str(REPO / "scripts"))
import benchlib  # noqa: E402

from whatsched.db.embedded import free_port  # noqa: E402
from whatsched.webhooks.sender import signature  # noqa: E402

CONCURRENCY = 16


class Receiver:
    def __init__(self) -> None:
        self.arrivals: dict[str, float] = {}  # webhook-id -> wall-clock arrival (epoch seconds)
        self.duplicates = 0
        self.forged = 0
        self.secret = ""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        now = time.time()
        try:
            Webhook(self.secret).verify(body, dict(request.headers), json_parse=False)
        except Exception:  # any refusal counts as forged
            self.forged += 1
            return web.Response(status=400)
        key = request.headers["webhook-id"]
        if key in self.arrivals:
            self.duplicates += 1
        else:
            self.arrivals[key] = now
        return web.Response(status=204)

    async def start(self) -> web.AppRunner:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port).start()
        return runner


async def floor_process(receiver: Receiver, body: str, count: int) -> float:
    """The floor, run as its own process (the receiver keeps this one): events/s."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--floor",
        receiver.url,
        receiver.secret,
        str(count),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await proc.communicate(body.encode())
    assert proc.returncode == 0, out
    return float(out.decode().strip().splitlines()[-1])


async def floor(url: str, secret: str, bodies: list[str]) -> float:
    """Signed POSTs of these bodies, CONCURRENCY at a time: events/s."""
    queue = list(enumerate(bodies))
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=CONCURRENCY)) as http:

        async def one() -> None:
            while queue:
                i, body = queue.pop()
                key, now, raw = f"floor-{i}", datetime.now(UTC), body.encode()
                headers = {
                    "content-type": "application/json",
                    "webhook-id": key,
                    "webhook-timestamp": str(int(now.timestamp())),
                    "webhook-signature": signature([secret], key, now, raw),
                }
                resp = await http.post(url, content=raw, headers=headers)
                assert resp.status_code == 204, resp.text

        started = time.monotonic()
        await asyncio.gather(*(one() for _ in range(CONCURRENCY)))
        return len(bodies) / (time.monotonic() - started)


async def wait_for(probe: object, what: str, within: float = 600) -> None:
    deadline = time.monotonic() + within
    while not await probe():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def run(args: argparse.Namespace, db: benchlib.Throwaway, tmp: Path) -> int:
    receiver = Receiver()
    runner = await receiver.start()
    try:
        prepared = db.prepared
        admin = await asyncpg.connect(prepared.admin_url)
        await admin.execute("update private.settings set webhook_allow_private = true")
        user = await admin.fetchval(
            "insert into auth.users (id, email) values (gen_random_uuid(), 'bench@example.com') returning id"
        )
        async with admin.transaction():
            await admin.execute(
                "select set_config('role', 'authenticated', true), set_config('request.jwt.claims', $1, true)",
                json.dumps({"sub": str(user), "role": "authenticated"}),
            )
            created = json.loads(await admin.fetchval("select public.create_webhook_endpoint($1)::text", receiver.url))
        receiver.secret = created["secret"]
        print(
            f"{os.cpu_count()} CPUs; database {'embedded' if db.embedded else 'DATABASE_URL'}"
            f" ({await admin.fetchval('show server_version')}); receiver on 127.0.0.1 verifying every request;"
            f" WEBHOOK_CONCURRENCY {CONCURRENCY} per worker"
        )
        sample = await admin.fetchval(
            "select private.webhook_body('new_notification', jsonb_build_object('type', 'new_notification',"
            " 'notification', jsonb_build_object('id', gen_random_uuid(), 'type', 'info', 'title', 'Bench',"
            " 'message', 'x', 'timestamp', private.utc_iso(now()), 'related_entity_type', null,"
            " 'related_entity_id', null)))"
        )
        floor_rate = await floor_process(receiver, sample, args.events)
        print(f"floor: {args.events} signed POSTs from one other process, no database: {floor_rate:.0f} events/s")
        benchlib.record("webhooks", "floor (signed POSTs, no database)", floor_rate, "/s")
        failures = 0
        for workers in args.workers:
            receiver.arrivals.clear()
            await admin.execute(
                "insert into public.notifications (user_id, type, title, message)"
                " select $1, 'info', 'Bench ' || n, 'x' from generate_series(1, $2) n",
                user,
                args.events,
            )
            procs = [
                WorkerProcess(
                    prepared.admin_url,
                    prepared.app_url,
                    f"http://127.0.0.1:{free_port()}",
                    tmp / f"worker-{workers}-{i}.log",
                    WEBHOOK_ALLOW_PRIVATE="true",
                    WEBHOOK_CONCURRENCY=str(CONCURRENCY),
                )
                for i in range(workers)
            ]
            for proc in procs:
                proc.start()
            try:
                await wait_for(lambda: asyncio.sleep(0, len(receiver.arrivals) >= args.events), "the backlog")
                times = sorted(receiver.arrivals.values())
                rate = (len(times) - 1) / (times[-1] - times[0])
                # The lag at a stated load: one event per 1/rate s, each its own transaction.
                receiver.arrivals.clear()
                sent = 0
                started = time.monotonic()
                while time.monotonic() - started < args.seconds:
                    await admin.execute(
                        "insert into public.notifications (user_id, type, title, message) values ($1, 'info', 'Lag', 'x')",
                        user,
                    )
                    sent += 1
                    await asyncio.sleep(max(0.0, started + sent / args.rate - time.monotonic()))
                await wait_for(lambda n=sent: asyncio.sleep(0, len(receiver.arrivals) >= n), "the paced events", 60)
                rows = await admin.fetch(
                    "select id::text, extract(epoch from created_at)::float8 as at from public.webhook_deliveries"
                    " where id = any($1::uuid[])",
                    list(receiver.arrivals),
                )
                lags = [receiver.arrivals[r["id"]] - r["at"] for r in rows]
            finally:
                for proc in procs:
                    proc.stop()
            pending = await admin.fetchval("select count(*) from public.webhook_deliveries where state <> 'delivered'")
            ok = receiver.duplicates == receiver.forged == pending == 0
            failures += not ok
            label = f"{workers} worker{'s' if workers > 1 else ''}"
            print(
                f"{label}: {args.events} events -> {rate:.0f} events/s ({rate / floor_rate:.2f} of the floor);"
                f" at {args.rate:g} events/s for {args.seconds:g} s, commit -> arrival p50"
                f" {benchlib.nearest_rank(lags, 50) * 1000:.0f} ms, p99 {benchlib.nearest_rank(lags, 99) * 1000:.0f} ms;"
                f" duplicates {receiver.duplicates}, forged {receiver.forged}, undelivered {pending}"
                + ("" if ok else "  <-- MISMATCH")
            )
            benchlib.record("webhooks", f"events/s, {label}", rate, "/s")
            benchlib.record("webhooks", f"events/s ÷ floor, {label}", rate / floor_rate, "")
            benchlib.record("webhooks", f"commit -> arrival p99 at {args.rate:g}/s, {label}",
                            benchlib.nearest_rank(lags, 99) * 1000, "ms")  # fmt: skip
        await admin.close()
        return 1 if failures else 0
    finally:
        await runner.cleanup()


async def main() -> int:
    if sys.argv[1:2] == ["--floor"]:
        url, secret, count = sys.argv[2], sys.argv[3], int(sys.argv[4])
        print(await floor(url, secret, [sys.stdin.read()] * count))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rate", type=float, default=100.0, help="events per second in the lag phase")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the lag phase")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="whatsched-bench-") as folder:
        tmp = Path(folder)
        async with benchlib.throwaway_database(tmp) as db:
            return await run(args, db, tmp)


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

"""Dispatch benchmark: M messages x N recipients scheduled for the same instant, sent through the
real bridge (simulator, zero latency) by real worker processes with careful sending off (zero
spacing, no caps, no quiet hours). Prints deliveries per second end to end (from scheduled_for
to the last send) and the lag from scheduled_for to each message's first send (p50/p99), first
with one worker, then with two; and checks the simulator's outbox holds no duplicate.

    .venv/bin/python scripts/bench_dispatch.py                     # embedded PostgreSQL
    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres .venv/bin/python scripts/bench_dispatch.py

Times come from the bridge's outbox (when the simulator accepted each message) and the
database clock (scheduled_for): both the same machine's clock. A fresh database is created on
the server and dropped afterwards. The messages are scheduled --lead seconds ahead (default 4);
workers start (fan out) messages DISPATCH_START_AHEAD_S (default 5) before they are due, and
"fan-out done at" shows when the last one was ready, relative to scheduled_for. DISPATCH_*
variables set in the environment reach the workers.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import uuid
from collections import Counter
from datetime import datetime
from pathlib import Path

import asyncpg

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.bridge_process import BridgeProcess, WorkerProcess  # noqa: E402

sys.path.insert(0, str(REPO / "scripts"))
import benchlib  # noqa: E402


async def make_campaign(conn: asyncpg.Connection, messages: int, recipients: int) -> tuple[uuid.UUID, list[uuid.UUID]]:
    """A user with `messages` groups of `recipients` distinct contacts and one draft per group."""
    user = uuid.uuid4()
    await conn.execute("insert into auth.users (id, email) values ($1, $2)", user, f"bench-{user.hex[:8]}@example.com")
    # Ending in 1: the simulator treats numbers ending in 0000 as not on WhatsApp.
    await conn.execute(
        """
        insert into public.contacts (created_by, name, phone)
        select $1, 'Contact ' || n, '+569' || lpad(n::text, 7, '0') || '1'
        from generate_series(1, $2) n
        """,
        user,
        messages * recipients,
    )
    ids: list[uuid.UUID] = []
    for i in range(messages):
        group = await conn.fetchval(
            "insert into public.groups (created_by, name) values ($1, $2) returning id", user, f"group {i}"
        )
        await conn.execute(
            """
            insert into public.group_contacts (group_id, contact_id, created_by)
            select $1, id, created_by from public.contacts where created_by = $2
            order by phone offset $3 limit $4
            """,
            group,
            user,
            i * recipients,
            recipients,
        )
        message = await conn.fetchval(
            "insert into public.messages (created_by, content) values ($1, $2) returning id",
            user,
            f"Hola {{{{name}}}}, this is benchmark message {i}.",
        )
        await conn.execute(
            "insert into public.message_groups (message_id, group_id, created_by) values ($1, $2, $3)",
            message,
            group,
            user,
        )
        ids.append(message)
    return user, ids


async def run_once(
    admin: asyncpg.Connection,
    database_url: str,
    app_url: str,
    bridge: BridgeProcess,
    workers: int,
    messages: int,
    recipients: int,
    lead_s: float,
    logs: Path,
    env: dict[str, str],
) -> dict[str, float]:
    _, ids = await make_campaign(admin, messages, recipients)
    procs = [
        WorkerProcess(database_url, app_url, bridge.url, logs / f"worker-{workers}-{i}.log", **env)
        for i in range(workers)
    ]
    for proc in procs:
        proc.start()
    try:
        # Wait until every worker listens (its LISTEN connection is up), then let them fall asleep.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            listening = await admin.fetchval(
                "select count(*) from pg_stat_activity where datname = current_database()"
                " and application_name like 'whatsched-worker:%' and query like 'LISTEN%'"
            )
            if listening >= workers:
                break
            await asyncio.sleep(0.1)
        else:
            raise RuntimeError("workers did not start:\n" + "\n".join(p.log() for p in procs))
        await asyncio.sleep(0.5)

        due: datetime = await admin.fetchval("select now() + make_interval(secs => $1)", lead_s)
        async with admin.transaction():
            for message in ids:
                await admin.execute("select public.schedule_message($1, $2)", message, due)

        total = messages * recipients
        deadline = time.monotonic() + lead_s + 600
        while time.monotonic() < deadline:
            open_count = await admin.fetchval(
                "select count(*) from public.messages where id = any($1) and status not in ('sent', 'failed')", ids
            )
            if open_count == 0:
                break
            await asyncio.sleep(0.1)
        else:
            raise RuntimeError("the campaign did not finish in time:\n" + "\n".join(p.log() for p in procs))
        finished_at = time.monotonic()
    finally:
        for proc in procs:
            proc.stop()

    keys = {str(m) for m in ids}
    outbox = [m for m in await bridge.outbox() if m["idempotency_key"].split(":", 1)[0] in keys]
    by_key = Counter(m["idempotency_key"] for m in outbox)
    by_recipient = Counter((m["idempotency_key"].split(":", 1)[0], m["to"]) for m in outbox)
    duplicates = sum(n - 1 for n in by_key.values() if n > 1) + sum(n - 1 for n in by_recipient.values() if n > 1)
    delivered = await admin.fetchval("select sum(delivered_count) from public.messages where id = any($1)", ids)
    # When the last message was fanned out (deliveries created), relative to scheduled_for.
    fanned_out = await admin.fetchval(
        "select extract(epoch from max(created_at) - $2)::float8 from public.deliveries where message_id = any($1)",
        ids,
        due,
    )

    sent_times = [datetime.fromisoformat(m["sent_at"].replace("Z", "+00:00")) for m in outbox]
    first: dict[str, datetime] = {}
    for m, at in zip(outbox, sent_times, strict=True):
        key = m["idempotency_key"].split(":", 1)[0]
        if key not in first or at < first[key]:
            first[key] = at
    lags = [(at - due).total_seconds() for at in first.values()]
    span = (max(sent_times) - due).total_seconds()
    del finished_at
    return {
        "deliveries": float(len(outbox)),
        "expected": float(total),
        "delivered_count": float(delivered or 0),
        "duplicates": float(duplicates),
        "seconds": span,
        "rate": len(outbox) / span,
        "lag_p50": benchlib.nearest_rank(lags, 50),
        "lag_p99": benchlib.nearest_rank(lags, 99),
        "lag_max": max(lags),
        "fanned_out": fanned_out,
    }


async def report(
    args: argparse.Namespace, db: benchlib.Throwaway, bridge: BridgeProcess, tmp: Path, env: dict[str, str]
) -> int:
    admin = await asyncpg.connect(db.prepared.admin_url)
    print(
        f"{args.messages} messages x {args.recipients} recipients, simulator latency 0 ms, spacing 0,"
        f" no caps, no quiet hours; {os.cpu_count()} CPUs; database "
        f"{'embedded' if db.embedded else 'DATABASE_URL'} ({await admin.fetchval('show server_version')})"
    )
    failures = 0
    for workers in args.workers:
        await bridge._call("DELETE", "/simulator/outbox")
        r = await run_once(
            admin,
            db.prepared.admin_url,
            db.prepared.app_url,
            bridge,
            workers,
            args.messages,
            args.recipients,
            args.lead,
            tmp / "logs",
            env,
        )
        ok = r["deliveries"] == r["expected"] == r["delivered_count"] and r["duplicates"] == 0
        failures += not ok
        print(
            f"{workers} worker(s): {int(r['deliveries'])}/{int(r['expected'])} sent in {r['seconds']:.2f} s"
            f" -> {r['rate']:.0f} deliveries/s; lag to first send p50 {r['lag_p50'] * 1000:.0f} ms,"
            f" p99 {r['lag_p99'] * 1000:.0f} ms (max {r['lag_max'] * 1000:.0f} ms);"
            f" duplicates in outbox: {int(r['duplicates'])}; fan-out done at {r['fanned_out']:+.2f} s"
            + ("" if ok else "  <-- MISMATCH")
        )
        label = f"{workers} worker{'s' if workers > 1 else ''}"
        benchlib.record("dispatch", f"deliveries/s, {label}", r["rate"], "/s", ">= 500")
        benchlib.record("dispatch", f"lag scheduled_for -> first send p99, {label}", r["lag_p99"] * 1000,
                        "ms", "< 1000")  # fmt: skip
        benchlib.record("dispatch", f"duplicates in outbox, {label}", r["duplicates"], "", "0")
    if args.keep_logs:
        keep = Path(tempfile.mkdtemp(prefix="whatsched-bench-logs-"))
        for log in (tmp / "logs").glob("*.log"):
            (keep / log.name).write_bytes(log.read_bytes())
        print(f"worker logs kept in {keep}")
    await admin.close()
    return 1 if failures else 0


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20)
    parser.add_argument("--recipients", type=int, default=1000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts to run, in order")
    parser.add_argument("--lead", type=float, default=4.0, help="seconds between scheduling and scheduled_for")
    parser.add_argument("--keep-logs", action="store_true")
    args = parser.parse_args()

    env = {k: v for k, v in os.environ.items() if k.startswith("DISPATCH_")}
    with tempfile.TemporaryDirectory(prefix="whatsched-bench-") as folder:
        tmp = Path(folder)
        async with benchlib.throwaway_database(tmp) as db:
            bridge = BridgeProcess(tmp / "bridge", latency_ms=0)
            try:
                bridge.start()
                return await report(args, db, bridge, tmp, env)
            finally:
                bridge.stop()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

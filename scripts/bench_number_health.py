"""Health benchmark: how soon is a number WhatsApp restricts paused? A real bridge (simulator) with
`restrict_new_chats` on (every send to a recipient it never wrote to fails with error 463) drives
one WhatsApp number; a real worker sends a campaign of --recipients new recipients from it, with
careful sending on (one send at a time, a short random spacing so the run is quick) and the
default health settings (HEALTH_* in the environment reach the worker and the database). Each
round prints how many sends to new recipients the number made before the database paused it,
and how many of those came after the first 463; the issue asks for at most 5 after the first.

    .venv/bin/python scripts/bench_number_health.py                     # embedded PostgreSQL
    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres .venv/bin/python scripts/bench_number_health.py

A fresh database is created on the server and dropped afterwards. Each round uses a new number
(its own bridge process) and a new campaign.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.bridge_process import BridgeProcess, WorkerProcess, new_message, new_owner, numbers  # noqa: E402

sys.path.insert(0, str(REPO / "scripts"))
import benchlib  # noqa: E402

from whatsched.config import Settings  # noqa: E402
from whatsched.rules import publish_settings  # noqa: E402


async def service(admin: asyncpg.Connection, sql: str, *args: object) -> object:
    async with admin.transaction():
        await admin.execute(
            "set local role service_role; select set_config('request.jwt.claims', '{\"role\":\"service_role\"}', true)"
        )
        return await admin.fetchval(sql, *args)


async def one_round(
    admin: asyncpg.Connection, admin_url: str, app_url: str, tmp: Path, round_no: int, recipients: int, spacing: float
) -> tuple[int, int, float]:
    """(sends to new recipients before the pause, of them after the first 463, seconds to the pause)."""
    default_bridge = BridgeProcess(tmp / f"default-{round_no}")
    restricted_bridge = BridgeProcess(tmp / f"restricted-{round_no}")
    default_bridge.start()
    restricted_bridge.start()
    worker: WorkerProcess | None = None
    try:
        number = str(
            await admin.fetchval(
                "insert into public.whatsapp_numbers (label, shared) values ($1, true) returning id::text",
                f"Bench {round_no} {uuid.uuid4().hex[:4]}",
            )
        )
        await service(admin, "select private.register_bridge($1::uuid, $2)", number, restricted_bridge.url)
        await service(
            admin, "select private.record_number_status($1::uuid, 'connected', 'CONNECTED', null, null, null)", number
        )
        await restricted_bridge._call("POST", "/simulator/config", {"restrict_new_chats": True})
        owner = await new_owner(admin)
        message = await new_message(admin, owner, numbers(recipients, 400 + round_no), "Hola {{name}}.")
        await admin.execute("update public.messages set number_id = $2::uuid where id = $1", message, number)
        worker = WorkerProcess(
            admin_url,
            app_url,
            default_bridge.url,
            tmp / f"worker-{round_no}.log",
            SEND_SPACING_MIN_S=str(spacing / 2),
            SEND_SPACING_MAX_S=str(spacing),
            DISPATCH_RETRY_BASE_S="0.2",
            **{k: v for k, v in os.environ.items() if k.startswith(("HEALTH_", "DISPATCH_"))},
        )
        worker.start()
        started = time.monotonic()
        await admin.execute(
            "update public.messages set status = 'scheduled', scheduled_for = now() where id = $1", message
        )
        while await admin.fetchval("select status from public.whatsapp_numbers where id = $1::uuid", number) != (
            "paused"
        ):
            if time.monotonic() - started > 120:
                raise RuntimeError(f"round {round_no}: the number was not paused within 120 s")
            await asyncio.sleep(0.02)
        seconds = time.monotonic() - started
        await asyncio.sleep(1.0)  # a send in flight at the pause is counted too
        tried: int = await admin.fetchval(
            "select coalesce(sum(attempts), 0)::int from public.deliveries where message_id = $1", message
        )
        outbox = await restricted_bridge._call("GET", "/simulator/outbox")
        if outbox["messages"]:
            raise RuntimeError(f"round {round_no}: a new recipient received a message")
        await admin.execute("update public.messages set status = 'cancelled' where id = $1", message)
        return tried, tried - 1, seconds
    finally:
        if worker is not None:
            worker.stop()
        restricted_bridge.stop()
        default_bridge.stop()


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--recipients", type=int, default=50, help="new recipients in each round's campaign")
    parser.add_argument("--spacing", type=float, default=0.1, help="the longest random spacing between sends (s)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="whatsched-bench-") as folder:
        tmp = Path(folder)
        async with benchlib.throwaway_database(tmp) as db:
            admin = await asyncpg.connect(db.prepared.admin_url)
            await publish_settings(admin, Settings())  # HEALTH_* from the environment (or .env), else the defaults
            cfg = await admin.fetchrow(
                "select health_half_life_minutes, health_pause_score, health_weight_restricted from private.settings"
            )
            print(
                f"{args.recipients} new recipients per round, restrict_new_chats on, one send at a time"
                f" (spacing up to {args.spacing:g} s); health: 463 weighs {cfg['health_weight_restricted']:g},"
                f" pause at {cfg['health_pause_score']:g}, half-life {cfg['health_half_life_minutes']:g} min"
            )
            worst = 0
            for round_no in range(1, args.rounds + 1):
                tried, after_first, seconds = await one_round(
                    admin, db.prepared.admin_url, db.prepared.app_url, tmp, round_no, args.recipients, args.spacing
                )
                worst = max(worst, after_first)
                print(
                    f"round {round_no}: paused after {tried} sends to new recipients"
                    f" ({after_first} after the first 463) in {seconds:.2f} s"
                )
            print(f"worst: {worst} sends to new recipients after the first 463 (the issue's limit: 5)")
            benchlib.record("health", "sends to new recipients after the first 463, worst round", worst, "", "<= 5")
            await admin.close()
            return 0 if worst <= 5 else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

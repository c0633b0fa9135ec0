"""The dispatcher end to end: real worker processes (`python -m whatsched.cli worker`) sending
through the real bridge (`node bridge/src/main.js`, simulator driver) into the test database.
What a user would see is checked where a user would see it: the simulator's outbox (what
WhatsApp received), the message's status and counters, the deliveries and the notifications.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import pytest
from bridge_process import (
    BridgeProcess,
    WorkerProcess,
    as_owner,
    delivery_states,
    eventually,
    message_row,
    name_for,
    new_message,
    new_owner,
    numbers,
    schedule,
    sent_for,
    workers_listening,
)

from whatsched.db.setup import Prepared

pytestmark = pytest.mark.slow

# Short leases and backoffs so crash recovery and retries happen within a test's time.
FAST = {
    "DISPATCH_LEASE_S": "3",
    "DISPATCH_BRIDGE_TIMEOUT_S": "1.5",
    "DISPATCH_HOUSEKEEPING_S": "1",
    "DISPATCH_RETRY_BASE_S": "0.2",
    "DISPATCH_RETRY_MAX_S": "1",
}
FINAL = ("sent", "failed", "cancelled")


@pytest.fixture
async def bridge(tmp_path: Path) -> AsyncIterator[BridgeProcess]:
    process = BridgeProcess(tmp_path / "bridge")
    process.start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
async def start_worker(
    prepared: Prepared, bridge: BridgeProcess, tmp_path: Path
) -> AsyncIterator[Callable[..., WorkerProcess]]:
    """Start a worker process; every one still running at the end must stop cleanly on SIGTERM."""
    started: list[WorkerProcess] = []

    def start(**env: str) -> WorkerProcess:
        worker = WorkerProcess(
            prepared.admin_url,
            prepared.app_url,
            bridge.url,
            tmp_path / f"worker-{len(started)}.log",
            **{**FAST, **env},
        )
        worker.start()
        started.append(worker)
        return worker

    yield start
    codes = [w.stop() for w in started]
    for w in started:
        print(f"--- {w.log_path.name}\n{w.log()}")
    print(f"--- bridge\n{bridge.log()}")
    # 0: stopped by SIGTERM; -9: killed by the test itself. None: SIGTERM was not enough.
    assert all(code in (0, -9) for code in codes), f"a worker did not exit cleanly: {codes}"


async def wait_final(admin: asyncpg.Connection, message: uuid.UUID, within: float = 60) -> asyncpg.Record:
    return await eventually(
        lambda: message_row(admin, message), lambda m: m["status"] in FINAL, within, what=f"message {message} to end"
    )


async def sent_count(admin: asyncpg.Connection, message: uuid.UUID) -> int:
    n: int = await admin.fetchval(
        "select count(*) from public.deliveries where message_id = $1 and state in ('sent', 'delivered', 'read')",
        message,
    )
    return n


async def in_flight(admin: asyncpg.Connection, message: uuid.UUID) -> int:
    n: int = await admin.fetchval(
        "select count(*) from public.deliveries where message_id = $1 and state = 'sending'", message
    )
    return n


async def progress(admin: asyncpg.Connection, message: uuid.UUID) -> asyncpg.Record:
    row: asyncpg.Record = await admin.fetchrow(
        """
        select count(*) filter (where state in ('sent', 'delivered', 'read')) as sent,
               count(*) filter (where state = 'sending') as sending
        from public.deliveries where message_id = $1
        """,
        message,
    )
    return row


def assert_exactly_once(outbox: list[dict[str, Any]], message: uuid.UUID, phones: list[str]) -> None:
    """Every recipient received exactly one message, with their name in it."""
    entries = sent_for(outbox, message)
    received = Counter(m["to"] for m in entries)
    twice = {p: n for p, n in received.items() if n > 1}
    missing = set(phones) - set(received)
    assert not twice, f"{len(twice)} recipient(s) got the message more than once: {list(twice.items())[:5]}"
    assert not missing, f"{len(missing)} recipient(s) never got it: {sorted(missing)[:5]}"
    assert set(received) == set(phones)
    for m in entries:
        assert m["body"] == f"Hola {name_for(m['to'])}!"


async def notifications_of(admin: asyncpg.Connection, message: uuid.UUID) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await admin.fetch(
        "select type, title, message from public.notifications where related_entity_id = $1 order by created_at",
        message,
    )
    return rows


# ---------------------------------------------------------------------------------------------
# Crash safety and sharing
# ---------------------------------------------------------------------------------------------


async def test_every_recipient_gets_the_message_exactly_once_although_the_worker_is_killed(
    admin: asyncpg.Connection, bridge: BridgeProcess, start_worker: Callable[..., WorkerProcess]
) -> None:
    seed = random.randrange(1_000_000)
    rng = random.Random(seed)
    print(f"random seed {seed}")
    await bridge.configure(latency_ms=40)  # a send takes a while: kills land with batches in flight
    owner = await new_owner(admin)
    phones = numbers(600, series=1)
    message = await new_message(admin, owner, phones)
    env = {"DISPATCH_BATCH_SIZE": "8", "DISPATCH_LANES": "2"}
    worker = start_worker(**env)
    await schedule(admin, owner, message)

    kills = 0
    # Killed while deliveries are in flight (marked sending, maybe sent, not yet recorded)...
    for fraction in sorted(rng.uniform(0.05, 0.8) for _ in range(3)):
        threshold = fraction * len(phones)
        await eventually(
            lambda: progress(admin, message),
            lambda counts, threshold=threshold: counts["sent"] >= threshold and counts["sending"] > 0,
            within=60,
            interval=0.005,
            what=f"{fraction:.0%} sent with a batch in flight",
        )
        worker.kill()
        kills += 1
        worker = start_worker(**env)
        # ...and once at a random moment, maybe before the new worker has done anything.
        if kills == 2:
            await asyncio.sleep(rng.uniform(0.0, 0.6))
            worker.kill()
            kills += 1
            worker = start_worker(**env)

    final = await wait_final(admin, message)
    outbox = await bridge.outbox()
    assert_exactly_once(outbox, message, phones)
    assert (final["status"], final["recipient_count"], final["delivered_count"], final["failed_count"]) == (
        "sent",
        600,
        600,
        0,
    )
    assert await delivery_states(admin, message) == Counter({"sent": 600})
    # The kills did hit in-flight sends: their deliveries were taken over and sent again (replayed).
    taken_over = await admin.fetchval(
        "select count(*) from public.deliveries where message_id = $1 and attempts > 1", message
    )
    assert taken_over > 0
    assert [n["type"] for n in await notifications_of(admin, message)] == ["success"]
    print(f"{kills} kills; {taken_over} deliveries re-sent after a takeover")


async def test_two_workers_share_the_load_without_duplicates(
    admin: asyncpg.Connection, bridge: BridgeProcess, start_worker: Callable[..., WorkerProcess]
) -> None:
    await bridge.configure(latency_ms=20)
    owner = await new_owner(admin)
    campaigns = {await new_message(admin, owner, p): p for p in (numbers(300, series=2), numbers(300, series=3))}
    env = {"DISPATCH_BATCH_SIZE": "10", "DISPATCH_LANES": "2"}
    start_worker(**env)
    start_worker(**env)
    await eventually(lambda: workers_listening(admin), lambda n: n == 2, what="both workers to listen")
    for message in campaigns:
        await schedule(admin, owner, message)

    for message in campaigns:
        final = await wait_final(admin, message)
        assert (final["status"], final["delivered_count"], final["failed_count"]) == ("sent", 300, 0)
    outbox = await bridge.outbox()
    for message, phones in campaigns.items():
        assert_exactly_once(outbox, message, phones)
    workers = await admin.fetchval(
        "select count(distinct claimed_by) from public.deliveries where message_id = any($1)", list(campaigns)
    )
    assert workers == 2


# ---------------------------------------------------------------------------------------------
# Pause, resume, cancel
# ---------------------------------------------------------------------------------------------


async def test_pause_stops_within_the_batch_in_flight_and_resume_continues(
    admin: asyncpg.Connection, bridge: BridgeProcess, start_worker: Callable[..., WorkerProcess]
) -> None:
    await bridge.configure(latency_ms=30)
    owner = await new_owner(admin)
    phones = numbers(300, series=4)
    message = await new_message(admin, owner, phones)
    batch = 5
    start_worker(DISPATCH_BATCH_SIZE=str(batch), DISPATCH_LANES="1")
    await schedule(admin, owner, message)
    await eventually(lambda: sent_count(admin, message), lambda n: n >= 40, what="40 sends")

    paused = await as_owner(admin, owner, "select status from public.pause_message($1)", message)
    assert paused["status"] == "paused"
    at_pause = len(sent_for(await bridge.outbox(), message))
    await eventually(lambda: in_flight(admin, message), lambda n: n == 0, what="the batch in flight to end")
    after = len(sent_for(await bridge.outbox(), message))
    assert after - at_pause <= batch  # at most the one batch already in flight
    await asyncio.sleep(0.5)
    assert len(sent_for(await bridge.outbox(), message)) == after  # nothing more while paused
    states = await delivery_states(admin, message)
    assert states["pending"] == 300 - after and states["sent"] == after
    assert (await message_row(admin, message))["status"] == "paused"

    resumed = await as_owner(admin, owner, "select status from public.resume_message($1)", message)
    assert resumed["status"] == "sending"
    final = await wait_final(admin, message)
    assert (final["status"], final["delivered_count"], final["failed_count"]) == ("sent", 300, 0)
    assert_exactly_once(await bridge.outbox(), message, phones)


async def test_cancel_mid_send_cancels_the_remaining_deliveries(
    admin: asyncpg.Connection, bridge: BridgeProcess, start_worker: Callable[..., WorkerProcess]
) -> None:
    await bridge.configure(latency_ms=30)
    owner = await new_owner(admin)
    phones = numbers(300, series=5)
    message = await new_message(admin, owner, phones)
    batch = 5
    start_worker(DISPATCH_BATCH_SIZE=str(batch), DISPATCH_LANES="1")
    await schedule(admin, owner, message)
    await eventually(lambda: sent_count(admin, message), lambda n: n >= 40, what="40 sends")

    cancelled = await as_owner(admin, owner, "select status from public.cancel_message($1)", message)
    assert cancelled["status"] == "cancelled"
    at_cancel = len(sent_for(await bridge.outbox(), message))
    await eventually(lambda: in_flight(admin, message), lambda n: n == 0, what="the batch in flight to end")
    await asyncio.sleep(0.5)
    outbox = sent_for(await bridge.outbox(), message)
    assert len(outbox) - at_cancel <= batch
    assert len({m["to"] for m in outbox}) == len(outbox)  # nobody twice
    states = await delivery_states(admin, message)
    assert states == Counter({"sent": len(outbox), "cancelled": 300 - len(outbox)})
    final = await message_row(admin, message)
    assert (final["status"], final["recipient_count"], final["delivered_count"]) == ("cancelled", 300, len(outbox))
    assert await notifications_of(admin, message) == []


# ---------------------------------------------------------------------------------------------
# Failures
# ---------------------------------------------------------------------------------------------


async def test_bridge_down_then_back_retries_and_completes_without_duplicates(
    admin: asyncpg.Connection, bridge: BridgeProcess, start_worker: Callable[..., WorkerProcess]
) -> None:
    await bridge.configure(latency_ms=20)
    owner = await new_owner(admin)
    phones = numbers(200, series=6)
    message = await new_message(admin, owner, phones)
    start_worker(DISPATCH_BATCH_SIZE="10", DISPATCH_LANES="1", DISPATCH_MAX_ATTEMPTS="100")
    await schedule(admin, owner, message)
    await eventually(lambda: sent_count(admin, message), lambda n: n >= 40, what="40 sends")

    # WhatsApp drops first (sends fail with not_connected), then the bridge process goes away.
    await bridge.force_state("disconnected", "phone offline")
    before = await bridge.outbox()  # complete: a disconnected simulator accepts nothing more
    bridge.stop()

    async def retrying() -> asyncpg.Record:
        row: asyncpg.Record = await admin.fetchrow(
            """
            select count(*) filter (where state = 'pending' and attempts >= 2
                                      and last_error_code in ('bridge_unreachable', 'not_connected')) as retrying,
                   count(*) filter (where last_error_code = 'bridge_unreachable') as unreachable
            from public.deliveries where message_id = $1
            """,
            message,
        )
        return row

    await eventually(
        retrying, lambda r: r["retrying"] > 0 and r["unreachable"] > 0, what="deliveries retrying with backoff"
    )
    assert (await message_row(admin, message))["status"] == "sending"

    bridge.start()  # same port, same data dir: it remembers the keys it already sent
    final = await wait_final(admin, message)
    after = await bridge.outbox()
    assert_exactly_once(before + after, message, phones)
    assert (final["status"], final["delivered_count"], final["failed_count"]) == ("sent", 200, 0)
    assert await admin.fetchval("select max(attempts) from public.deliveries where message_id = $1", message) > 1


async def test_unregistered_numbers_fail_at_once(
    admin: asyncpg.Connection, bridge: BridgeProcess, start_worker: Callable[..., WorkerProcess]
) -> None:
    owner = await new_owner(admin)
    registered = numbers(7, series=7)
    unregistered = ["+56970070000", "+56970080000", "+56970090000"]
    mixed = await new_message(admin, owner, registered + unregistered)
    nobody = await new_message(admin, owner, unregistered[:2])
    start_worker()
    await schedule(admin, owner, mixed)
    await schedule(admin, owner, nobody)

    final = await wait_final(admin, mixed)
    assert (final["status"], final["recipient_count"], final["delivered_count"], final["failed_count"]) == (
        "sent",
        10,
        7,
        3,
    )
    failed = await admin.fetch(
        "select phone, attempts, last_error_code from public.deliveries where message_id = $1 and state = 'failed'",
        mixed,
    )
    assert sorted(r["phone"] for r in failed) == sorted(unregistered)
    assert {(r["attempts"], r["last_error_code"]) for r in failed} == {(1, "not_registered")}
    outbox = await bridge.outbox()
    assert_exactly_once(outbox, mixed, registered)
    [partial] = await notifications_of(admin, mixed)
    assert partial["type"] == "warning" and "7 de 10" in partial["message"] and "not_registered" in partial["message"]

    final = await wait_final(admin, nobody)
    assert (final["status"], final["delivered_count"], final["failed_count"]) == ("failed", 0, 2)
    assert sent_for(outbox, nobody) == []
    [error] = await notifications_of(admin, nobody)
    assert error["type"] == "error"


async def test_transient_failures_retry_with_backoff_then_give_up(
    admin: asyncpg.Connection, bridge: BridgeProcess, start_worker: Callable[..., WorkerProcess]
) -> None:
    owner = await new_owner(admin)
    phones = numbers(4, series=8)
    message = await new_message(admin, owner, phones)
    await bridge.configure(fail_next=1000)  # every send fails with send_failed
    start_worker(DISPATCH_MAX_ATTEMPTS="3")
    await schedule(admin, owner, message)

    final = await wait_final(admin, message)
    assert (final["status"], final["delivered_count"], final["failed_count"]) == ("failed", 0, 4)
    rows = await admin.fetch("select attempts, last_error_code from public.deliveries where message_id = $1", message)
    assert {(r["attempts"], r["last_error_code"]) for r in rows} == {(3, "send_failed")}
    [error] = await notifications_of(admin, message)
    assert error["type"] == "error" and "send_failed" in error["message"]

    # A failure that clears up: the retries succeed.
    await bridge.configure(fail_next=2)
    phones = numbers(4, series=9)
    message = await new_message(admin, owner, phones)
    await schedule(admin, owner, message)
    final = await wait_final(admin, message)
    assert (final["status"], final["delivered_count"], final["failed_count"]) == ("sent", 4, 0)
    attempts = await admin.fetchval("select sum(attempts) from public.deliveries where message_id = $1", message)
    assert attempts == 4 + 2
    assert_exactly_once(await bridge.outbox(), message, phones)


# ---------------------------------------------------------------------------------------------
# Timing: quiet hours, sleeping until due, pacing
# ---------------------------------------------------------------------------------------------


def zone_where_local_hour_in(hours: set[int]) -> str:
    """An Etc/GMT zone whose local hour right now is in `hours` (the sets below stay an hour
    away from the window's edges at 21:00 and 08:00, so the minute does not matter)."""
    now = datetime.now(UTC)
    for offset in range(-12, 15):
        name = f"Etc/GMT{-offset:+d}"  # Etc/GMT+5 is UTC-5
        if now.astimezone(ZoneInfo(name)).hour in hours:
            return name
    raise AssertionError("no zone found")  # every hour is some zone's


async def test_quiet_hours_defer_a_send_to_the_end_of_the_owners_night(
    admin: asyncpg.Connection, bridge: BridgeProcess, start_worker: Callable[..., WorkerProcess]
) -> None:
    night_zone = zone_where_local_hour_in({22, 23, 0, 1, 2, 3, 4, 5})
    day_zone = zone_where_local_hour_in({10, 11, 12, 13, 14, 15, 16, 17, 18})
    sleeper, worker_bee = await new_owner(admin, night_zone), await new_owner(admin, day_zone)
    night = await new_message(admin, sleeper, numbers(3, series=10))
    day = await new_message(admin, worker_bee, numbers(3, series=11))
    start_worker(QUIET_HOURS="21:00-08:00")
    await schedule(admin, sleeper, night)
    await schedule(admin, worker_bee, day)

    assert (await wait_final(admin, day))["status"] == "sent"  # the worker is running and sending
    # Under load the night message may be started (fanned out) a little after the day one finished.
    await eventually(lambda: message_row(admin, night), lambda r: r["status"] == "sending", what="the night start")
    local = datetime.now(UTC).astimezone(ZoneInfo(night_zone))
    morning = datetime.combine(local.date() + timedelta(days=1 if local.hour >= 21 else 0), datetime.min.time())
    morning = morning.replace(hour=8, tzinfo=ZoneInfo(night_zone))
    rows = await admin.fetch(
        "select state, attempts, next_attempt_at from public.deliveries where message_id = $1", night
    )
    assert {(r["state"], r["attempts"], r["next_attempt_at"]) for r in rows} == {("pending", 0, morning)}
    assert (await message_row(admin, night))["status"] == "sending"
    assert sent_for(await bridge.outbox(), night) == []


async def test_a_message_falling_due_while_the_worker_sleeps_is_sent_at_its_time(
    admin: asyncpg.Connection, bridge: BridgeProcess, start_worker: Callable[..., WorkerProcess]
) -> None:
    owner = await new_owner(admin)
    first, second = numbers(3, series=12), numbers(3, series=13)
    early, late = await new_message(admin, owner, first), await new_message(admin, owner, second)
    # Started half a second ahead: the worker sleeps until then, and again until each is due.
    start_worker(DISPATCH_START_AHEAD_S="0.5")
    await eventually(lambda: workers_listening(admin), lambda n: n == 1, what="the worker to listen")
    due_early = await schedule(admin, owner, early, in_seconds=1.5)
    due_late = await schedule(admin, owner, late, in_seconds=3)
    # Scheduling notified the worker once; nothing announces the due times.

    for message, due, phones in ((early, due_early, first), (late, due_late, second)):
        assert (await wait_final(admin, message))["status"] == "sent"
        entries = sent_for(await bridge.outbox(), message)
        assert sorted(m["to"] for m in entries) == sorted(phones)
        first_send = min(datetime.fromisoformat(m["sent_at"].replace("Z", "+00:00")) for m in entries)
        assert first_send >= due  # never early


async def reset_pacing(admin: asyncpg.Connection) -> None:
    await admin.execute("delete from private.sender_usage; delete from private.senders")


async def test_hourly_cap_holds_the_rest_for_later(
    admin: asyncpg.Connection, bridge: BridgeProcess, start_worker: Callable[..., WorkerProcess]
) -> None:
    await reset_pacing(admin)
    owner = await new_owner(admin)
    message = await new_message(admin, owner, numbers(5, series=14))
    start_worker(SEND_HOURLY_CAP="3")
    await schedule(admin, owner, message)

    await eventually(lambda: sent_count(admin, message), lambda n: n == 3, what="3 sends")
    await asyncio.sleep(0.5)
    assert await delivery_states(admin, message) == Counter({"sent": 3, "pending": 2})
    assert len(sent_for(await bridge.outbox(), message)) == 3
    assert (await message_row(admin, message))["status"] == "sending"
    # Pacing is per WhatsApp number: the default number's row (its id is the pacing key).
    held_until = await admin.fetchval(
        "select next_send_at - now() from private.senders"
        " where sender = (select id::text from public.whatsapp_numbers where is_default)"
    )
    assert held_until > timedelta(minutes=55)
    await reset_pacing(admin)
    await as_owner(admin, owner, "select public.cancel_message($1)", message)


async def test_spacing_keeps_sends_apart(
    admin: asyncpg.Connection, bridge: BridgeProcess, start_worker: Callable[..., WorkerProcess]
) -> None:
    await reset_pacing(admin)
    owner = await new_owner(admin)
    phones = numbers(4, series=15)
    message = await new_message(admin, owner, phones)
    start_worker(SEND_SPACING_MIN_S="0.3", SEND_SPACING_MAX_S="0.4")
    await schedule(admin, owner, message)

    assert (await wait_final(admin, message))["status"] == "sent"
    entries = sent_for(await bridge.outbox(), message)
    assert sorted(m["to"] for m in entries) == sorted(phones)
    times = sorted(datetime.fromisoformat(m["sent_at"].replace("Z", "+00:00")) for m in entries)
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(times)]
    # The spacing runs from one claim to the next; a send follows its claim within milliseconds.
    assert min(gaps) >= 0.3 - 0.05, gaps
    await reset_pacing(admin)


# ---------------------------------------------------------------------------------------------
# Recurrence and shutdown
# ---------------------------------------------------------------------------------------------


async def test_a_recurring_message_schedules_its_next_occurrence_in_the_owners_timezone(
    admin: asyncpg.Connection, bridge: BridgeProcess, start_worker: Callable[..., WorkerProcess]
) -> None:
    tz = "America/Santiago"
    owner = await new_owner(admin, tz)
    phones = numbers(3, series=16)
    message = await new_message(admin, owner, phones, recurrence="0 9 * * *")
    start_worker()
    await schedule(admin, owner, message)
    assert (await wait_final(admin, message))["status"] == "sent"

    nxt = await eventually(
        lambda: admin.fetchrow("select * from public.messages where recurrence_parent_id = $1", message),
        lambda row: row is not None,
        what="the next occurrence",
    )
    local_now = datetime.now(ZoneInfo(tz))
    nine = local_now.replace(hour=9, minute=0, second=0, microsecond=0)
    if nine <= local_now:
        nine = datetime.combine(local_now.date() + timedelta(days=1), nine.time(), tzinfo=ZoneInfo(tz))
    assert (nxt["status"], nxt["content"], nxt["recurrence"], nxt["scheduled_for"]) == (
        "scheduled",
        "Hola {{name}}!",
        "0 9 * * *",
        nine,
    )
    groups = await admin.fetch(
        "select message_id, group_id from public.message_groups where message_id = any($1)", [message, nxt["id"]]
    )
    by_message: dict[uuid.UUID, set[uuid.UUID]] = {}
    for g in groups:
        by_message.setdefault(g["message_id"], set()).add(g["group_id"])
    assert by_message[message] == by_message[nxt["id"]]
    await as_owner(admin, owner, "select public.cancel_message($1)", nxt["id"])


async def test_the_worker_exits_cleanly_on_sigterm(
    admin: asyncpg.Connection, start_worker: Callable[..., WorkerProcess]
) -> None:
    worker = start_worker()
    await eventually(lambda: workers_listening(admin), lambda n: n == 1, what="the worker to listen")
    assert worker.stop() == 0
    assert await workers_listening(admin) == 0

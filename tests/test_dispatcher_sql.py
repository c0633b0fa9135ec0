"""The dispatcher's SQL operations one at a time (migration 20261129000700_dispatch), run as service_role
like the worker. Each test runs in one transaction that is rolled back, with every other
message in the database set aside first, so the claims see only the test's rows. now() is
fixed within a transaction, which makes leases and backoffs exact to check."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import pytest
from bridge_process import name_for, new_message, new_owner, numbers

from whatsched.dispatcher.pacing import QuietHours, parse_quiet_hours

# private.claim_deliveries takes one named request; pacing keys left out are off.
NO_PACING: dict[str, Any] = {}


@pytest.fixture
async def db(admin: asyncpg.Connection) -> AsyncIterator[asyncpg.Connection]:
    tx = admin.transaction()
    await tx.start()
    try:
        # Whatever other tests left behind is invisible to the claims below.
        await admin.execute("update public.messages set status = 'paused' where status in ('sending', 'scheduled')")
        await admin.execute(
            "update public.deliveries set lease_expires_at = now() + interval '1 day' where state = 'sending'"
        )
        await admin.execute("delete from private.sender_usage; delete from private.senders")
        yield admin
    finally:
        await tx.rollback()


async def as_service(db: asyncpg.Connection, sql: str, *args: Any) -> list[asyncpg.Record]:
    """One statement as service_role (the worker's role), then back to the superuser."""
    await db.execute("set local role service_role")
    try:
        rows: list[asyncpg.Record] = await db.fetch(sql, *args)
        return rows
    finally:
        await db.execute("reset role")


async def started(db: asyncpg.Connection, recipients: int, series: int, owner: uuid.UUID | None = None) -> uuid.UUID:
    """A message that is due, started by claim_messages (status sending, deliveries pending)."""
    owner = owner or await new_owner(db)
    message = await new_message(db, owner, numbers(recipients, series))
    await db.execute("select public.schedule_message($1, now())", message)
    rows = await as_service(db, "select * from private.claim_messages(100, 0)")
    assert message in {r[0] for r in rows}
    return message


async def claim(db: asyncpg.Connection, worker: str, limit: int, pacing: dict[str, Any] = NO_PACING) -> list[Any]:
    """The deliveries this claim marked sending (what the worker sends)."""
    request = {"worker": worker, "batch_limit": limit, "lease_seconds": 60, **pacing}
    rows = await as_service(db, "select * from private.claim_deliveries($1::jsonb)", json.dumps(request))
    return [r for r in rows if r["state"] == "sending"]


async def test_claim_messages_fans_out_once_and_only_when_due(db: asyncpg.Connection) -> None:
    owner = await new_owner(db)
    later = await new_message(db, owner, numbers(3, 40))
    soon = await new_message(db, owner, numbers(3, 41) + numbers(2, 41))  # a phone in twice counts once
    await db.execute("select public.schedule_message($1, now() + interval '1 hour')", later)
    await db.execute("select public.schedule_message($1, now() + interval '4 seconds')", soon)

    assert await as_service(db, "select * from private.claim_messages(10, 0)") == []
    # Within the start-ahead window: started, deliveries due at scheduled_for, not before.
    [row] = await as_service(db, "select * from private.claim_messages(10, 5)")
    assert row[0] == soon
    m = await db.fetchrow("select status, recipient_count, scheduled_for from public.messages where id = $1", soon)
    assert (m["status"], m["recipient_count"]) == ("sending", 3)
    due = await db.fetch("select distinct next_attempt_at from public.deliveries where message_id = $1", soon)
    assert [d["next_attempt_at"] for d in due] == [m["scheduled_for"]]
    assert await claim(db, "w1", 10) == []  # not due yet
    assert await as_service(db, "select * from private.claim_messages(10, 5)") == []  # once


async def test_claims_share_the_batch_across_messages_and_skip_paused_ones(db: asyncpg.Connection) -> None:
    owner = await new_owner(db)
    a, b, c = [await started(db, 10, s, owner) for s in (42, 43, 44)]
    await db.execute("select public.pause_message($1)", c)

    batch = await claim(db, "w1", 6)
    assert sorted(str(r["message_id"]) for r in batch) == sorted([str(a)] * 3 + [str(b)] * 3)
    assert {r["attempts"] for r in batch} == {1}
    # Each comes rendered for its recipient (contacts are named name_for(phone)).
    assert all(r["body"] == f"Hola {name_for(r['phone'])}!" for r in batch)
    rows = await db.fetch(
        "select state, claimed_by, lease_expires_at - now() as lease from public.deliveries where id = any($1)",
        [r["id"] for r in batch],
    )
    assert {(r["state"], r["claimed_by"], r["lease"]) for r in rows} == {("sending", "w1", timedelta(seconds=60))}
    # A second worker gets different deliveries; nothing of the paused message.
    other = await claim(db, "w2", 100)
    assert len(other) == 14 and not {r["id"] for r in other} & {r["id"] for r in batch}
    assert c not in {r["message_id"] for r in other}


async def test_an_expired_lease_is_taken_over_with_the_same_idempotency_key(db: asyncpg.Connection) -> None:
    message = await started(db, 2, 45)
    first = await claim(db, "w1", 1)
    assert await claim(db, "w2", 1) != first  # the lease holds
    await db.execute(
        "update public.deliveries set lease_expires_at = now() - interval '1 second' where id = $1", first[0]["id"]
    )
    [again] = await claim(db, "w2", 1)
    assert (again["id"], again["idempotency_key"], again["attempts"]) == (
        first[0]["id"],
        first[0]["idempotency_key"],
        2,
    )
    assert await db.fetchval("select claimed_by from public.deliveries where id = $1", again["id"]) == "w2"
    del message


async def test_complete_and_fail_record_a_batch_and_finish_the_message(db: asyncpg.Connection) -> None:
    message = await started(db, 4, 46)
    batch = await claim(db, "w1", 4)
    ids = [r["id"] for r in batch]
    await as_service(db, "select private.complete_deliveries($1, $2)", ids[:2], ["wa-1", "wa-2"])
    await as_service(
        db,
        "select * from private.fail_deliveries('w1', $1, $2, $3, $4, 5, 1, 100)",
        ids[2:],
        ["not_registered", "send_failed"],
        ["nope", "later"],
        [True, False],
    )
    states = {
        r["id"]: (r["state"], r["last_error_code"])
        for r in await db.fetch(
            "select id, state, last_error_code from public.deliveries where message_id = $1", message
        )
    }
    assert [states[i] for i in ids] == [
        ("sent", None),
        ("sent", None),
        ("failed", "not_registered"),
        ("pending", "send_failed"),
    ]
    assert await as_service(db, "select * from private.finish_messages($1)", [message]) == []  # one still pending

    # The retry fails for good: the message ends `sent` (some succeeded), counters exact.
    await db.execute("update public.deliveries set next_attempt_at = now(), attempts = 4 where id = $1", ids[3])
    [retry] = await claim(db, "w1", 1)
    await as_service(
        db,
        "select * from private.fail_deliveries('w1', $1, $2, $3, $4, 5, 1, 100)",
        [retry["id"]],
        ["send_failed"],
        ["still"],
        [False],
    )
    [done] = await as_service(db, "select * from private.finish_messages($1)", [message])
    assert (done["status"], done["timezone"]) == ("sent", "UTC")
    m = await db.fetchrow("select * from public.messages where id = $1", message)
    assert (m["status"], m["recipient_count"], m["delivered_count"], m["failed_count"]) == ("sent", 4, 2, 2)
    assert m["sent_at"] is not None


async def test_failures_back_off_exponentially_with_jitter_and_only_the_lease_holder_decides(
    db: asyncpg.Connection,
) -> None:
    message = await started(db, 3, 47)
    batch = await claim(db, "w1", 3)
    ids = [r["id"] for r in batch]
    await db.execute("update public.deliveries set attempts = 3 where id = any($1)", ids)

    assert (
        await as_service(
            db,
            "select * from private.fail_deliveries('w2', $1, $2, $3, $4, 8, 1, 100)",
            ids,
            ["x"] * 3,
            ["x"] * 3,
            [False] * 3,
        )
        == []
    )  # not w2's lease
    rows = await as_service(
        db,
        "select * from private.fail_deliveries('w1', $1, $2, $3, $4, 8, 1, 100)",
        ids,
        ["bridge_unreachable"] * 3,
        ["down"] * 3,
        [False] * 3,
    )
    assert {r["state"] for r in rows} == {"pending"}
    waits = [
        r["wait"]
        for r in await db.fetch("select next_attempt_at - now() as wait from public.deliveries where id = any($1)", ids)
    ]
    # attempt 3: base 1 s * 2^2 = 4 s, times 0.5..1
    assert all(timedelta(seconds=2) <= w <= timedelta(seconds=4) for w in waits), waits

    # A cancelled message's refused delivery is cancelled, not retried.
    await db.execute("update public.deliveries set next_attempt_at = now() where id = $1", ids[0])
    [again] = await claim(db, "w1", 1)
    await db.execute("select public.cancel_message($1)", message)
    [row] = await as_service(
        db,
        "select * from private.fail_deliveries('w1', $1, $2, $3, $4, 8, 1, 100)",
        [again["id"]],
        ["not_connected"],
        ["x"],
        [False],
    )
    assert row["state"] == "cancelled"


async def test_acks_never_move_a_delivery_backwards(db: asyncpg.Connection) -> None:
    message = await started(db, 1, 48)
    [d] = await claim(db, "w1", 1)
    t0 = datetime(2026, 1, 1, 10, 0, tzinfo=UTC)

    async def ack(kind: str, seconds: int, key: str | None = None) -> list[asyncpg.Record]:
        return await as_service(
            db, "select * from private.apply_ack('wa-x', $1, $2, $3)", key, kind, t0 + timedelta(seconds=seconds)
        )

    assert [tuple(r) for r in await ack("delivered", 2, d["idempotency_key"])] == [(message, "sending", "delivered")]
    assert [tuple(r)[1:] for r in await ack("sent", 1)] == [("delivered", "delivered")]  # refines sent_at only
    assert [tuple(r)[1:] for r in await ack("failed", 3)] == []
    assert [tuple(r)[1:] for r in await ack("read", 4)] == [("delivered", "read")]
    await as_service(db, "select private.complete_deliveries($1, $2)", [d["id"]], ["wa-x"])  # late completion
    row = await db.fetchrow("select * from public.deliveries where id = $1", d["id"])
    assert (row["state"], row["sent_at"], row["delivered_at"], row["read_at"]) == (
        "read",
        t0 + timedelta(seconds=1),
        t0 + timedelta(seconds=2),
        t0 + timedelta(seconds=4),
    )
    assert await as_service(db, "select * from private.apply_ack('nobody', null, 'read', now())") == []


async def test_spacing_allows_one_send_per_claim_and_caps_hold_further_claims(db: asyncpg.Connection) -> None:
    await started(db, 5, 49)
    spaced = {"sender": "+1555", "spacing_min_s": 10.0, "spacing_max_s": 20.0}
    assert len(await claim(db, "w1", 5, spaced)) == 1
    wait = await db.fetchval("select next_send_at - now() from private.senders where sender = '+1555'")
    assert timedelta(seconds=10) <= wait <= timedelta(seconds=20)
    assert await claim(db, "w1", 5, spaced) == []  # too soon
    assert await db.fetchval("select private.next_wake_at('+1555', 0) - now()") == wait

    capped = {"sender": "+1666", "hourly_cap": 3}
    assert len(await claim(db, "w1", 5, capped)) == 3
    assert await claim(db, "w1", 5, capped) == []
    held = await db.fetchval("select next_send_at - now() from private.senders where sender = '+1666'")
    assert timedelta(minutes=59) <= held <= timedelta(hours=1)


async def test_warm_up_ramps_the_daily_cap_for_a_new_number(db: asyncpg.Connection) -> None:
    await started(db, 10, 50)
    ramp = {"sender": "+1777", "daily_cap": 10, "warmup_days": 5}  # day 1 of 5: 2 of 10
    assert len(await claim(db, "w1", 10, ramp)) == 2
    assert await claim(db, "w1", 10, ramp) == []
    await db.execute("update private.senders set first_send_at = now() - interval '2 days', next_send_at = now()")
    assert len(await claim(db, "w1", 10, ramp)) == 4  # day 3 of 5: 6 of 10, 2 already sent


async def test_quiet_hours_in_sql_agree_with_the_rule_and_defer_the_owners_work(db: asyncpg.Connection) -> None:
    window = parse_quiet_hours("21:00-08:00")
    assert window is not None
    now = await db.fetchval("select now()")
    for offset in range(-12, 15):
        tz = f"Etc/GMT{-offset:+d}"
        in_sql = await as_service(db, "select private.quiet_until($1, '21:00', '08:00')", tz)
        assert in_sql[0][0] == window.until(now, tz), tz

    night_tz = next(f"Etc/GMT{-o:+d}" for o in range(-12, 15) if window.until(now, f"Etc/GMT{-o:+d}"))
    owner = await new_owner(db, night_tz)
    message = await started(db, 2, 51, owner)
    assert (
        await claim(db, "w1", 10, {"sender": "x", "quiet_start": str(window.start), "quiet_end": str(window.end)}) == []
    )
    deferred = await db.fetch("select distinct next_attempt_at from public.deliveries where message_id = $1", message)
    assert [d["next_attempt_at"] for d in deferred] == [window.until(now, night_tz)]
    assert await db.fetchval("select private.next_wake_at(null, 0)") == window.until(now, night_tz)


def test_quiet_hours_setting() -> None:
    assert parse_quiet_hours("") is None
    window = parse_quiet_hours(" 21:00 - 08:00 ")
    assert window == QuietHours(datetime(1, 1, 1, 21).time(), datetime(1, 1, 1, 8).time())
    santiago = ZoneInfo("America/Santiago")
    at = datetime(2026, 6, 1, 23, 30, tzinfo=santiago)
    assert window.until(at, "America/Santiago") == datetime(2026, 6, 2, 8, 0, tzinfo=santiago)
    assert window.until(datetime(2026, 6, 1, 7, 59, tzinfo=santiago), "America/Santiago") == datetime(
        2026, 6, 1, 8, 0, tzinfo=santiago
    )
    assert window.until(datetime(2026, 6, 1, 8, 0, tzinfo=santiago), "America/Santiago") is None
    daytime = parse_quiet_hours("12:00-13:30")
    assert daytime is not None and daytime.until(datetime(2026, 6, 1, 12, 10, tzinfo=UTC), "UTC") == datetime(
        2026, 6, 1, 13, 30, tzinfo=ZoneInfo("UTC")
    )
    for bad in ("21-08", "25:00-08:00", "21:00", "night"):
        with pytest.raises(Exception, match="QUIET_HOURS"):
            parse_quiet_hours(bad)

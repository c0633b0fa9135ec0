"""Fail: record a batch of refusals in one statement. Permanent refusals and last attempts
become `failed`; the rest wait an exponential backoff with jitter (private.fail_deliveries)."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from whatsched import metrics
from whatsched.dispatcher.deliver import Refused

FAIL = "select id, state from private.fail_deliveries($1, $2, $3, $4, $5, $6, $7, $8)"


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int
    base_s: float
    max_s: float


@dataclass(frozen=True)
class Failures:
    retrying: int
    failed: int


async def fail(conn: asyncpg.Connection, worker_id: str, refused: list[Refused], policy: RetryPolicy) -> Failures:
    rows = await conn.fetch(
        FAIL,
        worker_id,
        [r.id for r in refused],
        [r.code for r in refused],
        [r.message for r in refused],
        [r.permanent for r in refused],
        policy.max_attempts,
        policy.base_s,
        policy.max_s,
    )
    failed = sum(1 for r in rows if r["state"] == "failed")
    if failed:
        metrics.SENDS.labels("failed").inc(failed)
    return Failures(retrying=sum(1 for r in rows if r["state"] == "pending"), failed=failed)

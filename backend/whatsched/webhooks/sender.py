"""The webhook sender: each worker claims due rows of the outbox (public.webhook_deliveries) and
POSTs them, signed as Standard Webhooks says, with the specification's own library.

Postgres decides everything that can be decided there (supabase/migrations/20261206000200_webhooks):
which rows are due (FOR UPDATE SKIP LOCKED, with a lease: a sender killed mid-request leaves its rows
to the next one when the lease ends, with the same `webhook-id`), which addresses are private, what
an outcome means (delivered, retried on the schedule, failed, the endpoint disabled). This module
resolves names, makes the requests and reports what happened.

A slow receiver delays nobody: the sender runs beside the dispatcher with its own connections, at
most WEBHOOK_CONCURRENCY requests in flight, each bounded by WEBHOOK_TIMEOUT_S. Redirects are not
followed; at most MAX_RESPONSE_BYTES of an answer are read. The secret is never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import ipaddress
import logging
import socket
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx
from standardwebhooks.webhooks import Webhook

log = logging.getLogger("whatsched.webhooks")

CHANNEL = "whatsched_webhooks"
MAX_RESPONSE_BYTES = 1024
USER_AGENT = "whatsched-webhooks/1"
CLAIM = "select * from private.claim_webhook_deliveries($1, $2, $3)"
FINISH = "select private.finish_webhook_delivery($1, $2, $3, $4, $5, $6, $7)"
NEXT = "select extract(epoch from private.next_webhook_at() - now())"
PRIVATE = (
    "select array(select private.address_is_private(a) from unnest($1::inet[]) with ordinality u (a, i) order by i)"
)
# Verdicts of private.address_is_private (immutable: an address's verdict never changes) this
# process remembers, so an attempt asks Postgres only about addresses it has not seen.
PRIVATE_CACHE_MAX = 4096


@dataclass(frozen=True, slots=True)
class Outcome:
    status_code: int | None
    latency_ms: int
    error: str | None
    retry_after_s: float | None


def signature(secrets: list[str], webhook_id: str, at: datetime, body: bytes) -> str:
    """The `webhook-signature` header: one `v1,<base64>` per secret (two during a rotation)."""
    return " ".join(Webhook(secret).sign(webhook_id, at, body) for secret in secrets)


def retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delay-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    with contextlib.suppress(TypeError, ValueError):
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, (when - datetime.now(UTC)).total_seconds())
    return None


class Sender:
    """Claims and sends until stopped; run it as a task beside the dispatcher."""

    def __init__(
        self,
        url: str,
        worker_id: str,
        *,
        timeout_s: float,
        concurrency: int,
        allow_private: bool,
    ) -> None:
        self.url = url
        self.worker_id = worker_id
        self.timeout_s = timeout_s
        self.concurrency = concurrency
        self.allow_private = allow_private
        # The lease covers a whole attempt (bounded by timeout_s from name lookup to answer) with
        # room to report it.
        self.lease_s = timeout_s + 5
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._in_flight: set[asyncio.Task[None]] = set()
        self._pool: asyncpg.Pool
        self._private: dict[str, bool] = {}

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def wake(self, *_: Any) -> None:
        self._wake.set()

    async def run(self) -> None:
        delay = 0.5
        while not self._stop.is_set():
            try:
                await self._serve()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("webhooks: %s; reconnecting in %.1f s", type(exc).__name__, delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)
                delay = min(delay * 2, 30.0)
            else:
                delay = 0.5

    async def _serve(self) -> None:
        # Connections that act as the service for good (no reset of the role on release).
        self._pool = await asyncpg.create_pool(
            self.url, min_size=1, max_size=min(self.concurrency, 8) + 1, init=_as_service, reset=_keep, timeout=10
        )
        listener = await asyncpg.connect(self.url, timeout=10)
        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
        try:
            await listener.add_listener(CHANNEL, self.wake)
            async with httpx.AsyncClient(
                follow_redirects=False, timeout=self.timeout_s, limits=limits, headers={"user-agent": USER_AGENT}
            ) as http:
                await self._loop(http)
        finally:
            await self._drain()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(listener.close(), 5)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._pool.close(), 5)

    async def _loop(self, http: httpx.AsyncClient) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            room = self.concurrency - len(self._in_flight)
            rows = await self._pool.fetch(CLAIM, self.worker_id, room, self.lease_s) if room > 0 else []
            for row in rows:
                task = asyncio.create_task(self._deliver(http, dict(row)))
                self._in_flight.add(task)
                task.add_done_callback(self._done)
            if rows and len(rows) == room:
                continue  # more may be due: claim again once a slot frees (the callback wakes us)
            seconds = await self._pool.fetchval(NEXT)
            wait = 30.0 if seconds is None else min(30.0, max(float(seconds), 0.0) + 0.01)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        self._wake.set()
        if not task.cancelled() and (exc := task.exception()) is not None:
            # A database error (the attempt's outcome carries no secret); its lease lets it retry.
            log.warning("webhooks: reporting an attempt failed: %s: %s", type(exc).__name__, exc)

    async def _drain(self) -> None:
        """Let attempts in flight finish briefly; the rest are left to their lease."""
        if self._in_flight:
            _, pending = await asyncio.wait(set(self._in_flight), timeout=2)
            for task in pending:
                task.cancel()

    async def _deliver(self, http: httpx.AsyncClient, row: dict[str, Any]) -> None:
        outcome = await self.attempt(http, row)
        await self._pool.fetchval(
            FINISH,
            row["id"],
            self.worker_id,
            row["attempt"],
            outcome.status_code,
            outcome.latency_ms,
            outcome.error,
            outcome.retry_after_s,
        )
        if outcome.error:
            log.info("webhook %s attempt %s: %s", row["endpoint_id"], row["attempt"], outcome.error)

    async def attempt(self, http: httpx.AsyncClient, row: dict[str, Any]) -> Outcome:
        """One POST of a claimed delivery, within timeout_s from start to answer; what happened
        (never raises)."""
        started = time.monotonic()
        try:
            async with asyncio.timeout(self.timeout_s):
                return await self._attempt(http, row, started)
        except TimeoutError:
            return Outcome(
                None, round((time.monotonic() - started) * 1000), f"no answer within {self.timeout_s:g} s", None
            )

    async def _attempt(self, http: httpx.AsyncClient, row: dict[str, Any], started: float) -> Outcome:

        def done(status: int | None, error: str | None, after: float | None = None) -> Outcome:
            return Outcome(status, round((time.monotonic() - started) * 1000), error, after)

        url: str = row["url"]
        try:
            refused = await self._refused_address(url)
        except OSError as exc:
            return done(None, f"could not resolve the host: {exc.strerror or type(exc).__name__}")
        if refused:
            return done(None, refused)
        webhook_id, body = str(row["id"]), row["body"].encode()
        now = datetime.now(UTC)
        headers = {
            "content-type": "application/json",
            "webhook-id": webhook_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": signature(list(row["secrets"]), webhook_id, now, body),
        }
        try:
            async with http.stream("POST", url, content=body, headers=headers) as resp:
                head = await _read_some(resp)
                status = resp.status_code
                after = retry_after(resp.headers.get("retry-after"))
        except httpx.TimeoutException:
            return done(None, f"no answer within {self.timeout_s:g} s")
        except httpx.HTTPError as exc:
            return done(None, f"request failed: {type(exc).__name__}: {str(exc)[:200]}")
        if 200 <= status < 300:
            return done(status, None)
        if 300 <= status < 400:
            return done(status, f"HTTP {status}: redirects are not followed ({resp.headers.get('location', '')[:200]})")
        return done(status, f"HTTP {status}: {head[:200]}" if head else f"HTTP {status}", after)

    async def _refused_address(self, url: str) -> str | None:
        """Why this URL may not be reached now (a name resolving to a private address), or None."""
        if self.allow_private:
            return None
        parts = urlsplit(url)
        host = parts.hostname or ""
        try:
            ipaddress.ip_address(host)
            addresses = [host]
        except ValueError:
            port = parts.port or (443 if parts.scheme == "https" else 80)
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
            addresses = sorted({str(info[4][0]) for info in infos})
        if await self._any_private(addresses):
            return (
                f"{host} resolves to a loopback, private, link-local or metadata address (WEBHOOK_ALLOW_PRIVATE is off)"
            )
        return None

    async def _any_private(self, addresses: list[str]) -> bool:
        """Whether any address is private, as Postgres judges it (the name was resolved anew for
        this attempt; only the verdict of an address already judged is reused)."""
        unknown = [a for a in addresses if a not in self._private]
        if unknown:
            if len(self._private) + len(unknown) > PRIVATE_CACHE_MAX:
                self._private.clear()
            verdicts: list[bool] = await self._pool.fetchval(PRIVATE, unknown)
            self._private.update(zip(unknown, verdicts, strict=True))
        return any(self._private[a] for a in addresses)


async def _as_service(conn: asyncpg.Connection) -> None:
    await conn.execute(
        "set role service_role; select set_config('request.jwt.claims', '{\"role\":\"service_role\"}', false)"
    )


async def _keep(_conn: asyncpg.Connection) -> None:
    """Released connections keep their role (the default reset would drop it)."""


async def _read_some(resp: httpx.Response) -> str:
    """At most MAX_RESPONSE_BYTES of the answer, for the delivery log."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.aiter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size >= MAX_RESPONSE_BYTES:
            break
    return b"".join(chunks)[:MAX_RESPONSE_BYTES].decode("utf-8", "replace").strip()

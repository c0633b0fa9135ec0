"""The worker loop (`whatsched worker`).

A round runs `lanes` concurrent claim → send → complete loops until no work is due; then the
worker sleeps exactly until the next due time (private.next_wake_at) or a NOTIFY on
'whatsched_dispatch' (a message scheduled or resumed), whichever comes first. There is no
fixed poll: APScheduler only runs housekeeping (the rescue sweep, a wake-up if anything is
overdue, pending number commands, the watch that restarts a frozen or bloated number,
pacing-count pruning), and correctness never depends on it.

Each round reads the numbers with a bridge from Postgres (dispatcher.numbers) and claims per
number: a delivery leaves from its message's number, through that number's bridge, paced as
that number. Session commands (start, stop, restart, logout) queued by /api or supabase-js
arrive on 'whatsched_number_commands' and are carried out against the number's bridge.

Beside the dispatcher, each worker runs the webhook sender (whatsched.webhooks.sender) with its own
connections, so a slow receiver never delays a send.

Each lane has its own connection, acting as service_role for the whole session. SIGTERM or
SIGINT stops claiming; the batches in flight are sent and recorded, then the worker exits 0.
Under `whatsched dev` the worker also stops when its supervisor disappears (`watch_supervisor`):
an orphaned worker must not go on sending.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import asyncpg
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from whatsched.config import DispatchSettings, Settings
from whatsched.db.errors import DATABASE_ERRORS
from whatsched.dispatcher import claim, complete, deliver, fail, numbers, rescue, watch
from whatsched.dispatcher.deliver import Refused
from whatsched.dispatcher.fail import Failures, RetryPolicy
from whatsched.dispatcher.numbers import Bridges, Number
from whatsched.dispatcher.pacing import Pacing
from whatsched.media import check as media_check
from whatsched.media.storage import LocalStorage
from whatsched.webhooks import sender as webhook_sender

log = logging.getLogger("whatsched.dispatcher")

CHANNEL = "whatsched_dispatch"
APPLICATION_NAME = "whatsched-worker"
# How often (minutes) the workers judge silence (watch.judge_unanswered); a fact is at most hourly.
UNANSWERED_EVERY_MIN = 10
# Errors after which the worker reconnects and tries again rather than dying.
RECOVERABLE = DATABASE_ERRORS
# Set by `whatsched dev` (whatsched.dev.SUPERVISOR_ENV) to its pid: our parent while it lives.
SUPERVISOR_ENV = "WHATSCHED_SUPERVISOR_PID"


async def connect(url: str, role: str = "service_role") -> asyncpg.Connection:
    """A session acting as the service (bypasses RLS), as every worker statement needs."""
    conn = await asyncpg.connect(
        url, timeout=10, server_settings={"application_name": f"{APPLICATION_NAME}:{os.getpid()}"}
    )
    await conn.execute(f"set role {role}; select set_config('request.jwt.claims', '{{\"role\":\"{role}\"}}', false)")
    return conn


class Worker:
    def __init__(
        self,
        settings: Settings,
        url: str,
        dispatch: DispatchSettings | None = None,
        worker_id: str | None = None,
    ) -> None:
        self.settings = settings
        self.dispatch = dispatch or settings.dispatch
        self.url = url
        self.pacing = Pacing.from_settings(settings, self.dispatch)
        self.retry = RetryPolicy(self.dispatch.max_attempts, self.dispatch.retry_base_s, self.dispatch.retry_max_s)
        self.id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(2)}"
        self.bridges = Bridges(settings.bridge_token, self.dispatch.bridge_call_timeout_s)
        self.watch_limits = watch.Limits.from_settings(self.dispatch)
        self.numbers: list[Number] = []
        self._commands = asyncio.Event()
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._lanes: list[asyncpg.Connection] = []
        self._house: asyncpg.Connection | None = None
        self._house_lock = asyncio.Lock()
        self._listener: asyncpg.Connection | None = None
        self._idle_backoff = 0.0
        self._logged_at: dict[str, float] = {}
        self._notified: set[uuid.UUID] = set()
        # The webhooks' outbox, sent beside the dispatcher with its own connections.
        self.webhooks = webhook_sender.Sender(
            url,
            self.id,
            timeout_s=settings.webhook_timeout_s,
            concurrency=settings.webhook_concurrency,
            allow_private=settings.webhook_allow_private,
        )

    # -- lifecycle --------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop claiming; the batches in flight finish first."""
        self._stop.set()
        self._wake.set()
        self.webhooks.stop()

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        scheduler = AsyncIOScheduler()
        every = {"max_instances": 1, "coalesce": True}
        scheduler.add_job(self._housekeeping, "interval", seconds=self.dispatch.housekeeping_s, **every)
        scheduler.add_job(self._run_commands, "interval", seconds=self.dispatch.housekeeping_s, **every)
        scheduler.add_job(self._watch, "interval", seconds=self.dispatch.housekeeping_s, **every)
        scheduler.add_job(self._prune, "interval", hours=1, **every)
        scheduler.add_job(self._judge_unanswered, "interval", minutes=UNANSWERED_EVERY_MIN, **every)
        scheduler.add_job(self._check_media, "interval", seconds=self.dispatch.housekeeping_s, **every)
        log.info(
            "worker %s: default number's bridge %s, %s lane(s) of up to %s, pacing %s (per number)",
            self.id,
            self.settings.effective_bridge_url,
            self.dispatch.lanes,
            self.pacing.batch_limit(self.dispatch.batch_size),
            self._describe_pacing(),
        )
        delay = 0.5
        webhooks = asyncio.create_task(self.webhooks.run())
        try:
            while not self._stop.is_set():
                try:
                    if not self._lanes:
                        await self._open()
                        if not scheduler.running:
                            scheduler.start()
                    await self._round()
                    delay = 0.5
                except RECOVERABLE as exc:
                    log.warning("worker %s: %s; reconnecting in %.1f s", self.id, _describe(exc), delay)
                    await self._close()
                    await self._back_off(delay)
                    delay = min(delay * 2, 30.0)
        finally:
            self.webhooks.stop()
            if scheduler.running:
                scheduler.shutdown(wait=False)
            await self._close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(webhooks, 10)
            await self.bridges.close()
            log.info("worker %s stopped", self.id)

    async def _open(self) -> None:
        self._lanes = [await connect(self.url) for _ in range(self.dispatch.lanes)]
        self._house = await connect(self.url)
        self._listener = await asyncpg.connect(
            self.url, timeout=10, server_settings={"application_name": f"{APPLICATION_NAME}:{os.getpid()}"}
        )
        await self._listener.add_listener(CHANNEL, self._on_notify)
        await self._listener.add_listener(numbers.COMMANDS_CHANNEL, self._on_command)
        self._listener.add_termination_listener(self._on_listener_lost)
        self._wake.set()  # anything announced while we were away is found by the next round

    async def _close(self) -> None:
        if self._listener is not None:
            self._listener.remove_termination_listener(self._on_listener_lost)  # we close it on purpose
        conns = [*self._lanes, self._house, self._listener]
        self._lanes, self._house, self._listener = [], None, None
        for conn in conns:
            if conn is not None and not conn.is_closed():
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(conn.close(), 5)

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        # The payload names a message that was scheduled, resumed or settled by an ack.
        with contextlib.suppress(ValueError):
            self._notified.add(uuid.UUID(payload))
        self._wake.set()

    def _on_command(self, *_: Any) -> None:
        self._commands.set()
        self._wake.set()

    def _on_listener_lost(self, *_: Any) -> None:
        # Without LISTEN we would miss wake-ups: the next round reconnects everything.
        log.warning("worker %s: the LISTEN connection was lost", self.id)
        self._wake.set()

    # -- the loop ---------------------------------------------------------------------------

    async def _round(self) -> None:
        if self._listener is None or self._listener.is_closed():
            raise ConnectionError("the LISTEN connection is closed")
        self._wake.clear()
        self.numbers = await numbers.sending(self._lanes[0], self.settings.effective_bridge_url)
        if self._commands.is_set():
            self._commands.clear()
            await self._run_commands()
        if self._notified:
            # A resume or an ack can leave a sending message with nothing open: finish it now.
            named, self._notified = sorted(self._notified), set()
            for done in await complete.finish(self._lanes[0], named):
                log.info("message %s finished: %s", done.id, done.status)
        results = await asyncio.gather(*(self._lane(conn) for conn in self._lanes), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        if self._stop.is_set() or self._wake.is_set():
            return
        claimed = sum(r for r in results if isinstance(r, int))
        seconds = await claim.seconds_until_next(self._lanes[0], self._senders(), self.dispatch.start_ahead_s)
        if seconds is not None and seconds <= 0 and claimed == 0:
            # Due but unclaimable right now (rows locked by another transaction): back off a little.
            self._idle_backoff = min(max(self._idle_backoff * 2, 0.05), 1.0)
            seconds = self._idle_backoff
        else:
            self._idle_backoff = 0.0
        await self._sleep(seconds)

    async def _lane(self, conn: asyncpg.Connection) -> int:
        """Start due messages, then claim, send and record one batch per number, until nothing is
        due; returns how much progress it made (0: nothing was due)."""
        limit = self.pacing.batch_limit(self.dispatch.batch_size)
        claimed = 0
        while not self._stop.is_set():
            started = await claim.start_due(conn, self.dispatch.start_limit, self.dispatch.start_ahead_s)
            progress = 0
            for number in self.numbers:
                progress += await self._batch(conn, number, limit)
            if not progress:
                if started:
                    claimed += 1  # progress: keep going while messages are being started
                    continue
                break
            claimed += progress
        return claimed

    async def _batch(self, conn: asyncpg.Connection, number: Number, limit: int) -> int:
        """One claim for `number`, sent through its bridge and recorded; how many were decided on."""
        batch = await claim.claim(conn, self.id, self.pacing, number.id, limit, self.dispatch.lease_s)
        if not batch:
            return 0
        sent, refused = await deliver.send_batch(self.bridges.of(number), batch, self.settings.effective_public_url)
        if sent:
            await complete.complete(conn, sent)
        if refused:
            self._report(refused, await fail.fail(conn, self.id, refused, self.retry))
        for done in await complete.finish(conn, sorted({d.message_id for d in batch})):
            log.info("message %s finished: %s", done.id, done.status)
        return len(batch)

    def _senders(self) -> list[str] | None:
        """The pacing keys whose next_send_at may delay the next send (None: pacing is off)."""
        return [n.id for n in self.numbers] if self.pacing.active else None

    async def _back_off(self, seconds: float) -> None:
        """Before reconnecting: only stop() cuts it short. A wake-up (a lost LISTEN connection sets
        one) must not, or a database outage turns into a tight loop of connection attempts."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    async def _sleep(self, seconds: float | None) -> None:
        """Until `seconds` pass (None: indefinitely), a NOTIFY or stop()."""
        if seconds is not None and seconds <= 0:
            return
        # A hair past the due time, so `scheduled_for <= now()` holds when we claim.
        timeout = None if seconds is None else seconds + 0.002
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)

    # -- housekeeping (APScheduler) ---------------------------------------------------------

    async def _housekeeping(self) -> None:
        """The safety net: finish stuck messages; wake the loop if work is overdue."""
        if self._house is None:
            return
        async with self._house_lock:
            try:
                for done in await rescue.sweep(self._house):
                    log.info("message %s finished by the sweep: %s", done.id, done.status)
                await rescue.compact_counts(self._house)
                if await rescue.overdue(self._house, self._senders(), self.dispatch.start_ahead_s):
                    self._wake.set()
            except RECOVERABLE as exc:
                log.warning("worker %s: housekeeping failed: %s", self.id, _describe(exc))

    async def _run_commands(self) -> None:
        """Carry out the session commands people queued (start, stop, restart, logout)."""
        if self._house is None:
            return
        async with self._house_lock:
            try:
                if not self.numbers:
                    self.numbers = await numbers.sending(self._house, self.settings.effective_bridge_url)
                await numbers.run_commands(self._house, self.id, self.numbers, self.bridges)
            except RECOVERABLE as exc:
                log.warning("worker %s: number commands failed: %s", self.id, _describe(exc))

    async def _watch(self) -> None:
        """Restart a frozen or bloated number (dispatcher.watch): queued as a command, run next."""
        if self._house is None:
            return
        async with self._house_lock:
            try:
                listed = await numbers.sending(self._house, self.settings.effective_bridge_url)
                decided = await watch.watch(self._house, listed, self.bridges, self.watch_limits)
            except RECOVERABLE as exc:
                log.warning("worker %s: watching the numbers failed: %s", self.id, _describe(exc))
                return
        if any(d.command_id for d in decided):
            self._commands.set()
            self._wake.set()

    async def _check_media(self) -> None:
        """Files uploaded straight to Storage: inspected before any message may send them."""
        if self._house is None:
            return
        async with self._house_lock:
            try:
                storage = LocalStorage(self.settings.data_dir)
                for media_id, state in await media_check.check_pending(
                    self._house, storage, self.settings.media_keep_metadata
                ):
                    log.info("file %s checked: %s", media_id, state)
            except RECOVERABLE as exc:
                log.warning("worker %s: checking files failed: %s", self.id, _describe(exc))

    async def _judge_unanswered(self) -> None:
        """A health fact for each number whose first messages to new contacts mostly got no reply."""
        if self._house is None:
            return
        async with self._house_lock:
            try:
                for number_id in await watch.judge_unanswered(self._house):
                    log.warning(
                        "number %s: most first messages to new contacts got no reply (a health fact)", number_id
                    )
            except RECOVERABLE as exc:
                log.warning("worker %s: judging silence failed: %s", self.id, _describe(exc))

    async def _prune(self) -> None:
        if self._house is None:
            return
        async with self._house_lock:
            with contextlib.suppress(*RECOVERABLE):
                await rescue.prune_usage(self._house)

    # -- logging ----------------------------------------------------------------------------

    def _report(self, refused: list[Refused], outcome: Failures) -> None:
        """One line per error code and 10 s, not one per delivery."""
        codes = sorted({r.code for r in refused})
        now = time.monotonic()
        for code in codes:
            if now - self._logged_at.get(code, -1e9) < 10:
                continue
            self._logged_at[code] = now
            sample = next(r for r in refused if r.code == code)
            log.warning(
                "bridge refused %s delivery(ies) with %s (%s); %s will retry, %s failed",
                sum(1 for r in refused if r.code == code),
                code,
                sample.message,
                outcome.retrying,
                outcome.failed,
            )

    def _describe_pacing(self) -> str:
        p = self.pacing
        parts = [
            f"spacing {p.spacing_min_s:g}-{p.spacing_max_s:g} s" if p.spaced else "no spacing",
            f"hourly cap {p.hourly_cap}" if p.hourly_cap else "no hourly cap",
            f"daily cap {p.daily_cap}" if p.daily_cap else "no daily cap",
            f"quiet hours {p.quiet.start:%H:%M}-{p.quiet.end:%H:%M}" if p.quiet else "no quiet hours",
        ]
        if p.warmup_days:
            parts.append(f"warm-up {p.warmup_days} days")
        return ", ".join(parts)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def watch_supervisor(
    on_gone: Callable[[], None], *, every_s: float = 0.5, grace_s: float = 20.0
) -> threading.Thread | None:
    """If WHATSCHED_SUPERVISOR_PID names our parent, watch it from a thread (a busy or stuck event
    loop cannot delay it): once our parent is another process (we were re-parented, so the
    supervisor died, even by SIGKILL), call `on_gone`, and if we are still alive `grace_s`
    later, exit at once. On Linux the supervisor also has the kernel send us SIGTERM; this is
    the portable half and the safety net. Returns None when not supervised."""
    try:
        supervisor = int(os.environ.get(SUPERVISOR_ENV, ""))
    except ValueError:
        return None

    def watch() -> None:
        while os.getppid() == supervisor:
            time.sleep(every_s)
        log.warning("the supervisor (pid %s) is gone; stopping", supervisor)
        on_gone()
        time.sleep(grace_s)
        log.error("still running %.0f s after the supervisor died; exiting now", grace_s)
        os._exit(1)

    thread = threading.Thread(target=watch, name="supervisor-watchdog", daemon=True)
    thread.start()
    return thread


async def serve(settings: Settings) -> None:
    """Run one worker until SIGTERM or SIGINT (or, under `whatsched dev`, its supervisor's end)."""
    from whatsched.db.setup import resolve_app_url

    # The supervisor's end is a SIGTERM to ourselves: the same stop as the kernel's signal.
    watch_supervisor(lambda: os.kill(os.getpid(), signal.SIGTERM))
    url = await resolve_app_url(settings)  # until the worker exists, SIGTERM ends us at once
    worker = Worker(settings, url)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.stop)
    await worker.run()


def main(settings: Settings) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    asyncio.run(serve(settings))
    return 0

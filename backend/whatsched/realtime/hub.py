"""The event hub of one API process: one LISTEN connection on channel 'realtime' (what
realtime.send emits on plain Postgres), a registry of this process's sockets, and the routing:

- topic `user:<id>`: status, notification and any other event go to every socket on that user's
  path (the user, or an admin who opened it); `message_status_update` also goes to sockets
  subscribed to the message (an admin watching someone else's message); `message_progress` goes
  only to subscribers, coalesced per message. A message event reaches subscribers only from its
  owner's topic (the owner is read with the snapshot when subscribing): an event on one user's
  topic naming another user's message reaches nobody's subscription.
- topic `whatsapp`: `whatsapp_status` goes to every authenticated socket.

Every API process runs its own hub, so an event committed anywhere reaches sockets everywhere.
When the LISTEN connection drops, the hub reconnects with backoff and then tells each socket to
resync and re-sends the snapshots of its subscriptions (events in the gap are lost otherwise).

Our socket and Supabase Realtime differ by one key: Realtime's realtime.send stores (and so
broadcasts) the payload with an "id" added when it has none (the message's uuid), while the
notification this hub relays carries the payload as given, on Supabase (private.broadcast) and on
plain Postgres (the bootstrap's send) alike: frames on our socket have no such "id".
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
from collections import deque
from dataclasses import dataclass
from typing import Any

import asyncpg
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from whatsched import metrics
from whatsched.config import RealtimeSettings
from whatsched.db.errors import DATABASE_ERRORS
from whatsched.realtime import protocol, snapshots
from whatsched.realtime.sockets import Client

log = logging.getLogger("whatsched.realtime")

CHANNEL = "realtime"
APPLICATION_NAME = "whatsched-realtime"
SNAPSHOT_RETRIES = 3
ROUTE_BATCH = 32


def application_name(pid: int | None = None) -> str:
    """The LISTEN connection's name in pg_stat_activity, one per API process."""
    return f"{APPLICATION_NAME}:{pid if pid is not None else os.getpid()}"


@dataclass(slots=True)
class _Throttle:
    """Progress coalescing for one message while its interval runs: the latest frame not yet sent."""

    pending: str | None = None
    timer: asyncio.TimerHandle | None = None


class Hub:
    def __init__(self, url: str, pool: asyncpg.Pool, config: RealtimeSettings) -> None:
        self.url = url
        self.pool = pool
        self.config = config
        self.clients: set[Client] = set()
        self._by_user: dict[str, set[Client]] = {}
        self._by_message: dict[str, set[Client]] = {}
        self._owners: dict[str, str] = {}  # message id -> its owner, for messages someone follows
        self._throttles: dict[str, _Throttle] = {}
        self._task: asyncio.Task[None] | None = None
        self._conn: asyncpg.Connection | None = None
        self._listening = asyncio.Event()
        self._inbox: deque[str] = deque()
        self._router: asyncio.Task[None] | None = None
        self.reconnects = 0

    # ------------------------------------------------------------------------------------------
    # Lifecycle
    # ------------------------------------------------------------------------------------------

    async def start(self, wait_s: float = 10.0) -> None:
        """Start listening; waits (up to wait_s) for the first LISTEN so no early event is lost."""
        self._task = asyncio.get_running_loop().create_task(self._supervise(), name="realtime-hub")
        try:
            async with asyncio.timeout(wait_s):
                await self._listening.wait()
        except TimeoutError:
            log.warning("realtime: LISTEN not established yet; retrying in the background")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if self._router is not None:
            self._router.cancel()
        for throttle in self._throttles.values():
            if throttle.timer is not None:
                throttle.timer.cancel()
        self._throttles.clear()
        for client in list(self.clients):
            client.close(protocol.CLOSE_GOING_AWAY, "server shutting down")

    @property
    def listening(self) -> bool:
        return self._listening.is_set()

    async def _supervise(self) -> None:
        delay = 0.25
        first = True
        while True:
            lost = asyncio.Event()
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(
                    self.url, timeout=10, server_settings={"application_name": application_name()}
                )
                conn.add_termination_listener(_setter(lost))
                await conn.add_listener(CHANNEL, self._on_notify)
                self._conn = conn
                self._listening.set()
                delay = 0.25
                if not first:
                    self.reconnects += 1
                    log.info("realtime: LISTEN re-established; resyncing %d sockets", len(self.clients))
                    await self._resync("events_may_have_been_missed")
                first = False
                while not lost.is_set():
                    try:
                        async with asyncio.timeout(self.config.ws_listen_check_s):
                            await lost.wait()
                    except TimeoutError:
                        await conn.fetchval("select 1", timeout=5)  # a half-open connection fails here
            except asyncio.CancelledError:
                if conn is not None:
                    await _close_quietly(conn)
                raise
            except DATABASE_ERRORS as exc:
                log.warning("realtime: LISTEN connection failed: %s", exc)
            except Exception:  # never let the hub die: sockets would silently stop receiving
                log.exception("realtime: unexpected error in the LISTEN loop")
            self._listening.clear()
            self._conn = None
            if conn is not None:
                await _close_quietly(conn)
            first = False
            await asyncio.sleep(delay * (0.5 + random.random()))  # jitter: processes do not reconnect in step
            delay = min(delay * 2, self.config.ws_reconnect_max_s)

    async def _resync(self, reason: str) -> None:
        frame = protocol.resync(reason)
        for client in list(self.clients):
            client.push(frame)
        try:
            fresh = await snapshots.for_service(self.pool, list(self._by_message))
        except DATABASE_ERRORS as exc:
            log.warning("realtime: snapshots after reconnect failed: %s", exc)
            return
        for message_id, frames in fresh.items():
            self._send_to_subscribers(message_id, frames)

    # ------------------------------------------------------------------------------------------
    # Registry
    # ------------------------------------------------------------------------------------------

    def add(self, client: Client) -> None:
        self.clients.add(client)
        self._by_user.setdefault(client.user_id, set()).add(client)
        metrics.WS_CONNECTIONS.inc()

    def remove(self, client: Client) -> None:
        if client not in self.clients:
            return
        self.clients.discard(client)
        _discard(self._by_user, client.user_id, client)
        for message_id in client.subscriptions:
            self._unfollow(client, message_id)
        client.subscriptions.clear()
        metrics.WS_CONNECTIONS.dec()

    async def subscribe(self, client: Client, message_id: str) -> bool:
        """Subscribe if the caller can see the message (RLS), then send its snapshot.

        The subscription is registered before the snapshot is read, so no event falls in between;
        if an event for the message was relayed while reading, the snapshot may be older than that
        event, so it is read again (a client must end on the newest state)."""
        if client not in self.clients:
            return False  # closed while its frame waited: registering now would leak it
        if message_id not in client.subscriptions and len(client.subscriptions) >= self.config.ws_max_subscriptions:
            client.push(
                protocol.error(
                    "too_many_subscriptions",
                    f"A socket may follow at most {self.config.ws_max_subscriptions} messages.",
                    message_id,
                )
            )
            return False
        client.subscriptions.setdefault(message_id, 0)
        self._by_message.setdefault(message_id, set()).add(client)
        frames: list[str] | None = None
        try:
            for _ in range(SNAPSHOT_RETRIES):
                seen = client.subscriptions.get(message_id)
                snapshot = await snapshots.for_user(self.pool, client.claims, message_id)
                if snapshot is None:
                    frames = None
                    break
                owner, frames = snapshot
                if message_id in self._by_message:
                    self._owners[message_id] = owner
                if client.subscriptions.get(message_id) == seen:
                    break
        except DATABASE_ERRORS as exc:
            log.warning("realtime: snapshot of %s failed: %s", message_id, exc)
            self.unsubscribe(client, message_id)
            client.push(protocol.error("unavailable", "The database is unavailable; try again.", message_id))
            return False
        if frames is None:
            self.unsubscribe(client, message_id)
            client.push(protocol.error("message_not_found", "No message with this id is visible to you.", message_id))
            return False
        if message_id in client.subscriptions:  # still wanted (not unsubscribed or closed meanwhile)
            for frame in frames:
                client.push(frame)
        return True

    def unsubscribe(self, client: Client, message_id: str) -> None:
        if client.subscriptions.pop(message_id, None) is not None:
            self._unfollow(client, message_id)

    def _unfollow(self, client: Client, message_id: str) -> None:
        _discard(self._by_message, message_id, client)
        if message_id not in self._by_message:
            self._owners.pop(message_id, None)

    # ------------------------------------------------------------------------------------------
    # Routing
    # ------------------------------------------------------------------------------------------

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        self._inbox.append(payload)
        if self._router is None:
            self._router = asyncio.get_running_loop().create_task(self._route_inbox())

    async def _route_inbox(self) -> None:
        """Route queued events, yielding every few so socket writers drain between them: one commit
        can notify thousands of events, and a socket's queue bound must measure the client, not
        the burst."""
        try:
            while self._inbox:
                for _ in range(min(ROUTE_BATCH, len(self._inbox))):
                    self._route(self._inbox.popleft())
                await asyncio.sleep(0)
        finally:
            self._router = None

    def _route(self, payload: str) -> None:
        try:
            event = json.loads(payload)
        except ValueError:
            log.warning("realtime: ignoring a payload that is not JSON")
            return
        if not isinstance(event, dict):
            return
        try:
            self.dispatch(event)
        except Exception:  # one malformed event must not break the listener
            log.exception("realtime: could not route event %r", event.get("event"))

    def dispatch(self, event: dict[str, Any]) -> None:
        """Route one realtime.send event ({"topic","event","payload","private"}) to our sockets."""
        topic, name, payload = event.get("topic"), event.get("event"), event.get("payload")
        if not isinstance(topic, str) or not isinstance(payload, dict):
            return
        if topic == protocol.WHATSAPP_TOPIC:
            if name == protocol.WHATSAPP_STATUS or payload.get("type") == protocol.WHATSAPP_STATUS:
                frame = protocol.whatsapp_status(payload)
                for client in list(self.clients):
                    client.push(frame)
            return
        if not topic.startswith(protocol.USER_TOPIC_PREFIX):
            return
        owner = topic[len(protocol.USER_TOPIC_PREFIX) :]
        kind = payload.get("type") or name
        if kind == protocol.MESSAGE_PROGRESS:
            self._progress(owner, payload)
            return
        if "type" not in payload and isinstance(name, str):
            payload = {"type": name, **payload}
        frame = protocol.dump(payload)
        recipients = set(self._by_user.get(owner, ()))
        if kind == protocol.MESSAGE_STATUS_UPDATE:
            message_id = str(payload.get("message_id"))
            self._flush(message_id, reschedule=False)  # the progress so far arrives before the new status
            # Counted either way (a subscriber whose snapshot is being read reads it again), relayed
            # only from the message's own owner's topic.
            theirs = self._owners.get(message_id) == owner
            for client in self._by_message.get(message_id, ()):
                _count(client, message_id)
                if theirs:
                    recipients.add(client)
        for client in recipients:
            client.push(frame)

    def _progress(self, owner: str, payload: dict[str, Any]) -> None:
        message_id = str(payload.get("message_id"))
        if message_id not in self._by_message:
            return  # nobody here follows this message
        if self._owners.get(message_id) != owner:
            return  # not from the message's owner's topic (or its owner not known yet: the snapshot has it)
        frame = protocol.progress(
            message_id, int(payload.get("sent", 0)), int(payload.get("total", 0)), int(payload.get("failed", 0))
        )
        loop = asyncio.get_running_loop()
        throttle = self._throttles.get(message_id)
        if throttle is None:
            throttle = self._throttles[message_id] = _Throttle()
            self._send_to_subscribers(message_id, [frame])
            throttle.timer = loop.call_later(self.config.ws_progress_interval_s, self._flush, message_id)
        else:
            throttle.pending = frame  # newer counts replace older ones; the timer will send them

    def _flush(self, message_id: str, reschedule: bool = True) -> None:
        throttle = self._throttles.get(message_id)
        if throttle is None:
            return
        if throttle.timer is not None:
            throttle.timer.cancel()
            throttle.timer = None
        if throttle.pending is None:
            del self._throttles[message_id]  # quiet for a whole interval: the next event goes at once
            return
        frame, throttle.pending = throttle.pending, None
        self._send_to_subscribers(message_id, [frame])
        if reschedule:
            throttle.timer = asyncio.get_running_loop().call_later(
                self.config.ws_progress_interval_s, self._flush, message_id
            )
        else:
            del self._throttles[message_id]

    def _send_to_subscribers(self, message_id: str, frames: list[str]) -> None:
        for client in tuple(self._by_message.get(message_id, ())):
            _count(client, message_id)
            for frame in frames:
                client.push(frame)


class GoingAwayWebSockets(WebSocketsSansIOProtocol):
    """uvicorn's WebSocket protocol (the one it picks by default), except that when the server
    stops, open sockets are closed with 1001 "going away" rather than uvicorn's 1012: on SIGTERM
    uvicorn closes every connection itself, before the application's lifespan (and so Hub.stop)
    runs, so this is where the close code is chosen. `whatsched api` runs uvicorn with it
    (`ws="whatsched.realtime.hub:GoingAwayWebSockets"`, an import string, so it reaches every
    worker process). A client that sees 1001 reconnects, to another API process."""

    def shutdown(self) -> None:
        if self.handshake_complete and not self.close_sent:
            self.stop_keepalive()
            self.queue.put_nowait({"type": "websocket.disconnect", "code": protocol.CLOSE_GOING_AWAY})
            self.conn.send_close(protocol.CLOSE_GOING_AWAY, "server shutting down")
            self.close_sent = True
            self.transport.write(b"".join(self.conn.data_to_send()))
            self.transport.close()
            return
        super().shutdown()


def _setter(event: asyncio.Event) -> Any:
    return lambda _conn: event.set()


def _count(client: Client, message_id: str) -> None:
    if message_id in client.subscriptions:
        client.subscriptions[message_id] += 1


def _discard(index: dict[str, set[Client]], key: str, client: Client) -> None:
    members = index.get(key)
    if members is not None:
        members.discard(client)
        if not members:
            del index[key]


async def _close_quietly(conn: asyncpg.Connection) -> None:
    try:
        await asyncio.wait_for(conn.close(), timeout=2)
    except Exception:
        conn.terminate()

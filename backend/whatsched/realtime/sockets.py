"""One authenticated socket: whose events it carries, what it is subscribed to, and its bounded
send queue. The hub pushes frames without waiting; a writer task (alive only while frames wait)
sends them. A client that falls `limit` frames behind is cut off, so it can never slow anyone else.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

from starlette.websockets import WebSocket

log = logging.getLogger("whatsched.realtime")

CLOSE_TIMEOUT_S = 10.0  # a stuck client cannot receive our close frame; stop waiting for it


class Client:
    __slots__ = (
        "_closer",
        "_limit",
        "_on_close",
        "_queue",
        "_reader",
        "_writer",
        "_ws",
        "claims",
        "closed",
        "subscriptions",
        "user_id",
    )

    def __init__(
        self,
        websocket: WebSocket,
        user_id: str,
        claims: dict[str, Any],
        *,
        limit: int,
        on_close: Callable[[Client], None],
    ) -> None:
        self._ws = websocket
        self.user_id = user_id  # the path's user: whose events this socket carries
        self.claims = claims  # the caller (the user, or an admin): what RLS sees for this socket
        # message id -> frames for it relayed since subscribing (see Hub.subscribe)
        self.subscriptions: dict[str, int] = {}
        self._queue: deque[str] = deque()
        self._limit = limit
        self._on_close = on_close
        self._writer: asyncio.Task[None] | None = None
        self._closer: asyncio.Task[None] | None = None
        self._reader: asyncio.Task[Any] | None = asyncio.current_task()
        self.closed = False

    @property
    def caller_id(self) -> str:
        return str(self.claims["sub"])

    def push(self, frame: str) -> None:
        """Queue a frame for this socket; never waits."""
        if self.closed:
            return
        if len(self._queue) >= self._limit:
            self.close(4429, f"send queue full ({self._limit} frames): the client reads too slowly")
            return
        self._queue.append(frame)
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        try:
            while self._queue:
                await self._ws.send_text(self._queue.popleft())
        except asyncio.CancelledError:
            raise
        except Exception:  # the client went away mid-send; its reader sees the disconnect
            self._queue.clear()
        finally:
            self._writer = None

    def close(self, code: int, reason: str, last: str | None = None) -> None:
        """Stop relaying at once and close with a reason (after `last`, if given), without waiting."""
        if self.closed:
            return
        self.closed = True
        self._queue.clear()
        self._on_close(self)
        if self._writer is not None:
            self._writer.cancel()
        log.info("closing socket of user %s: %s %s", self.user_id, code, reason)
        self._closer = asyncio.get_running_loop().create_task(self._close(code, reason[:120], last))

    async def _close(self, code: int, reason: str, last: str | None) -> None:
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                if last is not None:
                    await self._ws.send_text(last)
                await self._ws.close(code, reason)
        except Exception:  # already gone, or too stuck to take a close frame
            if self._reader is not None and not self._reader.done():
                self._reader.cancel()  # its receive() would wait for a client that will not speak

    def discard(self) -> None:
        """The socket is finished: drop anything still queued."""
        self.closed = True
        self._queue.clear()
        if self._writer is not None:
            self._writer.cancel()

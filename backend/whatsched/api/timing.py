"""API response time: an ASGI middleware observing metrics.REQUEST_LATENCY per route template,
method and status (the time until the last body byte is sent, streamed exports included)."""

from __future__ import annotations

import time
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from whatsched.metrics import REQUEST_LATENCY

Observe = Callable[[float], None]

# Paths no route matched share one label, so random URLs cannot grow the series without bound.
UNMATCHED = "unmatched"


def route_template(scope: Scope) -> str:
    """The matched route's path template (/api/notifications/{notification_id}), set by the router."""
    route = scope.get("route")
    template = getattr(route, "path", None)
    return template if isinstance(template, str) and template else UNMATCHED


class RequestTiming:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.series: dict[tuple[str, str, str], Observe] = {}

    def _observe(self, key: tuple[str, str, str]) -> Observe:
        """The histogram of one method, route template and status (`labels()` takes a lock and
        builds its key on every call; the series are as few as the routes, so each is looked up once)."""
        observe = self.series.get(key)
        if observe is None:
            observe = self.series[key] = REQUEST_LATENCY.labels(*key).observe
        return observe

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        # An exception that escapes the app becomes a 500 further out.
        status = 500

        async def observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, observed)
        finally:
            elapsed = time.perf_counter() - start
            self._observe((scope["method"], route_template(scope), str(status)))(elapsed)

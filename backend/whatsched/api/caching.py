"""Cache headers as the guide prescribes, and ETags with 304 on GET.

Dynamic data gets `Cache-Control: no-cache, must-revalidate` unless a route set its own (user
endpoints such as /api/auth/me use `private, max-age=300`). A GET answered 200 with JSON gets a
weak ETag of its body; a matching If-None-Match turns it into 304 with no body.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

DYNAMIC = b"no-cache, must-revalidate"
MAX_BUFFERED = 4 * 1024 * 1024  # larger bodies (exports) stream through untouched

# ASGI header names are lower-case bytes, requests' and responses' alike, so they are compared
# as they are (no Headers object to build per message on the hot reads).
Raw = list[tuple[bytes, bytes]]


def _value(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    return next((value for key, value in headers if key == name), None)


def _with_default(message: Message, name: bytes, value: bytes) -> Raw:
    """The response's headers as a list, with `name: value` added unless the route set it."""
    headers: Raw = list(message.get("headers", ()))
    message["headers"] = headers
    if _value(headers, name) is None:
        headers.append((name, value))
    return headers


class CacheHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/api/"):
            await self.app(scope, receive, send)
            return
        if scope["method"] != "GET":

            async def send_with_cache_control(message: Message) -> None:
                if message["type"] == "http.response.start":
                    _with_default(message, b"cache-control", b"no-store")
                await send(message)

            await self.app(scope, receive, send_with_cache_control)
            return

        if_none_match = _value(scope["headers"], b"if-none-match")
        start: Message | None = None
        chunks: list[bytes] = []
        size = 0
        passthrough = False

        async def buffered(message: Message) -> None:
            nonlocal start, size, passthrough
            if message["type"] == "http.response.start":
                headers = _with_default(message, b"cache-control", DYNAMIC)
                cacheable = message["status"] == 200 and _value(headers, b"content-disposition") is None
                if not cacheable:
                    passthrough = True
                    await send(message)
                    return
                start = message
                return
            if passthrough or start is None:
                await send(message)
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > MAX_BUFFERED:
                passthrough = True
                await send(start)
                await send({"type": "http.response.body", "body": b"".join(chunks), "more_body": more})
                return
            if more:
                return
            body = b"".join(chunks)
            etag = b'W/"' + hashlib.blake2b(body, digest_size=12).hexdigest().encode() + b'"'
            not_modified = if_none_match is not None and etag in [t.strip() for t in if_none_match.split(b",")]
            # Ours replaces a route's ETag; a 304 carries no body, so nor its length and type.
            dropped = (b"etag", b"content-length", b"content-type") if not_modified else (b"etag",)
            start["headers"] = [(k, v) for k, v in start["headers"] if k not in dropped] + [(b"etag", etag)]
            if not_modified:
                start["status"] = 304
                body = b""
            await send(start)
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, buffered)

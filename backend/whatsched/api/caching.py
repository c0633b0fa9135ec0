"""Cache headers as the guide prescribes, and ETags with 304 on GET.

Dynamic data gets `Cache-Control: no-cache, must-revalidate` unless a route set its own (user
endpoints such as /api/auth/me use `private, max-age=300`). A GET answered 200 with JSON gets a
weak ETag of its body; a matching If-None-Match turns it into 304 with no body.
"""

from __future__ import annotations

import hashlib

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

DYNAMIC = "no-cache, must-revalidate"
MAX_BUFFERED = 4 * 1024 * 1024  # larger bodies (exports) stream through untouched


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
                    headers = MutableHeaders(scope=message)
                    headers.setdefault("Cache-Control", "no-store")
                await send(message)

            await self.app(scope, receive, send_with_cache_control)
            return

        if_none_match = Headers(scope=scope).get("if-none-match")
        start: Message | None = None
        chunks: list[bytes] = []
        size = 0
        passthrough = False

        async def buffered(message: Message) -> None:
            nonlocal start, size, passthrough
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.setdefault("Cache-Control", DYNAMIC)
                cacheable = message["status"] == 200 and "content-disposition" not in headers
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
            etag = 'W/"' + hashlib.blake2b(body, digest_size=12).hexdigest() + '"'
            headers = MutableHeaders(scope=start)
            headers["ETag"] = etag
            if if_none_match and etag in [t.strip() for t in if_none_match.split(",")]:
                start["status"] = 304
                del headers["content-length"]
                del headers["content-type"]
                await send(start)
                await send({"type": "http.response.body", "body": b""})
                return
            await send(start)
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, buffered)

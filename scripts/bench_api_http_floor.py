"""The HTTP floor of scripts/bench_api.py: the API's two hot reads served with no framework at all.

    uvicorn --factory bench_api_http_floor:create --port PORT   (run by bench_api.py, from scripts/)

A bare ASGI application on the same server as the API (uvicorn, httptools, uvloop, one process):
it takes the bearer token, verifies it with the API's own verifier (app.build_resources, cached
the same way), opens the API's own transaction (db.pool.begun_tx with Caller.tx_begin, built once
per token), runs the API's own SQL (messages.queries) and answers its JSON bytes. No routing table, no dependency
injection, no validation of parameters, no middleware, no ETag: what any Python HTTP service
doing this read must spend, so that API / HTTP floor is what the framework and our layers cost.

It reads APP_DATABASE_URL, DATA_DIR and PUBLIC_URL as the API does, and serves only
GET /api/messages?page=1 and GET /api/messages/{id} (anything else: 404).
"""

from __future__ import annotations

from typing import Any

from whatsched.api.app import build_resources
from whatsched.api.deps import Caller, Resources
from whatsched.auth.tokens import InvalidToken
from whatsched.bridge_client import BridgeClient
from whatsched.config import Settings, get_settings
from whatsched.db.pool import begun_tx, create_pool
from whatsched.db.setup import resolve_app_url
from whatsched.messages import queries

Scope = dict[str, Any]
PREFIX = "/api/messages/"


class HttpFloor:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.resources: Resources | None = None  # the API's own (its verifier and pool), made at startup
        self.list_sql, self.list_args = queries.list_query(queries.ListFilters(), "-created_at", 1, 20)

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self.lifespan(receive, send)
            return
        status, body = await self.answer(scope)
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def answer(self, scope: Scope) -> tuple[int, bytes]:
        token = ""
        agent: str | None = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                token = value.decode().partition(" ")[2].strip()
            elif name == b"user-agent":
                agent = value.decode()
        assert self.resources is not None
        try:
            claims = await self.resources.verifier.verify(token)
        except InvalidToken:
            return 401, b'{"code": "invalid_token"}'
        who = Caller(id=str(claims["sub"]), claims=claims, token=token, ip=scope["client"][0], user_agent=agent)
        path: str = scope["path"]
        async with begun_tx(self.resources.pool, who.tx_begin) as conn:
            if path == "/api/messages":
                text = await conn.fetchval(self.list_sql, *self.list_args)
            elif path.startswith(PREFIX):
                text = await conn.fetchval(queries.ONE_MESSAGE, path[len(PREFIX) :])
            else:
                text = None
        return (200, text.encode()) if text is not None else (404, b'{"code": "not_found"}')

    async def lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                url = await resolve_app_url(self.settings)
                pool = await create_pool(
                    url, min_size=2, max_size=10, user_statement_timeout=self.settings.user_statement_timeout
                )
                bridge = BridgeClient(self.settings.effective_bridge_url, self.settings.bridge_token)  # never called
                self.resources = build_resources(self.settings, pool, bridge)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.resources is not None:
                    await self.resources.pool.close()
                await send({"type": "lifespan.shutdown.complete"})
                return


def create() -> HttpFloor:
    return HttpFloor(get_settings())

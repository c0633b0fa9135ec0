"""Offline sync: POST /api/sync replays the operations a client queued while offline.

Each operation is dispatched, in order, to this same application in process, as the caller (their
Authorization header, IP and user agent), so it meets exactly the rules, limits and audit of the
route it names. A failed operation does not stop the ones after it. Each definitive answer is
stored in public.sync_operations under (user, client_op_id) right after the operation ran, and a
later operation with the same client_op_id gets that stored answer back without acting again.

Answers a retry could change (429 and 5xx) are not stored, so the client's next sync tries again.
An operation that ran but whose answer could not be stored (the process died in between) runs
again on the next sync: the two steps cannot share a transaction.
"""

from __future__ import annotations

import re
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

import httpx
from fastapi import APIRouter, Request
from pydantic import BaseModel, Field, field_validator

from whatsched.api.deps import CallerDep, ResourcesDep
from whatsched.api.errors import responses
from whatsched.db.pool import user_tx
from whatsched.sync import queries

router = APIRouter(prefix="/api", tags=["sync"])

# Forwarded so the operation sees the same client the sync request came from.
FORWARDED_HEADERS = ("authorization", "user-agent", "x-forwarded-for", "x-real-ip", "accept-language")
SAFE_PATH = re.compile(r"^/api/[A-Za-z0-9._~!$&'()*+,;=:@%/-]*$")
OP_TIMEOUT_S = 60.0


def refusal(path: str) -> str | None:
    """Why a path may not be synced, or None. Checked on the decoded path the router will see."""
    parts = urlsplit(path)
    if parts.scheme or parts.netloc or not SAFE_PATH.match(parts.path):
        return "must be a path under /api/"
    decoded = unquote(parts.path)
    segments = decoded.split("/")[1:]
    if any(s in ("", ".", "..") for s in segments[:-1]) or segments[-1] in (".", ".."):
        return "must not contain empty, '.' or '..' segments"
    for banned in ("/api/sync", "/api/auth"):
        if decoded == banned or decoded.startswith(banned + "/"):
            return f"{banned} cannot be synced"
    return None


class SyncOperation(BaseModel):
    client_op_id: str = Field(min_length=1, max_length=100, description="the client's id for this operation")
    method: Literal["POST", "PUT", "DELETE"]
    path: str = Field(
        min_length=5,
        max_length=2000,
        description="e.g. /api/messages; not /api/sync nor /api/auth/*",
        examples=["/api/messages"],
    )
    body: Any = Field(None, description="the JSON body the route expects, if any")

    @field_validator("path")
    @classmethod
    def _allowed(cls, value: str) -> str:
        reason = refusal(value)
        if reason:
            raise ValueError(reason)
        return value


class SyncRequest(BaseModel):
    operations: list[SyncOperation] = Field(min_length=1, max_length=100)


class SyncResult(BaseModel):
    client_op_id: str
    status: int = Field(description="the HTTP status the route answered")
    body: Any = Field(description="the route's JSON answer (null for 204)")
    replayed: bool = Field(description="true when this is the stored answer of an earlier sync")


class SyncResponse(BaseModel):
    results: list[SyncResult]


def storable(status: int) -> bool:
    return status != 429 and status < 500


def _body(response: httpx.Response) -> Any:
    if not response.content:
        return None
    if "json" in response.headers.get("content-type", ""):
        return response.json()
    return response.text


@router.post("/sync", response_model=SyncResponse, responses=responses(400, 401, 422))
async def sync(
    payload: SyncRequest,
    request: Request,
    who: CallerDep,
    res: ResourcesDep,
) -> SyncResponse:
    """Apply queued operations in order, as you; replayed client_op_ids return their stored result."""
    ids = list({op.client_op_id for op in payload.operations})
    # Short transactions rather than user_conn: no connection is held while an operation runs (each takes its own).
    async with user_tx(res.pool, who.claims, who.request_headers) as conn:
        done = await queries.stored_answers(conn, ids)

    headers = {name: value for name in FORWARDED_HEADERS if (value := request.headers.get(name)) is not None}
    peer = (request.client.host, request.client.port) if request.client else ("127.0.0.1", 0)
    transport = httpx.ASGITransport(app=request.app, client=peer, raise_app_exceptions=False)
    results: list[SyncResult] = []
    async with httpx.AsyncClient(
        transport=transport, base_url=str(request.base_url), headers=headers, timeout=OP_TIMEOUT_S
    ) as app:
        for op in payload.operations:
            if op.client_op_id in done:
                status, body = done[op.client_op_id]
                results.append(SyncResult(client_op_id=op.client_op_id, status=status, body=body, replayed=True))
                continue
            kwargs: dict[str, Any] = {} if op.body is None else {"json": op.body}
            answer = await app.request(op.method, op.path, **kwargs)
            status, body = answer.status_code, _body(answer)
            if storable(status):
                async with user_tx(res.pool, who.claims, who.request_headers) as conn:
                    await queries.store_answer(conn, op.client_op_id, status, body)
                done[op.client_op_id] = (status, body)
            results.append(SyncResult(client_op_id=op.client_op_id, status=status, body=body, replayed=False))
    return SyncResponse(results=results)

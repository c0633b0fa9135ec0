"""The attachments API: upload a file, list and read yours, fetch its bytes, delete it.

An upload is streamed to a file on disk (never held whole in memory), inspected from its bytes
(whatsched.media.inspect: its real type, size, SHA-256, an image's size, the image's metadata
removed), then stored and recorded in one transaction: the object's row as the caller (the
bucket's policies decide), the file's row through private.record_media (today's limits and
allow-list: 422 media_too_large | media_type_not_allowed). Nothing is kept when anything refuses.
The bridge reads a file's bytes with its token (GET /api/bridge/media/{id}, not in the docs).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import re
import uuid
from pathlib import Path
from typing import Literal

import asyncpg
from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field

from whatsched.api.common import Page, pg_json
from whatsched.api.deps import CallerDep, PagingDep, ResourcesDep, UserConn
from whatsched.api.errors import ApiError, responses
from whatsched.db.pool import service_tx, user_tx
from whatsched.imports import upload as multipart
from whatsched.imports.refusal import ImportRefused
from whatsched.media import queries
from whatsched.media.inspect import MediaRefused, inspect
from whatsched.media.storage import BUCKET, LocalStorage
from whatsched.models import UtcDateTime

router = APIRouter(prefix="/api/media", tags=["media"])
bridge_router = APIRouter(prefix="/api/bridge/media", tags=["bridge"], include_in_schema=False)

UPLOAD_SCHEMA = {
    "type": "object",
    "required": ["file"],
    # OpenAPI 3.1's way to say "any bytes" (format: binary is 3.0's).
    "properties": {
        "file": {"type": "string", "contentMediaType": "application/octet-stream", "description": "The file (one)."}
    },
    "additionalProperties": False,
}


class MediaFile(BaseModel):
    id: str
    original_name: str
    state: Literal["pending", "ready", "rejected"] = Field(
        description="pending: uploaded straight to Storage, not yet checked; rejected: why in `problem`"
    )
    problem: str | None
    mime_type: str | None = Field(description="Detected from the bytes, never from the name or the client")
    kind: Literal["image", "video", "audio", "document"] | None
    size_bytes: int | None
    sha256: str | None
    width: int | None
    height: int | None
    path: str = Field(description="Its path in the `media` bucket: <user id>/<file id>/<name>")
    url: str = Field(description="GET it for the bytes (you, with your token)")
    created_at: UtcDateTime


def _refused(exc: MediaRefused) -> ApiError:
    return ApiError(
        422, exc.code, f"The file was refused: {exc.message}.", [{"field": exc.field, "message": exc.message}]
    )


def safe_name(name: str) -> str:
    """The file's name as its storage path's last part: no folders, nothing but [A-Za-z0-9._-]."""
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", name.replace("\\", "/").rsplit("/", 1)[-1]).strip("._") or "file"
    return base[-100:]


@router.post(
    "",
    response_model=MediaFile,
    status_code=201,
    responses=responses(400, 401, 403, 415, 422),
    openapi_extra={"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": UPLOAD_SCHEMA}}}},
)
async def upload_media(request: Request, who: CallerDep, res: ResourcesDep) -> Response:
    """Uploads one file (multipart/form-data, field `file`), streamed to disk as it arrives. Its
    type is read from its bytes; the limits are WhatsApp's (image 5 MB, video and audio 16 MB,
    document 100 MB, configurable) and the allow-list MEDIA_TYPES. 422 media_empty,
    media_too_large, media_type_not_allowed or media_type_mismatch (bytes that are not what the name
    says) name the field, the limit and what was found. Images lose their metadata (EXIF location)
    unless MEDIA_KEEP_METADATA."""
    settings = res.settings
    largest = settings.media_largest_bytes
    storage = LocalStorage(settings.data_dir)
    scratch = storage.scratch() / uuid.uuid4().hex
    cleaned: Path | None = None
    stored: Path | None = None
    try:
        try:
            with scratch.open("wb") as sink:
                form = await multipart.receive(
                    request.headers.get("content-type"),
                    request.headers.get("content-length"),
                    request.stream(),
                    largest,
                    sink,
                )
            if form.fields:
                unexpected = sorted(form.fields)[0]
                raise ApiError(
                    422,
                    "validation_error",
                    "Send only the file, in a form field named 'file'.",
                    [{"field": unexpected, "message": "not a field of this form"}],
                )
            name = form.filename or "file"
            facts = await asyncio.to_thread(inspect, scratch, name, settings.media_keep_metadata)
        except ImportRefused as refused:
            if refused.code == "file_too_large":
                raise _refused(
                    MediaRefused("media_too_large", f"larger than {largest} bytes, the largest file allowed")
                ) from None
            raise ApiError(refused.status, refused.code, refused.detail, refused.errors) from None
        except MediaRefused as exc:
            raise _refused(exc) from None
        cleaned = facts.path
        media_id = str(uuid.uuid4())
        path = f"{who.id}/{media_id}/{safe_name(name)}"
        async with user_tx(res.pool, who.claims, who.request_headers) as conn:
            stored = await storage.put(conn, BUCKET, path, facts.path, facts.mime_type, facts.size)
            text = await queries.record(
                conn, media_id, path, name[-255:], facts.mime_type, facts.size, facts.sha256, facts.width, facts.height
            )
        stored = None  # committed: the bytes stay
        return pg_json(text, 201)
    finally:
        for leftover in (scratch, cleaned, stored):
            if leftover is not None:
                with contextlib.suppress(FileNotFoundError):
                    leftover.unlink()


@router.get("", response_model=Page[MediaFile], responses=responses(401, 422))
async def list_media(conn: UserConn, paging: PagingDep) -> Response:
    """Your files, newest first."""
    return pg_json(await queries.page(conn, paging.page, paging.page_size))


async def _found(conn: asyncpg.Connection, media_id: uuid.UUID) -> asyncpg.Record:
    row = await queries.one(conn, str(media_id))
    if row is None:
        raise ApiError(404, queries.NOT_FOUND, f"File {media_id} was not found.")
    return row


@router.get("/{media_id}", response_model=MediaFile, responses=responses(401, 404, 422))
async def get_media(media_id: uuid.UUID, conn: UserConn) -> Response:
    return pg_json((await _found(conn, media_id))["json"])


def _bytes_of(res: ResourcesDep, row: asyncpg.Record) -> FileResponse:
    path = LocalStorage(res.settings.data_dir).path_of(row["bucket"], row["path"])
    if row["state"] != "ready" or not path.is_file():
        raise ApiError(404, queries.NOT_FOUND, "The file's bytes are not available.")
    return FileResponse(
        path,
        media_type=row["mime_type"],
        filename=row["original_name"],
        headers={"ETag": f'"{row["sha256"]}"', "Cache-Control": "private, max-age=3600"},
    )


@router.get("/{media_id}/content", response_class=FileResponse, responses=responses(401, 404, 422))
async def media_content(media_id: uuid.UUID, conn: UserConn, res: ResourcesDep) -> FileResponse:
    """The file's bytes (yours; an admin's: any), with its detected type."""
    return _bytes_of(res, await _found(conn, media_id))


@router.delete("/{media_id}", status_code=204, response_class=Response, responses=responses(401, 404, 409, 422))
async def delete_media(media_id: uuid.UUID, who: CallerDep, res: ResourcesDep) -> Response:
    """Deletes your file and its bytes; 409 media_in_use while a scheduled, paused or sending
    message has it attached."""
    storage = LocalStorage(res.settings.data_dir)
    async with user_tx(res.pool, who.claims, who.request_headers) as conn:
        row = await queries.delete(conn, str(media_id))
        if row is None:
            raise ApiError(404, queries.NOT_FOUND, f"File {media_id} was not found.")
        await storage.delete_row(conn, row["bucket"], row["path"])
    storage.remove(row["bucket"], row["path"])
    return Response(status_code=204)


@bridge_router.get("/{media_id}")
async def bridge_media(media_id: uuid.UUID, request: Request, res: ResourcesDep) -> FileResponse:
    """A file's bytes for the bridge that sends it (Authorization: Bearer BRIDGE_TOKEN)."""
    token = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
    if not hmac.compare_digest(token.encode(), res.settings.bridge_token.encode()):
        raise ApiError(401, "unauthenticated", "The bridge token is missing or wrong.")
    async with service_tx(res.pool) as conn:
        row = await queries.one(conn, str(media_id))
    if row is None:
        raise ApiError(404, queries.NOT_FOUND, f"File {media_id} was not found.")
    return _bytes_of(res, row)

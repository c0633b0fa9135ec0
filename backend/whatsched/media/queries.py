"""The SQL of attachments (20261206000300_media): a file's JSON as the API shows it, built by
Postgres under the caller's RLS, and the writes, each through the database's rule."""

from __future__ import annotations

import asyncpg

from whatsched.db.paging import page_json
from whatsched.db.sql import ts

# A file as the API shows it, over a relation `m` of public.media.
MEDIA_JSON = f"""json_build_object(
  'id', m.id,
  'original_name', m.original_name,
  'state', m.state,
  'problem', m.problem,
  'mime_type', m.mime_type,
  'kind', m.kind,
  'size_bytes', m.size_bytes,
  'sha256', m.sha256,
  'width', m.width,
  'height', m.height,
  'path', m.path,
  'url', '/api/media/' || m.id || '/content',
  'created_at', {ts("m.created_at")}
)"""

NOT_FOUND = "media_not_found"


async def record(
    conn: asyncpg.Connection,
    media_id: str,
    path: str,
    original_name: str,
    mime_type: str,
    size: int,
    sha256: str,
    width: int | None,
    height: int | None,
) -> str:
    """The checked file, ready (private.record_media: the limits; WS431 when it is refused). Runs
    as the service inside the caller's transaction, after the object's row was written as the user."""
    await conn.execute("select set_config('role', 'service_role', true)")
    text: str = await conn.fetchval(
        f"""select {MEDIA_JSON}::text
            from private.record_media((select auth.uid()), $1::uuid, $2, $3, $4, $5, $6, $7, $8) m""",
        media_id,
        path,
        original_name,
        mime_type,
        size,
        sha256,
        width,
        height,
    )
    await conn.execute("select set_config('role', 'authenticated', true)")
    return text


async def page(conn: asyncpg.Connection, page_number: int, page_size: int) -> str:
    """The caller's own files, newest first."""
    order = "m.created_at desc, m.id desc"
    sql = page_json(
        "public.media", "m", "m.created_by = (select auth.uid())", order, MEDIA_JSON, page_number, page_size
    )
    text: str = await conn.fetchval(sql)
    return text


async def one(conn: asyncpg.Connection, media_id: str) -> asyncpg.Record | None:
    """The file's JSON and where its bytes are, if the caller may see it (RLS)."""
    row: asyncpg.Record | None = await conn.fetchrow(
        f"select {MEDIA_JSON}::text as json, m.bucket, m.path, m.mime_type, m.original_name, m.sha256, m.state"
        " from public.media m where m.id = $1::uuid",
        media_id,
    )
    return row


async def delete(conn: asyncpg.Connection, media_id: str) -> asyncpg.Record | None:
    """Deletes the caller's file (refused with WS409 media_in_use while a scheduled, paused or
    sending message uses it); its bucket and path, or None when it is not theirs."""
    row: asyncpg.Record | None = await conn.fetchrow(
        "delete from public.media m where m.id = $1::uuid returning m.bucket, m.path", media_id
    )
    return row

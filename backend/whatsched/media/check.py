"""The workers' check of files a frontend uploaded straight to Storage with supabase-js
(public.register_media leaves them `pending`): each is read from storage and inspected like an
upload through the API (whatsched.media.inspect); Postgres records the verdict and its limits
(private.finish_media_check). An image's metadata is removed in place. Why the worker and not an
Edge Function: it already holds the storage credentials and the inspection code the API uses, so
one definition judges both ways in; an Edge Function would be a second copy in Deno."""

from __future__ import annotations

import asyncio
import os

import asyncpg

from whatsched.media.inspect import MediaRefused, inspect
from whatsched.media.storage import LocalStorage

CLAIM = "select id::text, bucket, path, original_name from private.claim_media_checks($1)"
FINISH = "select private.finish_media_check($1::uuid, $2, $3, $4, $5, $6, $7)"


async def check_pending(
    conn: asyncpg.Connection, storage: LocalStorage, keep_metadata: bool, limit: int = 10
) -> list[tuple[str, str]]:
    """Checks up to `limit` pending files (each locked while it is read); (id, ready | rejected) each."""
    verdicts: list[tuple[str, str]] = []
    async with conn.transaction():
        for row in await conn.fetch(CLAIM, limit):
            path = storage.path_of(row["bucket"], row["path"])
            if not path.is_file():
                state = await conn.fetchval(
                    FINISH, row["id"], None, None, None, None, None, "the file is missing from storage"
                )
                verdicts.append((row["id"], state))
                continue
            try:
                facts = await asyncio.to_thread(inspect, path, row["original_name"], keep_metadata)
            except MediaRefused as exc:
                state = await conn.fetchval(FINISH, row["id"], None, None, None, None, None, exc.message)
            else:
                if facts.path != path:
                    os.replace(facts.path, path)  # the image without its metadata is what stays
                state = await conn.fetchval(
                    FINISH, row["id"], facts.mime_type, facts.size, facts.sha256, facts.width, facts.height, None
                )
            verdicts.append((row["id"], state))
    return verdicts

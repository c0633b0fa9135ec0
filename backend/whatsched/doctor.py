"""`whatsched doctor`: check a configuration the way production will use it.

Each check yields one Finding (ok, warning or error, with the fix); the command prints one line per
finding and exits 1 when any is an error. Checks that talk to something (the database, Supabase
Auth, the bridge, Redis) are bounded by `timeout_s` and run concurrently.

Safe ranges for careful sending (outside them: a warning, never an error, since the operator may
know better; README "Running it in production" explains them):

- SEND_SPACING_MIN_S at least 3 s (0 turns spacing off);
- SEND_HOURLY_CAP at most 500 and SEND_DAILY_CAP at most 2000 per WhatsApp number (0 = no cap);
- QUIET_HOURS a parseable "HH:MM-HH:MM" window (empty turns it off, which warns).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import asyncpg
import httpx

from whatsched.config import Settings
from whatsched.errors import ConfigError

Level = Literal["ok", "warning", "error"]

SPACING_MIN_SAFE_S = 3.0
HOURLY_CAP_SAFE = 500
DAILY_CAP_SAFE = 2000
MIN_POSTGRES = 15
MIN_NODE = 20
DEV_BRIDGE_TOKEN = "dev-bridge-token"
SHORT_TOKEN = 24
LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "0.0.0.0", ""})
WWEBJS = "whatsapp-web.js"
EXACT_VERSION = re.compile(r"^\d+\.\d+\.\d+$")


@dataclass(frozen=True)
class Finding:
    level: Level
    check: str
    message: str
    fix: str = ""

    def line(self) -> str:
        text = f"{self.level:<7} {self.check:<15} {self.message}"
        return f"{text} -> fix: {self.fix}" if self.fix else text


def ok(check: str, message: str) -> Finding:
    return Finding("ok", check, message)


def warning(check: str, message: str, fix: str = "") -> Finding:
    return Finding("warning", check, message, fix)


def error(check: str, message: str, fix: str = "") -> Finding:
    return Finding("error", check, message, fix)


def _safe_url(url: str) -> str:
    parts = urlsplit(url)
    return url.replace(":" + parts.password + "@", ":***@") if parts.password else url


def _is_local(url: str) -> bool:
    try:
        host = urlsplit(url).hostname or ""
    except ValueError:
        return False
    return host in LOCAL_HOSTS or host.startswith("127.")


# ---------------------------------------------------------------------------------------------
# Database: reachable, Supabase or plain, migrations, RLS, the app's role
# ---------------------------------------------------------------------------------------------


async def check_database(settings: Settings, timeout_s: float = 5.0) -> list[Finding]:
    """database, migrations, rls and app-role: one connection as the owner, one as the app."""
    from whatsched.db import bootstrap, migrate, pool

    admin_url = pool.admin_url(settings)
    dependents = ("migrations", "rls", "app-role")
    where = "DATABASE_URL" if settings.database_url else "the embedded PostgreSQL (DATABASE_URL is empty)"
    try:
        conn = await asyncpg.connect(admin_url, timeout=timeout_s)
    except (OSError, asyncpg.PostgresError, TimeoutError, ValueError) as exc:
        return [
            error(
                "database",
                f"cannot connect to {where} ({_safe_url(admin_url)}): {exc}",
                "check DATABASE_URL (host, port, user, password, database) and that the server accepts us",
            ),
            *(warning(name, "not checked: the database is unreachable") for name in dependents),
        ]
    findings: list[Finding] = []
    try:
        version = int(await conn.fetchval("show server_version_num")) // 10000
        shown = str(await conn.fetchval("show server_version")).split()[0]
        supabase = await bootstrap.is_supabase(conn)
        bootstrapped = supabase or bool(
            await conn.fetchval(
                "select exists(select 1 from pg_roles where rolname = 'authenticator')"
                " and to_regprocedure('auth.uid()') is not null"
            )
        )
        kind = "a Supabase project" if supabase else "plain PostgreSQL" + ("" if bootstrapped else ", not bootstrapped")
        if version < MIN_POSTGRES:
            findings.append(
                error("database", f"PostgreSQL {shown} ({kind}); whatsched needs {MIN_POSTGRES}+", "upgrade")
            )
        elif not settings.database_url:
            findings.append(
                warning(
                    "database",
                    f"PostgreSQL {shown}, the embedded server under DATA_DIR: meant for development",
                    "set DATABASE_URL to your production PostgreSQL or Supabase connection string",
                )
            )
        else:
            findings.append(ok("database", f"PostgreSQL {shown} at {_safe_url(admin_url)}, {kind}"))
        findings.append(await _check_migrations(conn, migrate, bootstrapped))
        findings.append(await _check_rls(conn))
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        findings.append(error("database", f"query failed on {_safe_url(admin_url)}: {exc}", "check the server"))
        return findings
    finally:
        await conn.close()
    findings.append(await check_app_role(pool.app_url(settings, supabase=supabase), timeout_s))
    return findings


async def _check_migrations(conn: asyncpg.Connection, migrate: Any, bootstrapped: bool) -> Finding:
    try:
        known = migrate.discover()
    except FileNotFoundError:
        return warning(
            "migrations",
            "not checked: supabase/migrations is not next to this installation",
            "run the doctor from the release's checkout",
        )
    done = await migrate.applied_versions(conn)
    unknown = migrate.unknown_versions(done, known)
    if unknown:
        return error(
            "migrations",
            f"the database has {len(unknown)} migration(s) this release does not know ({', '.join(unknown[:3])}):"
            " it was migrated by another version of whatsched",
            "deploy the whatsched version that matches the database (never downgrade one in place)",
        )
    pending = [f"{m.version}_{m.name}" for m in known if m.version not in done]
    if pending or not bootstrapped:
        listed = ", ".join(pending[:3]) + (", ..." if len(pending) > 3 else "")
        what = f"{len(pending)} of {len(known)} migration(s) pending ({listed})" if pending else "not bootstrapped"
        return error("migrations", what, "run `whatsched migrate` against DATABASE_URL")
    return ok("migrations", f"up to date: {len(known)} applied, none pending")


async def _check_rls(conn: asyncpg.Connection) -> Finding:
    rows = await conn.fetch(
        "select c.relname, c.relrowsecurity from pg_class c join pg_namespace n on n.oid = c.relnamespace"
        " where n.nspname = 'public' and c.relkind in ('r', 'p') order by 1"
    )
    off = [r["relname"] for r in rows if not r["relrowsecurity"]]
    if off:
        return error(
            "rls",
            f"row-level security is off on public.{', public.'.join(off)}: any signed-in user (or supabase-js"
            " caller) reaches every row",
            "alter table public.<name> enable row level security (in a migration, with its policies)",
        )
    return ok("rls", f"row-level security on for all {len(rows)} public tables")


async def check_app_role(app_url: str, timeout_s: float = 5.0) -> Finding:
    """The login role of the API and workers: not a superuser, able to act as authenticated and service_role."""
    try:
        conn = await asyncpg.connect(app_url, timeout=timeout_s)
    except (OSError, asyncpg.PostgresError, TimeoutError, ValueError) as exc:
        return error(
            "app-role",
            f"the API cannot connect as {_safe_url(app_url)}: {exc}",
            "set AUTHENTICATOR_PASSWORD (the bootstrap's authenticator role) or APP_DATABASE_URL",
        )
    try:
        row = await conn.fetchrow(
            """
            select r.rolname, r.rolsuper, r.rolbypassrls,
                   coalesce((select pg_has_role(current_user, oid, 'MEMBER') from pg_roles
                             where rolname = 'authenticated'), false) as as_user,
                   coalesce((select pg_has_role(current_user, oid, 'MEMBER') from pg_roles
                             where rolname = 'service_role'), false) as as_service
            from pg_roles r where r.rolname = current_user
            """
        )
    finally:
        await conn.close()
    assert row is not None
    name = row["rolname"]
    dedicated = (
        f"create role whatsched_app login noinherit password '...'; grant authenticated, service_role to"
        f" whatsched_app; then APP_DATABASE_URL=postgresql://whatsched_app:...@<host>/<db> (today: {name})"
    )
    if row["rolsuper"]:
        return error(
            "app-role",
            f"the API and workers connect as {name}, a superuser: one SQL injection and RLS means nothing",
            dedicated,
        )
    if not (row["as_user"] and row["as_service"]):
        missing = [r for r, has in (("authenticated", row["as_user"]), ("service_role", row["as_service"])) if not has]
        return error(
            "app-role",
            f"{name} cannot act as {' or '.join(missing)}: every user request (or the worker) would fail",
            f"grant {', '.join(missing)} to {name}",
        )
    if row["rolbypassrls"]:
        return warning(
            "app-role",
            f"{name} has BYPASSRLS; requests still run as `authenticated` (RLS applies), but a role without it"
            " is safer",
            dedicated,
        )
    return ok("app-role", f"{name}: not a superuser, no BYPASSRLS, may act as authenticated and service_role")


# ---------------------------------------------------------------------------------------------
# Auth
# ---------------------------------------------------------------------------------------------


async def check_auth(settings: Settings, timeout_s: float = 5.0) -> Finding:
    provider = settings.effective_auth_provider
    if provider == "local":
        if settings.supabase_url:
            return warning(
                "auth",
                "AUTH_PROVIDER=local although SUPABASE_URL is set: users log in against this database's"
                " auth.users, not Supabase Auth",
                "leave AUTH_PROVIDER empty (or supabase) to use Supabase Auth",
            )
        if settings.jwt_secret:
            if len(settings.jwt_secret) < 32:
                return warning(
                    "auth",
                    "local provider, HS256 with a JWT_SECRET shorter than 32 characters",
                    "use a random secret of 32+ characters (openssl rand -hex 32)",
                )
            return ok("auth", "local provider, tokens signed HS256 with JWT_SECRET (give every API process the same)")
        keys = (settings.data_dir / "keys" / "jwt-es256.pem").absolute()
        if keys.exists():
            return ok("auth", f"local provider, ES256 key {keys} (every API process must share this file)")
        folder = _nearest_existing(keys.parent)
        if not os.access(folder, os.W_OK | os.X_OK):
            return error(
                "auth",
                f"local provider: no ES256 key at {keys} and {folder} is not writable",
                "make DATA_DIR writable for the service user, or set JWT_SECRET",
            )
        return ok("auth", f"local provider, ES256 key to be generated at {keys} on first start (share it)")
    if not settings.supabase_url:
        return error(
            "auth",
            "AUTH_PROVIDER=supabase without SUPABASE_URL: the API refuses to start",
            "set SUPABASE_URL (https://<ref>.supabase.co) and SUPABASE_ANON_KEY",
        )
    if not settings.supabase_anon_key:
        return error(
            "auth",
            "SUPABASE_URL is set without SUPABASE_ANON_KEY: the API refuses to start",
            "set SUPABASE_ANON_KEY to the project's anon (publishable) key",
        )
    url = settings.supabase_url.rstrip("/") + "/auth/v1/.well-known/jwks.json"
    problem = ""
    keys_found = 0
    try:
        async with httpx.AsyncClient(timeout=timeout_s) as http:
            resp = await http.get(url)
        if resp.status_code != 200:
            problem = f"answered {resp.status_code}"
        else:
            keys_found = len(resp.json().get("keys") or [])
    except (httpx.HTTPError, ValueError, AttributeError) as exc:
        problem = f"unreachable ({type(exc).__name__}: {exc})"
    if keys_found:
        extra = " and JWT_SECRET (legacy HS256)" if settings.jwt_secret else ""
        return ok("auth", f"Supabase Auth at {settings.supabase_url}: {keys_found} signing key(s) in its JWKS{extra}")
    if settings.jwt_secret:
        why = problem or "has no keys"
        return ok("auth", f"Supabase Auth: JWKS {why}; tokens verified with JWT_SECRET (HS256, legacy)")
    why = problem or "lists no signing keys"
    return error(
        "auth",
        f"Supabase Auth JWKS {url} {why}, and JWT_SECRET is empty: no access token can be verified",
        "check SUPABASE_URL and that this machine reaches it, or set JWT_SECRET to the project's legacy JWT secret",
    )


def check_auth_admin(settings: Settings) -> Finding:
    if not settings.supabase_url:
        return ok("auth-admin", "not needed: users live in this database (local provider)")
    if settings.supabase_service_role_key:
        return ok("auth-admin", "SUPABASE_SERVICE_ROLE_KEY set: `whatsched users` works through Supabase Auth")
    return warning(
        "auth-admin",
        "SUPABASE_URL is set but SUPABASE_SERVICE_ROLE_KEY is not: the API runs, but `whatsched users create|"
        "promote` and `contacts import --user` refuse",
        "set SUPABASE_SERVICE_ROLE_KEY where you run those commands (the API never reads it)",
    )


# ---------------------------------------------------------------------------------------------
# Secrets and exposure
# ---------------------------------------------------------------------------------------------


def check_bridge_token(settings: Settings) -> Finding:
    fix = "set BRIDGE_TOKEN to the same long random string (openssl rand -hex 32) for the bridge, API and workers"
    if settings.whatsapp_driver == "simulator":
        return warning(
            "bridge-token",
            "WHATSAPP_DRIVER=simulator: nothing reaches WhatsApp, the development token is tolerated",
            "set WHATSAPP_DRIVER=wwebjs (and a real BRIDGE_TOKEN) to send for real",
        )
    if settings.bridge_token == DEV_BRIDGE_TOKEN:
        return error(
            "bridge-token",
            f"BRIDGE_TOKEN is the development default {DEV_BRIDGE_TOKEN!r}: anyone who can"
            " reach the bridge can send as your number",
            fix,
        )
    if len(settings.bridge_token) < SHORT_TOKEN:
        return warning("bridge-token", f"BRIDGE_TOKEN has only {len(settings.bridge_token)} characters", fix)
    return ok("bridge-token", f"BRIDGE_TOKEN set ({len(settings.bridge_token)} characters)")


def check_origins(settings: Settings) -> Finding:
    origins = settings.origins
    if "*" in origins:
        return error(
            "origins",
            "ALLOWED_ORIGINS contains *: any website may call the API with a user's credentials",
            "list your frontend's origins, e.g. ALLOWED_ORIGINS=https://app.example.com",
        )
    if settings.public_url is None:
        return warning(
            "origins",
            f"PUBLIC_URL is not set (so {settings.effective_public_url}): the local provider's token issuer and"
            " these checks assume a local deployment",
            "set PUBLIC_URL to the API's public https:// address",
        )
    if _is_local(settings.effective_public_url):
        return ok(
            "origins", f"local deployment ({settings.effective_public_url}); ALLOWED_ORIGINS {', '.join(origins)}"
        )
    remote = [o for o in origins if not _is_local(o)]
    if not remote:
        return warning(
            "origins",
            f"PUBLIC_URL is {settings.effective_public_url} but ALLOWED_ORIGINS only allows"
            f" {', '.join(origins) or 'nothing'}: browsers on your frontend's domain are refused (CORS)",
            "set ALLOWED_ORIGINS to your frontend's origins (comma-separated), e.g. https://app.example.com",
        )
    plain = [o for o in remote if o.startswith("http://")]
    if plain and settings.effective_public_url.startswith("https://"):
        return warning(
            "origins",
            f"ALLOWED_ORIGINS has plain-http origins {', '.join(plain)} for an https API",
            "use the https:// origins only",
        )
    return ok("origins", f"ALLOWED_ORIGINS {', '.join(origins)}")


# ---------------------------------------------------------------------------------------------
# The bridge, Chromium and the WhatsApp session
# ---------------------------------------------------------------------------------------------


async def check_bridge(settings: Settings, timeout_s: float = 5.0) -> Finding:
    from whatsched.bridge_client import BridgeClient, BridgeError

    base = settings.effective_bridge_url.rstrip("/")
    try:
        async with httpx.AsyncClient(timeout=timeout_s) as http:
            health = (await http.get(base + "/health")).json()
    except (httpx.HTTPError, ValueError) as exc:
        return error(
            "bridge",
            f"the bridge does not answer at {base} ({type(exc).__name__}: {exc})",
            "start it (systemctl start whatsched-bridge) or set BRIDGE_URL (BRIDGE_HOST/BRIDGE_PORT) to where it runs",
        )
    client = BridgeClient(base, settings.bridge_token, timeout_s=timeout_s)
    try:
        status = await client.status()
    except BridgeError as exc:
        if exc.code == "unauthorized":
            return error(
                "bridge",
                f"the bridge at {base} refuses our BRIDGE_TOKEN",
                "give the bridge and the API/workers the same BRIDGE_TOKEN",
            )
        return error("bridge", f"GET {base}/status failed: {exc.message}", "look at the bridge's log")
    finally:
        await client.close()
    driver = str(health.get("driver") if isinstance(health, dict) else "?")
    state = str(status.get("status"))
    where = f"bridge at {base} (driver {driver})"
    if driver != settings.whatsapp_driver:
        return warning(
            "bridge",
            f"{where}, but WHATSAPP_DRIVER here is {settings.whatsapp_driver}",
            "give the bridge and this machine the same WHATSAPP_DRIVER",
        )
    if state == "connected":
        return ok("bridge", f"{where}: WhatsApp connected as {status.get('phone') or 'an unknown number'}")
    if state == "qr_needed":
        return warning(
            "bridge",
            f"{where}: WhatsApp waits for a QR scan; nothing is sent until then",
            f"open {base}/ (operator page, BRIDGE_TOKEN) and scan the QR with the phone",
        )
    detail = f" ({status.get('last_error')})" if status.get("last_error") else ""
    return warning(
        "bridge",
        f"{where}: WhatsApp is {state}{detail}; sends wait until it connects",
        "watch the bridge's log; POST /restart rebuilds the client",
    )


async def check_chromium(settings: Settings, timeout_s: float = 15.0) -> Finding:
    """CHROME_PATH, which only the bridge uses, read from the same Settings as everything else."""
    if settings.whatsapp_driver != "wwebjs":
        return ok("chromium", "not needed: the simulator driver starts no browser")
    chrome_path = settings.chrome_path
    path = Path(chrome_path)
    if not _executable(path):
        found = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
        hint = f" (there is one at {found})" if found else ""
        return error(
            "chromium",
            f"CHROME_PATH {chrome_path} is not an executable on this machine{hint}",
            "apt-get install chromium, or set CHROME_PATH; run the doctor on the bridge's machine",
        )
    try:
        proc = await asyncio.create_subprocess_exec(
            str(path), "--version", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        out, _ = await asyncio.wait_for(proc.communicate(), timeout_s)
    except (OSError, TimeoutError) as exc:
        return error("chromium", f"{chrome_path} --version failed: {exc!r}", "reinstall Chromium")
    version = out.decode(errors="replace").strip().splitlines()[-1:] or ["?"]
    if proc.returncode != 0:
        return error(
            "chromium", f"{chrome_path} --version exited {proc.returncode}: {version[0]}", "reinstall Chromium"
        )
    return ok("chromium", f"{version[0]} at {chrome_path}")


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path("/")


def check_session(settings: Settings) -> Finding:
    if settings.whatsapp_driver != "wwebjs":
        return ok("session", "not needed: the simulator keeps no WhatsApp session")
    folder = settings.session_path.resolve()
    fix = (
        f"create {folder} owned by the bridge's user (chown whatsched {folder}) or set WHATSAPP_SESSION_PATH;"
        " run the doctor as that user"
    )
    existing = _nearest_existing(folder)
    if existing != folder and not existing.is_dir():
        return error("session", f"{existing} is not a folder, so {folder} cannot be created", fix)
    if existing == folder and not folder.is_dir():
        return error("session", f"WHATSAPP_SESSION_PATH {folder} is not a folder", fix)
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".whatsched-doctor-"):
            pass
    except OSError as exc:
        return error("session", f"cannot write in {existing}: {exc.strerror}", fix)
    paired = (folder / "session").is_dir()
    state = "holds a session" if paired else ("will be created" if existing != folder else "empty: a QR scan is due")
    return ok("session", f"WhatsApp session folder {folder} is writable ({state})")


# ---------------------------------------------------------------------------------------------
# Redis
# ---------------------------------------------------------------------------------------------


async def check_redis(settings: Settings, timeout_s: float = 5.0) -> Finding:
    if not settings.redis_url:
        return ok("redis", "not set: each API process counts login attempts on its own (set REDIS_URL to share)")
    import redis.asyncio as redis

    client = redis.from_url(settings.redis_url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
    try:
        await asyncio.wait_for(client.ping(), timeout_s)
    except (redis.RedisError, OSError, TimeoutError) as exc:
        return error(
            "redis",
            f"REDIS_URL {_safe_url(settings.redis_url)} does not answer: {exc}",
            "start Redis or fix REDIS_URL (or leave it empty to count per process)",
        )
    finally:
        await client.aclose()
    return ok("redis", f"{_safe_url(settings.redis_url)} answers PING")


# ---------------------------------------------------------------------------------------------
# Careful sending
# ---------------------------------------------------------------------------------------------


def check_spacing(settings: Settings) -> Finding:
    low, high = settings.send_spacing_min_s, settings.send_spacing_max_s
    if high < low:
        return error(
            "spacing",
            f"SEND_SPACING_MAX_S {high:g} is below SEND_SPACING_MIN_S {low:g}: the worker refuses to start",
            "make SEND_SPACING_MAX_S at least SEND_SPACING_MIN_S",
        )
    if low == 0:
        return warning(
            "spacing",
            "SEND_SPACING_MIN_S=0: messages leave back to back, the surest way to a ban",
            f"keep SEND_SPACING_MIN_S at {SPACING_MIN_SAFE_S:g} s or more (default 8)",
        )
    if low < SPACING_MIN_SAFE_S:
        return warning(
            "spacing",
            f"SEND_SPACING_MIN_S {low:g} s is below the safe {SPACING_MIN_SAFE_S:g} s",
            f"keep SEND_SPACING_MIN_S at {SPACING_MIN_SAFE_S:g} s or more (default 8)",
        )
    return ok("spacing", f"{low:g}-{high:g} s between two sends from one number")


def check_caps(settings: Settings) -> Finding:
    hourly, daily = settings.send_hourly_cap, settings.send_daily_cap
    fix = f"keep SEND_HOURLY_CAP between 1 and {HOURLY_CAP_SAFE} and SEND_DAILY_CAP between 1 and {DAILY_CAP_SAFE}"
    if hourly == 0 or daily == 0:
        which = " and ".join(n for n, v in (("SEND_HOURLY_CAP", hourly), ("SEND_DAILY_CAP", daily)) if v == 0)
        return warning("caps", f"{which}=0: no cap on what one number sends", fix)
    if hourly > HOURLY_CAP_SAFE or daily > DAILY_CAP_SAFE:
        return warning(
            "caps",
            f"caps {hourly}/hour and {daily}/day exceed the safe {HOURLY_CAP_SAFE}/hour and"
            f" {DAILY_CAP_SAFE}/day for one number",
            fix,
        )
    if hourly > daily:
        return warning(
            "caps",
            f"SEND_HOURLY_CAP {hourly} is above SEND_DAILY_CAP {daily}: the hourly cap never bites",
            "make the hourly cap smaller than the daily one",
        )
    return ok("caps", f"{hourly} per hour, {daily} per day per WhatsApp number")


def check_quiet_hours(settings: Settings) -> Finding:
    from whatsched.dispatcher.pacing import parse_quiet_hours

    try:
        quiet = parse_quiet_hours(settings.quiet_hours)
    except ConfigError as exc:
        return error("quiet-hours", str(exc), 'write it as "HH:MM-HH:MM", e.g. QUIET_HOURS=21:00-08:00')
    if quiet is None or quiet.start == quiet.end:
        return warning(
            "quiet-hours",
            "QUIET_HOURS is off: messages may arrive in the middle of the night",
            "set QUIET_HOURS, e.g. 21:00-08:00 (each owner's timezone)",
        )
    return ok("quiet-hours", f"no sends {quiet.start:%H:%M}-{quiet.end:%H:%M} in each owner's timezone")


# ---------------------------------------------------------------------------------------------
# whatsapp-web.js
# ---------------------------------------------------------------------------------------------


def find_bridge_dir(start: Path | None = None) -> Path | None:
    """bridge/ next to the package's checkout (editable install), else ./bridge."""
    for parent in (start or Path(__file__).resolve()).parents:
        if (parent / "bridge" / "package.json").is_file():
            return parent / "bridge"
    here = Path.cwd() / "bridge"
    return here if (here / "package.json").is_file() else None


def _node_major() -> int | None:
    node = shutil.which("node")
    if node is None:
        return None
    import subprocess

    try:
        out = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.match(r"v(\d+)", out.strip())
    return int(match.group(1)) if match else None


def check_wwebjs(settings: Settings, bridge_dir: Path | None) -> Finding:
    real = settings.whatsapp_driver == "wwebjs"
    at_fault = error if real else warning
    folder = bridge_dir or find_bridge_dir()
    if folder is None or not (folder / "package.json").is_file():
        return at_fault(
            WWEBJS,
            f"no bridge/package.json {'at ' + str(folder) if folder else 'found'}",
            "run the doctor from the checkout, or pass --bridge-dir /opt/whatsched/bridge",
        )
    try:
        pinned = str(json.loads((folder / "package.json").read_text())["dependencies"][WWEBJS])
    except (OSError, ValueError, KeyError, TypeError):
        return error(WWEBJS, f"{folder}/package.json does not list {WWEBJS}", "restore bridge/package.json")
    installed_file = folder / "node_modules" / WWEBJS / "package.json"
    if not installed_file.is_file():
        return at_fault(
            WWEBJS, f"pinned {pinned} but not installed in {folder}/node_modules", f"cd {folder} && npm ci --omit=dev"
        )
    installed = str(json.loads(installed_file.read_text()).get("version"))
    if installed != pinned:
        return at_fault(
            WWEBJS,
            f"{folder}/node_modules has {installed}, package.json pins {pinned}",
            f"cd {folder} && npm ci --omit=dev",
        )
    node = _node_major()
    if node is None or node < MIN_NODE:
        return at_fault(
            WWEBJS,
            f"{WWEBJS} {installed}, but Node {node or 'is missing'}: the bridge needs Node {MIN_NODE}+",
            f"install Node {MIN_NODE} or newer",
        )
    web = _default_web_version(folder)
    if not EXACT_VERSION.match(pinned):
        return warning(
            WWEBJS,
            f"{installed} installed, but package.json allows {pinned!r}: an npm install may bring another version",
            f'pin it exactly: "{WWEBJS}": "{installed}"',
        )
    return ok(WWEBJS, f"{installed} (pinned, installed; Node {node}{web})")


def _default_web_version(folder: Path) -> str:
    """The WhatsApp Web version the library asks for by default (its webVersion constant)."""
    constants = folder / "node_modules" / WWEBJS / "src" / "util" / "Constants.js"
    try:
        match = re.search(r"webVersion:\s*'([^']+)'", constants.read_text())
    except OSError:
        return ""
    return f"; WhatsApp Web {match.group(1)} by default" if match else ""


# ---------------------------------------------------------------------------------------------
# All of them
# ---------------------------------------------------------------------------------------------


async def run(
    settings: Settings,
    *,
    bridge_dir: Path | None = None,
    timeout_s: float = 5.0,
) -> list[Finding]:
    """Every check, in a fixed order (the network ones concurrently)."""

    async def one(check: Callable[[], Awaitable[Finding]]) -> list[Finding]:
        return [await check()]

    database, auth, bridge, chromium, redis = await asyncio.gather(
        check_database(settings, timeout_s),
        one(lambda: check_auth(settings, timeout_s)),
        one(lambda: check_bridge(settings, timeout_s)),
        one(lambda: check_chromium(settings)),
        one(lambda: check_redis(settings, timeout_s)),
    )
    return [
        *database,
        *auth,
        check_auth_admin(settings),
        check_bridge_token(settings),
        check_origins(settings),
        *bridge,
        *chromium,
        check_session(settings),
        check_wwebjs(settings, bridge_dir),
        *redis,
        check_spacing(settings),
        check_caps(settings),
        check_quiet_hours(settings),
    ]


def summary(findings: list[Finding]) -> str:
    counts = {level: sum(1 for f in findings if f.level == level) for level in ("ok", "warning", "error")}
    return f"{counts['ok']} ok, {counts['warning']} warning(s), {counts['error']} error(s)"

"""`whatsched doctor`: each check's verdict and fix, with crafted settings against the test
database, tiny aiohttp stand-ins for the bridge and Supabase Auth's JWKS, and the real command as a
subprocess."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from bridge_process import BridgeProcess, free_port

from whatsched import doctor
from whatsched.config import Settings
from whatsched.db.migrate import discover
from whatsched.db.setup import Prepared

REPO = Path(__file__).resolve().parents[1]
CLOSED = "http://127.0.0.1:9"  # the discard port: nothing listens
LONG_TOKEN = "t" * 40
SYSTEM_CHROMIUM = Path("/usr/bin/chromium")
HAS_CHROMIUM = SYSTEM_CHROMIUM.exists()


def with_(settings: Settings, **changes: Any) -> Settings:
    return settings.model_copy(update=changes)


def by_check(findings: list[doctor.Finding]) -> dict[str, doctor.Finding]:
    return {f.check: f for f in findings}


# ---------------------------------------------------------------------------------------------
# Database, migrations, RLS, the app's role
# ---------------------------------------------------------------------------------------------


async def test_a_migrated_database_passes_every_database_check(settings: Settings) -> None:
    found = by_check(await doctor.check_database(settings))
    assert found["database"].level == "ok" and "plain PostgreSQL" in found["database"].message
    assert found["migrations"].level == "ok" and "none pending" in found["migrations"].message
    assert found["rls"].level == "ok"
    assert found["app-role"].level == "ok" and found["app-role"].message.startswith("authenticator")


async def test_an_unreachable_database_is_an_error_and_the_rest_is_not_checked(settings: Settings) -> None:
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere"
    found = by_check(await doctor.check_database(with_(settings, database_url=url), timeout_s=2))
    assert found["database"].level == "error"
    assert "cannot connect to DATABASE_URL" in found["database"].message and "DATABASE_URL" in found["database"].fix
    assert {found[n].level for n in ("migrations", "rls", "app-role")} == {"warning"}
    assert "not checked" in found["migrations"].message


@pytest.fixture
async def empty_database(server_url: str) -> AsyncIterator[str]:
    from urllib.parse import urlsplit, urlunsplit

    name = "whatsched_doctor_" + secrets.token_hex(4)
    admin = await asyncpg.connect(server_url)
    await admin.execute(f'create database "{name}"')
    await admin.close()
    parts = urlsplit(server_url)
    try:
        yield urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))
    finally:
        admin = await asyncpg.connect(server_url)
        await admin.execute(f'drop database if exists "{name}" with (force)')
        await admin.close()


async def test_pending_migrations_are_an_error_with_the_command_that_applies_them(
    settings: Settings, empty_database: str
) -> None:
    found = by_check(await doctor.check_database(with_(settings, database_url=empty_database, app_database_url=None)))
    assert found["database"].level == "ok" and "not bootstrapped" in found["database"].message
    assert found["migrations"].level == "error"
    known = len(discover())
    assert f"{known} of {known} migration(s) pending" in found["migrations"].message
    assert "whatsched migrate" in found["migrations"].fix


async def test_migrations_this_release_does_not_know_are_an_error(settings: Settings, empty_database: str) -> None:
    conn = await asyncpg.connect(empty_database)
    await conn.execute(
        "create schema supabase_migrations; create table supabase_migrations.schema_migrations (version text);"
        " insert into supabase_migrations.schema_migrations values ('20990101000000')"
    )
    await conn.close()
    found = by_check(await doctor.check_database(with_(settings, database_url=empty_database)))
    assert found["migrations"].level == "error"
    assert "does not know (20990101000000)" in found["migrations"].message
    assert "matches the database" in found["migrations"].fix


async def test_a_public_table_without_rls_is_an_error_naming_it(settings: Settings, admin: asyncpg.Connection) -> None:
    table = "doctor_probe_" + secrets.token_hex(3)
    await admin.execute(f"create table public.{table} (id int)")
    try:
        found = by_check(await doctor.check_database(settings))
    finally:
        await admin.execute(f"drop table public.{table}")
    assert found["rls"].level == "error"
    assert f"public.{table}" in found["rls"].message
    assert "enable row level security" in found["rls"].fix


async def test_the_app_connecting_as_a_superuser_is_an_error(prepared: Prepared) -> None:
    finding = await doctor.check_app_role(prepared.admin_url)  # postgres: a superuser
    assert finding.level == "error" and "a superuser" in finding.message
    assert "APP_DATABASE_URL" in finding.fix and "grant authenticated, service_role" in finding.fix


@pytest.fixture
async def login_role(admin: asyncpg.Connection, prepared: Prepared) -> AsyncIterator[Any]:
    """Make a throwaway login role (cluster-wide, so dropped afterwards); returns its URL."""
    from urllib.parse import urlsplit, urlunsplit

    made: list[str] = []

    async def make(attributes: str = "", grants: bool = True) -> str:
        name = "doctor_" + secrets.token_hex(4)
        await admin.execute(f"create role {name} login {attributes}")
        if grants:
            await admin.execute(f"grant authenticated, service_role to {name}")
        made.append(name)
        parts = urlsplit(prepared.admin_url)
        netloc = f"{name}@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))

    yield make
    for name in made:
        await admin.execute(f"drop role if exists {name}")


async def test_an_app_role_with_bypassrls_is_a_warning(login_role: Any) -> None:
    finding = await doctor.check_app_role(await login_role("bypassrls"))
    assert finding.level == "warning" and "BYPASSRLS" in finding.message


async def test_an_app_role_that_cannot_act_as_authenticated_is_an_error(login_role: Any) -> None:
    url = await login_role(grants=False)
    finding = await doctor.check_app_role(url)
    assert finding.level == "error"
    assert "cannot act as authenticated or service_role" in finding.message
    assert finding.fix.startswith("grant authenticated, service_role to doctor_")


# ---------------------------------------------------------------------------------------------
# Auth
# ---------------------------------------------------------------------------------------------


@pytest.fixture
async def fake_http() -> AsyncIterator[Any]:
    """Serve an aiohttp app on a free port: `url = await serve(app)`."""
    runners: list[web.AppRunner] = []

    async def serve(app: web.Application) -> str:
        runner = web.AppRunner(app)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        runners.append(runner)
        return f"http://127.0.0.1:{port}"

    yield serve
    for runner in runners:
        await runner.cleanup()


def jwks_app(status: int, keys: list[dict[str, Any]]) -> web.Application:
    app = web.Application()

    async def jwks(_: web.Request) -> web.Response:
        return web.json_response({"keys": keys}, status=status)

    app.router.add_get("/auth/v1/.well-known/jwks.json", jwks)
    return app


async def test_local_auth_is_ok(settings: Settings) -> None:
    assert (await doctor.check_auth(settings)).level == "ok"
    assert doctor.check_auth_admin(settings).level == "ok"


async def test_supabase_auth_needs_its_url_and_anon_key(settings: Settings) -> None:
    no_url = await doctor.check_auth(with_(settings, auth_provider="supabase", supabase_url=None))
    assert no_url.level == "error" and "without SUPABASE_URL" in no_url.message
    no_key = await doctor.check_auth(with_(settings, supabase_url=CLOSED, supabase_anon_key=None))
    assert no_key.level == "error" and "SUPABASE_ANON_KEY" in no_key.message


async def test_supabase_auth_with_a_reachable_jwks_is_ok(settings: Settings, fake_http: Any) -> None:
    url = await fake_http(jwks_app(200, [{"kty": "EC", "kid": "k1"}]))
    finding = await doctor.check_auth(with_(settings, supabase_url=url, supabase_anon_key="anon"))
    assert finding.level == "ok" and "1 signing key(s)" in finding.message


async def test_supabase_auth_without_jwks_or_jwt_secret_is_an_error(settings: Settings, fake_http: Any) -> None:
    url = await fake_http(jwks_app(404, []))
    broken = with_(settings, supabase_url=url, supabase_anon_key="anon", jwt_secret=None)
    finding = await doctor.check_auth(broken)
    assert finding.level == "error" and "answered 404" in finding.message
    assert "JWT_SECRET" in finding.fix
    unreachable = await doctor.check_auth(with_(broken, supabase_url=CLOSED), timeout_s=2)
    assert unreachable.level == "error" and "unreachable" in unreachable.message
    legacy = await doctor.check_auth(with_(broken, jwt_secret="s" * 40))
    assert legacy.level == "ok" and "JWT_SECRET" in legacy.message


def test_supabase_without_the_service_role_key_warns_about_the_user_commands(settings: Settings) -> None:
    finding = doctor.check_auth_admin(with_(settings, supabase_url=CLOSED, supabase_service_role_key=None))
    assert finding.level == "warning" and "whatsched users create" in finding.message
    assert "SUPABASE_SERVICE_ROLE_KEY" in finding.fix
    assert doctor.check_auth_admin(with_(settings, supabase_url=CLOSED, supabase_service_role_key="k")).level == "ok"


# ---------------------------------------------------------------------------------------------
# Secrets and exposure
# ---------------------------------------------------------------------------------------------


def test_the_development_bridge_token_is_an_error_unless_simulating(settings: Settings) -> None:
    real = with_(settings, whatsapp_driver="wwebjs", bridge_token="dev-bridge-token")
    finding = doctor.check_bridge_token(real)
    assert finding.level == "error" and "development default" in finding.message
    assert "openssl rand -hex 32" in finding.fix
    assert doctor.check_bridge_token(with_(real, bridge_token="short-token")).level == "warning"
    assert doctor.check_bridge_token(with_(real, bridge_token=LONG_TOKEN)).level == "ok"
    simulated = doctor.check_bridge_token(with_(real, whatsapp_driver="simulator"))
    assert simulated.level == "warning" and "simulator" in simulated.message


def test_allowed_origins_must_include_more_than_localhost_for_a_public_api(settings: Settings) -> None:
    public = with_(settings, public_url="https://api.example.com", allowed_origins="http://localhost:3000")
    finding = doctor.check_origins(public)
    assert finding.level == "warning" and "CORS" in finding.message and "ALLOWED_ORIGINS" in finding.fix
    assert doctor.check_origins(with_(public, allowed_origins="https://app.example.com")).level == "ok"
    plain = doctor.check_origins(with_(public, allowed_origins="http://app.example.com"))
    assert plain.level == "warning" and "plain-http" in plain.message
    star = doctor.check_origins(with_(public, allowed_origins="*"))
    assert star.level == "error"
    unset = doctor.check_origins(with_(settings, public_url=None))
    assert unset.level == "warning" and "PUBLIC_URL" in unset.fix
    assert doctor.check_origins(with_(settings, public_url="http://127.0.0.1:8000")).level == "ok"


# ---------------------------------------------------------------------------------------------
# The bridge
# ---------------------------------------------------------------------------------------------


def bridge_app(token: str, driver: str, state: dict[str, Any]) -> web.Application:
    """The bridge's two routes the doctor reads (bridge/src/server.js)."""
    app = web.Application()

    async def health(_: web.Request) -> web.Response:
        return web.json_response({"ok": True, "driver": driver, "status": state["status"]})

    async def status(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {token}":
            return web.json_response({"code": "unauthorized", "message": "missing or wrong bearer token"}, status=401)
        return web.json_response({"qr_code": None, "phone": None, "since": "", "last_error": None, **state})

    app.router.add_get("/health", health)
    app.router.add_get("/status", status)
    return app


async def test_an_unreachable_bridge_is_an_error(settings: Settings) -> None:
    finding = await doctor.check_bridge(with_(settings, bridge_url=CLOSED), timeout_s=2)
    assert finding.level == "error" and "does not answer" in finding.message and "BRIDGE_URL" in finding.fix


async def test_a_bridge_that_refuses_our_token_is_an_error(settings: Settings, fake_http: Any) -> None:
    url = await fake_http(bridge_app(LONG_TOKEN, "wwebjs", {"status": "connected"}))
    wrong = with_(settings, bridge_url=url, bridge_token="x" * 40, whatsapp_driver="wwebjs")
    finding = await doctor.check_bridge(wrong)
    assert finding.level == "error" and "refuses our BRIDGE_TOKEN" in finding.message


async def test_the_bridge_reports_its_driver_and_whatsapp_state(settings: Settings, fake_http: Any) -> None:
    state: dict[str, Any] = {"status": "qr_needed"}
    url = await fake_http(bridge_app(LONG_TOKEN, "wwebjs", state))
    ours = with_(settings, bridge_url=url, bridge_token=LONG_TOKEN, whatsapp_driver="wwebjs")
    qr = await doctor.check_bridge(ours)
    assert qr.level == "warning" and "QR" in qr.message and f"{url}/" in qr.fix
    state.update(status="disconnected", last_error="auth_failure: bad session")
    down = await doctor.check_bridge(ours)
    assert down.level == "warning" and "disconnected (auth_failure: bad session)" in down.message
    state.update(status="connected", phone="+56912345678", last_error=None)
    up = await doctor.check_bridge(ours)
    assert up.level == "ok" and "driver wwebjs" in up.message and "+56912345678" in up.message
    mismatch = await doctor.check_bridge(with_(ours, whatsapp_driver="simulator"))
    assert mismatch.level == "warning" and "WHATSAPP_DRIVER here is simulator" in mismatch.message


@pytest.mark.slow
async def test_the_real_bridge_passes(settings: Settings, tmp_path: Path) -> None:
    bridge = BridgeProcess(tmp_path / "bridge", token=LONG_TOKEN)
    bridge.start()
    try:
        finding = await doctor.check_bridge(with_(settings, bridge_url=bridge.url, bridge_token=LONG_TOKEN))
    finally:
        bridge.stop()
    assert finding.level == "ok", finding
    assert "driver simulator" in finding.message and "connected as +15550000001" in finding.message


# ---------------------------------------------------------------------------------------------
# Chromium, the session folder, Redis
# ---------------------------------------------------------------------------------------------


async def test_chromium_must_be_found_for_the_wwebjs_driver(settings: Settings) -> None:
    real = with_(settings, whatsapp_driver="wwebjs")
    missing = await doctor.check_chromium(with_(real, chrome_path="/nonexistent/chromium"))
    assert missing.level == "error" and "CHROME_PATH /nonexistent/chromium" in missing.message
    assert "apt-get install chromium" in missing.fix
    simulator = with_(settings, chrome_path="/nonexistent/chromium")
    assert (await doctor.check_chromium(simulator)).level == "ok"  # the simulator starts no browser
    if HAS_CHROMIUM:
        found = await doctor.check_chromium(with_(real, chrome_path=str(SYSTEM_CHROMIUM)))
        assert found.level == "ok" and "Chromium" in found.message


def test_the_session_folder_must_be_writable(settings: Settings, tmp_path: Path) -> None:
    real = with_(settings, whatsapp_driver="wwebjs")
    fresh = doctor.check_session(with_(real, whatsapp_session_path=tmp_path / "session-folder"))
    assert fresh.level == "ok" and "will be created" in fresh.message
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    blocked = doctor.check_session(with_(real, whatsapp_session_path=blocker / "session"))
    assert blocked.level == "error" and "is not a folder" in blocked.message and "WHATSAPP_SESSION_PATH" in blocked.fix
    assert doctor.check_session(with_(settings, whatsapp_session_path=blocker / "x")).level == "ok"  # simulator


async def test_an_unreachable_redis_is_an_error(settings: Settings) -> None:
    assert (await doctor.check_redis(settings)).level == "ok"  # not set
    finding = await doctor.check_redis(with_(settings, redis_url=f"redis://127.0.0.1:{free_port()}/0"), timeout_s=2)
    assert finding.level == "error" and "does not answer" in finding.message and "REDIS_URL" in finding.fix


# ---------------------------------------------------------------------------------------------
# Careful sending
# ---------------------------------------------------------------------------------------------


def test_spacing_below_the_safe_minimum_warns(settings: Settings) -> None:
    assert doctor.check_spacing(with_(settings, send_spacing_min_s=8, send_spacing_max_s=20)).level == "ok"
    low = doctor.check_spacing(with_(settings, send_spacing_min_s=1, send_spacing_max_s=2))
    assert low.level == "warning" and "below the safe 3 s" in low.message
    off = doctor.check_spacing(with_(settings, send_spacing_min_s=0, send_spacing_max_s=0))
    assert off.level == "warning" and "back to back" in off.message
    inverted = doctor.check_spacing(with_(settings, send_spacing_min_s=10, send_spacing_max_s=5))
    assert inverted.level == "error" and "refuses to start" in inverted.message


def test_caps_outside_the_safe_range_warn(settings: Settings) -> None:
    assert doctor.check_caps(with_(settings, send_hourly_cap=200, send_daily_cap=1000)).level == "ok"
    high = doctor.check_caps(with_(settings, send_hourly_cap=800, send_daily_cap=1000))
    assert high.level == "warning" and "500/hour" in high.message
    daily = doctor.check_caps(with_(settings, send_hourly_cap=200, send_daily_cap=5000))
    assert daily.level == "warning" and "2000/day" in daily.message
    none = doctor.check_caps(with_(settings, send_hourly_cap=0, send_daily_cap=1000))
    assert none.level == "warning" and "SEND_HOURLY_CAP=0" in none.message
    upside_down = doctor.check_caps(with_(settings, send_hourly_cap=300, send_daily_cap=100))
    assert upside_down.level == "warning" and "never bites" in upside_down.message


def test_quiet_hours_must_parse_and_off_warns(settings: Settings) -> None:
    assert doctor.check_quiet_hours(with_(settings, quiet_hours="21:00-08:00")).level == "ok"
    bad = doctor.check_quiet_hours(with_(settings, quiet_hours="9pm-8am"))
    assert bad.level == "error" and "QUIET_HOURS" in bad.message and "HH:MM-HH:MM" in bad.fix
    impossible = doctor.check_quiet_hours(with_(settings, quiet_hours="25:00-08:00"))
    assert impossible.level == "error"
    off = doctor.check_quiet_hours(with_(settings, quiet_hours=""))
    assert off.level == "warning" and "off" in off.message


# ---------------------------------------------------------------------------------------------
# whatsapp-web.js
# ---------------------------------------------------------------------------------------------


def fake_bridge_dir(root: Path, pinned: str, installed: str | None) -> Path:
    folder = root / "bridge"
    folder.mkdir()
    (folder / "package.json").write_text(json.dumps({"dependencies": {"whatsapp-web.js": pinned}}))
    if installed is not None:
        module = folder / "node_modules" / "whatsapp-web.js"
        module.mkdir(parents=True)
        (module / "package.json").write_text(json.dumps({"version": installed}))
    return folder


def test_the_checkouts_whatsapp_web_js_is_pinned_and_installed(settings: Settings) -> None:
    pinned = json.loads((REPO / "bridge" / "package.json").read_text())["dependencies"]["whatsapp-web.js"]
    finding = doctor.check_wwebjs(settings, REPO / "bridge")
    if not (REPO / "bridge" / "node_modules" / "whatsapp-web.js").exists():
        pytest.skip("bridge/node_modules is not installed (npm ci)")
    assert finding.level == "ok" and finding.message.startswith(pinned), finding


def test_a_whatsapp_web_js_other_than_the_pinned_one_is_an_error(settings: Settings, tmp_path: Path) -> None:
    real = with_(settings, whatsapp_driver="wwebjs")
    folder = fake_bridge_dir(tmp_path, "1.34.7", "1.34.6")
    finding = doctor.check_wwebjs(real, folder)
    assert finding.level == "error" and "has 1.34.6, package.json pins 1.34.7" in finding.message
    assert "npm ci" in finding.fix


def test_missing_node_modules_is_an_error_for_wwebjs_and_a_warning_for_the_simulator(
    settings: Settings, tmp_path: Path
) -> None:
    folder = fake_bridge_dir(tmp_path, "1.34.7", None)
    assert doctor.check_wwebjs(with_(settings, whatsapp_driver="wwebjs"), folder).level == "error"
    assert doctor.check_wwebjs(settings, folder).level == "warning"


def test_a_version_range_instead_of_a_pin_warns(settings: Settings, tmp_path: Path) -> None:
    folder = fake_bridge_dir(tmp_path, "^1.34.7", "^1.34.7")
    finding = doctor.check_wwebjs(settings, folder)
    assert finding.level == "warning" and "pin it exactly" in finding.fix


# ---------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------


def run_doctor(prepared: Prepared, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "VIRTUAL_ENV", "PYTHONPATH")}
    full = {
        **keep,
        "DATABASE_URL": prepared.admin_url,
        "APP_DATABASE_URL": prepared.app_url,
        "DATA_DIR": str(cwd / "data"),
        **env,
    }
    return subprocess.run(
        [sys.executable, "-m", "whatsched.cli", "doctor", "--timeout", "3"],
        cwd=cwd,  # no stray .env
        env=full,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_command_prints_one_line_per_check_and_fails_on_errors(prepared: Prepared, tmp_path: Path) -> None:
    result = run_doctor(
        prepared,
        tmp_path,
        WHATSAPP_DRIVER="wwebjs",
        BRIDGE_TOKEN="dev-bridge-token",
        BRIDGE_URL=CLOSED,
        CHROME_PATH="/nonexistent/chromium",
        QUIET_HOURS="later",
    )
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    levels = {line.split()[1]: line.split()[0] for line in lines[:-1]}
    expected = {
        "database", "migrations", "rls", "app-role", "auth", "auth-admin", "bridge-token", "origins", "bridge",
        "chromium", "session", "whatsapp-web.js", "redis", "spacing", "caps", "quiet-hours",
    }  # fmt: skip
    assert set(levels) == expected, result.stdout
    errors = {"bridge-token", "bridge", "chromium", "quiet-hours"}
    if not (REPO / "bridge" / "node_modules" / "whatsapp-web.js").exists():
        errors.add("whatsapp-web.js")  # a checkout without `npm ci`
    assert {k for k, v in levels.items() if v == "error"} == errors
    assert all("-> fix:" in line for line in lines if line.startswith("error"))
    assert lines[-1].startswith("doctor: ") and f"{len(errors)} error(s)" in lines[-1]


@pytest.mark.slow
def test_the_command_exits_0_with_warnings_only(prepared: Prepared, tmp_path: Path) -> None:
    bridge = BridgeProcess(tmp_path / "bridge")
    bridge.start()
    try:
        result = run_doctor(prepared, tmp_path, BRIDGE_URL=bridge.url, PUBLIC_URL="http://127.0.0.1:8000")
    finally:
        bridge.stop()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 error(s)" in result.stdout.splitlines()[-1]


def test_a_setting_that_does_not_validate_is_one_error_line(prepared: Prepared, tmp_path: Path) -> None:
    result = run_doctor(prepared, tmp_path, SEND_HOURLY_CAP="-5")
    assert result.returncode == 1
    assert result.stdout.startswith("error   settings        SEND_HOURLY_CAP: ")
    assert "Traceback" not in result.stderr

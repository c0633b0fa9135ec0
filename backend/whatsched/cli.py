"""The `whatsched` command line."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import typer

from whatsched.config import Settings, get_settings
from whatsched.errors import ConfigError

app = typer.Typer(
    help="whatsched: schedule WhatsApp messages on Supabase.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

F = TypeVar("F", bound=Callable[..., Any])


def clear_errors(func: F) -> F:
    """Bad configuration ends the command with one sentence, not a traceback."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ConfigError as exc:
            typer.secho(f"whatsched: {exc}", fg=typer.colors.RED, err=True)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


@app.command()
@clear_errors
def dev() -> None:
    """Run everything (database, API, worker, bridge) in the foreground."""
    from whatsched import dev as dev_runner

    raise typer.Exit(dev_runner.run(get_settings()))


@app.command()
@clear_errors
def migrate(
    status: bool = typer.Option(False, "--status", help="List migrations and whether each is applied."),
    bootstrap_only: bool = typer.Option(
        False, "--bootstrap-only", help="Only create Supabase's roles and schemas (plain PostgreSQL)."
    ),
) -> None:
    """Bring the database to the latest migration (bootstrapping plain PostgreSQL first)."""
    from whatsched.db import bootstrap
    from whatsched.db import migrate as migrations
    from whatsched.db.embedded import EmbeddedPostgres, port_is_free
    from whatsched.db.setup import connect_admin, prepare

    settings = get_settings()
    embedded = None
    if not settings.database_url and port_is_free("127.0.0.1", settings.embedded_pg_port):
        embedded = EmbeddedPostgres(settings.data_dir / "postgres", settings.embedded_pg_port)
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        embedded.start()
    try:
        if status:

            async def show() -> None:
                conn = await connect_admin(settings)
                try:
                    done = await migrations.applied_versions(conn)
                finally:
                    await conn.close()
                for m in migrations.discover():
                    mark = "applied" if m.version in done else "pending"
                    typer.echo(f"{m.version}  {mark:<8} {m.name}")

            asyncio.run(show())
            return
        if bootstrap_only:

            async def boot() -> bool:
                conn = await connect_admin(settings)
                try:
                    return await bootstrap.bootstrap(conn, settings.authenticator_password)
                finally:
                    await conn.close()

            applied = asyncio.run(boot())
            typer.echo("bootstrap applied" if applied else "this is a Supabase database: nothing to bootstrap")
            return
        prepared = asyncio.run(prepare(settings))
        for name in prepared.applied:
            typer.echo(f"applied {name}")
        if not prepared.applied:
            typer.echo("nothing to apply; the database is up to date")
    finally:
        if embedded is not None:
            embedded.stop()


# On SIGTERM an API process stops accepting, closes its sockets with 1001 (going away: clients
# reconnect elsewhere), lets requests in flight finish for at most this long, then cancels them.
GRACEFUL_TIMEOUT_S = 20


@app.command()
@clear_errors
def api(
    workers: int = typer.Option(
        1, "--workers", min=1, help="API processes on this machine (uvicorn workers sharing the port)."
    ),
    graceful_timeout: int = typer.Option(
        GRACEFUL_TIMEOUT_S, "--graceful-timeout", min=0, help="Seconds requests in flight may take after SIGTERM."
    ),
) -> None:
    """Serve the HTTP and WebSocket API."""
    import uvicorn

    from whatsched.db.embedded import port_is_free
    from whatsched.db.setup import resolve_app_url

    settings = get_settings()
    if not port_is_free(settings.api_host, settings.api_port):
        raise ConfigError(f"port {settings.api_port} for the API is already in use; set API_PORT to another port.")
    asyncio.run(resolve_app_url(settings))  # fail here, in one sentence, if the database is unreachable
    uvicorn.run(
        "whatsched.api.app:app",
        factory=True,
        host=settings.api_host,
        port=settings.api_port,
        log_level="info",
        workers=workers,
        timeout_graceful_shutdown=graceful_timeout,
        # uvicorn's own WebSocket protocol, closing sockets with 1001 instead of 1012 on shutdown.
        ws="whatsched.realtime.hub:GoingAwayWebSockets",
        ws_ping_interval=20,
        ws_ping_timeout=20,
        # Events are ~200 B of JSON: permessage-deflate saves little and holds ~50 KB of zlib state per socket.
        ws_per_message_deflate=False,
    )


@app.command()
@clear_errors
def doctor(
    bridge_dir: Path | None = typer.Option(
        None, "--bridge-dir", help="The bridge's folder (package.json, node_modules); default: the checkout's bridge/."
    ),
    timeout: float = typer.Option(5.0, "--timeout", min=0.1, help="Seconds each network check may take."),
) -> None:
    """Check the configuration as production will use it: one line per check, exit 1 on any error."""
    from pydantic import ValidationError

    from whatsched import doctor as checks

    try:
        settings = get_settings()
    except ValidationError as exc:
        for problem in exc.errors():
            name = ".".join(str(part) for part in problem["loc"]).upper() or "settings"
            typer.secho(checks.error("settings", f"{name}: {problem['msg']}", "fix the variable").line(), fg="red")
        raise typer.Exit(1) from None
    findings = asyncio.run(checks.run(settings, bridge_dir=bridge_dir, timeout_s=timeout))
    colors = {"ok": typer.colors.GREEN, "warning": typer.colors.YELLOW, "error": typer.colors.RED}
    for finding in findings:
        typer.secho(finding.line(), fg=colors[finding.level])
    typer.echo(f"doctor: {checks.summary(findings)}")
    raise typer.Exit(1 if any(f.level == "error" for f in findings) else 0)


@app.command()
@clear_errors
def worker() -> None:
    """Send due messages through the WhatsApp bridge until SIGTERM or Ctrl-C."""
    from whatsched.dispatcher.worker import main as run_worker

    raise typer.Exit(run_worker(get_settings()))


users = typer.Typer(
    help="Manage users: in auth.users (local auth provider), or in Supabase Auth when SUPABASE_URL is set.",
    no_args_is_help=True,
)
app.add_typer(users, name="users")

# Users per page when the admin API is searched for an email (GoTrue's own cap for keyset pages).
ADMIN_PAGE = 1000


def _in_supabase_auth(settings: Settings) -> bool:
    """Whether users live in Supabase Auth. There the auth tables belong to GoTrue
    (supabase_auth_admin): none of our roles may write them, nor `service_role` read them, so the
    command line goes through the Auth admin API with the service-role key."""
    if settings.effective_auth_provider != "supabase":
        return False
    if not settings.supabase_url:
        raise ConfigError("AUTH_PROVIDER=supabase needs SUPABASE_URL.")
    if not settings.supabase_service_role_key:
        raise ConfigError(
            "SUPABASE_URL is set, so users live in Supabase Auth: set SUPABASE_SERVICE_ROLE_KEY (the project's"
            " service_role key) to manage them from the command line."
        )
    return True


@asynccontextmanager
async def _supabase_admin(settings: Settings) -> AsyncIterator[Any]:
    """Supabase Auth's admin API (supabase-auth's client), its failures as one-sentence errors."""
    from supabase_auth import AsyncGoTrueAdminAPI
    from supabase_auth.errors import AuthApiError, AuthError

    assert settings.supabase_url and settings.supabase_service_role_key
    url = settings.supabase_url.rstrip("/") + "/auth/v1"
    key = settings.supabase_service_role_key
    client = AsyncGoTrueAdminAPI(url=url, headers={"apikey": key, "Authorization": f"Bearer {key}"})
    try:
        yield client
    except AuthApiError as exc:
        raise ConfigError(f"Supabase Auth refused the request ({exc.status}): {exc.message}") from None
    except AuthError as exc:
        raise ConfigError(f"cannot reach Supabase Auth at {url}: {exc.message}") from None
    finally:
        await client.close()


async def _supabase_find_user(admin: Any, email: str) -> tuple[str, str] | None:
    """(id, email) of the Supabase Auth user with this email (any case), page by page."""
    wanted = email.strip().lower()
    page = 1
    while True:
        found = await admin.list_users(page=page, per_page=ADMIN_PAGE)
        for user in found:
            if (user.email or "").lower() == wanted:
                return str(user.id), str(user.email)
        if len(found) < ADMIN_PAGE:
            return None
        page += 1


async def _set_profile_role(settings: Settings, user_id: str, email: str, role: str) -> None:
    """Our side of a user: public.profiles (made by the on_auth_user_created trigger), as service_role."""
    from whatsched.db.pool import create_pool, service_tx
    from whatsched.db.setup import resolve_app_url

    pool = await create_pool(await resolve_app_url(settings), min_size=1, max_size=1)
    try:
        async with service_tx(pool) as conn:
            changed = await conn.fetchval(
                "update public.profiles set role = $2 where id = $1::uuid returning id", user_id, role
            )
    finally:
        await pool.close()
    if changed is None:
        raise ConfigError(f"{email} has no profile in this database; run `whatsched migrate` against it first.")


async def _local_provider() -> tuple[Any, Any]:
    from whatsched.auth.keys import local_signing_key
    from whatsched.auth.local import LocalProvider
    from whatsched.db import pool as db_pool
    from whatsched.db.setup import resolve_app_url

    settings = get_settings()
    pool = await db_pool.create_pool(await resolve_app_url(settings), min_size=1, max_size=2)
    key = local_signing_key(settings.data_dir, settings.jwt_secret)
    provider = LocalProvider(
        pool,
        key,
        settings.effective_public_url + "/auth/v1",
        int(settings.jwt_expire_hours * 3600),
        settings.refresh_token_days,
    )
    return provider, pool


@users.command("create")
@clear_errors
def users_create(
    email: str,
    password: str = typer.Option(..., "--password", prompt=True, hide_input=True, confirmation_prompt=True),
    admin: bool = typer.Option(False, "--admin", help="Give the user the admin role."),
    name: str = typer.Option("", "--name", help="Display name."),
) -> None:
    """Create a user (email + password, email confirmed): in auth.users, or through Supabase Auth."""
    from whatsched.auth.models import AuthFailure

    if len(password) < 8:
        raise ConfigError("the password must have at least 8 characters.")
    settings = get_settings()

    async def local() -> str:
        provider, pool = await _local_provider()
        try:
            user = await provider.create_user(email, password, admin=admin, name=name)
        except AuthFailure as exc:
            raise ConfigError(exc.message) from None
        finally:
            await pool.close()
        return str(user.id)

    async def supabase() -> str:
        async with _supabase_admin(settings) as client:
            answer = await client.create_user(
                {
                    "email": email,
                    "password": password,
                    "email_confirm": True,
                    "user_metadata": {"name": name} if name else {},
                }
            )
        user_id = str(answer.user.id)
        if admin:
            await _set_profile_role(settings, user_id, email, "admin")
        return user_id

    user_id = asyncio.run(supabase() if _in_supabase_auth(settings) else local())
    typer.echo(f"created {'admin' if admin else 'user'} {email} ({user_id})")


@users.command("promote")
@clear_errors
def users_promote(email: str) -> None:
    """Make an existing user an admin (public.profiles.role)."""
    from whatsched.auth.models import AuthFailure

    settings = get_settings()

    async def local() -> None:
        provider, pool = await _local_provider()
        try:
            await provider.set_role(email, "admin")
        except AuthFailure as exc:
            raise ConfigError(exc.message) from None
        finally:
            await pool.close()

    async def supabase() -> None:
        async with _supabase_admin(settings) as client:
            found = await _supabase_find_user(client, email)
        if found is None:
            raise ConfigError(f"No user with email {email}.")
        await _set_profile_role(settings, found[0], email, "admin")

    asyncio.run(supabase() if _in_supabase_auth(settings) else local())
    typer.echo(f"{email} is now an admin")


contacts = typer.Typer(help="Manage contacts.", no_args_is_help=True)
app.add_typer(contacts, name="contacts")


@contacts.command("import")
@clear_errors
def contacts_import(
    file: Path = typer.Argument(..., exists=True, dir_okay=False, readable=True, help="CSV, TXT, XLSX, XLS or ODS."),
    user: str = typer.Option(..., "--user", help="Email of the user who will own the contacts."),
    group: list[str] = typer.Option([], "--group", help="Group id or name to add every contact to (repeatable)."),
    on_duplicate: str = typer.Option("skip", "--on-duplicate", help="A phone already in the contacts: skip or update."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Report what would happen; write nothing."),
    country: str | None = typer.Option(None, "--country", help="Country of national numbers (default: the profile's)."),
    sheet: str | None = typer.Option(None, "--sheet", help="Workbook sheet to read (default: the first)."),
    mapping: str | None = typer.Option(None, "--mapping", help='Columns as JSON, e.g. \'{"phone": "Celular"}\'.'),
    as_json: bool = typer.Option(False, "--json", help="Print the answer as JSON."),
) -> None:
    """Import contacts from a file for a user, all or nothing (the same import as POST /api/contacts/import)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from whatsched.db.setup import resolve_app_url
    from whatsched.imports import command
    from whatsched.imports.refusal import ImportRefused

    settings = get_settings()
    on_supabase = _in_supabase_auth(settings)
    bar = Progress(
        TextColumn("{task.description:<15}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), transient=True
    )
    task = bar.add_task("reading", total=None)

    def show(stage: str, processed: int, total: int) -> None:
        bar.update(task, description=stage, completed=processed, total=total or None)

    async def find_in_supabase(email: str) -> tuple[str, str] | None:
        async with _supabase_admin(settings) as client:
            return await _supabase_find_user(client, email)

    async def run(data: bytes) -> Any:
        return await command.run(
            settings,
            await resolve_app_url(settings),
            data,
            file.name,
            user,
            groups=group,
            on_duplicate=on_duplicate,
            dry_run=dry_run,
            country=country,
            sheet=sheet,
            mapping=mapping,
            listener=show,
            find_user=find_in_supabase if on_supabase else None,
        )

    try:
        data = command.read_file(file, settings.import_max_bytes)
        with bar:
            result = asyncio.run(run(data))
    except ImportRefused as refused:
        raise ConfigError(f"{refused.detail} ({refused.code})") from None
    typer.echo(command.as_json(result) if as_json else command.summary(result, file.name, user))


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(app())

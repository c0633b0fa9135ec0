"""The `whatsched` command line."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import typer

from whatsched.config import get_settings
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


@app.command()
@clear_errors
def api() -> None:
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
        ws_ping_interval=20,
        ws_ping_timeout=20,
        # Events are ~200 B of JSON: permessage-deflate saves little and holds ~50 KB of zlib state per socket.
        ws_per_message_deflate=False,
    )


@app.command()
@clear_errors
def worker() -> None:
    """Send due messages through the WhatsApp bridge until SIGTERM or Ctrl-C."""
    from whatsched.dispatcher.worker import main as run_worker

    raise typer.Exit(run_worker(get_settings()))


users = typer.Typer(help="Manage users of the local auth provider.", no_args_is_help=True)
app.add_typer(users, name="users")


async def _local_provider() -> tuple[Any, Any]:
    from whatsched.auth.keys import local_signing_key
    from whatsched.auth.local import LocalProvider
    from whatsched.db import pool as db_pool
    from whatsched.db.setup import resolve_app_url

    settings = get_settings()
    if settings.effective_auth_provider != "local":
        raise ConfigError(
            "users are managed in Supabase Auth when AUTH_PROVIDER=supabase (use the Supabase dashboard)."
        )
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
    """Create a user (email + password) in auth.users."""
    from whatsched.auth.models import AuthFailure

    if len(password) < 8:
        raise ConfigError("the password must have at least 8 characters.")

    async def run() -> str:
        provider, pool = await _local_provider()
        try:
            user = await provider.create_user(email, password, admin=admin, name=name)
        except AuthFailure as exc:
            raise ConfigError(exc.message) from None
        finally:
            await pool.close()
        return str(user.id)

    user_id = asyncio.run(run())
    typer.echo(f"created {'admin' if admin else 'user'} {email} ({user_id})")


@users.command("promote")
@clear_errors
def users_promote(email: str) -> None:
    """Make an existing user an admin."""
    from whatsched.auth.models import AuthFailure

    async def run() -> None:
        provider, pool = await _local_provider()
        try:
            await provider.set_role(email, "admin")
        except AuthFailure as exc:
            raise ConfigError(exc.message) from None
        finally:
            await pool.close()

    asyncio.run(run())
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
    bar = Progress(
        TextColumn("{task.description:<15}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), transient=True
    )
    task = bar.add_task("reading", total=None)

    def show(stage: str, processed: int, total: int) -> None:
        bar.update(task, description=stage, completed=processed, total=total or None)

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

"""Running the service: ``serve``, ``worker``, ``config`` and ``db upgrade|downgrade``."""

from __future__ import annotations

import json
import sys
from enum import StrEnum
from typing import Annotated, Any
from urllib.parse import urlsplit, urlunsplit

import typer

from service.cli.output import (
    EXIT_USAGE,
    console,
    error,
    escape,
    line_err_console,
    redact,
    user_errors,
)

SECRET_WORDS = ("token", "secret", "password", "key")
MASK = "***"


@user_errors
def serve(
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 8000,
    migrate: Annotated[bool, typer.Option(help="Upgrade the schema first")] = True,
) -> None:
    """Run the REST API. Without CAMDRIFT_BROKER_URL jobs run on a thread in this process."""
    import uvicorn

    from service.app import create_app
    from worker.store import get_settings

    settings = get_settings()
    if migrate:
        from service.migrate import upgrade

        upgrade(settings)
    api = create_app(settings)
    if not settings.broker_url:
        from service.dispatch import embedded_runner

        resumed = embedded_runner(settings).resume_unfinished()
        console.print(f"embedded runner started (resumed {resumed} unfinished jobs)")
    console.print(f"camdrift API on {listen_url(host, port)} (API docs at /docs); Ctrl+C stops")
    uvicorn.run(api, host=host, port=port, log_level="warning")


def listen_url(host: str, port: int) -> str:
    """The address ``serve`` listens on, as a browser takes it (IPv6 in brackets)."""
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"http://{shown}:{port}"


def run_worker(
    concurrency: Annotated[int, typer.Option(help="Tasks at once (1 per GPU)")] = 1,
    queues: Annotated[str, typer.Option()] = "camdrift",
) -> None:
    """Run a Celery worker for drift jobs (needs CAMDRIFT_BROKER_URL)."""
    from worker.store import get_settings

    if not get_settings().broker_url:
        error(
            "CAMDRIFT_BROKER_URL is not set: a worker takes its jobs from a broker (e.g. "
            "redis://localhost:6379/0); without one, `camdrift serve` runs jobs itself",
            line_err_console,
        )
        raise typer.Exit(EXIT_USAGE)
    try:
        from worker.runtime.tasks import app as celery_app
    except ValueError as exc:  # a broker URL Celery cannot use
        error(f"CAMDRIFT_BROKER_URL: {exc}", line_err_console)
        raise typer.Exit(EXIT_USAGE) from None

    celery_app.worker_main(
        [
            "worker",
            "--pool",
            "solo" if concurrency == 1 else "prefork",
            f"--concurrency={concurrency}",
            "-Q",
            queues,
            "--loglevel=INFO",
        ]
    )


def fleet(
    queues: Annotated[str, typer.Option()] = "camdrift",
    max_restarts: Annotated[
        int, typer.Option(help="Restarts of one worker within 5 minutes before giving up on it")
    ] = 5,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the plan (one worker per GPU) and exit")
    ] = False,
) -> None:
    """One Celery worker per visible GPU, each pinned to its device; restarts a worker that
    dies, stops all on SIGTERM (the compose worker's command)."""
    from worker.runtime.fleet import Fleet, plan, visible_devices
    from worker.store import get_settings

    members = plan(visible_devices(), queues=queues)
    for m in members:
        console.print(f"{m.name}: device {m.device or 'cpu'} ({' '.join(m.argv[1:4])} ...)")
    if dry_run:
        return
    if not get_settings().broker_url:
        error(
            "CAMDRIFT_BROKER_URL is not set: workers take their jobs from a broker",
            line_err_console,
        )
        raise typer.Exit(EXIT_USAGE)
    if max_restarts < 0:
        error("--max-restarts must be >= 0", line_err_console)
        raise typer.Exit(EXIT_USAGE)
    raise typer.Exit(Fleet(members, max_restarts=max_restarts).run())


# --------------------------------------------------------------------------- config


class ConfigFormat(StrEnum):
    TABLE = "table"
    ENV = "env"
    JSON = "json"


def config(
    fmt: Annotated[
        ConfigFormat,
        typer.Option(
            "--format",
            help="table (for a terminal), env (KEY=value lines, as the environment takes "
            "them) or json",
        ),
    ] = ConfigFormat.TABLE,
) -> None:
    """Print the effective settings (CAMDRIFT_* environment and defaults), secrets masked."""
    from pydantic import ValidationError

    from worker.store import Settings

    prefix = str(Settings.model_config.get("env_prefix") or "")
    try:
        settings = Settings()
    except ValidationError as exc:
        error(_invalid_environment(exc, prefix), line_err_console)
        raise typer.Exit(EXIT_USAGE) from None
    dumped = settings.model_dump(mode="json")
    values = {name: _masked(name, value) for name, value in dumped.items()}
    if fmt is ConfigFormat.JSON:
        json.dump(values, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    elif fmt is ConfigFormat.ENV:
        for name, value in values.items():
            sys.stdout.write(f"{(prefix + name).upper()}={_env_text(value)}\n")
    else:
        from rich.table import Table

        table = Table(title="camdrift settings (secrets masked)")
        table.add_column("variable")
        table.add_column("value")
        for name, value in values.items():
            table.add_row((prefix + name).upper(), escape(_env_text(value)) or "[dim](unset)[/]")
        console.print(table)


def _invalid_environment(exc: Any, prefix: str) -> str:
    """``CAMDRIFT_SHARD_SIZE='abc': input should be a valid integer`` for each bad value."""
    problems = []
    for item in exc.errors():
        name = (prefix + str(item["loc"][0])).upper() if item["loc"] else f"{prefix}*"
        value = item.get("input")
        shown = "" if _is_secret(name) or isinstance(value, dict) else f"={value!r}"
        message = str(item["msg"])
        problems.append(f"{name}{shown}: {message[:1].lower()}{message[1:]}")
    return "invalid environment: " + "; ".join(problems)


def _is_secret(name: str) -> bool:
    return any(word in name.lower() for word in SECRET_WORDS)


def _masked(name: str, value: Any) -> Any:
    """Secrets as ``***`` (lists item by item), passwords in URLs hidden."""
    if _is_secret(name):
        if isinstance(value, list | tuple):
            return [MASK for _ in value]
        return None if value in (None, "") else MASK
    if isinstance(value, str) and "://" in value:
        return _hide_password(value)
    return value


def _hide_password(url: str) -> str:
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        host = parts.hostname or ""
        if parts.port is not None:
            host = f"{host}:{parts.port}"
        user = parts.username or ""
        return urlunsplit(parts._replace(netloc=f"{user}:{MASK}@{host}"))
    except ValueError:
        return url


def _env_text(value: Any) -> str:
    """A value as the environment takes it: lists comma-separated, None empty."""
    if value is None:
        return ""
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# --------------------------------------------------------------------------- db

db_app = typer.Typer(help="Database schema (Alembic migrations).", no_args_is_help=True)


@db_app.command("upgrade")
@user_errors
def db_upgrade(revision: Annotated[str, typer.Argument()] = "head") -> None:
    """Migrate the database at CAMDRIFT_DATABASE_URL up to ``revision``."""
    from service.migrate import upgrade
    from worker.store import get_settings

    settings = get_settings()
    upgrade(settings, revision)
    console.print(f"database at {redact(settings.database_url)} is at {revision}")


@db_app.command("downgrade")
@user_errors
def db_downgrade(revision: Annotated[str, typer.Argument()] = "base") -> None:
    """Migrate the database down to ``revision`` (``base`` drops every table)."""
    from service.migrate import downgrade
    from worker.store import get_settings

    downgrade(get_settings(), revision)
    console.print(f"database is at {revision}")

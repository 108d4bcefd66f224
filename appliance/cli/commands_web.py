"""`appliance web` (gunicorn + the Flask app factory) and `appliance tokens create|list|revoke`."""

from __future__ import annotations

import json
import os
from typing import Any

import click

from appliance.cli import cli, get_settings
from appliance.errors import InvalidRequest
from appliance.settings import Settings
from appliance.tokens import SCOPES


def _gunicorn_app(settings: Settings, options: dict[str, Any]) -> Any:
    from gunicorn.app.base import BaseApplication

    class WebApplication(BaseApplication):  # type: ignore[misc]
        """Gunicorn with our app object: settings are passed in, not re-read from argv."""

        def load_config(self) -> None:
            for key, value in options.items():
                self.cfg.set(key, value)

        def load(self) -> Any:
            # Runs in each worker after the fork, so Redis/DB connections are per worker.
            from web import create_app

            return create_app(settings)

    return WebApplication()


@cli.command()
@click.option("--bind", default="127.0.0.1:8000", show_default=True, help="HOST:PORT to listen on.")
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=None,
    help="Gunicorn worker processes (default: CPU cores, at most 4).",
)
@click.option("--threads", type=click.IntRange(1, 256), default=16, show_default=True)
@click.pass_context
def web(ctx: click.Context, bind: str, workers: int | None, threads: int) -> None:
    """Serve the REST API, the OpenAI-compatible API and the panel with gunicorn."""
    settings = get_settings(ctx)
    options = {
        "bind": [bind],
        "workers": workers or min(4, os.cpu_count() or 1),
        # Threads: SSE streams and /v1/chat/completions wait on the queue for a long time;
        # with sync workers each would hold a whole process.
        "worker_class": "gthread",
        "threads": threads,
        "timeout": 60,
        "graceful_timeout": 30,
        "keepalive": 5,
        # Gunicorn's own request-line/header caps (Flask caps the body).
        "limit_request_line": 8190,
        "limit_request_fields": 100,
        "limit_request_field_size": 8190,
        "accesslog": "-",
        "proc_name": "appliance-web",
    }
    _gunicorn_app(settings, options).run()


@cli.group()
def tokens() -> None:
    """API tokens (Bearer) for the REST and OpenAI-compatible APIs."""


def _store(ctx: click.Context) -> Any:
    from appliance.tokens import TokenStore

    return TokenStore.from_settings(get_settings(ctx))


@tokens.command("create")
@click.argument("name")
@click.option("--scope", type=click.Choice(SCOPES), default="read", show_default=True)
@click.pass_context
def tokens_create(ctx: click.Context, name: str, scope: str) -> None:
    """Create a token; the secret is printed once and only its hash is kept."""
    try:
        info, secret = _store(ctx).create(name, scope)
    except InvalidRequest as exc:
        raise click.UsageError(str(exc)) from None
    click.echo(secret)
    click.echo(f"token {info.name!r} ({info.scope}) created; it will not be shown again", err=True)


@tokens.command("list")
@click.option("--all", "include_revoked", is_flag=True, help="Include revoked tokens.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def tokens_list(ctx: click.Context, include_revoked: bool, as_json: bool) -> None:
    """List tokens (names, scopes, prefixes; never the secrets)."""
    rows = _store(ctx).list(include_revoked=include_revoked)
    if as_json:
        for info in rows:
            click.echo(
                json.dumps({k: str(v) if v is not None else None for k, v in vars(info).items()})
            )
        return
    for info in rows:
        used = info.last_used_at.isoformat(timespec="seconds") if info.last_used_at else "never"
        state = " revoked" if info.revoked_at else ""
        click.echo(f"{info.prefix}…  {info.scope:<6}  {info.name}  (last used {used}){state}")


@tokens.command("revoke")
@click.argument("name_or_prefix")
@click.pass_context
def tokens_revoke(ctx: click.Context, name_or_prefix: str) -> None:
    """Revoke by name or by the prefix shown in `tokens list`."""
    count = _store(ctx).revoke(name_or_prefix.rstrip("…"))
    if not count:
        raise click.ClickException(f"no active token named or prefixed {name_or_prefix!r}")
    click.echo(f"revoked {count} token(s)")

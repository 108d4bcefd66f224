"""`appliance tokens create|list|revoke`: the API's Bearer tokens."""

from __future__ import annotations

import json
from typing import Any

import click

from appliance.errors import InvalidRequest
from appliance.tokens import SCOPES
from cli.group import cli, get_settings


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

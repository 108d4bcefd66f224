"""`appliance users ...`: the local accounts of the browser panel."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from appliance.errors import ApplianceError
from cli.group import cli, get_settings

if TYPE_CHECKING:
    from appliance.users import UserStore


def _store(ctx: click.Context) -> UserStore:
    # Imported here, not at the top: every `appliance` command would pay for SQLAlchemy.
    from appliance.users import UserStore

    return UserStore.from_settings(get_settings(ctx))


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        # One line, so `echo pw | appliance users create x --password-stdin` and Ansible's
        # `stdin:` both work; the trailing newline is not part of the password.
        return sys.stdin.readline().rstrip("\r\n")
    return click.prompt("Password", hide_input=True, confirmation_prompt=True)


@cli.group()
def users() -> None:
    """Panel users (local accounts)."""


@users.command("create")
@click.argument("name")
@click.option("--admin", is_flag=True, help="May see every user's jobs and the system page.")
@click.option("--password-stdin", is_flag=True, help="Read the password from stdin.")
@click.pass_context
def create(ctx: click.Context, name: str, admin: bool, password_stdin: bool) -> None:
    """Create user NAME."""
    try:
        user = _store(ctx).create(name, _read_password(password_stdin), admin=admin)
    except ApplianceError as err:
        raise click.ClickException(str(err)) from err
    click.echo(f"created {'admin' if user.is_admin else 'user'} {user.name}")


@users.command("list")
@click.pass_context
def list_(ctx: click.Context) -> None:
    """List users."""
    for user in _store(ctx).list():
        role = "admin" if user.is_admin else "user"
        click.echo(f"{user.name}\t{role}\t{user.created_at:%Y-%m-%d %H:%M}")


@users.command("passwd")
@click.argument("name")
@click.option("--password-stdin", is_flag=True, help="Read the password from stdin.")
@click.pass_context
def passwd(ctx: click.Context, name: str, password_stdin: bool) -> None:
    """Set the password of NAME (their open sessions end)."""
    try:
        _store(ctx).set_password(name, _read_password(password_stdin))
    except ApplianceError as err:
        raise click.ClickException(str(err)) from err
    click.echo(f"password of {name} changed")


@users.command("set-admin")
@click.argument("name")
@click.option("--no", "revoke", is_flag=True, help="Take admin rights away instead.")
@click.pass_context
def set_admin(ctx: click.Context, name: str, revoke: bool) -> None:
    """Make NAME an admin (or, with --no, a plain user)."""
    try:
        _store(ctx).set_admin(name, not revoke)
    except ApplianceError as err:
        raise click.ClickException(str(err)) from err
    click.echo(f"{name} is {'a user' if revoke else 'an admin'} now")


@users.command("delete")
@click.argument("name")
@click.pass_context
def delete(ctx: click.Context, name: str) -> None:
    """Delete user NAME (their jobs stay)."""
    try:
        _store(ctx).delete(name)
    except ApplianceError as err:
        raise click.ClickException(str(err)) from err
    click.echo(f"deleted {name}")

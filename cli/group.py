"""The root `appliance` command group and the settings it loads; command modules attach to it."""

from __future__ import annotations

import click

from appliance.settings import Settings, load_settings


@click.group()
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    default=None,
    help="TOML settings file (default: $APPLIANCE_CONFIG_FILE or /etc/appliance/appliance.toml).",
)
@click.pass_context
def cli(ctx: click.Context, config_file: str | None) -> None:
    """On-prem vision appliance."""
    ctx.obj = load_settings(config_file)


def get_settings(ctx: click.Context) -> Settings:
    return ctx.find_root().obj


def refuse_unsafe_redis(settings: Settings) -> None:
    """One line and exit 78 (EX_CONFIG) for a Redis on the network without credentials."""
    from appliance.redis_conn import RedisUnsafe, require_credentials

    try:
        require_credentials(settings)
    except RedisUnsafe as exc:
        click.echo(f"appliance: {exc}", err=True)
        raise SystemExit(78) from None

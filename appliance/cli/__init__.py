"""`appliance` command line. Each area registers its commands from its own module."""

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


def main() -> None:
    cli()


# Command modules attach themselves to `cli` on import.
from appliance.cli import commands_models  # noqa: E402,F401
from appliance.cli import commands_analyze  # noqa: E402,F401
from appliance.cli import commands_up  # noqa: E402,F401
from appliance.cli import commands_web  # noqa: E402,F401
from appliance.cli import commands_users  # noqa: E402,F401
from appliance.cli import commands_watch  # noqa: E402,F401
from appliance.cli import commands_jobs  # noqa: E402,F401
from appliance.cli import commands_bundle  # noqa: E402,F401

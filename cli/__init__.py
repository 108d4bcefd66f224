"""`appliance` command line: the outermost edge. It may import the core (`appliance`), the web
app (`web`) and the Celery shell (`workers`); nothing imports it.

Each module attaches the commands of what it manages to the root group (`cli.group`).
"""

from __future__ import annotations

from cli import analyze, bundle, jobs, models, serve, tokens, up, users, watch, worker
from cli.group import cli

__all__ = ["cli", "main"]
_COMMAND_MODULES = (analyze, bundle, jobs, models, serve, tokens, up, users, watch, worker)


def main() -> None:
    cli()

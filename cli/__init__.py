"""`appliance` command line: the outermost edge. It may import the core (`appliance`), the web
app (`web`) and the Celery shell (`workers`); nothing imports it.

Each module attaches the commands of what it manages to the root group (`cli.group`).
"""

from __future__ import annotations

from appliance.quiet import silence_known_noise

# Before any library is imported: some known-harmless messages are logged at import time.
silence_known_noise()

# Each command module attaches its commands to the root group when it is imported.
from cli import (  # noqa: E402,F401
    analyze,
    bundle,
    jobs,
    models,
    search,
    serve,
    tokens,
    up,
    users,
    watch,
    webhooks,
    worker,
)
from cli.group import cli  # noqa: E402

__all__ = ["cli", "main"]


def main() -> None:
    cli()

"""`appliance watch [--once]`: the drop-folder service (see `appliance.watch`)."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path

import click

from cli.group import cli, get_settings


@cli.command()
@click.option("--once", is_flag=True, help="Take the files there now, finish them, exit.")
@click.option(
    "--folder",
    "paths",
    multiple=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Watch only the configured folder(s) with this path.",
)
@click.option("-v", "--verbose", is_flag=True)
@click.pass_context
def watch(ctx: click.Context, once: bool, paths: tuple[Path, ...], verbose: bool) -> None:
    """Watch the configured drop folders and write results beside the files."""
    from appliance.watch import Watcher

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    settings = get_settings(ctx)
    folders = settings.folders
    if paths:
        wanted = {p.resolve() for p in paths}
        folders = [f for f in folders if Path(f.path).resolve() in wanted]
    if not folders:
        raise click.UsageError("no drop folders configured (settings: [[folders]] path = ...)")
    stop = threading.Event()
    # SIGTERM (systemd stop) and Ctrl-C end the loop between ticks: claims stay consistent.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    watcher = Watcher.from_settings(settings.model_copy(update={"folders": folders}))
    for f in folders:
        mode = "polling" if f.polling else "inotify"
        click.echo(f"watching {f.path} ({mode}, settle {f.settle_seconds}s)", err=True)
    watcher.run(stop, once=once)

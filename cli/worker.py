"""`appliance worker`: one Celery worker per GPU (or one on the CPU), supervised."""

from __future__ import annotations

import os
import sys

import click

from appliance.queue import QUEUE_ORDER
from appliance.schema import split_csv
from cli.group import cli, get_settings, refuse_unsafe_redis


@cli.command()
@click.option("--devices", default=None, help="GPU indexes, e.g. 0,1 (default: all detected).")
@click.option(
    "--queues",
    default=",".join(QUEUE_ORDER),
    show_default=True,
    help="Queues to consume, in priority order.",
)
@click.option(
    "--simulate-gpus",
    is_flag=True,
    help="Testing: run the --devices workers on the CPU (also APPLIANCE_QUEUE__SIMULATE_GPUS=1).",
)
@click.option(
    "--name",
    default=None,
    help="Worker name for the hostname NAME@host (one device only; default gpuN, cpu, or "
    "text for a text-only CPU worker).",
)
@click.option("--include", multiple=True, hidden=True, help="Extra module for the workers.")
@click.option("--loglevel", default="INFO", show_default=True)
@click.option("--stop-timeout", type=float, default=60.0, show_default=True)
@click.option(
    "--exec",
    "exec_",
    is_flag=True,
    help="Become the single worker (for a systemd unit per GPU) instead of supervising.",
)
@click.pass_context
def worker(
    ctx: click.Context,
    devices: str | None,
    queues: str,
    simulate_gpus: bool,
    name: str | None,
    include: tuple[str, ...],
    loglevel: str,
    stop_timeout: float,
    exec_: bool,
) -> None:
    """Run one queue worker per GPU (or one CPU worker), restarting any that dies."""
    from workers.gpus import parse_devices, plan_workers
    from workers.supervisor import Supervisor, celery_command

    settings = get_settings(ctx)
    refuse_unsafe_redis(settings)
    simulate = simulate_gpus or settings.queue.simulate_gpus
    try:
        wanted = parse_devices(devices) if devices else None
        specs = plan_workers(
            wanted,
            simulate=simulate,
            queues=tuple(split_csv((queues,))),
            name=name,
            cpu_threads=settings.cpu_threads,
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    if settings.config_file is not None:
        os.environ.setdefault("APPLIANCE_CONFIG_FILE", str(settings.config_file))
    for spec in specs:
        click.echo(f"worker {spec.hostname}: {spec.device}", err=True)
    if exec_:
        if len(specs) != 1:
            raise click.UsageError("--exec runs exactly one worker: name one device")
        os.environ.update(specs[0].env)
        cmd = celery_command(specs[0], loglevel, list(include))
        os.execv(cmd[0], cmd)
    import logging

    logging.basicConfig(level=logging.INFO, format="[%(asctime)s: %(levelname)s] %(message)s")
    status = Supervisor(
        specs, loglevel=loglevel, include=list(include), stop_timeout=stop_timeout
    ).run()
    sys.exit(status)


# -- submit ---------------------------------------------------------------------------------

"""`appliance bundle build|verify`: the offline bundle for boxes without internet."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from cli.group import cli


@cli.group()
def bundle() -> None:
    """Offline install bundle: wheels, Debian packages, models, playbook."""


@bundle.command("build")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--gpu", is_flag=True, help="CUDA builds (gpu extra) instead of the CPU ones.")
@click.option(
    "--models",
    "models",
    multiple=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="A models root (folders with manifest.json) or one model folder; repeatable.",
)
@click.option("--tiny-models", is_flag=True, help="Add tiny random-weight models (tests, demos).")
@click.option(
    "--cache",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path.home() / ".cache" / "appliance-bundle",
    show_default=True,
    envvar="APPLIANCE_BUNDLE_CACHE",
    help="Downloads kept between builds.",
)
@click.option(
    "--project",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="This project's source tree (default: the one this command runs from).",
)
@click.option(
    "--python-version", default="3.11.2", show_default=True, help="The target's Python (full)."
)
@click.option("--platform", "platform_", default="manylinux_2_36_x86_64", show_default=True)
@click.option("--no-debs", is_flag=True, help="Leave out the Debian packages.")
@click.option("--pip-arg", "pip_args", multiple=True, help="Extra argument for pip download.")
def build_cmd(
    out: Path,
    gpu: bool,
    models: tuple[Path, ...],
    tiny_models: bool,
    cache: Path,
    project: Path | None,
    python_version: str,
    platform_: str,
    no_debs: bool,
    pip_args: tuple[str, ...],
) -> None:
    """Gather everything a box without internet needs into OUT."""
    from appliance.build.bundle import DEB_PACKAGES, BuildOptions, BundleError, build

    started = time.monotonic()
    opts = BuildOptions(
        out=out,
        gpu=gpu,
        models=list(models),
        tiny_models=tiny_models,
        cache=cache,
        project=project,
        python_version=python_version,
        platform=platform_,
        debs=() if no_debs else DEB_PACKAGES,
        pip_args=list(pip_args),
        log=lambda msg: click.echo(msg, err=True),
    )
    try:
        manifest = build(opts)
    except BundleError as err:
        raise click.ClickException(str(err)) from None
    size = manifest["size_bytes"] / 1e6
    click.echo(
        f"bundle {out}: {manifest['variant']}, {manifest['wheels']} wheels, "
        f"{len(manifest['debs'])} debs, {len(manifest['models'])} models, {size:.0f} MB, "
        f"{time.monotonic() - started:.1f} s"
    )


@bundle.command("verify")
@click.argument("out", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True)
def verify_cmd(out: Path, as_json: bool) -> None:
    """Check every file of the bundle in OUT against bundle.json."""
    from appliance.build.bundle import BundleError, verify_bundle

    try:
        problems = verify_bundle(out)
    except BundleError as err:
        raise click.ClickException(str(err)) from None
    if as_json:
        click.echo(json.dumps({"ok": not problems, "problems": problems}))
    for line in problems:
        click.echo(f"FAIL {line}", err=True)
    if problems:
        raise SystemExit(1)
    if not as_json:
        click.echo(f"ok   {out}")

"""`appliance models ...`: list, verify, build tiny test models, export a summarizer to ONNX."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from appliance.errors import ApplianceError
from appliance.registry import ModelRegistry, verify
from cli.group import cli, get_settings

EXIT_ERROR = 2


def _one_line_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Report our errors as one line on stderr with exit code 2, never a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ApplianceError as err:
            click.echo(f"error: {err}", err=True)
            raise SystemExit(EXIT_ERROR) from None

    return wrapper


def _registry(ctx: click.Context, models_dir: str | None) -> ModelRegistry:
    return ModelRegistry(Path(models_dir) if models_dir else get_settings(ctx).models_dir)


_models_dir_option = click.option(
    "--models-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Models root (default: the models_dir setting).",
)


@cli.group("models")
def models() -> None:
    """Installed models: list, verify, build tiny ones, export to ONNX."""


@models.command("list")
@_models_dir_option
@click.pass_context
@_one_line_errors
def list_models(ctx: click.Context, models_dir: str | None) -> None:
    """List the installed models with their role and size."""
    infos = _registry(ctx, models_dir).list()
    if not infos:
        click.echo("no models installed")
        return
    for info in infos:
        size_mb = info.size_bytes / 1e6
        click.echo(f"{info.name}\t{info.role}\t{info.architecture}\t{size_mb:.1f} MB\t{info.path}")


@models.command("verify")
@click.argument("name", required=False, default="")
@_models_dir_option
@click.option("--progress/--no-progress", default=True, help="Show a progress bar.")
@click.pass_context
@_one_line_errors
def verify_models(ctx: click.Context, name: str, models_dir: str | None, progress: bool) -> None:
    """Check every file of NAME (default: all models) against its manifest checksums."""
    registry = _registry(ctx, models_dir)
    infos = [registry.get(name)] if name else registry.list()
    if not infos:
        click.echo(f"error: no models installed in {registry.root}", err=True)
        raise SystemExit(EXIT_ERROR)
    bad = 0
    for info in infos:
        problems = verify(info, progress=progress)
        if problems:
            bad += 1
            for line in problems:
                click.echo(f"FAIL {line}", err=True)
        else:
            click.echo(f"ok   {info.name} ({len(info.files)} files)")
    if bad:
        click.echo(f"error: {bad} of {len(infos)} models failed verification", err=True)
        raise SystemExit(1)


@models.command("make-tiny")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--seed", type=int, default=0, show_default=True)
@_one_line_errors
def make_tiny_cmd(directory: str, seed: int) -> None:
    """Build tiny random models (for tests and CPU demos) into DIRECTORY."""
    from appliance.build.tiny import make_tiny

    for path in make_tiny(Path(directory), seed=seed):
        click.echo(str(path))


@models.command("export-onnx")
@click.argument("src", type=click.Path(file_okay=False, exists=True))
@click.argument("dst", type=click.Path(file_okay=False))
@_one_line_errors
def export_onnx_cmd(src: str, dst: str) -> None:
    """Export the summarizer in SRC to ONNX (with KV cache) into DST (e.g. SRC/onnx)."""
    from appliance.build.onnx_export import export_onnx

    click.echo(str(export_onnx(Path(src), Path(dst))))

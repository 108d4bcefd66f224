"""`appliance analyze FILE...`: the pipeline in-process, no Redis; one line per bad file."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from tqdm import tqdm

from appliance.errors import ApplianceError, IntakeError, ModelError, SafetyBlocked
from appliance.safety import mode_for
from appliance.schema import AnalysisResult, TaskRequest
from appliance.vocab import BLOCKED, SAFETY_MODES
from cli.group import cli, get_settings
from cli.options import task_request_options


@cli.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@task_request_options("Add a follow-up summary per file.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per file on stdout.")
@click.option(
    "--safety",
    type=click.Choice(SAFETY_MODES),
    default=None,
    help="Safety stage (Llama Guard 3): off, flag (record verdicts) or block. "
    "Default: the settings' safety.cli.",
)
@click.pass_context
def analyze(
    ctx: click.Context,
    files: tuple[Path, ...],
    request: TaskRequest,
    as_json: bool,
    safety: str | None,
) -> None:
    """Analyze image, TIFF and PDF files in-process and print the results."""
    from transformers.utils import logging as hf_logging

    from appliance.pipeline import Pipeline  # heavy import (torch): only when needed

    # The CLI promises one line per problem on stderr; library chatter would drown it.
    hf_logging.set_verbosity_error()

    settings = get_settings(ctx)
    request.safety = safety or mode_for(settings, "cli")
    pipeline = Pipeline(settings)
    failures = 0
    loaded: list[tuple[Path, list]] = []
    for path in files:
        try:
            loaded.append((path, pipeline.load(path.read_bytes())))
        except (IntakeError, OSError) as exc:
            failures += 1
            click.echo(f"error: {path}: {_reason(exc)}", err=True)

    total_pages = sum(len(pages) for _, pages in loaded)
    try:
        with tqdm(total=total_pages, unit="page", disable=None, file=sys.stderr) as bar:
            for path, pages in loaded:
                try:
                    result = pipeline.analyze_checked([(pages, request)])[0]
                    if isinstance(result, SafetyBlocked):
                        raise result
                except ModelError:
                    raise
                except ApplianceError as exc:
                    failures += 1
                    click.echo(f"error: {path}: {exc}", err=True)
                    if as_json and isinstance(exc, SafetyBlocked):
                        _print_blocked(path, exc)
                    bar.update(len(pages))
                    continue
                bar.update(len(pages))
                _print(path, result, as_json)
    except ModelError as exc:  # a model problem stops the run: nothing else can succeed
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    if failures:
        sys.exit(1)


def _reason(exc: Exception) -> str:
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc)


def _print(path: Path, result: AnalysisResult, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps({"file": str(path), **result.model_dump()}, ensure_ascii=False))
        return
    many = len(result.pages) > 1
    for page in result.pages:
        label = f"{path} [page {page.page}/{len(result.pages)}]" if many else str(path)
        click.echo(f"{label}: {_indent(page.text)}")
    if result.summary is not None:
        click.echo(f"{path} [summary]: {_indent(result.summary)}")
    for check in result.safety:
        codes = ",".join(check["categories"])
        click.echo(f"{path} [safety {check['stage']}]: {check['verdict']} {codes}".rstrip())


def _print_blocked(path: Path, blocked: SafetyBlocked) -> None:
    line = {"file": str(path), "state": BLOCKED, "error": str(blocked), "safety": blocked.checks}
    click.echo(json.dumps(line, ensure_ascii=False))


def _indent(text: str) -> str:
    # Continuation lines are indented so every unindented line starts with the file it is about.
    return text.strip().replace("\n", "\n    ")

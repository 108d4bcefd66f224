"""`appliance analyze FILE...`: the pipeline in-process, no Redis; one line per bad file."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from pydantic import ValidationError
from tqdm import tqdm

from appliance.cli import cli, get_settings
from appliance.errors import ApplianceError, IntakeError, InvalidRequest, ModelError
from appliance.schema import TASKS, AnalysisResult, TaskRequest


def _split(values: tuple[str, ...]) -> list[str]:
    return [v.strip() for value in values for v in value.split(",") if v.strip()]


def build_request(**options: object) -> TaskRequest:
    """A TaskRequest from CLI options, turning validation errors into one readable line."""
    try:
        return TaskRequest(**options)
    except ValidationError as exc:
        reasons = "; ".join(str(e.get("ctx", {}).get("error") or e["msg"]) for e in exc.errors())
        raise click.UsageError(reasons) from None
    except InvalidRequest as exc:
        raise click.UsageError(str(exc)) from None


@cli.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--task", type=click.Choice(TASKS), default="caption", show_default=True)
@click.option("--prompt", default=None, help="The question (task 'question') or an extra hint.")
@click.option("--labels", multiple=True, help="Labels for 'classify' (comma-separated).")
@click.option("--fields", multiple=True, help="Field names for 'extract' (comma-separated).")
@click.option("--language", default="en", show_default=True)
@click.option("--summarize", is_flag=True, help="Add a follow-up summary per file.")
@click.option("--max-new-tokens", type=int, default=None)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per file on stdout.")
@click.pass_context
def analyze(
    ctx: click.Context,
    files: tuple[Path, ...],
    task: str,
    prompt: str | None,
    labels: tuple[str, ...],
    fields: tuple[str, ...],
    language: str,
    summarize: bool,
    max_new_tokens: int | None,
    as_json: bool,
) -> None:
    """Analyze image, TIFF and PDF files in-process and print the results."""
    from transformers.utils import logging as hf_logging

    from appliance.pipeline import Pipeline  # heavy import (torch): only when needed

    # The CLI promises one line per problem on stderr; library chatter would drown it.
    hf_logging.set_verbosity_error()

    request = build_request(
        task=task,
        prompt=prompt,
        labels=_split(labels),
        fields=_split(fields),
        language=language,
        summarize=summarize,
        max_new_tokens=max_new_tokens,
    )
    pipeline = Pipeline(get_settings(ctx))
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
                    result = pipeline.analyze_pages(pages, request)
                except ModelError:
                    raise
                except ApplianceError as exc:
                    failures += 1
                    click.echo(f"error: {path}: {exc}", err=True)
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


def _indent(text: str) -> str:
    # Continuation lines are indented so every unindented line starts with the file it is about.
    return text.strip().replace("\n", "\n    ")

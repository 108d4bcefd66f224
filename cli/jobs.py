"""`appliance worker`, `appliance submit FILE... [--wait]`, `appliance jobs list|show|...`.

`submit` goes through the job queue (Redis + workers), not HTTP; `analyze` is the in-process
path without a queue.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import click
from tqdm import tqdm

from appliance.errors import ApplianceError
from appliance.safety import mode_for
from appliance.schema import AnalysisResult, TaskRequest
from appliance.vocab import BULK, INTERACTIVE, RUNNING, STATES, SUCCEEDED
from cli.group import cli, get_settings
from cli.options import task_request_options

if TYPE_CHECKING:
    from appliance.jobs import JobInfo, JobService


def _service(ctx: click.Context) -> JobService:
    from appliance.jobs import JobService

    return JobService.from_settings(get_settings(ctx))


# -- worker ---------------------------------------------------------------------------------


@cli.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@task_request_options("A summary per file and a digest of them all.")
@click.option("--priority", type=click.Choice([INTERACTIVE, BULK]), default=BULK, show_default=True)
@click.option("--wait", is_flag=True, help="Wait for the results and print them.")
@click.option("--timeout", type=float, default=None, help="With --wait: give up after seconds.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per job on stdout.")
@click.pass_context
def submit(
    ctx: click.Context,
    files: tuple[Path, ...],
    request: TaskRequest,
    priority: str,
    wait: bool,
    timeout: float | None,
    as_json: bool,
) -> None:
    """Queue files for the workers; print the job ids (or, with --wait, the results)."""
    service = _service(ctx)
    request.safety = mode_for(service.settings, "cli")
    batch = None
    if len(files) > 1:
        batch = service.open_batch(
            source="cli", label="appliance submit", language=request.language
        )
    jobs = []
    unreadable = 0
    for path in files:
        try:
            data = path.read_bytes()
        except OSError as exc:
            unreadable += 1
            click.echo(f"error: {path}: {exc.strerror or exc}", err=True)
            continue
        job = service.submit(
            data,
            path.name,
            request,
            source="cli",
            priority=priority,  # type: ignore[arg-type]
            batch_id=batch.id if batch else None,
        )
        jobs.append((path, job))
        if not wait:
            click.echo(json.dumps(job.to_dict()) if as_json else f"{job.id}\t{path}")
    if batch is not None:
        service.close_batch(batch.id)
    if not wait:
        sys.exit(1 if unreadable else 0)
    ids = [job.id for _, job in jobs]
    final = _wait_with_progress(service, ids, timeout)
    failures = unreadable
    for (path, _), job in zip(jobs, final, strict=True):
        if as_json:
            click.echo(json.dumps({"file": str(path), **job.to_dict()}, ensure_ascii=False))
        elif job.state == SUCCEEDED:
            _print_result(path, job)
        else:
            click.echo(f"error: {path}: {job.state}: {job.error or ''}".rstrip(": "), err=True)
        failures += job.state != SUCCEEDED
    if batch is not None and request.summarize and not as_json:
        info = _wait_for(
            lambda: service.get_batch(batch.id), lambda b: b.digest_state != "pending", timeout
        )
        if info is not None and info.digest:
            click.echo(f"[digest]: {info.digest}")
    sys.exit(1 if failures else 0)


T = TypeVar("T")


def _wait_with_progress(
    service: JobService, ids: list[str], timeout: float | None
) -> list[JobInfo]:
    deadline = None if timeout is None else time.monotonic() + timeout
    with tqdm(total=len(ids), unit="job", disable=None, file=sys.stderr) as bar:
        while True:
            jobs = [service.get(i) for i in ids]
            done = sum(j.done for j in jobs)
            bar.update(done - bar.n)
            running = sum(j.state == RUNNING for j in jobs)
            bar.set_postfix(running=running, refresh=False)
            if done == len(ids):
                break
            if deadline is not None and time.monotonic() > deadline:
                click.echo("error: timed out waiting; jobs keep running", err=True)
                sys.exit(3)
            time.sleep(0.2)
    # Summaries are chained after the job itself; wait for them too, briefly.
    return [
        _wait_for(lambda i=j.id: service.get(i), lambda j: j.summary_state != "pending", timeout)
        for j in jobs
    ]


def _wait_for(fetch: Callable[[], T], ready: Callable[[T], bool], timeout: float | None) -> T:
    deadline = time.monotonic() + (timeout if timeout is not None else 300)
    value = fetch()
    while not ready(value) and time.monotonic() < deadline:
        time.sleep(0.2)
        value = fetch()
    return value


def _print_result(path: Path, job: JobInfo) -> None:
    result = AnalysisResult.model_validate(job.result)
    many = len(result.pages) > 1
    for page in result.pages:
        label = f"{path} [page {page.page}/{len(result.pages)}]" if many else str(path)
        click.echo(f"{label}: {page.text}")
    if job.summary:
        click.echo(f"{path} [summary]: {job.summary}")


# -- jobs -----------------------------------------------------------------------------------


@cli.group()
def jobs() -> None:
    """Inspect and control queued jobs."""


@jobs.command("list")
@click.option("--state", type=click.Choice(STATES), multiple=True)
@click.option("--source", type=click.Choice(["panel", "api", "folder", "cli"]), default=None)
@click.option("--batch", "batch_id", default=None)
@click.option("--owner", default=None)
@click.option("--limit", type=int, default=20, show_default=True)
@click.option("--cursor", default=None, help="Continue after a previous page.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def jobs_list(
    ctx: click.Context,
    state: tuple[str, ...],
    source: str | None,
    batch_id: str | None,
    owner: str | None,
    limit: int,
    cursor: str | None,
    as_json: bool,
) -> None:
    """Jobs, newest first."""
    page = _service(ctx).list(
        state=list(state) or None,
        source=source,
        batch_id=batch_id,
        owner=owner,
        limit=limit,
        cursor=cursor,
    )
    for job in page.items:
        if as_json:
            click.echo(json.dumps(job.to_dict(), ensure_ascii=False))
        else:
            click.echo(
                f"{job.id}  {job.state:<9}  {job.source:<6}  {job.task:<8}  "
                f"{job.attempts}  {job.worker or '-':<20}  {job.filename}"
            )
    if page.next_cursor:
        click.echo(f"more: --cursor {page.next_cursor}", err=True)


@jobs.command("show")
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def jobs_show(ctx: click.Context, job_id: str, as_json: bool) -> None:
    """One job in full, with its history."""
    service = _service(ctx)
    job = service.get(job_id)
    if job is None:
        raise click.ClickException(f"no job {job_id}")
    data = job.to_dict()
    data["history"] = service.history(job_id)
    if as_json:
        click.echo(json.dumps(data, ensure_ascii=False, indent=2))
        return
    for key in ("id", "state", "filename", "source", "priority", "owner", "batch_id", "task",
                "attempts", "worker", "device", "pages", "error", "created_at", "started_at",
                "finished_at"):  # fmt: skip
        if data.get(key) is not None:
            click.echo(f"{key}: {data[key]}")
    if job.result_text is not None:
        click.echo(f"result: {job.result_text}")
    if job.summary is not None:
        click.echo(f"summary: {job.summary}")
    if job.timings:
        click.echo("timings: " + ", ".join(f"{k}={_num(v)}" for k, v in job.timings.items()))
    for event in data["history"]:
        extra = f"  {event['detail']}" if event.get("detail") else ""
        click.echo(
            f"  {event['at']}  {event['event']:<10} #{event['attempt']} {event['worker'] or ''}{extra}"
        )


def _num(value: object) -> str:
    return f"{value:.1f}" if isinstance(value, float) else str(value)


@jobs.command("retry")
@click.argument("job_ids", nargs=-1, required=True)
@click.pass_context
def jobs_retry(ctx: click.Context, job_ids: tuple[str, ...]) -> None:
    """Queue failed or cancelled jobs again."""
    _each(ctx, job_ids, "retry")


@jobs.command("cancel")
@click.argument("job_ids", nargs=-1, required=True)
@click.pass_context
def jobs_cancel(ctx: click.Context, job_ids: tuple[str, ...]) -> None:
    """Cancel queued or running jobs."""
    _each(ctx, job_ids, "cancel")


def _each(ctx: click.Context, job_ids: tuple[str, ...], action: str) -> None:
    service = _service(ctx)
    failures = 0
    for job_id in job_ids:
        try:
            job = getattr(service, action)(job_id)
        except ApplianceError as exc:
            failures += 1
            click.echo(f"error: {exc}", err=True)
            continue
        click.echo(f"{job.id}\t{job.state}")
    if failures:
        sys.exit(1)


@jobs.command("workers")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def jobs_workers(ctx: click.Context, as_json: bool) -> None:
    """Workers with their device, model and state; and the queue depth."""
    service = _service(ctx)
    for w in service.workers():
        if as_json:
            click.echo(json.dumps(w.to_dict()))
        else:
            click.echo(
                f"{w.hostname:<24} {w.state:<8} {w.jobs_done:>6} done  {w.device}  {w.model or ''}"
            )
    if not as_json:
        depth = service.queue_depth()
        click.echo("queued: " + ", ".join(f"{k}={v}" for k, v in depth.items()))


@jobs.command("purge")
@click.pass_context
def jobs_purge(ctx: click.Context) -> None:
    """Delete input files of jobs ended more than queue.retention_days ago."""
    from appliance.runtime.recovery import Reconciler

    settings = get_settings(ctx)
    if not settings.queue.retention_days:
        raise click.ClickException("queue.retention_days is not set: nothing is ever purged")
    click.echo(f"purged {Reconciler(_service(ctx).backend).purge()} files")

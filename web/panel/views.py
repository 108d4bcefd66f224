"""The panel's HTML pages: upload & queue, one result, one batch, history & search, system."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flask import abort, render_template, request
from markupsafe import Markup, escape

from appliance.errors import InvalidRequest
from appliance.intake import ACCEPT, ACCEPTED_TEXT
from appliance.schema import LANGUAGES, TASKS, AnalysisResult
from appliance.vocab import FAILED, SOURCES, STATES, SUCCEEDED
from web.panel import bp, queries, render, stats
from web.panel.actions import panel_job
from web.panel.auth import current_user
from web.panel.handles import jobs_service, settings

if TYPE_CHECKING:
    from appliance.jobs import JobInfo

PRESETS = [
    ("caption", "Caption (one sentence)"),
    ("describe", "Describe (alt text)"),
    ("question", "Ask a question"),
    ("ocr", "Read the text (OCR)"),
    ("table", "Table to Markdown"),
    ("classify", "Classify with labels"),
    ("extract", "Extract fields (JSON)"),
]
assert [p[0] for p in PRESETS] == list(TASKS)  # a new task must get a label here too


@bp.app_template_filter("when")
def _when(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC") if value else ""


@bp.route("/")
def index() -> str:
    limits = settings().limits
    return render_template(
        "panel/index.html",
        presets=PRESETS,
        languages=LANGUAGES,
        max_mb=limits.max_bytes // (1024 * 1024),
        max_pages=limits.max_pages,
        # What the file picker offers and the hint names: the types intake accepts (MIME types
        # and extensions), from the one list in `appliance.intake.filetypes`.
        accept=ACCEPT,
        accepted_types=ACCEPTED_TEXT,
    )


def _job_or_404(job_id: str) -> JobInfo:
    job = queries.visible_job(current_user(), job_id)
    if job is None:
        # Also for another user's job: 404, so job ids of others are not even confirmed.
        abort(404, "There is no such job, or it is not yours.")
    return job


def _result(job: Any) -> AnalysisResult | None:
    if job.state != SUCCEEDED or not job.result:
        return None
    return AnalysisResult.model_validate(job.result)


def _batch(job: Any) -> dict[str, Any] | None:
    if not job.batch_id:
        return None
    jobs = queries.batch_jobs(current_user(), job.batch_id)
    info = None
    get_batch = getattr(jobs_service(), "get_batch", None)
    if get_batch is not None:
        info = get_batch(job.batch_id)
    return {
        "id": job.batch_id,
        "jobs": jobs,
        "digest": getattr(info, "digest", None),
        "digest_state": getattr(info, "digest_state", None),
        "digest_error": getattr(info, "digest_error", None),
        "done": bool(getattr(info, "done", False)),
    }


@bp.route("/jobs/<job_id>")
def job(job_id: str) -> str:
    row = _job_or_404(job_id)
    result = _result(row)
    params = row.request.model_dump(mode="json")
    page_count = len(result.pages) if result else (row.pages or 1)
    return render_template(
        "panel/job.html",
        job=row,
        view=panel_job(row, jobs_service().lane_positions()),
        params=params,
        result=result,
        page_count=page_count,
        has_image=row.request.has_image,  # a text-only chat's input is no image to show
        batch=_batch(row),
        render=render,
    )


@bp.route("/batches/<batch_id>")
def batch(batch_id: str) -> str:
    jobs = queries.batch_jobs(current_user(), batch_id)
    if not jobs:
        abort(404, "There is no such batch, or it is not yours.")
    info = _batch(jobs[0])
    return render_template("panel/batch.html", batch=info, jobs=jobs, render=render)


def _date(value: str | None) -> date | None:
    try:
        return date.fromisoformat(value) if value else None
    except ValueError:
        return None


def snippet(text: str | None, width: int = 160) -> Markup:
    """The start of `text` for a listing row, escaped."""
    text = " ".join((text or "").split())
    return Markup(escape(text[:width]) + ("…" if len(text) > width else ""))


@bp.route("/history")
def history() -> str | tuple[str, int]:
    args = request.args
    hq = queries.HistoryQuery(
        q=args.get("q", "").strip()[:200],
        state=args.get("state", "") if args.get("state") in STATES else "",
        task=args.get("task", "") if args.get("task") in TASKS else "",
        source=args.get("source", "") if args.get("source") in SOURCES else "",
        owner=args.get("owner", "").strip()[:64],
        date_from=_date(args.get("from")),
        date_to=_date(args.get("to")),
        cursor=args.get("cursor", "")[:200],
    )
    rows, marked, error, next_cursor = [], {}, None, None
    if hq.q:  # the full-text search, ranked; snippets escaped by `Snippet.html`
        try:
            found = queries.search(current_user(), hq)
            rows = [hit.job for hit in found.items]
            marked = {hit.job.id: Markup(hit.snippet.html()) for hit in found.items}
            next_cursor = found.next_cursor
        except InvalidRequest as exc:
            error = str(exc)
    else:
        page = queries.history(current_user(), hq)
        rows, next_cursor = page.items, page.next_cursor
    more_args = {k: v for k, v in args.items() if k != "cursor" and v}
    html = render_template(
        "panel/history.html",
        hq=hq,
        rows=rows,
        marked=marked,
        error=error,
        next_cursor=next_cursor,
        more_args=more_args,
        states=STATES,
        tasks=PRESETS,
        sources=SOURCES,
        snippet=snippet,
    )
    return (html, 400) if error else html


def _plain(obj: Any) -> dict[str, Any]:
    if isinstance(obj, dict):
        return obj
    if hasattr(obj, "model_dump"):
        return obj.model_dump()
    if hasattr(obj, "__dataclass_fields__"):
        from dataclasses import asdict

        return asdict(obj)
    return {k: v for k, v in vars(obj).items() if not k.startswith("_")}


def _folders() -> list[dict[str, Any]]:
    """Configured drop folders and their newest finished files (from done/ and failed/)."""
    out = []
    for folder in settings().folders:
        root = Path(folder.path)
        recent: list[tuple[float, str, str]] = []
        for kind, sub in (("done", folder.done_dir), (FAILED, folder.failed_dir)):
            where = Path(sub) if Path(sub).is_absolute() else root / sub
            try:
                for entry in where.iterdir():
                    if entry.is_file() and not entry.name.startswith("."):
                        recent.append((entry.stat().st_mtime, entry.name, kind))
            except OSError:
                continue
        recent.sort(reverse=True)
        out.append(
            {
                "path": str(root),
                "task": folder.task,
                "exists": root.is_dir(),
                "recent": [
                    {"when": datetime.fromtimestamp(m, UTC), "name": n, "kind": k}
                    for m, n, k in recent[:5]
                ],
            }
        )
    return out


@bp.route("/system")
def system() -> str:
    service = jobs_service()
    try:
        workers = [_plain(w) for w in service.workers()]
        depth = service.queue_depth()
        error = None
    except Exception as exc:  # the page should still show what it can when Redis is down
        workers, depth, error = [], {}, f"queue unavailable: {exc}"
    if not isinstance(depth, dict):
        depth = {"all": depth}
    buckets = stats.load(service)
    total = sum(b.jobs for b in buckets)
    latencies = [b.mean_latency * b.jobs for b in buckets if b.mean_latency is not None]
    return render_template(
        "panel/system.html",
        workers=workers,
        depth=depth,
        error=error,
        chart=stats.chart(buckets),
        total=total,
        mean_latency=(sum(latencies) / total) if total else None,
        failed=sum(b.failed for b in buckets),
        folders=_folders(),
        now=datetime.now(UTC),
    )

"""Page previews of an uploaded file, and result downloads (txt, json, csv for extract)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

from flask import Response, abort

from appliance import intake
from appliance.errors import ApplianceError
from web.panel import bp, render
from web.panel.handles import jobs_service, settings
from web.panel.views import _job_or_404, _result

_PREVIEW_SIDE = 900
# Rendering every page of a PDF for each <img> would cost N renders per page view: keep the
# last few files' previews in memory (a 50-page file at 900 px is ~5 MB of JPEG).
_CACHE_FILES = 8
_cache: OrderedDict[str, list[bytes]] = OrderedDict()
_cache_lock = threading.Lock()


def _read_input(job: Any) -> bytes:
    return jobs_service().input_file(str(job.id))


def _previews(job: Any) -> list[bytes]:
    key = str(job.id)
    with _cache_lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    try:
        data = _read_input(job)
        pages = intake.load_pages(data, settings().limits)
    except (OSError, ApplianceError):
        abort(404, "The file of this job is no longer available.")
    previews = [intake.thumbnail([page], _PREVIEW_SIDE) for page in pages]
    with _cache_lock:
        _cache[key] = previews
        while len(_cache) > _CACHE_FILES:
            _cache.popitem(last=False)
    return previews


@bp.route("/jobs/<job_id>/pages/<int:page>.jpg")
def page_image(job_id: str, page: int) -> Response:
    job = _job_or_404(job_id)
    previews = _previews(job)
    if not 1 <= page <= len(previews):
        abort(404, f"The file has {len(previews)} page(s).")
    resp = Response(previews[page - 1], mimetype="image/jpeg")
    # Private: the image is one user's upload; shared caches must not keep it.
    resp.headers["Cache-Control"] = "private, max-age=3600"
    return resp


def _download(body: str, mimetype: str, filename: str) -> Response:
    resp = Response(body, mimetype=mimetype)
    resp.headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    resp.headers["X-Content-Type-Options"] = "nosniff"
    return resp


@bp.route("/jobs/<job_id>/download.<fmt>")
def download(job_id: str, fmt: str) -> Response:
    job = _job_or_404(job_id)
    result = _result(job)
    if result is None:
        abort(409, f"The job has no result ({job.state}).")
    # Attachment names come from the job id, never the client's filename (header injection).
    name = f"{job.id}.{fmt}"
    if fmt == "txt":
        text = result.text + (f"\n\nSummary:\n{result.summary}" if result.summary else "")
        return _download(text + "\n", "text/plain; charset=utf-8", name)
    if fmt == "json":
        body = {
            "job": {
                "id": str(job.id),
                "filename": job.filename,
                "task": job.task,
                "request": job.request.model_dump(mode="json"),
                "owner": job.owner,
                "created_at": job.created_at.isoformat() if job.created_at else None,
                "finished_at": job.finished_at.isoformat() if job.finished_at else None,
            },
            "result": result.model_dump(mode="json"),
        }
        return _download(render.pretty_json(body), "application/json", name)
    if fmt == "csv" and result.task == "extract":
        fields = list(job.request.fields)
        pages = [p.model_dump(mode="json") for p in result.pages]
        return _download(render.extract_csv(pages, fields), "text/csv; charset=utf-8", name)
    abort(404, "Unknown download format.")

"""The panel's fetch/XHR endpoints: upload one file, the live queue (snapshot + SSE), cancel,
retry. JSON in and out; the session and CSRF checks ran in `auth._load_user`."""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from flask import Response, abort, jsonify, request, stream_with_context, url_for

from appliance.errors import (
    ApplianceError,
    InvalidRequest,
    JobStateConflict,
)
from appliance.safety import mode_for
from appliance.schema import request_from_fields
from appliance.vocab import (
    ACTIVE,
    FAILED,
    INTERACTIVE,
    QUEUED,
    RETRYABLE,
    RUNNING,
    TERMINAL,
)
from web import sse
from web.panel import bp, queries
from web.panel.auth import current_user
from web.panel.handles import jobs_service, settings
from web.problems import Problem
from web.uploads import checked_upload

if TYPE_CHECKING:
    from appliance.jobs import JobInfo

log = logging.getLogger(__name__)
_TICK_SECONDS = 1.0
_END = object()
# Short: a write is how a thread notices its browser left, and gunicorn's graceful stop waits
# for every open stream to end.
_KEEPALIVE_SECONDS = 5.0
# What the upload form may set (no token limits or sampling: those are the API's).
_FORM_FIELDS = ("task", "prompt", "labels", "fields", "summarize", "language")


def _scoped_id(kind: str, client_value: str) -> str | None:
    """A client-chosen batch id or idempotency key, namespaced by user.

    The browser makes up the value (one per drop); hashing it with the user name means one
    user can never join or replay another user's batch or upload, whatever they send.
    """
    client_value = (client_value or "").strip()
    if not client_value:
        return None
    if len(client_value) > 64 or not client_value.isalnum():
        raise InvalidRequest(f"bad {kind} id")
    digest = hashlib.sha256(f"panel:{kind}:{current_user().name}:{client_value}".encode())
    return str(uuid.UUID(bytes=digest.digest()[:16]))


def _reject(status: int, detail: str) -> Response:
    resp = jsonify({"status": status, "detail": detail})
    resp.status_code = status
    return resp


@bp.route("/upload", methods=["POST"])
def upload() -> Response:
    """One file per request, so every file gets its own progress bar and its own verdict."""
    storage = request.files.get("file")
    if storage is None:
        return _reject(422, "no file in the request")
    try:
        task = request_from_fields({k: request.form.get(k) for k in _FORM_FIELDS})
        task.safety = mode_for(settings(), "panel")
        data, name, checked = checked_upload(storage, settings().limits, status=422)
        batch_id = _scoped_id("batch", request.form.get("batch", ""))
        key = _scoped_id("upload", request.form.get("key", ""))
    except ApplianceError as exc:
        return _reject(422, str(exc))
    except Problem as exc:  # the file: too large, or refused by the pre-check
        return _reject(exc.status, exc.detail)
    service = jobs_service()
    owner = current_user().name
    # Files dropped together get one batch and one digest; the browser closes it after the
    # last file (close_batch below), so every request of the drop names the same id.
    done = service.submit_many(
        [(data, name)],
        task,
        source="panel",
        owner=owner,
        priority=INTERACTIVE,
        idempotency_key=key,
        batch_id=batch_id,
        label=f"panel upload by {owner}",
        digest=True,
    )
    body = panel_job(done.jobs[0], service.lane_positions())
    body["pages"] = checked.pages
    return jsonify({"job": body}), 201  # type: ignore[return-value]


@bp.route("/batches/close", methods=["POST"])
def close_batch() -> Response:
    """The browser says every file of a drop has been sent: the digest may be made."""
    try:
        batch_id = _scoped_id("batch", request.form.get("batch", ""))
    except InvalidRequest as exc:
        return _reject(422, str(exc))
    info = jobs_service().get_batch(batch_id) if batch_id else None
    if info is None or info.owner != current_user().name:
        abort(404, "no such batch")
    if info.closed_at is None:
        jobs_service().close_batch(batch_id)
    return jsonify({"batch": batch_id, "url": url_for("panel.batch", batch_id=batch_id)})


def _iso(value: Any) -> str | None:
    return value.isoformat() if isinstance(value, datetime) else None


def panel_job(
    job: JobInfo, positions: dict[str, int], now: datetime | None = None
) -> dict[str, Any]:
    """A job as the queue table shows it (elapsed is computed here: the browser's clock may be
    minutes off the box's)."""
    now = now or datetime.now(UTC)
    state = job.state
    created, started, finished = job.created_at, job.started_at, job.finished_at
    if state in TERMINAL and finished and created:
        elapsed = (finished - created).total_seconds()
    elif state == RUNNING and started:
        elapsed = (now - started).total_seconds()
    elif created:
        elapsed = (now - created).total_seconds()
    else:
        elapsed = None
    job_id = str(job.id)
    worker, device = job.worker, job.device
    return {
        "id": job_id,
        "filename": job.filename,
        "task": job.task,
        "state": state,
        "owner": job.owner,
        "position": positions.get(job_id) if state == QUEUED else None,
        "lane": job.priority,
        "worker": f"{worker} ({device})" if worker and device else worker,
        "error": job.error if state == FAILED else None,
        "elapsed": elapsed,
        "created_at": _iso(created),
        "url": url_for("panel.job", job_id=job_id),
        "cancel_url": url_for("panel.cancel", job_id=job_id),
        "retry_url": url_for("panel.retry", job_id=job_id),
        "can_cancel": state in ACTIVE,
        "can_retry": state in RETRYABLE,
    }


def _queue(user: Any) -> list[dict[str, Any]]:
    positions = jobs_service().lane_positions()
    return [panel_job(j, positions) for j in queries.queue_jobs(user)]


@bp.route("/queue.json")
def queue_snapshot() -> Response:
    return jsonify({"jobs": _queue(current_user())})


def _stream(user: Any, seconds: float) -> Iterator[str]:
    """SSE: one `snapshot`, then a `job` event for every job whose row changed.

    Job events from the service wake the loop at once; it also re-reads every second, so a lost
    pub/sub message or a queue position that moved (someone else's job started) still shows.
    The store is the truth; the event feed is only the doorbell.
    """
    deadline = time.monotonic() + seconds
    yield sse.RETRY
    last: dict[str, str] = {}
    current = _queue(user)
    for job in current:
        last[job["id"]] = _fingerprint(job)
    yield sse.message({"jobs": current}, event="snapshot", compact=False)
    feed = _feed(user, seconds)
    quiet_since = time.monotonic()
    try:
        while time.monotonic() < deadline:
            if next(feed, _END) is _END:
                return
            changed = []
            for job in _queue(user):
                fp = _fingerprint(job)
                if last.get(job["id"]) != fp:
                    last[job["id"]] = fp
                    changed.append(job)
            for job in changed:
                yield sse.message(job, event="job", compact=False)
            if changed:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since > _KEEPALIVE_SECONDS:
                quiet_since = time.monotonic()
                yield sse.KEEPALIVE
    finally:
        close = getattr(feed, "close", None)
        if close:
            close()


def _fingerprint(job: dict[str, Any]) -> str:
    # Elapsed ticks in the browser; only real changes are sent.
    return json.dumps({k: v for k, v in job.items() if k != "elapsed"}, sort_keys=True)


def _feed(user: Any, seconds: float) -> Iterator[Any]:
    """Yields on each job event, or after `_TICK_SECONDS` without one."""
    try:
        yield from jobs_service().events(
            owner=None if user.is_admin else user.name, poll_s=_TICK_SECONDS, max_s=seconds
        )
    except Exception:  # the event log unreadable: fall back to plain polling of the store
        log.warning("job events unavailable; polling", exc_info=True)
        while True:
            time.sleep(_TICK_SECONDS)
            yield None


@bp.route("/events")
def events() -> Response:
    seconds = settings().panel.events_max_seconds
    # The stream outlives the view: keep the request (url_for, current_app) around for it.
    return sse.response(stream_with_context(_stream(current_user(), seconds)))


def _own_or_404(job_id: str) -> JobInfo:
    job = queries.visible_job(current_user(), job_id)
    if job is None:
        abort(404, "no such job")
    return job


@bp.route("/jobs/<job_id>/cancel", methods=["POST"])
def cancel(job_id: str) -> Response:
    _own_or_404(job_id)
    try:
        job = jobs_service().cancel(job_id)
    except JobStateConflict as exc:  # it already ended
        return _reject(409, str(exc))
    return jsonify({"job": panel_job(job, {})})


@bp.route("/jobs/<job_id>/retry", methods=["POST"])
def retry(job_id: str) -> Response:
    _own_or_404(job_id)
    try:
        job = jobs_service().retry(job_id)
    except JobStateConflict as exc:  # only failed or cancelled jobs run again
        return _reject(409, str(exc))
    return jsonify({"job": panel_job(job, jobs_service().lane_positions())})

"""/api/v1/jobs: submit files, list, show, cancel, retry, results and images."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import marshmallow as ma
from flask import Response, g, request
from flask.views import MethodView
from flask_smorest.fields import Upload
from werkzeug.datastructures import FileStorage

from appliance import intake
from appliance.safety import mode_for
from appliance.safety.verdicts import summary as safety_summary
from appliance.schema import LANGUAGES, MAX_PROMPT_CHARS, TASKS, request_from_fields
from appliance.vocab import BLOCKED, INTERACTIVE, PRIORITIES, SOURCES, STATES, SUCCEEDED
from web.api import Blueprint, jobview, results
from web.problems import Problem
from web.services import services
from web.uploads import checked_upload

if TYPE_CHECKING:
    from appliance.jobs import JobService

blp = Blueprint("jobs", __name__, url_prefix="/api/v1/jobs", description="Jobs: one per file")

_BATCH_ID = re.compile(r"^[A-Za-z0-9._-]{1,36}$")
_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,200}$")


class SubmitSchema(ma.Schema):
    class Meta:
        unknown = ma.EXCLUDE

    task = ma.fields.String(load_default="caption", validate=ma.validate.OneOf(TASKS))
    prompt = ma.fields.String(load_default=None, validate=ma.validate.Length(max=MAX_PROMPT_CHARS))
    labels = ma.fields.String(
        load_default="", metadata={"description": "comma-separated labels (classify)"}
    )
    fields = ma.fields.String(
        load_default="", metadata={"description": "comma-separated field names (extract)"}
    )
    summarize = ma.fields.Boolean(load_default=False)
    language = ma.fields.String(load_default="en", validate=ma.validate.OneOf(list(LANGUAGES)))
    priority = ma.fields.String(load_default=INTERACTIVE, validate=ma.validate.OneOf(PRIORITIES))
    batch = ma.fields.String(
        load_default=None,
        validate=ma.validate.Regexp(_BATCH_ID),
        metadata={"description": "batch id to group jobs under (default: a new one per request)"},
    )
    max_new_tokens = ma.fields.Integer(load_default=None, validate=ma.validate.Range(1, 4096))
    file = ma.fields.List(
        Upload(),
        required=True,
        validate=ma.validate.Length(min=1),
        metadata={"description": "one or more images or PDFs (repeat the part)"},
    )


class JobSchema(ma.Schema):
    id = ma.fields.String()
    state = ma.fields.String(metadata={"enum": list(STATES)})
    source = ma.fields.String()
    priority = ma.fields.String()
    owner = ma.fields.String(allow_none=True)
    batch_id = ma.fields.String(allow_none=True)
    filename = ma.fields.String()
    input_sha256 = ma.fields.String()
    size_bytes = ma.fields.Integer()
    pages = ma.fields.Integer(allow_none=True)
    request = ma.fields.Dict(
        metadata={"description": "task, prompt, labels, fields, language, ..."}
    )
    attempts = ma.fields.Integer()
    worker = ma.fields.String(allow_none=True)
    device = ma.fields.String(allow_none=True)
    summary_state = ma.fields.String(allow_none=True)
    summary = ma.fields.String(allow_none=True)
    summary_error = ma.fields.String(allow_none=True)
    timings = ma.fields.Dict(allow_none=True)
    error = ma.fields.String(allow_none=True, metadata={"description": "why it failed"})
    error_code = ma.fields.String(allow_none=True)
    created_at = ma.fields.String()
    updated_at = ma.fields.String()
    started_at = ma.fields.String(allow_none=True)
    finished_at = ma.fields.String(allow_none=True)
    input_purged = ma.fields.Boolean()
    safety = ma.fields.Dict(
        allow_none=True,
        metadata={
            "description": "the safety stage's verdict: stage, verdict (safe | unsafe | "
            "unparsable), categories, model, ms of the deciding check, and every check"
        },
    )


class SubmittedSchema(ma.Schema):
    batch_id = ma.fields.String(allow_none=True)
    jobs = ma.fields.List(ma.fields.Nested(JobSchema))


class JobListQuerySchema(ma.Schema):
    state = ma.fields.String(load_default=None, validate=ma.validate.OneOf(STATES))
    source = ma.fields.String(load_default=None, validate=ma.validate.OneOf(SOURCES))
    batch = ma.fields.String(load_default=None, validate=ma.validate.Regexp(_BATCH_ID))
    since = ma.fields.AwareDateTime(
        load_default=None, metadata={"description": "created at or after"}
    )
    until = ma.fields.AwareDateTime(load_default=None, metadata={"description": "created before"})
    limit = ma.fields.Integer(load_default=50, validate=ma.validate.Range(1, 500))
    cursor = ma.fields.String(load_default=None, validate=ma.validate.Length(max=200))


class JobListSchema(ma.Schema):
    items = ma.fields.List(ma.fields.Nested(JobSchema))
    next_cursor = ma.fields.String(allow_none=True)


class ResultQuerySchema(ma.Schema):
    format = ma.fields.String(
        load_default="json", validate=ma.validate.OneOf(list(results.FORMATS))
    )


class ImageQuerySchema(ma.Schema):
    variant = ma.fields.String(
        load_default="original", validate=ma.validate.OneOf(["original", "thumbnail"])
    )
    page = ma.fields.Integer(
        load_default=1,
        validate=ma.validate.Range(1, 10_000),
        metadata={"description": "PDF/TIFF page"},
    )
    size = ma.fields.Integer(load_default=256, validate=ma.validate.Range(16, 1024))


def _idempotency_key() -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not _IDEMPOTENCY_KEY.match(key):
        raise Problem(400, "Idempotency-Key must be 1-200 visible ASCII characters")
    # Scoped to the token, so two integrators choosing the same key never collide.
    return f"{g.principal.id}:{key}"


@blp.route("")
class Jobs(MethodView):
    @blp.arguments(SubmitSchema, location="multipart")
    @blp.response(201, SubmittedSchema)
    @blp.doc(parameters=[{"in": "header", "name": "Idempotency-Key", "schema": {"type": "string"}}])
    def post(self, form: dict[str, Any]) -> tuple[dict[str, Any], int]:
        """Submit one or many files (multipart field `file`, repeated); one job per file."""
        svc = services()
        uploads = form["file"]
        if not uploads or not all(isinstance(u, FileStorage) for u in uploads):
            raise Problem(422, "send one or more multipart *file* parts named 'file'")
        if len(uploads) > svc.settings.api.max_files:
            raise Problem(413, f"at most {svc.settings.api.max_files} files per request")
        task = request_from_fields(form)  # an InvalidRequest is a 422 problem
        task.safety = mode_for(svc.settings, "api", g.principal.name)
        key = _idempotency_key()
        jobview.check_queue_capacity(svc, len(uploads))
        # Read and check every file first: one bad file rejects the request before any job exists.
        payloads = []
        for storage in uploads:
            data, name, _ = checked_upload(storage, svc.settings.limits)
            payloads.append((data, name))
        # A batch named with `batch=` stays open (POST /batches/ID/close); one made for several
        # files is closed at once, and a retried request (same Idempotency-Key) names it again.
        done = svc.jobs.submit_many(
            payloads,
            task,
            source="api",
            owner=g.principal.name,
            priority=form["priority"],
            idempotency_key=key,
            batch_id=form["batch"],
        )
        return {"batch_id": done.batch_id, "jobs": [jobview.to_dict(j) for j in done.jobs]}, 201

    @blp.arguments(JobListQuerySchema, location="query")
    @blp.response(200, JobListSchema)
    def get(self, query: dict[str, Any]) -> dict[str, Any]:
        """List jobs, newest first, filtered; follow `next_cursor` for the next page."""
        page = services().jobs.list(
            state=query["state"],
            source=query["source"],
            batch_id=query["batch"],
            since=query["since"],
            until=query["until"],
            limit=query["limit"],
            cursor=query["cursor"],
        )
        return {"items": [jobview.to_dict(j) for j in page.items], "next_cursor": page.next_cursor}


@blp.route("/<job_id>")
class Job(MethodView):
    @blp.response(200, JobSchema)
    def get(self, job_id: str) -> dict[str, Any]:
        """One job."""
        return jobview.to_dict(jobview.get_or_404(services().jobs, job_id))


def _known(job_id: str) -> JobService:
    """The job service once the job is known to exist (else 404); what the service then
    refuses (cancel an ended job, retry a queued one) is a 409 problem (JobStateConflict)."""
    jobs = services().jobs
    jobview.get_or_404(jobs, job_id)
    return jobs


@blp.route("/<job_id>/cancel")
class Cancel(MethodView):
    @blp.response(200, JobSchema)
    def post(self, job_id: str) -> dict[str, Any]:
        """Cancel a queued or running job (409 if it already ended)."""
        return jobview.to_dict(_known(job_id).cancel(job_id))


@blp.route("/<job_id>/retry")
class Retry(MethodView):
    @blp.response(200, JobSchema)
    def post(self, job_id: str) -> dict[str, Any]:
        """Run a failed or cancelled job again (409 otherwise)."""
        return jobview.to_dict(_known(job_id).retry(job_id))


@blp.route("/<job_id>/result")
class Result(MethodView):
    @blp.arguments(ResultQuerySchema, location="query")
    @blp.response(200, description="The result as JSON, text, Markdown or CSV")
    def get(self, query: dict[str, Any], job_id: str) -> Response:
        """The result of a succeeded job (`?format=json|txt|md|csv`)."""
        jobs = services().jobs
        job = jobview.get_or_404(jobs, job_id)
        if job.state == BLOCKED:
            # Withheld by the safety stage: a client error about this content, not a retry.
            raise Problem(451, f"job {job_id} was blocked: {job.error}", state=BLOCKED,
                          safety=safety_summary(job.safety))  # fmt: skip
        reason = jobview.failure(job)
        if reason is not None:
            raise Problem(409, f"job {job_id} has no result: {reason}")
        if job.state != SUCCEEDED:
            raise Problem(409, f"job {job_id} is {job.state}; the result is not ready yet")
        result = jobview.result_of(job)
        if result is None:  # pragma: no cover - a succeeded job always has one
            raise Problem(500, f"job {job_id} succeeded but its result is missing")
        fmt = query["format"]
        body = results.render(result, fmt, jobview.to_dict(job))
        resp = Response(body, mimetype=results.FORMATS[fmt].split(";")[0])
        if fmt != "json":
            resp.headers["Content-Disposition"] = f'attachment; filename="{job_id}.{fmt}"'
        return resp


@blp.route("/<job_id>/image")
class Image(MethodView):
    @blp.arguments(ImageQuerySchema, location="query")
    @blp.response(200, description="The original file, or a JPEG preview of one page")
    def get(self, query: dict[str, Any], job_id: str) -> Response:
        """The uploaded file (`variant=original`) or a JPEG thumbnail of page `page`; a
        text-only chat's file is its conversation (JSON), with no thumbnail."""
        svc = services()
        job = jobview.get_or_404(svc.jobs, job_id)
        if job.input_purged:
            raise Problem(410, f"the file of job {job_id} was removed by the retention policy")
        data = svc.jobs.input_file(job_id)
        if not job.request.has_image:  # a text-only chat: its input file is the conversation
            if query["variant"] != "original":
                raise Problem(404, f"job {job_id} is a text-only chat: it has no image")
            return Response(data, mimetype="application/json")
        kind = intake.sniff(data)
        if query["variant"] == "original":
            resp = Response(data, mimetype=intake.MIME_TYPES[kind])
            # Never rendered inline as anything but what it is: no sniffing into HTML.
            resp.headers["X-Content-Type-Options"] = "nosniff"
            resp.headers["Content-Security-Policy"] = "sandbox"
            return resp
        page = query["page"]
        if page == 1:
            preview = intake.thumbnail(data, query["size"], limits=svc.settings.limits)
        else:
            pages = intake.load_pages(data, svc.settings.limits)
            if page > len(pages):
                raise Problem(404, f"{job.filename or 'the file'} has {len(pages)} page(s)")
            preview = intake.thumbnail([pages[page - 1]], query["size"])
        resp = Response(preview, mimetype="image/jpeg")
        resp.headers["Cache-Control"] = "private, max-age=3600"
        return resp

"""OpenAI Batches (`/v1/batches`) on the job queue: create, read, list, cancel.

A batch is a job batch (same id) whose jobs are its input lines, each queued as one bulk `chat`
job through `JobService.submit_chat`, as the live endpoint queues a chat. Life, as OpenAI
documents it: `validating` (its lines are read and queued, `expand`) -> `in_progress` ->
`finalizing` -> `completed`, written by the worker side once every job ended
(`appliance.openai.finish`); `cancelling` -> `cancelled`; `failed` when no line is usable.

`expand` is idempotent (each line's job has the idempotency key `batch:line`), so a web server
that died half-way through a file leaves a batch the reconciler finishes expanding.
"""

from __future__ import annotations

import secrets
from datetime import timedelta
from typing import Any

from appliance.errors import InvalidRequest, JobStateConflict, OpenAINotFound
from appliance.jobs import JobService
from appliance.openai.batch_input import (
    BATCH_CANCELLED,
    CANCELLED_MESSAGE,
    CHAT_ENDPOINT,
    InputLine,
    read_lines,
)
from appliance.openai.files import OpenAIFiles, epoch
from appliance.safety import mode_for
from appliance.store.base import utcnow
from appliance.store.openai_tables import OpenAIBatch
from appliance.vocab import (
    BULK,
    CANCELLING,
    FAILED,
    FILE_PURPOSE_BATCH,
    IN_PROGRESS,
    OPENAI_BATCH_ENDED,
    VALIDATING,
)

COMPLETION_WINDOW = "24h"
_WINDOW = timedelta(hours=24)
# Lines queued (and recorded) per step of `expand`; a cancel is noticed between steps.
_CHUNK = 100
_TIMES = (
    "created_at",
    "in_progress_at",
    "expires_at",
    "finalizing_at",
    "completed_at",
    "failed_at",
    "expired_at",
    "cancelling_at",
    "cancelled_at",
)


def new_batch_id() -> str:
    # Fits `batches.id` (36): the OpenAI batch and its job batch share it.
    return "batch_" + secrets.token_hex(12)


class OpenAIBatches:
    def __init__(self, jobs: JobService, files: OpenAIFiles) -> None:
        self.jobs = jobs
        self.files = files
        self.store = jobs.store
        self.settings = jobs.settings

    # -- reading ----------------------------------------------------------------------------

    def get(self, batch_id: str, owner: str | None) -> dict[str, Any]:
        """OpenAI's `batch` object; `owner=None` (an admin) sees every batch."""
        return self.to_object(self._visible(batch_id, owner))

    def page(
        self, owner: str | None, *, after: str | None = None, limit: int = 20
    ) -> tuple[list[dict[str, Any]], bool]:
        """Newest first; `after`: the last id of the previous page."""
        limit = max(1, min(int(limit), 100))
        rows, more = self.store.list_openai_batches(owner=owner, after=after, limit=limit)
        return [self.to_object(row) for row in rows], more

    def to_object(self, row: OpenAIBatch) -> dict[str, Any]:
        if row.status in OPENAI_BATCH_ENDED:
            completed, failed = row.completed, row.failed
        else:  # still running: counted from its jobs
            completed, failed = self.store.openai_batch_counts(row.id)
        errors = {"object": "list", "data": row.errors} if row.errors else None
        return {
            "id": row.id,
            "object": "batch",
            "endpoint": row.endpoint,
            "errors": errors,
            "input_file_id": row.input_file_id,
            "completion_window": row.completion_window,
            "status": row.status,
            "output_file_id": row.output_file_id,
            "error_file_id": row.error_file_id,
            **{name: epoch(getattr(row, name)) for name in _TIMES},
            "request_counts": dict(total=row.total, completed=completed, failed=failed),
            "metadata": row.meta,
        }

    def _visible(self, batch_id: str, owner: str | None) -> OpenAIBatch:
        row = self.store.get_openai_batch(batch_id)
        if row is None or (owner is not None and row.owner != owner):
            raise OpenAINotFound(f"no batch with id {batch_id!r}")
        return row

    # -- creating ---------------------------------------------------------------------------

    def create(
        self,
        *,
        owner: str | None,
        input_file_id: str,
        endpoint: str,
        completion_window: str = COMPLETION_WINDOW,
        metadata: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """Record the batch (`validating`), then queue its lines (`expand`): it is returned
        `in_progress`, or `failed` when no line is usable."""
        if endpoint != CHAT_ENDPOINT:
            raise InvalidRequest(f"endpoint must be {CHAT_ENDPOINT} (the only one served here)")
        if completion_window != COMPLETION_WINDOW:
            raise InvalidRequest(f"completion_window must be {COMPLETION_WINDOW!r}")
        _check_metadata(metadata)
        source = self.files.get(input_file_id, owner)
        if source.purpose != FILE_PURPOSE_BATCH:
            raise InvalidRequest(f"file {input_file_id!r} was not uploaded for purpose 'batch'")
        now = utcnow()
        row = OpenAIBatch(
            id=new_batch_id(),
            owner=owner,
            status=VALIDATING,
            endpoint=endpoint,
            completion_window=completion_window,
            input_file_id=input_file_id,
            meta=metadata,
            total=0,
            completed=0,
            failed=0,
            created_at=now,
            expires_at=now + _WINDOW,
        )
        self.store.create_openai_batch(row, label=f"OpenAI batch of {source.filename}"[:512])
        self.expand(row.id)
        return self.get(row.id, None)

    def expand(self, batch_id: str) -> None:
        """Queue every usable line as one bulk job and record what each line became, then
        move `validating` -> `in_progress` (or `failed`) and close the job batch. Safe to run
        again (a resumed batch, even one already `in_progress`), and twice at once."""
        row = self.store.get_openai_batch(batch_id)
        if row is None or row.status not in (VALIDATING, IN_PROGRESS, CANCELLING):
            return
        try:
            data = self.files.content(row.input_file_id, None)
        except OpenAINotFound as exc:
            self._fail(batch_id, [{"code": "missing_file", "message": str(exc), "line": None}], 0)
            return
        lines = list(
            read_lines(data, endpoint=row.endpoint, max_bytes=self.settings.limits.max_bytes)
        )
        limit = self.settings.api.max_batch_requests
        if len(lines) > limit:
            error = {"code": "batch_too_large", "message": f"more than {limit} requests"}
            self._fail(batch_id, [{**error, "line": None}], len(lines))
            return
        if not any(line.call for line in lines):
            errors = [_line_error(line) for line in lines[:1000]]
            if not errors:
                errors = [{"code": "empty_file", "message": "no requests", "line": None}]
            self._fail(batch_id, errors, len(lines))
            return
        for start in range(0, len(lines), _CHUNK):
            chunk = lines[start : start + _CHUNK]
            # Cancelled meanwhile: queue no more; the rest are reported as cancelled.
            go = self._status(batch_id) in (VALIDATING, IN_PROGRESS)
            records = [self._queue(row, line) if go else _cancelled(line) for line in chunk]
            self.store.add_batch_lines(batch_id, records)
        now = utcnow()
        self.store.move_openai_batch(
            batch_id, [VALIDATING], status=IN_PROGRESS, in_progress_at=now, total=len(lines)
        )
        if self._status(batch_id) == CANCELLING:
            # A cancel raced the last step: what it could not see queued goes too.
            self.store.move_openai_batch(batch_id, [CANCELLING], total=len(lines))
            self.store.cancel_queued_in_batch(batch_id)
        # No more jobs join: the job batch finishes once every line's job has ended.
        self.jobs.close_batch(batch_id)

    def _queue(self, row: OpenAIBatch, line: InputLine) -> dict[str, Any]:
        record = _record(line)
        if line.call is None:
            return record
        line.call.request.safety = mode_for(self.jobs.settings, "openai", row.owner)
        done = self.jobs.submit_chat(
            line.call.images,
            line.call.request,
            source="api",
            owner=row.owner,
            priority=BULK,
            batch_id=row.id,
            idempotency_key=f"{row.id}:{line.number}",
        )
        return record | {"job_id": done.jobs[0].id}

    def _fail(self, batch_id: str, errors: list[dict[str, Any]], total: int) -> None:
        self.store.move_openai_batch(
            batch_id,
            [VALIDATING, CANCELLING],
            status=FAILED,
            failed_at=utcnow(),
            errors=errors,
            total=total,
            failed=total,
        )
        self.jobs.close_batch(batch_id)

    def _status(self, batch_id: str) -> str | None:
        row = self.store.get_openai_batch(batch_id)
        return row.status if row is not None else None

    # -- cancelling -------------------------------------------------------------------------

    def cancel(self, batch_id: str, owner: str | None) -> dict[str, Any]:
        """`cancelling`: queued lines are cancelled at once, running ones finish (as OpenAI
        lets in-flight requests end); the worker side then writes the files and `cancelled`."""
        row = self._visible(batch_id, owner)
        if row.status == CANCELLING:
            return self.to_object(row)
        moved = self.store.move_openai_batch(
            batch_id, [VALIDATING, IN_PROGRESS], status=CANCELLING, cancelling_at=utcnow()
        )
        if not moved:
            raise JobStateConflict(f"batch {batch_id} is {self._status(batch_id)}; not cancelled")
        self.store.cancel_queued_in_batch(batch_id)
        # Nothing left running: the job batch finishes here, its files follow on the worker side.
        self.jobs.backend.job_ended(batch_id)
        return self.get(batch_id, None)


def _record(line: InputLine) -> dict[str, Any]:
    """A line as `openai_batch_lines` keeps it (its job id once queued)."""
    return {
        "line": line.number,
        "custom_id": line.custom_id,
        "job_id": None,
        "error_code": line.error_code,
        "error_message": line.error_message,
    }


def _cancelled(line: InputLine) -> dict[str, Any]:
    """A usable line that a cancel stopped before it was queued."""
    if line.call is None:
        return _record(line)
    return _record(line) | {"error_code": BATCH_CANCELLED, "error_message": CANCELLED_MESSAGE}


def _line_error(line: InputLine) -> dict[str, Any]:
    return {"code": line.error_code, "message": line.error_message, "line": line.number}


def _check_metadata(metadata: dict[str, str] | None) -> None:
    if metadata is None:
        return
    if len(metadata) > 16 or any(
        not isinstance(k, str) or not isinstance(v, str) or len(k) > 64 or len(v) > 512
        for k, v in metadata.items()
    ):
        raise InvalidRequest("metadata: at most 16 string pairs (keys 64, values 512 chars)")

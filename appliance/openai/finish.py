"""The worker side of OpenAI batches: the output and error files, written once every line's
job has ended, and the reconciler's sweep that finishes whatever a crash interrupted.

Never from a request: `BatchFinisher.on_batch_finished` is the worker's `JobBackend` hook (run
when the job that ends a batch ends there), and `sweep` runs in each worker's reconciler, which
also catches a batch whose last job was cancelled from a request. Writing is idempotent: the
file ids derive from the batch id and the final status is one conditional write together with
the file rows, so two workers finishing one batch end it once, with the same files.
"""

from __future__ import annotations

import json
import logging
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from appliance.jobs import JobInfo, JobService
from appliance.openai.batch_input import (
    BATCH_CANCELLED,
    BATCH_EXPIRED,
    CANCELLED_MESSAGE,
    EXPIRED_MESSAGE,
)
from appliance.openai.batches import OpenAIBatches
from appliance.openai.completion import completion, result_of
from appliance.openai.files import OpenAIFiles, epoch, new_file_id
from appliance.store.base import utcnow
from appliance.store.openai_tables import OpenAIBatch, OpenAIBatchLine, OpenAIFile
from appliance.store.tables import Job
from appliance.vocab import (
    BLOCKED,
    CANCELLED,
    CANCELLING,
    COMPLETED,
    EXPIRED,
    FILE_PURPOSE_BATCH_OUTPUT,
    FINALIZING,
    IN_PROGRESS,
    SUCCEEDED,
    VALIDATING,
)

if TYPE_CHECKING:
    from appliance.jobs.backend import JobBackend

log = logging.getLogger(__name__)

# A batch still `validating` this long after it was created lost the request that queued its
# lines (a restarted web server): the sweep queues the rest. Expanding twice is harmless.
EXPAND_STALE = timedelta(minutes=5)


class BatchFinisher:
    def __init__(self, backend: JobBackend) -> None:
        self.store = backend.store
        self.settings = backend.settings
        self.files = OpenAIFiles(self.store, self.settings, backend.blobs)
        self.batches = OpenAIBatches(JobService(backend), self.files)

    def on_batch_finished(self, batch_id: str) -> None:
        """The job batch `batch_id` just finished: if it is an OpenAI batch, write its files."""
        row = self.store.get_openai_batch(batch_id)
        if row is not None and row.status in (IN_PROGRESS, FINALIZING, CANCELLING):
            self.finish(row)

    def sweep(self, expand_stale: timedelta = EXPAND_STALE) -> int:
        """One reconciler pass over the open batches; returns how many it moved."""
        now = utcnow()
        moved = 0
        for row, closed, finished in self.store.open_openai_batches():
            try:
                if not closed or row.status == VALIDATING:
                    # Its lines were not all queued, or not all said so: resume (idempotent).
                    if row.created_at < now - expand_stale:
                        self.batches.expand(row.id)
                        moved += 1
                elif finished:
                    self.finish(row)
                    moved += 1
                elif row.status == IN_PROGRESS and row.expired_at is None and _due(row, now):
                    self.expire(row)
                    moved += 1
            except Exception as exc:  # one bad batch must not stop the others: next pass
                log.warning("openai batch %s: %s", row.id, exc)
        return moved

    def expire(self, row: OpenAIBatch) -> None:
        """The completion window ended: lines still queued will not run; the batch ends
        `expired` once its running lines end (`expired_at` marks it meanwhile)."""
        if self.store.move_openai_batch(
            row.id, [IN_PROGRESS], expired_at=utcnow(), status=IN_PROGRESS
        ):
            self.store.cancel_queued_in_batch(row.id)
            self.batches.jobs.backend.job_ended(row.id)

    def finish(self, row: OpenAIBatch) -> bool:
        """Write the output and error files and end the batch (completed, cancelled or
        expired). Returns whether this call ended it."""
        now = utcnow()
        self.store.move_openai_batch(row.id, [IN_PROGRESS], status=FINALIZING, finalizing_at=now)
        fresh = self.store.get_openai_batch(row.id)  # a cancel may have come in between
        if fresh is None or fresh.status not in (FINALIZING, CANCELLING):
            return False
        row = fresh
        if row.status == CANCELLING:
            end: dict[str, Any] = {"status": CANCELLED, "cancelled_at": now}
            why = (BATCH_CANCELLED, CANCELLED_MESSAGE)
        elif row.expired_at is not None:
            end = {"status": EXPIRED, "expired_at": now}
            why = (BATCH_EXPIRED, EXPIRED_MESSAGE)
        else:
            end = {"status": COMPLETED, "completed_at": now}
            why = (BATCH_CANCELLED, CANCELLED_MESSAGE)
        outputs: list[str] = []
        errors: list[str] = []
        for line, job in self.store.batch_lines(row.id):
            # A blocked line is answered like OpenAI's filtered ones: finish_reason
            # content_filter, no content.
            if job is not None and job.state in (SUCCEEDED, BLOCKED):
                outputs.append(_dump(_output_line(line, JobInfo.from_row(job))))
            else:
                errors.append(_dump(_error_line(row.id, line, job, why)))
        files: list[OpenAIFile] = []
        for kind, lines in (("output", outputs), ("error", errors)):
            if lines:
                files.append(self._write(row, kind, ("\n".join(lines) + "\n").encode()))
                end[f"{kind}_file_id"] = files[-1].id
        ended = self.store.end_openai_batch(
            row.id,
            [FINALIZING, CANCELLING],
            files,
            completed=len(outputs),
            failed=len(errors),
            **end,
        )
        if ended:
            log.info(
                "openai batch %s %s: %d ok, %d errors",
                row.id,
                end["status"],
                len(outputs),
                len(errors),
            )
        return ended

    def _write(self, row: OpenAIBatch, kind: str, data: bytes) -> OpenAIFile:
        """The bytes (atomically) and the row to insert with the batch's end."""
        file_id = new_file_id(f"{row.id}:{kind}")
        location = self.files.put(file_id, data)
        name = f"{row.id}_{kind}.jsonl"
        return self.files.row(file_id, data, name, FILE_PURPOSE_BATCH_OUTPUT, row.owner, location)


def _due(row: OpenAIBatch, now: Any) -> bool:
    return row.expires_at is not None and row.expires_at < now


def _dump(line: dict[str, Any]) -> str:
    return json.dumps(line, ensure_ascii=False, separators=(",", ":"))


def _request_id(job_id: str) -> str:
    return "batch_req_" + job_id.replace("-", "")


def _output_line(line: OpenAIBatchLine, job: JobInfo) -> dict[str, Any]:
    """OpenAI's output line: the request's `chat.completion` as the live endpoint answers."""
    result = result_of(job)
    model = result.model if result is not None else ""
    body = completion(f"chatcmpl-{job.id}", epoch(job.finished_at) or 0, model, [job])
    return {
        "id": _request_id(job.id),
        "custom_id": line.custom_id,
        "response": {"status_code": 200, "request_id": job.id, "body": body},
        "error": None,
    }


def _error_line(
    batch_id: str, line: OpenAIBatchLine, job: Job | None, why: tuple[str, str]
) -> dict[str, Any]:
    """OpenAI's error line: a refused line, a failed job, or one the cancel (or the window's
    end) stopped before it ran."""
    if job is None:
        code, message = line.error_code, line.error_message
        request_id = f"batch_req_{batch_id.removeprefix('batch_')}_{line.line}"
    else:
        request_id = _request_id(job.id)
        if job.state == CANCELLED:
            code, message = why
        else:
            code, message = job.error_code or "server_error", job.error or "the request failed"
    return {
        "id": request_id,
        "custom_id": line.custom_id,
        "response": None,
        "error": {"code": code, "message": message},
    }

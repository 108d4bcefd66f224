"""The web layer's view of a job: how a `JobService` job becomes JSON, and waiting for one.

Kept in one module so the views stay thin and only this file knows the job object's shape.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from appliance.errors import JobNotFound
from appliance.schema import AnalysisResult
from appliance.vocab import (
    BULK,
    CANCELLED,
    FAILED,
    INTERACTIVE,
)
from web.problems import Problem

if TYPE_CHECKING:
    from appliance.jobs import JobInfo, JobService


# Server-side details a client has no use for (and should not learn: paths on the box).
_HIDDEN = {"input_path", "result", "result_text"}


def to_dict(job: Any) -> dict[str, Any]:
    """A job as the API shows it (the result body itself is at /result)."""
    return {k: v for k, v in job.to_dict().items() if k not in _HIDDEN}


def get_or_404(jobs: Any, job_id_: str) -> Any:
    job = jobs.get(job_id_)
    if job is None:
        raise Problem(404, f"no job with id {job_id_!r}")
    return job


def failure(job: Any) -> str | None:
    state = getattr(job, "state", None)
    if state == FAILED:
        return getattr(job, "error", None) or "the job failed"
    if state == CANCELLED:
        return "the job was cancelled"
    return None


def result_of(job: Any) -> AnalysisResult | None:
    result = AnalysisResult.model_validate(job.result) if job.result else None
    if result is not None and job.summary and not result.summary:
        # Summaries run as a follow-up task and land beside the result.
        result.summary = job.summary
    return result


def check_queue_capacity(svc: Any, adding: int = 1) -> None:
    """503 + Retry-After when the waiting jobs already reach the configured ceiling."""
    depth = svc.jobs.queue_depth()
    waiting = depth.get(INTERACTIVE, 0) + depth.get(BULK, 0)
    limit = svc.settings.api.max_queue_depth
    if waiting + adding > limit:
        raise Problem(
            503,
            f"the queue is full ({waiting} jobs waiting, limit {limit}); try again later",
            headers={"Retry-After": str(svc.settings.api.queue_full_retry_after)},
        )


def wait_all(
    jobs: JobService, ids: list[str], timeout: float, cancel_on_timeout: bool = False
) -> list[JobInfo]:
    """Every job, ended (`JobService.wait`); 504 after `timeout` seconds, cancelling the jobs
    still waiting first when asked; 404 if one disappeared."""
    try:
        ended = jobs.wait(ids, timeout=timeout, poll_s=0.5)
    except JobNotFound as exc:
        raise Problem(404, str(exc)) from None
    if all(job.done for job in ended):
        return ended
    if cancel_on_timeout:
        for job in ended:
            if not job.done:
                cancel_quietly(jobs, job.id)
    raise Problem(504, f"timed out after {timeout:.0f} s waiting for the job")


def cancel_quietly(jobs: Any, jid: str) -> None:
    # A job that just finished cannot be cancelled; that is fine here.
    with contextlib.suppress(Exception):
        jobs.cancel(jid)

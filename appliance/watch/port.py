"""What the watcher needs from the job queue, and nothing more.

`ServiceJobs` adapts `appliance.jobs.JobService`; tests of the folder logic use an in-memory
fake with the same three methods, so stability/claim/output tests need no Redis.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from appliance.schema import TaskRequest
from appliance.vocab import TERMINAL


@dataclass
class JobView:
    id: str
    state: str  # queued | running | succeeded | failed | cancelled | blocked
    result: dict[str, Any] | None = None  # AnalysisResult.model_dump() for analysis jobs
    error: str | None = None
    safety: list[dict[str, Any]] | None = None  # the safety stage's checks

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL


@dataclass
class BatchView:
    id: str
    # None: no digest asked for; "pending" until the summarizer ran; then "done" or "failed".
    digest_state: str | None = None
    digest: str | None = None
    digest_error: str | None = None


class Jobs(Protocol):
    def submit(
        self,
        data: bytes,
        filename: str,
        request: TaskRequest,
        *,
        batch_id: str | None,
        idempotency_key: str,
    ) -> str:
        """Queue one analysis at bulk priority; the same key returns the same job id."""
        ...

    def get_many(self, job_ids: list[str]) -> dict[str, JobView]:
        """Current state of each job; ids unknown to the store are absent."""
        ...

    def open_batch(self, *, label: str, language: str, digest: bool) -> str:
        """A queue batch for one folder batch; returns its id (jobs are submitted into it)."""
        ...

    def close_batch(self, batch_id: str) -> None:
        """No more jobs will join; the queue makes the digest once all of them ended."""
        ...

    def get_batch(self, batch_id: str) -> BatchView | None: ...

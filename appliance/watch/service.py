"""`Jobs` on top of `appliance.jobs.JobService`: the watcher's only tie to the real queue."""

from __future__ import annotations

import hashlib
from typing import Any

from sqlalchemy import select

from appliance.schema import TaskRequest
from appliance.settings import Settings
from appliance.watch.port import BatchView, JobView

# One IN (...) query per this many outstanding claims: SQLite's variable limit is 32766, and
# smaller chunks keep each read transaction short next to the workers' writes.
CHUNK = 500


class ServiceJobs:
    def __init__(self, service: Any) -> None:  # JobService; Any keeps the import lazy
        self.service = service

    @classmethod
    def from_settings(cls, settings: Settings) -> ServiceJobs:
        from appliance.jobs import JobService

        return cls(JobService.from_settings(settings))

    def submit(
        self,
        data: bytes,
        filename: str,
        request: TaskRequest,
        *,
        batch_id: str | None,
        idempotency_key: str,
    ) -> str:
        job = self.service.submit(
            data,
            filename,
            request,
            source="folder",
            priority="bulk",
            batch_id=batch_id,
            idempotency_key=idempotency_key,
        )
        return str(job.id)

    def get_many(self, job_ids: list[str]) -> dict[str, JobView]:
        # JobService.get is one session per job; a burst leaves hundreds outstanding, so read
        # them in bulk straight from the store (read-only session, no write lock).
        from appliance.store.models import Job

        out: dict[str, JobView] = {}
        store = self.service.store
        for start in range(0, len(job_ids), CHUNK):
            chunk = job_ids[start : start + CHUNK]
            with store.read() as session:
                rows = session.execute(
                    select(Job.id, Job.state, Job.result, Job.error).where(Job.id.in_(chunk))
                ).all()
            for job_id, state, result, error in rows:
                out[job_id] = JobView(job_id, state, result=result, error=error)
        return out

    def open_batch(self, *, label: str, language: str, digest: bool) -> str:
        # Deterministic id from the label (folder + local batch id): a crash between opening
        # and recording it reopens the same queue batch instead of leaving one open forever.
        batch_id = hashlib.sha256(label.encode()).hexdigest()[:32]
        info = self.service.open_batch(
            source="folder", label=label, language=language, digest=digest, batch_id=batch_id
        )
        return str(info.id)

    def close_batch(self, batch_id: str) -> None:
        self.service.close_batch(batch_id)

    def get_batch(self, batch_id: str) -> BatchView | None:
        info = self.service.get_batch(batch_id)
        if info is None:
            return None
        return BatchView(info.id, info.digest_state, info.digest, info.digest_error)

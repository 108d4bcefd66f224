"""`Jobs` on top of `appliance.jobs.JobService`: the watcher's only tie to the real queue."""

from __future__ import annotations

import hashlib
from typing import Any

from appliance.schema import TaskRequest
from appliance.settings import Settings
from appliance.vocab import BULK
from appliance.watch.port import BatchView, JobView


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
            priority=BULK,
            batch_id=batch_id,
            idempotency_key=idempotency_key,
        )
        return str(job.id)

    def get_many(self, job_ids: list[str]) -> dict[str, JobView]:
        # A burst leaves hundreds of jobs outstanding: one bulk read, not a `get` per job.
        jobs = self.service.get_many(job_ids)
        return {
            i: JobView(i, j.state, result=j.result, error=j.error, safety=j.safety)
            for i, j in jobs.items()
        }

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

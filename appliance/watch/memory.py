"""An in-memory `Jobs`: the folder logic's tests and `bench/folders.py --memory` use it.

Jobs stay queued until `complete()` is called, or finish on the next look when `auto=True`,
with a fake caption; files that are not images/PDF/TIFF by their magic bytes fail like intake.
"""

from __future__ import annotations

import threading
import uuid
from typing import Any

from appliance.schema import TaskRequest
from appliance.vocab import DONE, FAILED, PENDING, QUEUED, SUCCEEDED
from appliance.watch.port import BatchView, JobView

_MAGIC = (b"\xff\xd8\xff", b"\x89PNG", b"%PDF", b"II*\x00", b"MM\x00*", b"GIF8", b"RIFF")


class MemoryJobs:
    def __init__(self, auto: bool = True) -> None:
        self.auto = auto
        self.jobs: dict[str, JobView] = {}
        self.keys: dict[str, str] = {}
        self.submits: list[tuple[str, str]] = []  # (job id, filename), every call
        self.data: dict[str, bytes] = {}
        self.lock = threading.Lock()
        self.batches: dict[str, BatchView] = {}
        self.batch_of: dict[str, str | None] = {}
        self.closed: list[str] = []

    def submit(
        self,
        data: bytes,
        filename: str,
        request: TaskRequest,
        *,
        batch_id: str | None,
        idempotency_key: str,
    ) -> str:
        with self.lock:
            if idempotency_key in self.keys:
                return self.keys[idempotency_key]
            job_id = uuid.uuid4().hex
            self.keys[idempotency_key] = job_id
            self.jobs[job_id] = JobView(job_id, QUEUED)
            self.submits.append((job_id, filename))
            self.data[job_id] = data
            self.batch_of[job_id] = batch_id
            return job_id

    def complete(self, job_id: str) -> None:
        data = self.data[job_id]
        if not data.startswith(_MAGIC):
            self.jobs[job_id] = JobView(job_id, FAILED, error="unsupported or corrupt file")
            return
        result: dict[str, Any] = {
            "task": "caption",
            "model": "memory",
            "pages": [{"page": 1, "text": f"a picture of {len(data)} bytes", "tokens": 3}],
            "timings": {"wall_ms": 1.0},
        }
        self.jobs[job_id] = JobView(job_id, SUCCEEDED, result=result)

    def get_many(self, job_ids: list[str]) -> dict[str, JobView]:
        with self.lock:
            out = {}
            for job_id in job_ids:
                view = self.jobs.get(job_id)
                if view is None:
                    continue
                if self.auto and not view.terminal:
                    self.complete(job_id)
                    view = self.jobs[job_id]
                out[job_id] = view
            return out

    def open_batch(self, *, label: str, language: str, digest: bool) -> str:
        with self.lock:
            batch_id = uuid.uuid4().hex
            self.batches[batch_id] = BatchView(batch_id, PENDING if digest else None)
            return batch_id

    def close_batch(self, batch_id: str) -> None:
        with self.lock:
            self.closed.append(batch_id)

    def get_batch(self, batch_id: str) -> BatchView | None:
        with self.lock:
            view = self.batches.get(batch_id)
            pending = view is not None and view.digest_state == PENDING
            if pending and self.auto and batch_id in self.closed:
                members = [j for j, b in self.batch_of.items() if b == batch_id]
                view.digest_state = DONE
                view.digest = f"{len(members)} files, all fine"
            return view

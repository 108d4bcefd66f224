"""What the job service hands out: frozen snapshots of jobs, batches and workers, detached
from the database session, each with a `to_dict()` JSON form (datetimes as ISO 8601 UTC)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from appliance.safety.verdicts import summary as safety_summary
from appliance.schema import TaskRequest
from appliance.store.tables import Batch, Job, WorkerRow
from appliance.vocab import TERMINAL


@dataclass(frozen=True)
class JobInfo:
    """A snapshot of one job. `to_dict()` is its JSON form (datetimes as ISO 8601 UTC)."""

    id: str
    state: str  # queued | running | succeeded | failed | cancelled | blocked
    source: str
    priority: str
    owner: str | None
    batch_id: str | None
    filename: str
    input_path: str
    input_sha256: str
    size_bytes: int
    pages: int | None
    request: TaskRequest
    attempts: int
    worker: str | None
    device: str | None
    result: dict[str, Any] | None  # AnalysisResult.model_dump(), once succeeded
    result_text: str | None
    summary_state: str | None  # None (not asked) | pending | done | failed
    summary: str | None
    summary_error: str | None
    timings: dict[str, Any] | None  # queue_ms, run_ms, batch_size, plus the pipeline's
    error: str | None  # the one-line reason when failed (or the last retry's cause)
    error_code: str | None  # bad_input | missing_input | poison | timeout | gave_up | ...
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    input_purged: bool = False
    # The safety stage's checks (see `appliance.safety.verdicts.summary` for the API's object).
    safety: list[dict[str, Any]] | None = None

    @property
    def task(self) -> str:
        return self.request.task

    @property
    def done(self) -> bool:
        return self.state in TERMINAL

    @classmethod
    def from_row(cls, row: Job) -> JobInfo:
        return cls(
            id=row.id,
            state=row.state,
            source=row.source,
            priority=row.priority,
            owner=row.owner,
            batch_id=row.batch_id,
            filename=row.filename,
            input_path=row.input_path,
            input_sha256=row.input_sha256,
            size_bytes=row.size_bytes,
            pages=row.pages,
            request=TaskRequest.model_validate(row.params),
            attempts=row.attempts,
            worker=row.worker,
            device=row.device,
            result=row.result,
            result_text=row.result_text,
            summary_state=row.summary_state,
            summary=row.summary,
            summary_error=row.summary_error,
            timings=row.timings,
            error=row.error,
            error_code=row.error_code,
            created_at=row.created_at,
            updated_at=row.updated_at,
            started_at=row.started_at,
            finished_at=row.finished_at,
            input_purged=row.input_purged_at is not None,
            safety=row.safety,
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["request"] = self.request.model_dump(mode="json")
        data["safety"] = safety_summary(self.safety)
        return _jsonable(data)


@dataclass(frozen=True)
class BatchInfo:
    id: str
    source: str
    owner: str | None
    label: str | None
    language: str
    total: int
    counts: dict[str, int]  # state -> number of jobs
    created_at: datetime
    closed_at: datetime | None
    finished_at: datetime | None
    digest_state: str | None  # None (not asked) | pending | done | failed
    digest: str | None
    digest_error: str | None

    @property
    def done(self) -> bool:
        return self.finished_at is not None

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(asdict(self))


@dataclass(frozen=True)
class WorkerInfo:
    hostname: str  # gpu0@host, cpu@host
    device: str  # e.g. "cuda:0 NVIDIA H100 80GB HBM3", "cpu"
    model: str | None
    state: str  # starting | idle | busy | stopped | stale (no heartbeat for stale_after_s)
    alive: bool
    current_jobs: list[str]
    jobs_done: int
    pid: int
    queues: list[str]
    started_at: datetime
    heartbeat_at: datetime

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(asdict(self))


@dataclass(frozen=True)
class JobPage:
    items: list[JobInfo]
    next_cursor: str | None  # pass as `cursor=` for the next (older) page
    extra: dict[str, Any] = field(default_factory=dict)


def batch_info(row: Batch, counts: dict[str, int]) -> BatchInfo:
    return BatchInfo(
        id=row.id,
        source=row.source,
        owner=row.owner,
        label=row.label,
        language=row.language,
        total=row.total,
        counts=counts,
        created_at=row.created_at,
        closed_at=row.closed_at,
        finished_at=row.finished_at,
        digest_state=row.digest_state,
        digest=row.digest,
        digest_error=row.digest_error,
    )


def worker_info(row: WorkerRow, stale_before: datetime) -> WorkerInfo:
    alive = row.state != "stopped" and row.heartbeat_at >= stale_before
    state = row.state if alive or row.state == "stopped" else "stale"
    return WorkerInfo(
        hostname=row.hostname,
        device=row.device,
        model=row.model,
        state=state,
        alive=alive,
        current_jobs=list(row.current_jobs or []),
        jobs_done=row.jobs_done,
        pid=row.pid,
        queues=list(row.queues or []),
        started_at=row.started_at,
        heartbeat_at=row.heartbeat_at,
    )


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value

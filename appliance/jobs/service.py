"""`JobService`: the one way into the job queue, for every intake path.

The REST API, the panel, the drop-folder watcher and `appliance submit` all call
`JobService.submit(...)`; workers run the jobs (`appliance.runtime.runner`). The job store is the
source of truth: a submit that cannot reach Redis still succeeds (the reconciler sends the job
when Redis is back), and every read here comes from the store.

    service = JobService.from_settings(settings)
    job = service.submit(data, "scan.pdf", TaskRequest(task="ocr"), source="api", owner="ana")
    service.wait([job.id], timeout=60)
    service.get(job.id).result_text

Stable API (other modules build on it): `from_settings`, `submit`, `open_batch`,
`close_batch`, `get`, `get_many`, `list`, `recent`, `batch_jobs`, `lane_positions`, `cancel`,
`retry`, `get_batch`, `queue_depth`, `workers`, `metrics`, `finished_since`, `events`,
`last_event_id`, `history`, `wait`, `input_file`, and the `JobInfo` / `BatchInfo` / `WorkerInfo`
/ `JobPage` / `JobMetrics` views they return.
"""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from appliance.errors import InvalidRequest, JobNotFound, JobStateConflict
from appliance.jobs.backend import JobBackend
from appliance.jobs.views import BatchInfo, JobInfo, JobPage, WorkerInfo, batch_info, worker_info
from appliance.queue import LANES
from appliance.schema import TaskRequest
from appliance.settings import Settings
from appliance.store.base import utcnow
from appliance.store.repo import JobFilter, JobMetrics
from appliance.store.tables import Batch, Job
from appliance.vocab import BULK, INTERACTIVE, SOURCES, STATES, Priority, Source


class JobService:
    """Submit, inspect and control jobs. Thread-safe; build one per process."""

    def __init__(self, backend: JobBackend) -> None:
        self.backend = backend
        self.settings = backend.settings
        self.store = backend.store
        self.broker = backend.broker

    @classmethod
    def from_settings(cls, settings: Settings, *, migrate: bool = True) -> JobService:
        """Connect to the store (migrating it to the newest schema) and to Redis (lazily)."""
        return cls(JobBackend.from_settings(settings, migrate=migrate))

    # -- intake -----------------------------------------------------------------------------

    def submit(
        self,
        data: bytes,
        filename: str,
        request: TaskRequest,
        *,
        source: Source,
        priority: Priority | None = None,
        batch_id: str | None = None,
        idempotency_key: str | None = None,
        owner: str | None = None,
        input_path: Path | str | None = None,
    ) -> JobInfo:
        """Queue one file. Returns at once with the queued job; never runs the model.

        - `data` is stored content-addressed under `settings.uploads_dir` (unless `input_path`
          names a file that already holds exactly these bytes and stays put, e.g. a claimed
          drop-folder file). It is never deleted because the job failed.
        - `priority` defaults to `bulk` for `source="folder"`, else `interactive`.
        - `batch_id`: join that batch (created on first use, see `open_batch`); call
          `close_batch` when no more jobs will join, so its digest can be made.
        - `idempotency_key`: a second submit with the same key and owner returns the first
          job instead of queueing again.
        - Bad files are *not* rejected here: the worker fails the job with the reason.
        """
        if source not in SOURCES:
            raise InvalidRequest(f"unknown source {source!r}")
        lane = priority or (BULK if source == "folder" else INTERACTIVE)
        if lane not in LANES:
            raise InvalidRequest(f"unknown priority {lane!r}")
        sha = hashlib.sha256(data).hexdigest()
        path = Path(input_path) if input_path is not None else self._store_file(data, sha)
        job = Job(
            id=str(uuid.uuid4()),
            source=source,
            priority=lane,
            owner=owner,
            batch_id=batch_id,
            idempotency_key=f"{owner or ''}\x1f{idempotency_key}" if idempotency_key else None,
            filename=os.path.basename(filename)[:512] or "upload",
            input_path=str(path),
            input_sha256=sha,
            size_bytes=len(data),
            task=request.task,
            prompt=request.prompt,
            params=request.model_dump(mode="json"),
            compat_key=repr(request.batch_key()),
        )
        batch = None
        if batch_id is not None:
            batch = Batch(id=batch_id, source=source, owner=owner, language=request.language)
        row, created = self.store.create_job(job, batch=batch)
        if created:
            self.broker.send_job(row.id, row.priority)
        return JobInfo.from_row(row)

    def _store_file(self, data: bytes, sha: str) -> Path:
        folder = self.settings.uploads_dir / sha[:2]
        path = folder / sha
        if path.exists() and path.stat().st_size == len(data):
            return path
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{sha}.{uuid.uuid4().hex}.tmp"
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        return path

    def open_batch(
        self,
        *,
        source: Source,
        owner: str | None = None,
        label: str | None = None,
        language: str = "en",
        digest: bool = False,
        batch_id: str | None = None,
    ) -> BatchInfo:
        """Start a batch (or return the existing one with that id). `digest=True` asks for a
        digest even if no job asks for a summary; a job with `summarize` asks for one too."""
        row = self.store.open_batch(
            Batch(
                id=batch_id or str(uuid.uuid4()),
                source=source,
                owner=owner,
                label=label,
                language=language,
                digest_requested=digest,
            )
        )
        return self.get_batch(row.id)  # type: ignore[return-value]

    def close_batch(self, batch_id: str) -> BatchInfo:
        """No more jobs join; once all have ended the batch finishes (and its digest is made)."""
        if self.store.close_batch(batch_id) is None:
            raise JobNotFound(f"no batch {batch_id}")
        self.backend.job_ended(batch_id)
        return self.get_batch(batch_id)  # type: ignore[return-value]

    # -- reading ----------------------------------------------------------------------------

    def get(self, job_id: str) -> JobInfo | None:
        row = self.store.get(job_id)
        return JobInfo.from_row(row) if row is not None else None

    def get_many(self, job_ids: Iterable[str]) -> dict[str, JobInfo]:
        """The jobs with these ids, by id, read in bulk; ids unknown to the store are absent."""
        return {row.id: JobInfo.from_row(row) for row in self.store.get_many(list(job_ids))}

    def list(
        self,
        *,
        state: str | list[str] | None = None,
        source: str | None = None,
        batch_id: str | None = None,
        owner: str | None = None,
        sha256: str | None = None,
        task: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        terms: Sequence[str] | None = None,
        cursor: str | None = None,
        limit: int = 50,
    ) -> JobPage:
        """Jobs newest first, filtered; `since`/`until` bound `created_at` ([since, until);
        naive datetimes are taken as UTC). `terms`: each must occur, case-insensitively and
        literally (no wildcards), in the result text, the summary or the filename.

        Pagination: pass the returned `next_cursor` back as `cursor` (None: last page).
        """
        states = [state] if isinstance(state, str) else state
        for s in states or []:
            if s not in STATES:
                raise InvalidRequest(f"unknown state {s!r}; one of {', '.join(STATES)}")
        limit = max(1, min(int(limit), 1000))
        where = JobFilter(
            states=tuple(states or ()),
            source=source,
            batch_id=batch_id,
            owner=owner,
            sha256=sha256,
            task=task,
            since=_utc(since),
            until=_utc(until),
            terms=tuple(terms or ()),
        )
        rows, next_cursor = self.store.list_jobs(where, cursor=cursor, limit=limit)
        return JobPage([JobInfo.from_row(r) for r in rows], next_cursor)

    def recent(
        self, *, since: datetime, owner: str | None = None, limit: int = 50
    ) -> list[JobInfo]:
        """What a live queue shows: the newest `limit` of the jobs that are queued or running
        or were created since `since` (naive: UTC); only `owner`'s when given."""
        rows = self.store.recent_jobs(since=_utc(since), owner=owner, limit=limit)
        return [JobInfo.from_row(r) for r in rows]

    def batch_jobs(self, batch_id: str, *, owner: str | None = None) -> list[JobInfo]:
        """Every job of the batch, oldest first; only `owner`'s when given."""
        return [JobInfo.from_row(r) for r in self.store.batch_jobs(batch_id, owner=owner)]

    def lane_positions(self, *, scan: int = 1000) -> dict[str, int]:
        """Job id -> 1-based place in its lane (priority) for queued jobs, oldest first.

        Only the `scan` oldest queued jobs get a place: counting a 10 000-deep lane on every
        refresh of a queue view is waste.
        """
        return self.store.lane_positions(scan)

    def get_batch(self, batch_id: str) -> BatchInfo | None:
        row, counts = self.store.get_batch(batch_id)
        if row is None:
            return None
        return batch_info(row, counts)

    def queue_depth(self) -> dict[str, int]:
        """Jobs waiting per lane, from the store: interactive, bulk, text (pending summaries
        and digests), and running."""
        return self.store.queue_depth()

    def workers(self) -> list[WorkerInfo]:
        """Every worker that ever registered, with its device, model and busy/idle state."""
        stale = utcnow() - timedelta(seconds=self.settings.queue.stale_after_s)
        return [worker_info(row, stale) for row in self.store.list_workers()]

    def metrics(self, latency_bounds: Sequence[float], *, recent_jobs: int) -> JobMetrics:
        """The store's side of a metrics scrape: job counts by (state, source), the
        submit-to-finish histogram of succeeded jobs (cumulative counts per bound in
        `latency_bounds`, seconds), and each worker's mean tokens/s over its `recent_jobs`
        latest succeeded jobs."""
        return self.store.metrics(latency_bounds, recent_jobs)

    def finished_since(self, since: datetime) -> list[tuple[datetime, datetime, str]]:
        """(created_at, finished_at, state) of every job that ended at or after `since`
        (naive: UTC), in no particular order."""
        return self.store.finished_since(_utc(since))

    def last_event_id(self) -> int:
        """Id of the newest stored event (0: none yet); `events(after=...)` with it is "from
        now", fixed at the moment of this call."""
        return self.store.last_event_id()

    def history(self, job_id: str) -> list[dict[str, Any]]:
        """The job's events, oldest first (queued, running, requeued, succeeded, ...)."""
        return self.store.job_events(job_id)

    def input_file(self, job_id: str) -> Path:
        """Where the job's original file lies (raises JobNotFound if purged or unknown)."""
        job = self.store.get(job_id)
        if job is None or job.input_purged_at is not None:
            raise JobNotFound(f"no input file for job {job_id}")
        return Path(job.input_path)

    # -- control ----------------------------------------------------------------------------

    def cancel(self, job_id: str) -> JobInfo:
        """Cancel a queued or running job. A running one stops counting at once; its worker
        hears of it through Redis (or at its next heartbeat), stops the generation and writes
        nothing."""
        row, changed = self.store.cancel(job_id)
        if row is None:
            raise JobNotFound(f"no job {job_id}")
        if not changed:
            raise JobStateConflict(f"job {job_id} is {row.state}; only queued or running jobs")
        if row.worker:  # it may be running there: stop the generation now, not at a heartbeat
            self.broker.send_cancel(row.worker, row.id)
        self.backend.job_ended(row.batch_id)
        return JobInfo.from_row(row)

    def retry(self, job_id: str) -> JobInfo:
        """Queue a failed or cancelled job again, with a fresh attempt count."""
        row, changed = self.store.retry(job_id)
        if row is None:
            raise JobNotFound(f"no job {job_id}")
        if not changed:
            raise JobStateConflict(f"job {job_id} is {row.state}; only failed or cancelled jobs")
        self.broker.send_job(row.id, row.priority)
        return JobInfo.from_row(row)

    # -- waiting and watching ---------------------------------------------------------------

    def wait(
        self, job_ids: list[str], timeout: float | None = None, poll_s: float = 0.2
    ) -> list[JobInfo]:
        """Poll until every job has ended (or `timeout` passes); returns their latest state,
        in the order of `job_ids`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            jobs = self.get_many(job_ids)
            missing = next((i for i in job_ids if i not in jobs), None)
            if missing is not None:
                raise JobNotFound(f"no job {missing}")
            infos = [jobs[i] for i in job_ids]
            if all(j.done for j in infos) or (deadline and time.monotonic() >= deadline):
                return infos
            time.sleep(poll_s)

    def events(
        self,
        *,
        after: int | None = None,
        job_id: str | None = None,
        batch_id: str | None = None,
        owner: str | None = None,
        poll_s: float = 1.0,
        max_s: float | None = None,
    ) -> Iterator[dict[str, Any] | None]:
        """Job state changes as they happen, for SSE.

        Yields event dicts ({"id", "at", "event", "job_id", "batch_id", "owner", "state",
        "attempt", "worker", "detail"}) in id order, and None after every quiet `poll_s`
        (send a keep-alive). `after`: replay stored events with a larger id first (SSE's
        Last-Event-ID); None starts from now. Ends after `max_s` seconds if given.
        Redis pub/sub only rings the bell; the events come from the store's log, so none is
        missed when Redis hiccups (it then polls every `poll_s`).
        """
        filters = {"job_id": job_id, "batch_id": batch_id, "owner": owner}
        try:
            bell = self.broker.subscribe(poll_s=poll_s)  # before reading the log
        except Exception:  # Redis down: poll the log only
            bell = _ticks(poll_s)
        try:
            last = after if after is not None else self.store.last_event_id()
            end = None if max_s is None else time.monotonic() + max_s
            while end is None or time.monotonic() < end:
                new = self.store.events_after(last, **filters)
                for event in new:
                    last = event["id"]
                    yield event
                try:
                    rang = next(bell)
                except Exception:
                    bell = _ticks(poll_s)
                    rang = next(bell)
                if rang is None and not new:
                    yield None
        finally:
            close = getattr(bell, "close", None)
            if close is not None:
                close()


def _utc(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def _ticks(poll_s: float) -> Iterator[None]:
    while True:
        time.sleep(poll_s)
        yield None

"""`JobService`: the one way into the job queue, for every intake path.

The REST API, the panel and the OpenAI-compatible endpoint call `JobService.submit_many(...)`,
the drop-folder watcher and `appliance submit` call `submit(...)` (both in
`appliance.jobs.submit`); workers run the jobs (`appliance.runtime.runner`). The job store is the
source of truth: a submit that cannot reach Redis still succeeds (the reconciler sends the job
when Redis is back), and every read here comes from the store.

    service = JobService.from_settings(settings)
    job = service.submit(data, "scan.pdf", TaskRequest(task="ocr"), source="api", owner="ana")
    service.wait([job.id], timeout=60)
    service.get(job.id).result_text

Stable API (other modules build on it): `from_settings`, `submit`, `submit_many`, `open_batch`,
`close_batch`, `get`, `get_many`, `list`, `search` (in `appliance.jobs.search`), `recent`,
`batch_jobs`, `lane_positions`, `cancel`, `retry`, `get_batch`, `queue_depth`, `workers`,
`metrics`, `finished_since`, `events`, `last_event_id`, `history`, `wait`, `input_file`, and the
`JobInfo` / `BatchInfo` / `WorkerInfo` / `JobPage` / `JobMetrics` / `SearchPage` views they
return.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from appliance.errors import InvalidRequest, JobNotFound, JobStateConflict
from appliance.jobs.backend import JobBackend
from appliance.jobs.search import Searching
from appliance.jobs.submit import Submitting
from appliance.jobs.views import BatchInfo, JobInfo, JobPage, WorkerInfo, batch_info, worker_info
from appliance.settings import Settings
from appliance.store.base import utcnow
from appliance.store.repo import JobFilter, JobMetrics
from appliance.vocab import STATES


class JobService(Submitting, Searching):
    """Submit (see `Submitting`), inspect and control jobs. Thread-safe; build one per process."""

    def __init__(self, backend: JobBackend) -> None:
        self.backend = backend
        self.settings = backend.settings
        self.store = backend.store
        self.broker = backend.broker

    @classmethod
    def from_settings(cls, settings: Settings, *, migrate: bool = True) -> JobService:
        """Connect to the store (migrating it to the newest schema) and to Redis (lazily)."""
        return cls(JobBackend.from_settings(settings, migrate=migrate))

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

    def input_file(self, job_id: str) -> bytes:
        """The job's original file, from whichever box or store holds it, checked against its
        sha256 (raises JobNotFound if purged or unknown, ChecksumMismatch if altered,
        StorageUnavailable while the store is away)."""
        job = self.store.get(job_id)
        if job is None or job.input_purged_at is not None:
            raise JobNotFound(f"no input file for job {job_id}")
        try:
            return self.backend.blobs.get(job.input_path, job.input_sha256)
        except FileNotFoundError as exc:
            raise JobNotFound(f"no input file for job {job_id}") from exc

    # -- control ----------------------------------------------------------------------------

    def cancel(self, job_id: str) -> JobInfo:
        """Cancel a queued or running job. A running one stops counting at once; its worker
        hears of it through Redis (or at its next heartbeat), stops the generation and writes
        nothing."""
        row, changed = self.store.cancel(job_id)
        if row is None:
            raise JobNotFound(f"no job {job_id}")
        if not changed:
            raise JobStateConflict(f"job {job_id} already ended ({row.state})")
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
            raise JobStateConflict(
                f"only failed or cancelled jobs can be retried; this one is {row.state}"
            )
        self.broker.send_job(row.id, row.priority)
        return JobInfo.from_row(row)

    # -- waiting and watching ---------------------------------------------------------------

    def wait(
        self, job_ids: list[str], timeout: float | None = None, poll_s: float = 0.2
    ) -> list[JobInfo]:
        """Poll the store until every job has ended or `timeout` passes; returns their latest
        state, in the order of `job_ids` (some not `done` after a timeout). Raises JobNotFound
        if one is unknown.

        Polls the store, the truth, not pub/sub: a lost message cannot hang a waiter. The first
        polls come fast (an idle GPU answers a small image in well under a second), then every
        `poll_s`.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = min(0.02, poll_s)
        while True:
            jobs = self.get_many(job_ids)
            missing = next((i for i in job_ids if i not in jobs), None)
            if missing is not None:
                raise JobNotFound(f"no job {missing}")
            infos = [jobs[i] for i in job_ids]
            remaining = None if deadline is None else deadline - time.monotonic()
            if all(j.done for j in infos) or (remaining is not None and remaining <= 0):
                return infos
            time.sleep(delay if remaining is None else min(delay, remaining))
            delay = min(delay * 1.5, poll_s)

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

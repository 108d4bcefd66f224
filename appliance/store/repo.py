"""`JobStore`: every job-state transition as one conditional write plus one event row.

A transition only happens from the states it names (`WHERE state = 'queued'` ...), and a
result is only written by the holder of the current claim token, so however many messages or
workers race for a job, it gets at most one result. Callers get the rows back detached.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Engine,
    and_,
    bindparam,
    case,
    exists,
    func,
    insert,
    literal_column,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from appliance.errors import InvalidRequest
from appliance.store.base import utcnow
from appliance.store.db import session_factory
from appliance.store.tables import Batch, Job, JobEvent, WorkerRow
from appliance.vocab import (
    ACTIVE,
    BULK,
    CANCELLED,
    DONE,
    FAILED,
    INTERACTIVE,
    PENDING,
    QUEUED,
    RETRYABLE,
    RUNNING,
    SUCCEEDED,
    TERMINAL,
)

Notify = Callable[[list[dict[str, Any]]], None]
_EVENT_COLUMNS = [c for c in JobEvent.__table__.columns if c.key != "id"]
# One IN (...) query per this many ids: SQLite's variable limit is 32766, and smaller chunks
# keep each read transaction short next to the workers' writes.
_IN_CHUNK = 500

# The per-job path (an event per transition, claim, result) runs prebuilt statements with bound
# parameters: SQLAlchemy memoizes a statement object's cache key, while building one per call
# costs more Python than the SQL itself (~0.5 ms of a 1 ms transaction on SQLite).
_INSERT_EVENT = insert(JobEvent.__table__)
_CLAIM = (
    update(Job)
    .where(Job.id == bindparam("p_id"), Job.state == QUEUED)
    .values(
        state=RUNNING,
        attempts=Job.attempts + 1,
        worker=bindparam("p_worker"),
        device=bindparam("p_device"),
        claim=bindparam("p_claim"),
        started_at=bindparam("p_now"),
        updated_at=bindparam("p_now"),
        not_before=None,
    )
    .returning(Job)
)
_SUCCEED = (
    update(Job)
    .where(Job.id == bindparam("p_id"), Job.state == RUNNING, Job.claim == bindparam("p_claim"))
    .values(
        state=SUCCEEDED,
        result=bindparam("p_result", type_=Job.__table__.c.result.type),
        result_text=bindparam("p_text"),
        timings=bindparam("p_timings", type_=Job.__table__.c.timings.type),
        pages=bindparam("p_pages"),
        summary_state=bindparam("p_summary_state"),
        error=None,
        error_code=None,
        claim=None,
        finished_at=bindparam("p_now"),
        updated_at=bindparam("p_now"),
    )
    .returning(Job.id, Job.batch_id, Job.owner, Job.state, Job.attempts, Job.worker)
)


def clean_text(value: str | None) -> str | None:
    """Text as PostgreSQL can store it: model output may contain NUL characters."""
    return value.replace("\x00", "\ufffd") if value else value


def event_dict(event: JobEvent) -> dict[str, Any]:
    """The JSON form of an event, as published on the events channel and replayed by SSE."""
    return {
        "id": event.id,
        "at": event.at.isoformat(),
        "event": event.event,
        "job_id": event.job_id,
        "batch_id": event.batch_id,
        "owner": event.owner,
        "state": event.state,
        "attempt": event.attempt,
        "worker": event.worker,
        "detail": event.detail,
    }


@dataclass(frozen=True)
class JobFilter:
    """Which jobs a listing returns; an empty field does not narrow it. `JobService` checks
    the values (known states, UTC datetimes) before it builds one."""

    states: tuple[str, ...] = ()
    source: str | None = None
    batch_id: str | None = None
    owner: str | None = None
    sha256: str | None = None
    task: str | None = None
    since: datetime | None = None  # created_at >= since
    until: datetime | None = None  # created_at < until
    # Words that must each occur, case-insensitively, in the result text, summary or filename.
    terms: tuple[str, ...] = ()


def _conditions(where: JobFilter) -> list[ColumnElement[bool]]:
    out: list[ColumnElement[bool]] = []
    if where.states:
        out.append(Job.state.in_(where.states))
    if where.source:
        out.append(Job.source == where.source)
    if where.batch_id:
        out.append(Job.batch_id == where.batch_id)
    if where.owner:
        out.append(Job.owner == where.owner)
    if where.sha256:
        out.append(Job.input_sha256 == where.sha256)
    if where.task:
        out.append(Job.task == where.task)
    if where.since:
        out.append(Job.created_at >= where.since)
    if where.until:
        out.append(Job.created_at < where.until)
    for term in where.terms:
        # ILIKE is case-insensitive on PostgreSQL; SQLite's LIKE already is for ASCII.
        pattern = _like(term)
        out.append(
            or_(
                Job.result_text.ilike(pattern, escape="\\"),
                Job.summary.ilike(pattern, escape="\\"),
                Job.filename.ilike(pattern, escape="\\"),
            )
        )
    return out


@dataclass(frozen=True)
class JobMetrics:
    """What a metrics scrape reports from the store, read in one transaction."""

    counts: dict[tuple[str, str], int]  # (state, source) -> jobs
    # Succeeded jobs' submit-to-finish seconds: (bound, jobs <= bound) per bound, cumulative.
    latency_buckets: tuple[tuple[float, int], ...]
    latency_count: int
    latency_sum: float
    tokens_per_s: dict[str, float]  # worker -> mean over its most recent succeeded jobs


def _seconds_to_finish(dialect: str) -> ColumnElement[Any]:
    """finished_at - created_at in seconds: SQLite has no interval type, only julianday."""
    if dialect == "postgresql":
        return func.extract("epoch", Job.finished_at - Job.created_at)
    return (func.julianday(Job.finished_at) - func.julianday(Job.created_at)) * literal_column(
        "86400.0"
    )


def _like(term: str) -> str:
    """A LIKE pattern matching `term` literally anywhere: a user's % or _ is no wildcard."""
    escaped = term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


class JobStore:
    """Transitions and queries on the job store. Thread-safe; one per process is enough."""

    def __init__(self, engine: Engine, notify: Notify | None = None) -> None:
        self.engine = engine
        self.notify = notify
        self._writer = session_factory(engine)
        self._reader = session_factory(engine, readonly=True)

    # -- sessions ---------------------------------------------------------------------------

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A write transaction; events added with `_event` are published after the commit."""
        events: list[JobEvent] = []
        with self._writer.begin() as session:
            session.info["events"] = events
            yield session
        if events and self.notify is not None:
            self.notify([event_dict(e) for e in events])

    @contextmanager
    def read(self) -> Iterator[Session]:
        with self._reader() as session:
            yield session

    @staticmethod
    def _event(session: Session, job: Job | None, event: str, **fields: Any) -> None:
        fields["detail"] = clean_text(fields.get("detail"))
        row = JobEvent(at=utcnow(), event=event, **fields)
        if job is not None:
            row.job_id = job.id
            row.batch_id = job.batch_id
            row.owner = job.owner
            row.state = job.state
            row.attempt = job.attempts
            row.worker = fields.get("worker", job.worker)
        # A Core INSERT on the transaction's connection: the row is only published, never
        # changed, so it needs none of the unit of work's bookkeeping (a flush per event).
        values = {c.key: getattr(row, c.key) for c in _EVENT_COLUMNS}
        result = session.connection().execute(_INSERT_EVENT, values)
        row.id = result.inserted_primary_key[0]
        session.info["events"].append(row)

    @staticmethod
    def _update(session: Session, where: Iterable[Any], **values: Any) -> int:
        values.setdefault("updated_at", utcnow())
        stmt = update(Job).where(*where).values(**values)
        result = session.execute(stmt, execution_options={"synchronize_session": False})
        return result.rowcount  # type: ignore[attr-defined,no-any-return]

    @staticmethod
    def _transition(session: Session, where: Iterable[Any], **values: Any) -> Job | None:
        """One conditional UPDATE that hands back the changed row (RETURNING): None if no row
        matched, and no SELECT after it. (Claim and result, once per job, use the prebuilt
        statements above instead.)"""
        values.setdefault("updated_at", utcnow())
        stmt = update(Job).where(*where).values(**values).returning(Job)
        rows = session.scalars(stmt, execution_options={"synchronize_session": False})
        return rows.one_or_none()

    @staticmethod
    def _fresh(session: Session, job_id: str) -> Job:
        job = session.get(Job, job_id, populate_existing=True)
        assert job is not None
        return job

    # -- intake -----------------------------------------------------------------------------

    def create_job(self, job: Job, *, batch: Batch | None = None) -> tuple[Job, bool]:
        """Insert a queued job (and its batch if new). Returns (job, created).

        With an idempotency key already used, returns the existing job and `False`.
        """
        if job.idempotency_key is not None:
            existing = self.by_idempotency_key(job.idempotency_key)
            if existing is not None:
                return existing, False
        try:
            with self.write() as session:
                if batch is not None:
                    self._ensure_batch(session, batch)
                    row = session.get(Batch, batch.id, populate_existing=True)
                    assert row is not None
                    if row.closed_at is not None:
                        raise InvalidRequest(f"batch {batch.id} is closed")
                    row.total += 1
                    if job.params.get("summarize"):
                        row.digest_requested = True
                now = utcnow()
                job.created_at = job.updated_at = job.enqueued_at = now
                job.state, job.attempts, job.run_alone = QUEUED, 0, False
                session.add(job)
                session.flush()
                self._event(session, job, QUEUED, detail=job.filename)
        except IntegrityError:
            if job.idempotency_key is None:
                raise
            existing = self.by_idempotency_key(job.idempotency_key)
            if existing is None:
                raise
            return existing, False
        return job, True

    @staticmethod
    def _ensure_batch(session: Session, batch: Batch) -> None:
        values = {
            "id": batch.id,
            "created_at": utcnow(),
            "source": batch.source,
            "owner": batch.owner,
            "label": batch.label,
            "language": batch.language or "en",
            "total": 0,
            "digest_requested": bool(batch.digest_requested),
        }
        dialect = session.get_bind().dialect.name
        insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        stmt = insert(Batch).values(**values).on_conflict_do_nothing(index_elements=["id"])
        session.execute(stmt)

    def open_batch(self, batch: Batch) -> Batch:
        with self.write() as session:
            self._ensure_batch(session, batch)
            row = session.get(Batch, batch.id, populate_existing=True)
            assert row is not None
            return row

    def close_batch(self, batch_id: str) -> Batch | None:
        with self.write() as session:
            row = session.get(Batch, batch_id)
            if row is None:
                return None
            if row.closed_at is None:
                row.closed_at = utcnow()
            return row

    def by_idempotency_key(self, key: str) -> Job | None:
        with self.read() as session:
            return session.scalars(select(Job).where(Job.idempotency_key == key)).first()

    def mark_enqueued(self, job_ids: list[str]) -> None:
        with self.write() as session:
            self._update(
                session,
                [Job.id.in_(job_ids), Job.state == QUEUED],
                enqueued_at=utcnow(),
            )

    # -- worker side ------------------------------------------------------------------------

    def claim(self, job_id: str, *, worker: str, device: str, claim: str) -> Job | None:
        """queued -> running for this worker, counting an attempt; None if not queued."""
        with self.write() as session:
            return self._claim(session, job_id, worker, device, claim)

    def _claim(
        self, session: Session, job_id: str, worker: str, device: str, claim: str
    ) -> Job | None:
        params = {"p_id": job_id, "p_worker": worker, "p_device": device, "p_claim": claim}
        job = session.scalars(
            _CLAIM, {**params, "p_now": utcnow()}, execution_options={"synchronize_session": False}
        ).one_or_none()
        if job is not None:
            self._event(session, job, RUNNING)
        return job

    def claim_companions(
        self, primary: Job, limit: int, *, worker: str, device: str, claim: str
    ) -> list[Job]:
        """Up to `limit` more first-attempt queued jobs with the same generation parameters."""
        if limit <= 0:
            return []
        now = utcnow()
        with self.read() as session:  # a cheap look first: most polls find nothing
            ids = session.scalars(
                select(Job.id)
                .where(
                    Job.state == QUEUED,
                    Job.compat_key == primary.compat_key,
                    Job.attempts == 0,
                    Job.run_alone.is_(False),
                    Job.id != primary.id,
                    or_(Job.not_before.is_(None), Job.not_before <= now),
                )
                .order_by(case((Job.priority == INTERACTIVE, 0), else_=1), Job.created_at)
                .limit(limit)
            ).all()
        if not ids:
            return []
        with self.write() as session:
            claimed = [self._claim(session, i, worker, device, claim) for i in ids]
            return [job for job in claimed if job is not None]

    def set_pages(self, job_id: str, claim: str, pages: int) -> None:
        with self.write() as session:
            self._update(session, [Job.id == job_id, Job.claim == claim], pages=pages)

    def succeed(
        self,
        job_id: str,
        claim: str,
        *,
        result: dict[str, Any],
        text: str,
        timings: dict[str, Any],
        pages: int,
        summary_state: str | None,
    ) -> bool:
        """running -> succeeded, only for the current claim holder (exactly one result)."""
        params = {
            "p_id": job_id,
            "p_claim": claim,
            "p_result": result,
            "p_text": clean_text(text),
            "p_timings": timings,
            "p_pages": pages,
            "p_summary_state": summary_state,
            "p_now": utcnow(),
        }
        with self.write() as session:
            row = session.execute(
                _SUCCEED, params, execution_options={"synchronize_session": False}
            ).one_or_none()
            if row is not None:  # the event needs these columns only, not the result again
                self._event(session, Job(**row._asdict()), SUCCEEDED)
            return row is not None

    def fail(
        self,
        job_id: str,
        reason: str,
        code: str,
        *,
        claim: str | None = None,
        states: tuple[str, ...] = (RUNNING,),
    ) -> bool:
        """-> failed with a one-line reason (from `states`, and for `claim` when given)."""
        where = [Job.id == job_id, Job.state.in_(states)]
        if claim is not None:
            where.append(Job.claim == claim)
        with self.write() as session:
            job = self._transition(
                session,
                where,
                state=FAILED,
                error=clean_text(reason),
                error_code=code,
                claim=None,
                finished_at=utcnow(),
            )
            if job is not None:
                self._event(session, job, FAILED, detail=reason)
            return job is not None

    def requeue(
        self,
        job_id: str,
        reason: str,
        *,
        claim: str | None = None,
        delay_s: float = 0.0,
        run_alone: bool = False,
        expect_worker: str | None = None,
    ) -> bool:
        """running -> queued (attempts kept), to be sent again after `delay_s`."""
        where = [Job.id == job_id, Job.state == RUNNING]
        if claim is not None:
            where.append(Job.claim == claim)
        if expect_worker is not None:
            where.append(Job.worker == expect_worker)
        now = utcnow()
        values: dict[str, Any] = {
            "state": QUEUED,
            "error": clean_text(reason),
            "claim": None,
            "enqueued_at": now,
            "not_before": now + timedelta(seconds=delay_s) if delay_s > 0 else None,
        }
        if run_alone:
            values["run_alone"] = True
        with self.write() as session:
            job = self._transition(session, where, **values)
            if job is not None:
                self._event(session, job, "requeued", detail=reason)
            return job is not None

    def running_on(self, workers: list[str]) -> list[Job]:
        with self.read() as session:
            return list(
                session.scalars(select(Job).where(Job.state == RUNNING, Job.worker.in_(workers)))
            )

    def orphaned_running(self, started_before: datetime) -> list[Job]:
        """Running jobs whose worker has no row at all (rows are never deleted, but be safe)."""
        with self.read() as session:
            known = select(WorkerRow.hostname).where(WorkerRow.hostname == Job.worker)
            return list(
                session.scalars(
                    select(Job).where(
                        Job.state == RUNNING,
                        Job.started_at < started_before,
                        ~exists(known),
                    )
                )
            )

    def queued_before(self, enqueued_before: datetime) -> list[Job]:
        """Queued jobs last sent before this time (and due), oldest first."""
        now = utcnow()
        with self.read() as session:
            return list(
                session.scalars(
                    select(Job)
                    .where(
                        Job.state == QUEUED,
                        or_(Job.enqueued_at.is_(None), Job.enqueued_at < enqueued_before),
                        or_(Job.not_before.is_(None), Job.not_before <= now),
                    )
                    .order_by(Job.created_at)
                )
            )

    # -- user actions -----------------------------------------------------------------------

    def cancel(self, job_id: str) -> tuple[Job | None, bool]:
        """queued|running -> cancelled. Returns (job, changed); a running job's result is dropped."""
        with self.write() as session:
            changed = self._update(
                session,
                [Job.id == job_id, Job.state.in_(ACTIVE)],
                state=CANCELLED,
                error=CANCELLED,
                error_code=CANCELLED,
                claim=None,
                finished_at=utcnow(),
            )
            job = session.get(Job, job_id, populate_existing=True)
            if changed and job is not None:
                self._event(session, job, CANCELLED)
            return job, bool(changed)

    def retry(self, job_id: str) -> tuple[Job | None, bool]:
        """failed|cancelled -> queued with a fresh attempt count. Returns (job, changed)."""
        with self.write() as session:
            job = session.get(Job, job_id)
            if job is not None and job.input_purged_at is not None and job.state in TERMINAL:
                raise InvalidRequest(f"job {job_id}: its input file was purged")
            now = utcnow()
            changed = self._update(
                session,
                [Job.id == job_id, Job.state.in_(RETRYABLE)],
                state=QUEUED,
                attempts=0,
                run_alone=False,
                not_before=None,
                worker=None,
                device=None,
                claim=None,
                result=None,
                result_text=None,
                summary=None,
                summary_state=None,
                summary_error=None,
                error=None,
                error_code=None,
                started_at=None,
                finished_at=None,
                enqueued_at=now,
            )
            job = session.get(Job, job_id, populate_existing=True)
            if changed and job is not None:
                if job.batch_id is not None:
                    batch = session.get(Batch, job.batch_id)
                    if batch is not None:
                        batch.finished_at = None
                self._event(session, job, QUEUED, detail="retry")
            return job, bool(changed)

    # -- follow-up text work ----------------------------------------------------------------

    def summary_done(self, job_id: str, text: str | None, error: str | None = None) -> bool:
        with self.write() as session:
            changed = self._update(
                session,
                [Job.id == job_id, Job.summary_state == PENDING],
                summary_state=DONE if error is None else FAILED,
                summary=clean_text(text),
                summary_error=clean_text(error),
            )
            if changed:
                self._event(session, self._fresh(session, job_id), "summary", detail=error)
            return bool(changed)

    def pending_summaries(self, updated_before: datetime) -> list[str]:
        with self.read() as session:
            return list(
                session.scalars(
                    select(Job.id).where(
                        Job.summary_state == PENDING, Job.updated_at < updated_before
                    )
                )
            )

    def finish_batch_if_done(self, batch_id: str) -> tuple[bool, bool]:
        """Mark a closed batch whose jobs have all ended finished, once.

        Returns (finished_now, digest_wanted): the caller that finishes it sends the digest.
        """
        active = exists(select(Job.id).where(Job.batch_id == Batch.id, Job.state.in_(ACTIVE)))
        with self.write() as session:
            stmt = (
                update(Batch)
                .where(
                    Batch.id == batch_id,
                    Batch.closed_at.is_not(None),
                    Batch.finished_at.is_(None),
                    ~active,
                )
                .values(
                    finished_at=utcnow(),
                    digest_state=case(
                        (and_(Batch.digest_requested, Batch.digest_state.is_(None)), PENDING),
                        else_=Batch.digest_state,
                    ),
                )
            )
            changed = session.execute(stmt, execution_options={"synchronize_session": False})
            if not changed.rowcount:  # type: ignore[attr-defined]
                return False, False
            batch = session.get(Batch, batch_id, populate_existing=True)
            assert batch is not None
            self._batch_event(session, batch, "batch_finished")
            return True, batch.digest_state == PENDING

    @staticmethod
    def _batch_event(session: Session, batch: Batch, event: str, detail: str | None = None) -> None:
        row = JobEvent(
            at=utcnow(),
            event=event,
            batch_id=batch.id,
            owner=batch.owner,
            detail=clean_text(detail),
        )
        session.add(row)
        session.flush()
        session.info["events"].append(row)

    def digest_done(self, batch_id: str, text: str | None, error: str | None = None) -> bool:
        with self.write() as session:
            stmt = (
                update(Batch)
                .where(Batch.id == batch_id, Batch.digest_state == PENDING)
                .values(
                    digest_state=DONE if error is None else FAILED,
                    digest=clean_text(text),
                    digest_error=clean_text(error),
                    digest_at=utcnow(),
                )
            )
            changed = session.execute(stmt, execution_options={"synchronize_session": False})
            if not changed.rowcount:  # type: ignore[attr-defined]
                return False
            batch = session.get(Batch, batch_id, populate_existing=True)
            assert batch is not None
            self._batch_event(session, batch, "digest", detail=error)
            return True

    def pending_digests(self, finished_before: datetime) -> list[str]:
        with self.read() as session:
            return list(
                session.scalars(
                    select(Batch.id).where(
                        Batch.digest_state == PENDING, Batch.finished_at < finished_before
                    )
                )
            )

    def unfinished_closed_batches(self) -> list[str]:
        """Closed, unfinished batches with no active job: a finish that a crash interrupted."""
        active = exists(select(Job.id).where(Job.batch_id == Batch.id, Job.state.in_(ACTIVE)))
        with self.read() as session:
            return list(
                session.scalars(
                    select(Batch.id).where(
                        Batch.closed_at.is_not(None), Batch.finished_at.is_(None), ~active
                    )
                )
            )

    def batch_texts(self, batch_id: str) -> list[str]:
        with self.read() as session:
            return [
                t or ""
                for t in session.scalars(
                    select(Job.result_text)
                    .where(Job.batch_id == batch_id, Job.state == SUCCEEDED)
                    .order_by(Job.created_at, Job.id)
                )
            ]

    # -- workers ----------------------------------------------------------------------------

    def register_worker(self, row: WorkerRow) -> WorkerRow | None:
        """Insert or take over `row.hostname`; returns the previous row (None if new)."""
        with self.write() as session:
            old = session.get(WorkerRow, row.hostname)
            previous = None
            if old is not None:
                previous = WorkerRow(
                    hostname=old.hostname,
                    pid=old.pid,
                    boot=old.boot,
                    device=old.device,
                    state=old.state,
                    heartbeat_at=old.heartbeat_at,
                    started_at=old.started_at,
                )
                session.delete(old)
                session.flush()
            now = utcnow()
            row.started_at = row.heartbeat_at = now
            row.jobs_done = 0
            session.add(row)
            return previous

    def heartbeat(
        self,
        hostname: str,
        boot: str,
        *,
        state: str | None = None,
        current_jobs: list[str] | None = None,
        jobs_done: int | None = None,
        model: str | None = None,
    ) -> bool:
        values: dict[str, Any] = {"heartbeat_at": utcnow()}
        if state is not None:
            values["state"] = state
        if model is not None:
            values["model"] = model
        if current_jobs is not None:
            values["current_jobs"] = current_jobs
        if jobs_done is not None:
            values["jobs_done"] = jobs_done
        with self.write() as session:
            stmt = (
                update(WorkerRow)
                .where(WorkerRow.hostname == hostname, WorkerRow.boot == boot)
                .values(**values)
            )
            result = session.execute(stmt, execution_options={"synchronize_session": False})
            return bool(result.rowcount)  # type: ignore[attr-defined]

    def stale_workers(self, heartbeat_before: datetime) -> list[str]:
        with self.read() as session:
            return list(
                session.scalars(
                    select(WorkerRow.hostname).where(WorkerRow.heartbeat_at < heartbeat_before)
                )
            )

    def list_workers(self) -> list[WorkerRow]:
        with self.read() as session:
            return list(session.scalars(select(WorkerRow).order_by(WorkerRow.hostname)))

    # -- queries ----------------------------------------------------------------------------

    def get(self, job_id: str) -> Job | None:
        with self.read() as session:
            return session.get(Job, job_id)

    def get_batch(self, batch_id: str) -> tuple[Batch | None, dict[str, int]]:
        with self.read() as session:
            batch = session.get(Batch, batch_id)
            counts = dict(
                session.execute(
                    select(Job.state, func.count())
                    .where(Job.batch_id == batch_id)
                    .group_by(Job.state)
                ).all()
            )
            return batch, {k: int(v) for k, v in counts.items()}

    def get_many(self, job_ids: Sequence[str]) -> list[Job]:
        """The jobs with these ids, in no particular order; unknown ids are left out."""
        rows: list[Job] = []
        for start in range(0, len(job_ids), _IN_CHUNK):
            chunk = job_ids[start : start + _IN_CHUNK]
            with self.read() as session:
                rows += session.scalars(select(Job).where(Job.id.in_(chunk)))
        return rows

    def list_jobs(
        self, filter: JobFilter, *, cursor: str | None = None, limit: int = 50
    ) -> tuple[list[Job], str | None]:
        """Newest first; returns (jobs, cursor of the next page or None)."""
        stmt = select(Job).where(*_conditions(filter))
        if cursor:
            at, last_id = decode_cursor(cursor)
            stmt = stmt.where(
                or_(Job.created_at < at, and_(Job.created_at == at, Job.id < last_id))
            )
        stmt = stmt.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)
        with self.read() as session:
            rows = list(session.scalars(stmt))
        more = len(rows) > limit
        rows = rows[:limit]
        return rows, encode_cursor(rows[-1]) if more and rows else None

    def recent_jobs(
        self, *, since: datetime, owner: str | None = None, limit: int = 50
    ) -> list[Job]:
        """The newest `limit` of the jobs still queued or running or created since `since`."""
        stmt = select(Job).where(or_(Job.state.in_(ACTIVE), Job.created_at >= since))
        if owner:
            stmt = stmt.where(Job.owner == owner)
        with self.read() as session:
            return list(session.scalars(stmt.order_by(Job.created_at.desc()).limit(limit)))

    def batch_jobs(self, batch_id: str, *, owner: str | None = None) -> list[Job]:
        """The batch's jobs (only `owner`'s, if given), oldest first."""
        stmt = select(Job).where(Job.batch_id == batch_id)
        if owner:
            stmt = stmt.where(Job.owner == owner)
        with self.read() as session:
            return list(session.scalars(stmt.order_by(Job.created_at, Job.id)))

    def lane_positions(self, scan: int) -> dict[str, int]:
        """1-based place of each queued job in its lane (priority), oldest first; only the
        `scan` oldest queued jobs get one."""
        with self.read() as session:
            rows = session.execute(
                select(Job.id, Job.priority)
                .where(Job.state == QUEUED)
                .order_by(Job.created_at, Job.id)
                .limit(scan)
            ).all()
        positions: dict[str, int] = {}
        counters: dict[str, int] = {}
        for job_id, lane in rows:
            counters[lane] = counters.get(lane, 0) + 1
            positions[job_id] = counters[lane]
        return positions

    def queue_depth(self) -> dict[str, int]:
        with self.read() as session:
            lanes = dict(
                session.execute(
                    select(Job.priority, func.count())
                    .where(Job.state == QUEUED)
                    .group_by(Job.priority)
                ).all()
            )
            running = session.scalar(select(func.count()).where(Job.state == RUNNING)) or 0
            text = session.scalar(select(func.count()).where(Job.summary_state == PENDING)) or 0
            text += (
                session.scalar(
                    select(func.count()).select_from(Batch).where(Batch.digest_state == PENDING)
                )
                or 0
            )
        return {
            INTERACTIVE: int(lanes.get(INTERACTIVE, 0)),
            BULK: int(lanes.get(BULK, 0)),
            "text": int(text),
            RUNNING: int(running),
        }

    def metrics(self, latency_bounds: Sequence[float], recent_jobs: int) -> JobMetrics:
        """Job counts by (state, source), the latency histogram of succeeded jobs over
        `latency_bounds`, and each worker's mean tokens/s over its `recent_jobs` latest
        succeeded jobs that report one.

        Three reads in one transaction, aggregated in SQL (a CASE per bucket, one pass) so a
        scrape never loads a row per job into Python, however many the store holds.
        """
        seconds = _seconds_to_finish(self.engine.dialect.name)
        succeeded = and_(Job.state == SUCCEEDED, Job.finished_at.is_not(None))
        with self.read() as session:
            by_state = session.execute(
                select(Job.state, Job.source, func.count()).group_by(Job.state, Job.source)
            ).all()
            total, total_seconds, *cumulative = session.execute(
                select(
                    func.count(),
                    func.coalesce(func.sum(seconds), 0.0),
                    *[func.sum(case((seconds <= bound, 1), else_=0)) for bound in latency_bounds],
                ).where(succeeded)
            ).one()
            # Only the newest jobs overall: a few workers' recent ones fit in 8x the window
            # without reading every timings blob in the table.
            recent = session.execute(
                select(Job.worker, Job.timings)
                .where(Job.state == SUCCEEDED, Job.worker.is_not(None))
                .order_by(Job.finished_at.desc())
                .limit(recent_jobs * 8)
            ).all()
        speeds: dict[str, list[float]] = {}
        for worker, timings in recent:
            value = (timings or {}).get("tokens_per_s")
            if value is not None and len(speeds.setdefault(worker, [])) < recent_jobs:
                speeds[worker].append(float(value))
        return JobMetrics(
            counts={(state, source): int(n) for state, source, n in by_state},
            latency_buckets=tuple(
                (b, int(c or 0)) for b, c in zip(latency_bounds, cumulative, strict=True)
            ),
            latency_count=int(total),
            latency_sum=float(total_seconds or 0.0),
            tokens_per_s={w: sum(v) / len(v) for w, v in speeds.items() if v},
        )

    def finished_since(self, since: datetime) -> list[tuple[datetime, datetime, str]]:
        """(created_at, finished_at, state) of every job that ended at or after `since`."""
        with self.read() as session:
            rows = session.execute(
                select(Job.created_at, Job.finished_at, Job.state).where(
                    Job.finished_at >= since, Job.state.in_(TERMINAL)
                )
            ).all()
        return [(created, finished, state) for created, finished, state in rows]

    def events_after(
        self, after: int, *, limit: int = 500, **filters: str | None
    ) -> list[dict[str, Any]]:
        stmt = select(JobEvent).where(JobEvent.id > after)
        for name in ("job_id", "batch_id", "owner"):
            if filters.get(name):
                stmt = stmt.where(getattr(JobEvent, name) == filters[name])
        with self.read() as session:
            return [event_dict(e) for e in session.scalars(stmt.order_by(JobEvent.id).limit(limit))]

    def last_event_id(self) -> int:
        with self.read() as session:
            return int(session.scalar(select(func.max(JobEvent.id))) or 0)

    def job_events(self, job_id: str) -> list[dict[str, Any]]:
        return self.events_after(0, limit=10_000, job_id=job_id)

    # -- retention --------------------------------------------------------------------------

    def purgeable(self, finished_before: datetime) -> tuple[list[str], set[str]]:
        """(ids of ended jobs past retention, input paths no other job still needs)."""
        old = and_(Job.state.in_(TERMINAL), Job.finished_at < finished_before)
        with self.read() as session:
            rows = session.execute(
                select(Job.id, Job.input_path).where(old, Job.input_purged_at.is_(None))
            ).all()
            paths = {p for _, p in rows}
            if not paths:
                return [], set()
            keep = set(
                session.scalars(
                    select(Job.input_path).where(Job.input_path.in_(paths), ~old).distinct()
                )
            )
        return [i for i, _ in rows], paths - keep

    def mark_purged(self, job_ids: list[str]) -> None:
        with self.write() as session:
            for chunk in range(0, len(job_ids), 500):
                self._update(
                    session,
                    [Job.id.in_(job_ids[chunk : chunk + 500])],
                    input_purged_at=utcnow(),
                )


def encode_cursor(job: Job) -> str:
    raw = f"{job.created_at.isoformat()}|{job.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        at, job_id = raw.split("|", 1)
        return datetime.fromisoformat(at), job_id
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest("invalid cursor") from exc

"""Reading jobs: by id, filtered pages, the live queue, lanes and depth."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import (
    ColumnElement,
    and_,
    func,
    or_,
    select,
)

from appliance.errors import InvalidRequest
from appliance.store.session import StoreSession
from appliance.store.tables import Batch, Job
from appliance.vocab import (
    ACTIVE,
    BULK,
    INTERACTIVE,
    PENDING,
    QUEUED,
    RUNNING,
)


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


def _like(term: str) -> str:
    """A LIKE pattern matching `term` literally anywhere: a user's % or _ is no wildcard."""
    escaped = term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


# One IN (...) query per this many ids: SQLite's variable limit is 32766, and smaller chunks
# keep each read transaction short next to the workers' writes.
_IN_CHUNK = 500


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


class JobQueries(StoreSession):
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

"""The panel's read-only queries on the job store: visible jobs, lane positions, history search.

Writes (submit, cancel, retry) go through `JobService`; reads that need per-user filtering,
lane positions or text search query the store's tables here, in one place, so only this module
knows their shape. Every query is scoped by owner unless the user is an admin.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import Select, and_, or_, select
from sqlalchemy.orm import Session, sessionmaker

from appliance.store.models import ACTIVE, QUEUED, Job

RECENT_HOURS = 24
QUEUE_LIMIT = 50
# Lane positions beyond this show as "> N": counting a 10 000-deep lane every second is waste.
POSITION_SCAN = 1000


def _scoped(query: Select[Any], user: Any) -> Select[Any]:
    return query if user.is_admin else query.where(Job.owner == user.name)


def visible_job(db: sessionmaker[Session], user: Any, job_id: str) -> Job | None:
    """The job if `user` may see it; None both when it does not exist and when it is not theirs
    (the panel answers 404 either way, so ids of other users' jobs are not confirmed)."""
    with db() as session:
        return session.scalar(_scoped(select(Job).where(Job.id == job_id), user))


def queue_jobs(db: sessionmaker[Session], user: Any, now: datetime | None = None) -> list[Job]:
    """What the live queue shows: every active job, then the newest of the last day."""
    now = now or datetime.now(UTC)
    with db() as session:
        query = _scoped(select(Job), user).where(
            or_(Job.state.in_(ACTIVE), Job.created_at >= now - timedelta(hours=RECENT_HOURS))
        )
        return list(session.scalars(query.order_by(Job.created_at.desc()).limit(QUEUE_LIMIT)))


def lane_positions(db: sessionmaker[Session]) -> dict[str, int]:
    """1-based place of each queued job in its lane (priority), oldest first."""
    positions: dict[str, int] = {}
    with db() as session:
        rows = session.execute(
            select(Job.id, Job.priority)
            .where(Job.state == QUEUED)
            .order_by(Job.created_at, Job.id)
            .limit(POSITION_SCAN)
        ).all()
    counters: dict[str, int] = {}
    for job_id, lane in rows:
        counters[lane] = counters.get(lane, 0) + 1
        positions[job_id] = counters[lane]
    return positions


def batch_jobs(db: sessionmaker[Session], user: Any, batch_id: str) -> list[Job]:
    with db() as session:
        query = _scoped(select(Job).where(Job.batch_id == batch_id), user)
        return list(session.scalars(query.order_by(Job.created_at, Job.id)))


@dataclass
class HistoryQuery:
    q: str = ""
    state: str = ""
    task: str = ""
    source: str = ""
    owner: str = ""
    date_from: date | None = None
    date_to: date | None = None
    cursor: str = ""
    limit: int = 50
    terms: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        # Every word must occur ("invoice 2024"); quotes group words ("\"red car\"").
        import shlex

        try:
            self.terms = [t for t in shlex.split(self.q) if t.strip()][:8]
        except ValueError:  # an unbalanced quote: fall back to plain words
            self.terms = self.q.split()[:8]


def _like(term: str) -> str:
    escaped = term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def encode_cursor(job: Job) -> str:
    raw = f"{job.created_at.isoformat()}|{job.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str] | None:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        stamp, job_id = raw.split("|", 1)
        return datetime.fromisoformat(stamp), job_id
    except (ValueError, binascii.Error, UnicodeDecodeError):
        return None


def history(db: sessionmaker[Session], user: Any, hq: HistoryQuery) -> tuple[list[Job], str | None]:
    """Newest first, filtered and searched; the cursor for the next page (or None)."""
    query = _scoped(select(Job), user)
    if hq.state:
        query = query.where(Job.state == hq.state)
    if hq.task:
        query = query.where(Job.task == hq.task)
    if hq.source:
        query = query.where(Job.source == hq.source)
    if hq.owner and user.is_admin:
        query = query.where(Job.owner == hq.owner)
    if hq.date_from:
        query = query.where(Job.created_at >= datetime.combine(hq.date_from, time(), UTC))
    if hq.date_to:
        end = datetime.combine(hq.date_to, time(), UTC) + timedelta(days=1)
        query = query.where(Job.created_at < end)
    for term in hq.terms:
        # ILIKE is case-insensitive on PostgreSQL; SQLite's LIKE already is for ASCII.
        pattern = _like(term)
        query = query.where(
            or_(
                Job.result_text.ilike(pattern, escape="\\"),
                Job.summary.ilike(pattern, escape="\\"),
                Job.filename.ilike(pattern, escape="\\"),
            )
        )
    after = decode_cursor(hq.cursor) if hq.cursor else None
    if after:
        stamp, job_id = after
        query = query.where(
            or_(Job.created_at < stamp, and_(Job.created_at == stamp, Job.id < job_id))
        )
    query = query.order_by(Job.created_at.desc(), Job.id.desc()).limit(hq.limit + 1)
    with db() as session:
        rows = list(session.scalars(query))
    more = len(rows) > hq.limit
    rows = rows[: hq.limit]
    return rows, (encode_cursor(rows[-1]) if more and rows else None)

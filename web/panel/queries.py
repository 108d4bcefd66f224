"""The panel's reads of the job store, scoped to what the signed-in user may see.

Every read goes through `JobService`; this module only turns the panel user into an owner
filter (an admin sees every job) and holds the panel's own limits and search form.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import TYPE_CHECKING, Any

from appliance.errors import InvalidRequest
from web.panel.handles import jobs_service

if TYPE_CHECKING:
    from appliance.jobs import JobInfo, JobPage

RECENT_HOURS = 24
QUEUE_LIMIT = 50


def _owner(user: Any) -> str | None:
    return None if user.is_admin else user.name


def visible_job(user: Any, job_id: str) -> JobInfo | None:
    """The job if `user` may see it; None both when it does not exist and when it is not theirs
    (the panel answers 404 either way, so ids of other users' jobs are not confirmed)."""
    job = jobs_service().get(job_id)
    owner = _owner(user)
    if job is None or (owner is not None and job.owner != owner):
        return None
    return job


def queue_jobs(user: Any, now: datetime | None = None) -> list[JobInfo]:
    """What the live queue shows: every active job, then the newest of the last day."""
    since = (now or datetime.now(UTC)) - timedelta(hours=RECENT_HOURS)
    return jobs_service().recent(since=since, owner=_owner(user), limit=QUEUE_LIMIT)


def batch_jobs(user: Any, batch_id: str) -> list[JobInfo]:
    return jobs_service().batch_jobs(batch_id, owner=_owner(user))


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
        try:
            self.terms = [t for t in shlex.split(self.q) if t.strip()][:8]
        except ValueError:  # an unbalanced quote: fall back to plain words
            self.terms = self.q.split()[:8]


def history(user: Any, hq: HistoryQuery) -> JobPage:
    """Newest first, filtered and searched, with the cursor of the next page."""
    owner = _owner(user) or hq.owner or None  # only an admin picks whose jobs to see
    since = datetime.combine(hq.date_from, time(), UTC) if hq.date_from else None
    until = datetime.combine(hq.date_to, time(), UTC) + timedelta(days=1) if hq.date_to else None

    def page(cursor: str | None) -> JobPage:
        return jobs_service().list(
            state=hq.state or None,
            task=hq.task or None,
            source=hq.source or None,
            owner=owner,
            since=since,
            until=until,
            terms=hq.terms,
            cursor=cursor,
            limit=hq.limit,
        )

    try:
        return page(hq.cursor or None)
    except InvalidRequest:
        if not hq.cursor:
            raise
        # A cursor mangled in the address bar shows the first page rather than an error.
        return page(None)

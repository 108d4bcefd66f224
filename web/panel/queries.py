"""The panel's reads of the job store, scoped to what the signed-in user may see.

Every read goes through `JobService`; this module only turns the panel user into an owner
filter (an admin sees every job) and holds the panel's own limits and search form.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import TYPE_CHECKING, Any

from appliance.errors import InvalidRequest
from web.panel.handles import jobs_service

if TYPE_CHECKING:
    from appliance.jobs import JobInfo, JobPage, SearchPage

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

    def owner_for(self, user: Any) -> str | None:
        return _owner(user) or self.owner or None  # only an admin picks whose jobs to see

    def span(self) -> tuple[datetime | None, datetime | None]:
        """[since, until) of the chosen days, the whole of both."""
        since = datetime.combine(self.date_from, time(), UTC) if self.date_from else None
        until = None
        if self.date_to:
            until = datetime.combine(self.date_to, time(), UTC) + timedelta(days=1)
        return since, until


def search(user: Any, hq: HistoryQuery) -> SearchPage:
    """The full-text search (`hq.q`), best match first, within the same filters and the
    same visibility as the listing. A malformed query raises InvalidRequest."""
    since, until = hq.span()

    def page(cursor: str | None) -> SearchPage:
        return jobs_service().search(
            hq.q,
            owner=hq.owner_for(user),
            state=hq.state or None,
            task=hq.task or None,
            source=hq.source or None,
            since=since,
            until=until,
            cursor=cursor,
            limit=hq.limit,
        )

    try:
        return page(hq.cursor or None)
    except InvalidRequest:
        if not hq.cursor:
            raise
        return page(None)  # a mangled cursor: the first page, as in `history`


def history(user: Any, hq: HistoryQuery) -> JobPage:
    """Newest first, filtered, with the cursor of the next page."""
    owner = hq.owner_for(user)
    since, until = hq.span()

    def page(cursor: str | None) -> JobPage:
        return jobs_service().list(
            state=hq.state or None,
            task=hq.task or None,
            source=hq.source or None,
            owner=owner,
            since=since,
            until=until,
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

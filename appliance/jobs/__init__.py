"""Jobs: the one way in for every intake path (`JobService`, its intake half in `submit`), the backend it shares with the
workers (`JobBackend`: store + broker), and the snapshots it hands out (`views`)."""

from appliance.jobs.backend import JobBackend
from appliance.jobs.search import SearchHit, SearchPage, Snippet
from appliance.jobs.service import JobService
from appliance.jobs.submit import Submission
from appliance.jobs.views import BatchInfo, JobInfo, JobPage, WorkerInfo
from appliance.store.repo import JobMetrics

__all__ = [
    "BatchInfo",
    "JobBackend",
    "JobInfo",
    "JobMetrics",
    "JobPage",
    "JobService",
    "SearchHit",
    "SearchPage",
    "Snippet",
    "Submission",
    "WorkerInfo",
]

"""`JobStore`: every job-state transition as one conditional write plus one event row, and
every query, composed from one module per concern:

- `session`: sessions, the event row, conditional-update helpers (`StoreSession`);
- `job_transitions`: intake, claim, result, failure, requeue, cancel, retry;
- `batch_rows`: batches, digests, job summaries;
- `worker_rows`: worker registration and heartbeats;
- `job_queries`: reading jobs (`JobFilter`, pages, the live queue, lanes);
- `job_metrics`: aggregated reads for metrics and the system page;
- `event_log`: the event log read back; `retention`: recovery's and retention's reads;
- `webhook_rows`: webhook subscriptions, the delivery outbox and its attempt log (the
  outbox rows themselves are written by `outbox.fan_out`, inside each ending transaction);
- `openai_rows`: OpenAI Files + Batches (files, batches, their lines and jobs).
- `search_queries`: full-text search over the index `search_index` keeps current.

A transition only happens from the states it names (`WHERE state = 'queued'` ...), and a
result is only written by the holder of the current claim token, so however many messages or
workers race for a job, it gets at most one result. Callers get the rows back detached.
"""

from __future__ import annotations

from appliance.store.batch_rows import BatchRecords
from appliance.store.event_log import EventLog
from appliance.store.job_metrics import JobMetrics, MetricsQueries
from appliance.store.job_queries import JobFilter, JobQueries, decode_cursor, encode_cursor
from appliance.store.job_transitions import JobTransitions
from appliance.store.openai_rows import OpenAIRecords
from appliance.store.retention import Retention
from appliance.store.search_queries import SearchQueries
from appliance.store.session import Notify, clean_text, event_dict
from appliance.store.webhook_rows import WebhookRecords
from appliance.store.worker_rows import WorkerRecords

__all__ = [
    "JobFilter",
    "JobMetrics",
    "JobStore",
    "Notify",
    "clean_text",
    "decode_cursor",
    "encode_cursor",
    "event_dict",
]


class JobStore(
    JobTransitions,
    BatchRecords,
    WorkerRecords,
    JobQueries,
    SearchQueries,
    MetricsQueries,
    EventLog,
    Retention,
    WebhookRecords,
    OpenAIRecords,
):
    """Transitions and queries on the job store. Thread-safe; one per process is enough."""

"""The webhook outbox: a delivery row per (event, matching subscription), written inside the
transaction that ends the job or finishes the batch (`StoreSession.write` calls `fan_out`).

So the event and its deliveries commit together or not at all: a worker killed after the
commit, a lost doorbell message or a flushed Redis cannot lose a delivery, and a rolled-back
end state cannot send one. The body is fixed here, so every attempt signs the same bytes.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session

from appliance.store.base import utcnow
from appliance.store.tables import Batch, Job, JobEvent
from appliance.store.webhook_tables import WebhookDelivery, WebhookSubscription
from appliance.vocab import JOB_EVENT_PREFIX, PENDING, webhook_event

# Prebuilt (see job_transitions): this runs in the per-job write path.
_ENABLED = select(
    WebhookSubscription.id, WebhookSubscription.events, WebhookSubscription.folder
).where(WebhookSubscription.enabled.is_(True))
_JOB_COLUMNS = (
    Job.id,
    Job.state,
    Job.filename,
    Job.task,
    Job.source,
    Job.owner,
    Job.batch_id,
    Job.attempts,
    Job.created_at,
    Job.finished_at,
    Job.error,
    Job.error_code,
)
# How the watcher labels a folder's queue batches (`appliance.watch.digests`): "<folder>: batch
# <id>". A folder subscription matches the jobs and batches under that label.
FOLDER_LABEL_SEPARATOR = ": batch "


def folder_of(label: str | None) -> str | None:
    """The drop folder a batch label names, or None for batches from other intake paths."""
    if not label or FOLDER_LABEL_SEPARATOR not in label:
        return None
    return label.rpartition(FOLDER_LABEL_SEPARATOR)[0]


def new_message_id() -> str:
    return "msg_" + uuid.uuid4().hex


def _iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


def fan_out(session: Session, events: Iterable[JobEvent]) -> int:
    """Add the deliveries `events` call for; returns how many (0 without subscriptions)."""
    wanted = [(e, name) for e in events if (name := webhook_event(e.event)) is not None]
    if not wanted:
        return 0
    subs = session.execute(_ENABLED).all()
    if not subs:
        return 0
    job_ids = {e.job_id for e, name in wanted if e.job_id and name.startswith(JOB_EVENT_PREFIX)}
    jobs = {}
    if job_ids:
        rows = session.execute(select(*_JOB_COLUMNS).where(Job.id.in_(job_ids)))
        jobs = {row.id: row._asdict() for row in rows}
    batch_ids = {e.batch_id for e, _ in wanted if e.batch_id}
    batches = {}
    if batch_ids:
        batches = {b.id: b for b in session.scalars(select(Batch).where(Batch.id.in_(batch_ids)))}
    now = utcnow()
    rows_out: list[dict[str, Any]] = []
    for event, name in wanted:
        batch = batches.get(event.batch_id or "")
        if name.startswith(JOB_EVENT_PREFIX):
            job = jobs.get(event.job_id or "")
            if job is None:
                continue
            subject, data = job["id"], _job_data(job)
        elif batch is not None:
            subject, data = batch.id, _batch_data(session, batch)
        else:
            continue
        folder = folder_of(batch.label if batch is not None else None)
        body = json.dumps(
            {"type": name, "timestamp": _iso(event.at), "data": data},
            separators=(",", ":"),
            ensure_ascii=False,
        )
        for sub in subs:
            if name in sub.events and (sub.folder is None or sub.folder == folder):
                rows_out.append(
                    {
                        "id": new_message_id(),
                        "subscription_id": sub.id,
                        "event": name,
                        "subject": subject,
                        "payload": body,
                        "state": PENDING,
                        "attempts": 0,
                        "created_at": now,
                        "next_attempt_at": now,
                    }
                )
    if rows_out:
        session.execute(insert(WebhookDelivery), rows_out)
    return len(rows_out)


def _job_data(job: dict[str, Any]) -> dict[str, Any]:
    """What a receiver needs to act; the result itself is one GET away (it can be large)."""
    data = {k: _iso(v) if isinstance(v, datetime) else v for k, v in job.items()}
    data["job_id"] = data.pop("id")
    data["result_path"] = f"/api/v1/jobs/{data['job_id']}/result"
    return data


def _batch_data(session: Session, batch: Batch) -> dict[str, Any]:
    counts = session.execute(
        select(Job.state, func.count()).where(Job.batch_id == batch.id).group_by(Job.state)
    ).all()
    return {
        "batch_id": batch.id,
        "label": batch.label,
        "source": batch.source,
        "owner": batch.owner,
        "total": batch.total,
        "counts": {state: n for state, n in counts},
        "created_at": _iso(batch.created_at),
        "finished_at": _iso(batch.finished_at),
    }

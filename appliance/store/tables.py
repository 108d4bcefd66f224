"""The job store's tables: jobs, batches, job events and worker heartbeats.

The store, not Redis, is the source of truth for a job's state. Every state change is one
conditional UPDATE (see `appliance.store.repo`) plus one `JobEvent` row in the same
transaction, so the event log shows exactly what happened to each job.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
)
from sqlalchemy.orm import Mapped, mapped_column

from appliance.store.base import Base, UTCDateTime, utcnow
from appliance.vocab import QUEUED

# An autoincrementing 64-bit key that SQLite also accepts as its rowid alias.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class Batch(Base):
    """Jobs submitted together (one drop-folder burst, one `appliance submit`, one upload)."""

    __tablename__ = "batches"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # No more jobs will join; the digest is made once every job of a closed batch has ended.
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    source: Mapped[str] = mapped_column(String(16))
    owner: Mapped[str | None] = mapped_column(String(255), index=True)
    label: Mapped[str | None] = mapped_column(String(512))
    language: Mapped[str] = mapped_column(String(8), default="en")
    total: Mapped[int] = mapped_column(Integer, default=0)
    digest_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    digest_state: Mapped[str | None] = mapped_column(String(16))
    digest: Mapped[str | None] = mapped_column(Text)
    digest_error: Mapped[str | None] = mapped_column(Text)
    digest_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class Job(Base):
    """One file to analyze with one request, from any intake path."""

    __tablename__ = "jobs"
    __table_args__ = (
        # The dynamic-batching lookup: queued jobs with the same generation parameters.
        Index("ix_jobs_state_compat", "state", "compat_key", "created_at"),
        Index("ix_jobs_created", "created_at", "id"),
        # Retention's hourly purge and the system page's last 24 h look jobs up by end time.
        Index("ix_jobs_state_finished", "state", "finished_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # When a broker message was last sent for it (the reconciler re-sends lost ones).
    enqueued_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    source: Mapped[str] = mapped_column(String(16))
    priority: Mapped[str] = mapped_column(String(16))
    owner: Mapped[str | None] = mapped_column(String(255), index=True)
    batch_id: Mapped[str | None] = mapped_column(ForeignKey("batches.id"), index=True)
    # Scoped by owner; a second submit with the same key returns the first job.
    idempotency_key: Mapped[str | None] = mapped_column(String(600), unique=True)

    filename: Mapped[str] = mapped_column(String(512))
    input_path: Mapped[str] = mapped_column(Text)
    input_sha256: Mapped[str] = mapped_column(String(64), index=True)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    pages: Mapped[int | None] = mapped_column(Integer)
    input_purged_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    task: Mapped[str] = mapped_column(String(32))
    prompt: Mapped[str | None] = mapped_column(Text)
    # The whole TaskRequest as JSON; `compat_key` is its batch_key() for dynamic batching.
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    compat_key: Mapped[str] = mapped_column(String(255))

    state: Mapped[str] = mapped_column(String(16), default=QUEUED, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # Set after an interrupted or failed batched run: the next attempt runs on its own.
    run_alone: Mapped[bool] = mapped_column(Boolean, default=False)
    not_before: Mapped[datetime | None] = mapped_column(UTCDateTime())
    worker: Mapped[str | None] = mapped_column(String(255))
    device: Mapped[str | None] = mapped_column(String(255))
    # A fresh token per claim: only the claim holder may write the result.
    claim: Mapped[str | None] = mapped_column(String(36))

    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    result_text: Mapped[str | None] = mapped_column(Text)
    timings: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    summary_state: Mapped[str | None] = mapped_column(String(16))
    summary: Mapped[str | None] = mapped_column(Text)
    summary_error: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    # bad_input | missing_input | poison | timeout | model | gave_up | cancelled | safety
    error_code: Mapped[str | None] = mapped_column(String(32))
    # The safety stage's checks, in order: [{stage, verdict, categories, model, ms, raw}].
    safety: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON(none_as_null=True))


class JobEvent(Base):
    """Append-only log of every state change; its id is the SSE event id."""

    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    job_id: Mapped[str | None] = mapped_column(String(36), index=True)
    batch_id: Mapped[str | None] = mapped_column(String(36), index=True)
    owner: Mapped[str | None] = mapped_column(String(255))
    # queued | running | requeued | succeeded | failed | cancelled | summary | batch_finished
    # | digest
    event: Mapped[str] = mapped_column(String(24))
    state: Mapped[str | None] = mapped_column(String(16))
    attempt: Mapped[int | None] = mapped_column(Integer)
    worker: Mapped[str | None] = mapped_column(String(255))
    detail: Mapped[str | None] = mapped_column(Text)


class WorkerRow(Base):
    """One worker process (`gpu0@host`): what it runs on and when it last said it was alive."""

    __tablename__ = "workers"

    hostname: Mapped[str] = mapped_column(String(255), primary_key=True)
    pid: Mapped[int] = mapped_column(Integer)
    boot: Mapped[str] = mapped_column(String(36))
    device: Mapped[str] = mapped_column(String(255))
    model: Mapped[str | None] = mapped_column(String(255))
    queues: Mapped[list[str]] = mapped_column(JSON, default=list)
    # starting | idle | busy | stopped
    state: Mapped[str] = mapped_column(String(16))
    current_jobs: Mapped[list[str]] = mapped_column(JSON, default=list)
    jobs_done: Mapped[int] = mapped_column(Integer, default=0)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

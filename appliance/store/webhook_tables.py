"""The webhook tables: subscriptions, deliveries (the outbox) and every delivery attempt.

A delivery row is written in the same transaction as the job's or batch's end (see
`appliance.store.outbox`), so an event that happened is never lost to a crash, a lost Redis
message or a restarted Redis: the workers drain the rows, not the messages.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Boolean, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from appliance.store.base import Base, UTCDateTime, utcnow
from appliance.store.tables import BigId
from appliance.vocab import PENDING


class WebhookSubscription(Base):
    __tablename__ = "webhook_subscriptions"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    url: Mapped[str] = mapped_column(Text)
    events: Mapped[list[str]] = mapped_column(JSON)
    # Kept in clear: the box must sign with it (Standard Webhooks' symmetric scheme).
    secret: Mapped[str] = mapped_column(String(128))
    description: Mapped[str] = mapped_column(String(200), default="")
    # Only the jobs and batches of this drop folder (its resolved path); None: every job.
    folder: Mapped[str | None] = mapped_column(String(1024))
    # api: made by an admin (API, CLI, panel); settings: kept in step with `[[folders]]`.
    origin: Mapped[str] = mapped_column(String(16), default="api")
    created_by: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    disabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    disabled_reason: Mapped[str | None] = mapped_column(Text)
    # Failed attempts since the last success, and when that run of failures began.
    failures: Mapped[int] = mapped_column(Integer, default=0)
    failing_since: Mapped[datetime | None] = mapped_column(UTCDateTime())


class WebhookDelivery(Base):
    """One event for one subscription; its id is the Standard Webhooks `webhook-id`, the same
    on every attempt so a receiver can drop duplicates."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        # The drain's lookup: pending deliveries that are due.
        Index("ix_webhook_deliveries_due", "state", "next_attempt_at"),
        Index("ix_webhook_deliveries_sub", "subscription_id", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    subscription_id: Mapped[str] = mapped_column(ForeignKey("webhook_subscriptions.id"))
    event: Mapped[str] = mapped_column(String(32))
    # The job or batch the event is about.
    subject: Mapped[str | None] = mapped_column(String(36), index=True)
    # The exact body sent (JSON text), fixed at the event so every attempt signs the same bytes.
    payload: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16), default=PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=utcnow)
    # Held by one drainer until then, so two workers never send the same delivery at once.
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_status: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)


class WebhookAttempt(Base):
    """One HTTP attempt of a delivery: the delivery log shown in the API and the panel."""

    __tablename__ = "webhook_attempts"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    delivery_id: Mapped[str] = mapped_column(ForeignKey("webhook_deliveries.id"), index=True)
    subscription_id: Mapped[str] = mapped_column(String(36), index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    attempt: Mapped[int] = mapped_column(Integer)
    ok: Mapped[bool] = mapped_column(Boolean)
    status: Mapped[int | None] = mapped_column(Integer)
    latency_ms: Mapped[int | None] = mapped_column(Integer)
    # The address actually connected to (after the allow-list check).
    address: Mapped[str | None] = mapped_column(String(64))
    response_excerpt: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)

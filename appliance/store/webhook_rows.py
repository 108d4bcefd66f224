"""Webhook subscriptions, the delivery outbox and its attempt log, as `JobStore` writes them.

Deliveries are taken with a lease (one conditional UPDATE each), so the drains of several
workers never send one delivery twice at the same time; a drainer that dies mid-send leaves a
lease that simply runs out.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

from sqlalchemy import func, literal, or_, select, update
from sqlalchemy.orm import Session

from appliance.store.base import UTCDateTime, utcnow
from appliance.store.session import StoreSession, clean_text
from appliance.store.webhook_tables import WebhookAttempt, WebhookDelivery, WebhookSubscription
from appliance.vocab import DELIVERED, FAILED, PENDING

Due = tuple[WebhookDelivery, WebhookSubscription]
# Why a settings subscription was disabled; it comes back when the file lists it again.
REMOVED_FROM_SETTINGS = "removed from the settings file"


def _due(now: datetime) -> list[object]:
    return [
        WebhookDelivery.state == PENDING,
        WebhookDelivery.next_attempt_at <= now,
        or_(WebhookDelivery.lease_until.is_(None), WebhookDelivery.lease_until < now),
        WebhookSubscription.enabled.is_(True),
    ]


class WebhookRecords(StoreSession):
    # -- subscriptions -----------------------------------------------------------------------

    def add_subscription(self, row: WebhookSubscription) -> WebhookSubscription:
        with self.write() as session:
            session.add(row)
            session.flush()
            return row

    def subscription(self, sub_id: str) -> WebhookSubscription | None:
        with self.read() as session:
            return session.get(WebhookSubscription, sub_id)

    def subscriptions(self) -> list[WebhookSubscription]:
        with self.read() as session:
            stmt = select(WebhookSubscription).order_by(WebhookSubscription.created_at)
            return list(session.scalars(stmt))

    def set_subscription_enabled(
        self, sub_id: str, enabled: bool, reason: str | None = None
    ) -> WebhookSubscription | None:
        """Enable (forgetting past failures) or disable with a reason; None if unknown."""
        with self.write() as session:
            row = session.get(WebhookSubscription, sub_id)
            if row is None:
                return None
            if enabled:
                row.enabled, row.disabled_at, row.disabled_reason = True, None, None
                row.failures, row.failing_since = 0, None
            elif row.enabled:
                row.enabled, row.disabled_at = False, utcnow()
                row.disabled_reason = clean_text(reason) or "disabled by an admin"
            return row

    def sync_subscriptions(self, origin: str, wanted: Iterable[WebhookSubscription]) -> int:
        """Make the `origin` rows match `wanted` (by id): add new ones, update changed ones,
        disable those no longer wanted (and enable them again once they are back). A row an
        admin or the failure rule disabled stays disabled."""
        wanted = {row.id: row for row in wanted}
        with self.write() as session:
            stmt = select(WebhookSubscription).where(WebhookSubscription.origin == origin)
            have = {row.id: row for row in session.scalars(stmt)}
            for sub_id, row in wanted.items():
                old = have.get(sub_id)
                if old is None:
                    session.add(row)
                    continue
                old.url, old.events, old.secret = row.url, row.events, row.secret
                old.description, old.folder = row.description, row.folder
                if not old.enabled and old.disabled_reason == REMOVED_FROM_SETTINGS:
                    old.enabled, old.disabled_at, old.disabled_reason = True, None, None
            for sub_id, old in have.items():
                if sub_id not in wanted and old.enabled:
                    old.enabled, old.disabled_at = False, utcnow()
                    old.disabled_reason = REMOVED_FROM_SETTINGS
            return len(wanted)

    # -- deliveries --------------------------------------------------------------------------

    def has_due_deliveries(self, now: datetime | None = None) -> bool:
        with self.read() as session:
            stmt = (
                select(WebhookDelivery.id)
                .join(WebhookSubscription)
                .where(*_due(now or utcnow()))
                .limit(1)
            )
            return session.scalar(stmt) is not None

    def take_due_deliveries(self, limit: int, lease_s: float) -> list[Due]:
        """Lease up to `limit` due deliveries of enabled subscriptions, oldest due first."""
        now = utcnow()
        with self.write() as session:
            stmt = (
                select(WebhookDelivery, WebhookSubscription)
                .join(WebhookSubscription)
                .where(*_due(now))
                .order_by(WebhookDelivery.next_attempt_at)
                .limit(limit)
            )
            taken: list[Due] = []
            for delivery, sub in session.execute(stmt).all():
                if self._lease(session, delivery.id, now, now + timedelta(seconds=lease_s)):
                    taken.append((delivery, sub))
            return taken

    @staticmethod
    def _lease(session: Session, delivery_id: str, now: datetime, until: datetime) -> bool:
        stmt = (
            update(WebhookDelivery)
            .where(
                WebhookDelivery.id == delivery_id,
                WebhookDelivery.state == PENDING,
                or_(WebhookDelivery.lease_until.is_(None), WebhookDelivery.lease_until < now),
            )
            .values(lease_until=until)
        )
        result = session.execute(stmt, execution_options={"synchronize_session": False})
        return bool(result.rowcount)  # type: ignore[attr-defined]

    def record_attempt(
        self, attempt: WebhookAttempt, retry_at: datetime | None
    ) -> WebhookSubscription | None:
        """Log one attempt and move its delivery on: delivered, due again at `retry_at`, or
        failed when `retry_at` is None. Returns the subscription with its failure count."""
        with self.write() as session:
            attempt.response_excerpt = clean_text(attempt.response_excerpt)
            attempt.error = clean_text(attempt.error)
            session.add(attempt)
            values: dict[str, object] = {
                "attempts": attempt.attempt,
                "lease_until": None,
                "last_status": attempt.status,
                "last_error": attempt.error,
            }
            if attempt.ok:
                values.update(state=DELIVERED, delivered_at=attempt.at, next_attempt_at=None)
            elif retry_at is not None:
                values.update(next_attempt_at=retry_at)
            else:
                values.update(state=FAILED, next_attempt_at=None)
            session.execute(
                update(WebhookDelivery)
                .where(WebhookDelivery.id == attempt.delivery_id)
                .values(**values),
                execution_options={"synchronize_session": False},
            )
            sub = WebhookSubscription
            counters = (
                {"failures": 0, "failing_since": None}
                if attempt.ok
                else {"failures": sub.failures + 1, "failing_since": _coalesce(attempt.at)}
            )
            session.execute(
                update(sub).where(sub.id == attempt.subscription_id).values(**counters),
                execution_options={"synchronize_session": False},
            )
            return session.get(sub, attempt.subscription_id, populate_existing=True)

    def deliveries(
        self, subscription_id: str | None = None, state: str | None = None, limit: int = 50
    ) -> list[WebhookDelivery]:
        with self.read() as session:
            stmt = select(WebhookDelivery).order_by(WebhookDelivery.created_at.desc()).limit(limit)
            if subscription_id is not None:
                stmt = stmt.where(WebhookDelivery.subscription_id == subscription_id)
            if state is not None:
                stmt = stmt.where(WebhookDelivery.state == state)
            return list(session.scalars(stmt))

    def delivery(self, delivery_id: str) -> tuple[WebhookDelivery, list[WebhookAttempt]] | None:
        with self.read() as session:
            row = session.get(WebhookDelivery, delivery_id)
            if row is None:
                return None
            stmt = (
                select(WebhookAttempt)
                .where(WebhookAttempt.delivery_id == delivery_id)
                .order_by(WebhookAttempt.id)
            )
            return row, list(session.scalars(stmt))

    def redeliver(self, delivery_id: str) -> WebhookDelivery | None:
        """Send a delivery again now, whatever its state (same `webhook-id`, attempts go on)."""
        with self.write() as session:
            row = session.get(WebhookDelivery, delivery_id)
            if row is None:
                return None
            row.state, row.next_attempt_at, row.lease_until = PENDING, utcnow(), None
            return row


def _coalesce(at: datetime) -> object:
    """`failing_since` keeps the start of the current run of failures."""
    return func.coalesce(WebhookSubscription.failing_since, literal(at, UTCDateTime()))

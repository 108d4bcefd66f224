"""The drain: send the due deliveries, log every attempt, schedule retries, disable what keeps
failing. Runs on the workers' side (the `webhooks` queue's task), never in a web request.

Each delivery is leased before it is sent (see `appliance.store.webhook_rows`), so the drains
of several workers share the outbox without sending a delivery twice at once. A delivery gets
one attempt per due time: the first at once, the next after `retry_schedule_s[n]` (with
jitter); when the schedule is used up it has failed, and a manual redeliver sends it again.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from datetime import datetime, timedelta

from appliance.errors import TargetRefused
from appliance.settings import Settings, Webhooks
from appliance.store.base import utcnow
from appliance.store.repo import JobStore
from appliance.store.webhook_tables import WebhookAttempt, WebhookDelivery, WebhookSubscription
from appliance.vocab import DELIVERED, FAILED
from appliance.webhooks.sender import Outcome, post
from appliance.webhooks.signing import sign_headers
from appliance.webhooks.targets import AllowList, Target

log = logging.getLogger(__name__)

Send = Callable[[Target, bytes, dict[str, str], Webhooks], Outcome]


class Deliverer:
    def __init__(
        self,
        store: JobStore,
        settings: Settings,
        *,
        send: Send = post,
        allow: AllowList | None = None,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.store = store
        self.cfg = settings.webhooks
        self.allow = allow or AllowList(self.cfg.allow)
        self.send = send
        self.rand = rand

    @property
    def lease_s(self) -> float:
        """Longer than one attempt can take, so a lease runs out only for a dead drainer."""
        return 2 * (self.cfg.connect_timeout_s + self.cfg.timeout_s) + 30

    def drain(self, max_s: float = 30.0, batch: int = 20) -> dict[str, int]:
        """Attempt every due delivery, for up to about `max_s`; returns counts by outcome."""
        counts = {DELIVERED: 0, "retrying": 0, FAILED: 0}
        deadline = time.monotonic() + max_s
        while time.monotonic() < deadline:
            due = self.store.take_due_deliveries(batch, self.lease_s)
            if not due:
                break
            for delivery, sub in due:
                attempt, retry_at = self.attempt(delivery, sub)
                key = DELIVERED if attempt.ok else "retrying" if retry_at else FAILED
                counts[key] += 1
        return counts

    def attempt(
        self, delivery: WebhookDelivery, sub: WebhookSubscription
    ) -> tuple[WebhookAttempt, datetime | None]:
        """One POST of `delivery`, logged; returns the attempt and when the next one is due."""
        number = delivery.attempts + 1
        at = utcnow()
        body = delivery.payload
        try:
            # Resolved and checked again now: the name may point elsewhere than at creation.
            target = self.allow.check(sub.url)
            headers = sign_headers(sub.secret, delivery.id, body, at)
            outcome = self.send(target, body.encode(), headers, self.cfg)
        except TargetRefused as exc:
            outcome = Outcome(False, error=f"refused: {exc}")
        retry_at = None if outcome.ok else self.next_attempt(number, at)
        attempt = WebhookAttempt(
            delivery_id=delivery.id,
            subscription_id=sub.id,
            at=at,
            attempt=number,
            ok=outcome.ok,
            status=outcome.status,
            latency_ms=outcome.latency_ms,
            address=outcome.address,
            response_excerpt=outcome.excerpt,
            error=outcome.error,
        )
        updated = self.store.record_attempt(attempt, retry_at)
        if outcome.ok:
            log.info("webhook %s %s delivered to %s", delivery.event, delivery.id, sub.url)
        else:
            log.warning(
                "webhook %s %s to %s failed (attempt %d): %s",
                delivery.event,
                delivery.id,
                sub.url,
                number,
                outcome.error,
            )
            if updated is not None:
                self._maybe_disable(updated, outcome, at)
        return attempt, retry_at

    def next_attempt(self, attempts_made: int, at: datetime) -> datetime | None:
        """When to try again after `attempts_made` attempts, or None: the schedule is used up."""
        schedule = self.cfg.retry_schedule_s
        if attempts_made > len(schedule):
            return None
        delay = schedule[attempts_made - 1]
        delay *= 1 + self.cfg.jitter * (2 * self.rand() - 1)
        return at + timedelta(seconds=max(0.0, delay))

    def _maybe_disable(self, sub: WebhookSubscription, outcome: Outcome, at: datetime) -> None:
        """Disable a subscription that failed `disable_after_failures` times in a row over at
        least `disable_after_hours`: a receiver that is gone for good stops costing attempts."""
        if not sub.enabled or sub.failures < self.cfg.disable_after_failures:
            return
        since = sub.failing_since or at
        if at - since < timedelta(hours=self.cfg.disable_after_hours):
            return
        last = outcome.error or f"HTTP {outcome.status}"
        reason = (
            f"{sub.failures} failed attempts in a row since "
            f"{since.isoformat(timespec='seconds')}; last: {last}"
        )
        if self.store.set_subscription_enabled(sub.id, False, reason) is not None:
            log.error("webhook subscription %s (%s) disabled: %s", sub.id, sub.url, reason)

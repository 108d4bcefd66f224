"""What callers see of subscriptions, deliveries and attempts: plain data, never the secret."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from appliance.store.webhook_tables import WebhookAttempt, WebhookDelivery, WebhookSubscription


def _plain(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


@dataclass(frozen=True)
class SubscriptionInfo:
    id: str
    url: str
    events: list[str]
    description: str
    folder: str | None
    origin: str
    enabled: bool
    disabled_reason: str | None
    disabled_at: datetime | None
    failures: int
    created_at: datetime
    created_by: str | None

    @classmethod
    def from_row(cls, row: WebhookSubscription) -> SubscriptionInfo:
        return cls(
            id=row.id,
            url=row.url,
            events=list(row.events),
            description=row.description or "",
            folder=row.folder,
            origin=row.origin,
            enabled=row.enabled,
            disabled_reason=row.disabled_reason,
            disabled_at=row.disabled_at,
            failures=row.failures or 0,
            created_at=row.created_at,
            created_by=row.created_by,
        )

    def to_dict(self) -> dict[str, Any]:
        return {k: _plain(v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class AttemptInfo:
    attempt: int
    at: datetime
    ok: bool
    status: int | None
    latency_ms: int | None
    address: str | None
    response_excerpt: str | None
    error: str | None

    @classmethod
    def from_row(cls, row: WebhookAttempt) -> AttemptInfo:
        return cls(
            attempt=row.attempt,
            at=row.at,
            ok=row.ok,
            status=row.status,
            latency_ms=row.latency_ms,
            address=row.address,
            response_excerpt=row.response_excerpt,
            error=row.error,
        )

    def to_dict(self) -> dict[str, Any]:
        return {k: _plain(v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class DeliveryInfo:
    id: str
    subscription_id: str
    event: str
    subject: str | None
    state: str
    attempts: int
    created_at: datetime
    next_attempt_at: datetime | None
    delivered_at: datetime | None
    last_status: int | None
    last_error: str | None
    payload: dict[str, Any]
    log: list[AttemptInfo]

    @classmethod
    def from_row(
        cls, row: WebhookDelivery, attempts: list[WebhookAttempt] | None = None
    ) -> DeliveryInfo:
        return cls(
            id=row.id,
            subscription_id=row.subscription_id,
            event=row.event,
            subject=row.subject,
            state=row.state,
            attempts=row.attempts,
            created_at=row.created_at,
            next_attempt_at=row.next_attempt_at,
            delivered_at=row.delivered_at,
            last_status=row.last_status,
            last_error=row.last_error,
            payload=json.loads(row.payload),
            log=[AttemptInfo.from_row(a) for a in attempts or []],
        )

    def to_dict(self) -> dict[str, Any]:
        out = {k: _plain(v) for k, v in asdict(self).items() if k != "log"}
        out["log"] = [a.to_dict() for a in self.log]
        return out

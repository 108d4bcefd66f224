"""`WebhookService`: the one way the API, the CLI and the panel manage subscriptions and read
the delivery log; and the settings' per-folder subscriptions, kept in step with the file."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from pathlib import Path

from appliance.errors import InvalidRequest, TargetRefused, WebhookNotFound
from appliance.settings import Settings
from appliance.store.repo import JobStore
from appliance.store.webhook_tables import WebhookSubscription
from appliance.vocab import DELIVERY_STATES, WEBHOOK_EVENTS
from appliance.webhooks.signing import generate_secret
from appliance.webhooks.targets import AllowList
from appliance.webhooks.views import DeliveryInfo, SubscriptionInfo

log = logging.getLogger(__name__)

API = "api"
SETTINGS = "settings"
MAX_URL = 2048


def check_events(events: list[str] | None) -> list[str]:
    """The events asked for, each known; none given means all of them."""
    chosen = list(dict.fromkeys(e.strip() for e in events or [] if e.strip()))
    unknown = [e for e in chosen if e not in WEBHOOK_EVENTS]
    if unknown:
        raise InvalidRequest(
            f"unknown webhook event(s) {', '.join(unknown)}; choose from {', '.join(WEBHOOK_EVENTS)}"
        )
    return chosen or list(WEBHOOK_EVENTS)


class WebhookService:
    def __init__(
        self,
        store: JobStore,
        settings: Settings,
        *,
        allow: AllowList | None = None,
        ring: Callable[[], object] | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.allow = allow or AllowList(settings.webhooks.allow)
        # The workers' doorbell (Broker.send_webhooks): a redelivery goes out at once.
        self.ring = ring if ring is not None else store.on_outbox

    @classmethod
    def from_settings(cls, settings: Settings) -> WebhookService:
        from appliance.jobs.backend import JobBackend

        return cls(JobBackend.from_settings(settings).store, settings)

    # -- subscriptions -----------------------------------------------------------------------

    def create(
        self,
        url: str,
        events: list[str] | None = None,
        *,
        description: str = "",
        created_by: str | None = None,
    ) -> tuple[SubscriptionInfo, str]:
        """A new subscription and its secret: returned here, never shown again."""
        url = url.strip()
        if len(url) > MAX_URL:
            raise InvalidRequest(f"webhook URL is longer than {MAX_URL} characters")
        if len(description) > 200:
            raise InvalidRequest("description must be at most 200 characters")
        self.allow.check(url)  # TargetRefused (an InvalidRequest) with the reason
        secret = generate_secret()
        row = WebhookSubscription(
            id=str(uuid.uuid4()),
            url=url,
            events=check_events(events),
            secret=secret,
            description=description,
            origin=API,
            created_by=created_by,
            enabled=True,
            failures=0,
        )
        return SubscriptionInfo.from_row(self.store.add_subscription(row)), secret

    def list(self) -> list[SubscriptionInfo]:
        return [SubscriptionInfo.from_row(r) for r in self.store.subscriptions()]

    def get(self, sub_id: str) -> SubscriptionInfo:
        row = self.store.subscription(sub_id)
        if row is None:
            raise WebhookNotFound(f"no webhook subscription {sub_id}")
        return SubscriptionInfo.from_row(row)

    def disable(self, sub_id: str, reason: str | None = None) -> SubscriptionInfo:
        row = self.store.set_subscription_enabled(sub_id, False, reason)
        if row is None:
            raise WebhookNotFound(f"no webhook subscription {sub_id}")
        return SubscriptionInfo.from_row(row)

    def enable(self, sub_id: str) -> SubscriptionInfo:
        """Enable again; its target is checked against today's allow-list first."""
        self.allow.check(self.get(sub_id).url)
        row = self.store.set_subscription_enabled(sub_id, True)
        assert row is not None
        if self.ring is not None and self.store.has_due_deliveries():
            self.ring()  # deliveries that waited while it was disabled
        return SubscriptionInfo.from_row(row)

    # -- the delivery log --------------------------------------------------------------------

    def deliveries(
        self, sub_id: str | None = None, state: str | None = None, limit: int = 50
    ) -> list[DeliveryInfo]:
        if sub_id is not None:
            self.get(sub_id)
        if state is not None and state not in DELIVERY_STATES:
            raise InvalidRequest(f"state must be one of {', '.join(DELIVERY_STATES)}")
        rows = self.store.deliveries(sub_id, state, max(1, min(limit, 500)))
        return [DeliveryInfo.from_row(r) for r in rows]

    def delivery(self, delivery_id: str) -> DeliveryInfo:
        found = self.store.delivery(delivery_id)
        if found is None:
            raise WebhookNotFound(f"no webhook delivery {delivery_id}")
        return DeliveryInfo.from_row(*found)

    def redeliver(self, delivery_id: str) -> DeliveryInfo:
        """Send a delivery again now (same `webhook-id`, so a receiver can tell)."""
        row = self.store.redeliver(delivery_id)
        if row is None:
            raise WebhookNotFound(f"no webhook delivery {delivery_id}")
        if self.ring is not None:
            self.ring()
        return self.delivery(delivery_id)

    # -- the settings file -------------------------------------------------------------------

    def sync_settings(self) -> int:
        """Make the subscriptions of `[[folders]] webhooks` match the settings file. A target
        the allow-list refuses is left out, loudly."""
        wanted = []
        for folder in self.settings.folders:
            path = str(Path(folder.path).resolve())
            for hook in folder.webhooks:
                try:
                    self.allow.check(hook.url)
                    events = check_events(hook.events)
                except (TargetRefused, InvalidRequest) as exc:
                    log.error("webhook of folder %s left out: %s", path, exc)
                    continue
                wanted.append(
                    WebhookSubscription(
                        # Stable per folder and URL, so a restart updates the same row.
                        id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"{path}\n{hook.url}")),
                        url=hook.url,
                        events=events,
                        secret=hook.secret,
                        description=hook.description or f"drop folder {path}",
                        folder=path,
                        origin=SETTINGS,
                        enabled=True,
                        failures=0,
                    )
                )
        return self.store.sync_subscriptions(SETTINGS, wanted)

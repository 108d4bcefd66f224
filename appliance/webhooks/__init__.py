"""Webhooks: signed HTTP callbacks when a job ends or a batch finishes (issue 16).

A file's walk, module by module:

- `appliance.store.outbox`: the job's end state and its delivery rows commit together;
- `targets`: a target URL checked against `[webhooks] allow` (resolved at creation and again
  before every attempt, since DNS can change) and pinned to the checked address;
- `signing`: Standard Webhooks headers (`webhook-id`, `webhook-timestamp`, `webhook-signature`);
- `sender`: one POST, no redirects followed, short timeouts, the response excerpt truncated;
- `delivery`: the drain on the workers' side (leases, retries with backoff and jitter, the
  attempt log, disabling a subscription that keeps failing);
- `service`: what the API, the CLI and the panel call (create, list, enable/disable,
  deliveries, redeliver) and the settings' per-folder subscriptions kept in step.
"""

from __future__ import annotations

from appliance.webhooks.delivery import Deliverer
from appliance.webhooks.service import WebhookService
from appliance.webhooks.signing import generate_secret, sign_headers
from appliance.webhooks.targets import AllowList, Target

__all__ = [
    "AllowList",
    "Deliverer",
    "Target",
    "WebhookService",
    "generate_secret",
    "sign_headers",
]

"""Standard Webhooks signatures (https://www.standardwebhooks.com), with its own library.

`webhook-signature` is `v1,` + base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}")), where the
key is the base64 part of the `whsec_...` secret. A receiver verifies with any Standard
Webhooks library (`standardwebhooks.Webhook(secret).verify(body, headers)`) or those few lines.
"""

from __future__ import annotations

import base64
import secrets
from datetime import datetime

from standardwebhooks import Webhook

SECRET_PREFIX = "whsec_"
# 24 random bytes (192 bits): Standard Webhooks asks for 24 to 64.
_SECRET_BYTES = 24
USER_AGENT = "vision-appliance-webhooks/1"


def generate_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(_SECRET_BYTES)).decode()


def sign_headers(secret: str, msg_id: str, body: str, at: datetime) -> dict[str, str]:
    """The headers of one attempt: a fresh timestamp (receivers reject old ones) over the
    same id and body."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, at, body),
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
    }

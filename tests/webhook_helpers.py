"""A real HTTP webhook receiver for the tests: stdlib `http.server` in a thread on 127.0.0.1.

It verifies every request's Standard Webhooks signature twice, independently: by recomputing
the HMAC-SHA256 by hand, and with the `standardwebhooks` library a receiver would use.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks import Webhook


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    status: int  # what the receiver answered
    signature_ok: bool
    library_ok: bool
    at: float = field(default_factory=time.monotonic)

    @property
    def json(self) -> dict[str, Any]:
        return json.loads(self.body)

    @property
    def event(self) -> str:
        return str(self.json["type"])


def expected_signature(secret: str, msg_id: str, timestamp: str, body: bytes) -> str:
    """`v1,` + base64(HMAC-SHA256(base64-decoded secret, "{id}.{timestamp}.{body}"))."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = msg_id.encode() + b"." + timestamp.encode() + b"." + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


class Receiver:
    """Answers each POST with the next status of `script` (then `default`), records it all."""

    def __init__(self, secret: str = "", script: list[int] | None = None, default: int = 200):
        self.secret = secret
        self.script = list(script or [])
        self.default = default
        self.received: list[Received] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                headers = {k.lower(): v for k, v in self.headers.items()}
                with receiver.lock:
                    status = receiver.script.pop(0) if receiver.script else receiver.default
                    receiver.received.append(
                        Received(headers, body, status, *receiver.verify(headers, body))
                    )
                self.send_response(status)
                if 300 <= status < 400:
                    self.send_header("Location", "http://10.0.0.5/elsewhere")
                payload = b"ok" if status < 300 else b"receiver says no " + b"x" * 2000
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def verify(self, headers: dict[str, str], body: bytes) -> tuple[bool, bool]:
        if not self.secret:
            return False, False
        msg_id = headers.get("webhook-id", "")
        timestamp = headers.get("webhook-timestamp", "")
        wanted = expected_signature(self.secret, msg_id, timestamp, body)
        by_hand = hmac.compare_digest(wanted, headers.get("webhook-signature", ""))
        try:
            Webhook(self.secret).verify(body, headers)
            library = True
        except Exception:
            library = False
        return by_hand, library

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def requests(self) -> list[Received]:
        with self.lock:
            return list(self.received)

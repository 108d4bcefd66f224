"""One webhook attempt: a POST to a checked address, with the stdlib's `http.client`.

`http.client` follows no redirects (a 3xx is an answer, logged as a failure: a redirect could
point anywhere, past the allow-list). It connects to the address the allow-list checked, and
sends the URL's host name in `Host` and, for https, in SNI and the certificate check. Timeouts
are short and the response body is read only as far as the excerpt the log keeps.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import time
from dataclasses import dataclass
from pathlib import Path

from appliance.settings import Webhooks
from appliance.webhooks.targets import Target


@dataclass(frozen=True)
class Outcome:
    ok: bool
    status: int | None = None
    latency_ms: int | None = None
    address: str | None = None
    excerpt: str | None = None
    error: str | None = None


class _Connection(http.client.HTTPConnection):
    """Connects to `address` within `connect_timeout`, then allows `timeout` per read."""

    def __init__(self, address: str, port: int, connect_timeout: float, timeout: float) -> None:
        super().__init__(address, port, timeout=timeout)
        self.connect_timeout = connect_timeout

    def connect(self) -> None:
        self.sock = socket.create_connection((self.host, self.port), self.connect_timeout)
        self.sock.settimeout(self.timeout)


class _TLSConnection(_Connection):
    def __init__(
        self,
        address: str,
        port: int,
        connect_timeout: float,
        timeout: float,
        server_hostname: str,
        context: ssl.SSLContext,
    ) -> None:
        super().__init__(address, port, connect_timeout, timeout)
        self.server_hostname = server_hostname
        self.context = context

    def connect(self) -> None:
        super().connect()
        self.sock = self.context.wrap_socket(self.sock, server_hostname=self.server_hostname)


def _tls_context(ca_file: Path | None) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca_file) if ca_file else None)


def post(target: Target, body: bytes, headers: dict[str, str], cfg: Webhooks) -> Outcome:
    """POST `body` to `target`, trying its checked addresses in order until one connects."""
    headers = {**headers, "Host": target.host_header, "Content-Length": str(len(body))}
    started = time.monotonic()
    error = "no address to connect to"
    for address in target.addresses:
        conn: _Connection
        if target.scheme == "https":
            conn = _TLSConnection(
                address,
                target.port,
                cfg.connect_timeout_s,
                cfg.timeout_s,
                target.host,
                _tls_context(cfg.ca_file),
            )
        else:
            conn = _Connection(address, target.port, cfg.connect_timeout_s, cfg.timeout_s)
        try:
            try:
                conn.connect()
            except OSError as exc:  # refused, unreachable, connect timeout: try the next one
                error = f"connect to {address}: {_reason(exc)}"
                continue
            conn.request("POST", target.path, body=body, headers=headers)
            response = conn.getresponse()
            excerpt = response.read(cfg.excerpt_bytes).decode("utf-8", "replace")
            latency = int((time.monotonic() - started) * 1000)
            ok = 200 <= response.status < 300
            why = None
            if not ok:
                why = f"HTTP {response.status} {response.reason}".strip()
                if 300 <= response.status < 400:
                    why += " (redirects are not followed)"
            return Outcome(ok, response.status, latency, address, excerpt, why)
        except (OSError, http.client.HTTPException) as exc:
            latency = int((time.monotonic() - started) * 1000)
            return Outcome(False, None, latency, address, None, f"{address}: {_reason(exc)}")
        finally:
            conn.close()
    return Outcome(False, None, int((time.monotonic() - started) * 1000), None, None, error)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError | socket.timeout):
        return "timed out"
    return str(exc) or type(exc).__name__

"""How every process reaches Redis: the URL with the credentials from the settings (or a file
readable by the service user only), TLS for `rediss://`, and the refusal to use a Redis on
the network without a password.

A Redis shared by several boxes listens on the LAN; without an ACL password anyone there
could read or drop the queue. Credentials never come from the command line (a process's
arguments are visible to every user of the box).
"""

from __future__ import annotations

import ipaddress
import ssl
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from appliance.errors import ApplianceError

if TYPE_CHECKING:
    from appliance.settings import Settings


class RedisUnsafe(ApplianceError):
    """A non-loopback Redis without credentials: refused at start, restarting won't help."""


def _password(settings: Settings) -> str:
    if settings.redis_password_file is not None:
        return settings.redis_password_file.read_text().strip()
    return settings.redis_password


def redis_url(settings: Settings) -> str:
    """`settings.redis_url` with `redis_username` / `redis_password(_file)` put in (they win
    over any credentials written in the URL)."""
    url = settings.redis_url
    password = _password(settings)
    if not password and not settings.redis_username:
        return url
    parts = urlsplit(url)
    user = settings.redis_username or unquote(parts.username or "")
    secret = password or unquote(parts.password or "")
    host = parts.hostname or "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    auth = f"{quote(user, safe='')}:{quote(secret, safe='')}@" if secret else ""
    return urlunsplit((parts.scheme, f"{auth}{host}{port}", parts.path, parts.query, ""))


def redis_ssl(settings: Settings) -> dict[str, Any] | None:
    """TLS options for `rediss://` (server certificate always checked), else None."""
    if not settings.redis_url.startswith("rediss://"):
        return None
    options: dict[str, Any] = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    if settings.redis_ca_file is not None:
        options["ssl_ca_certs"] = str(settings.redis_ca_file)
    return options


def redis_client_kwargs(settings: Settings) -> dict[str, Any]:
    """Extra keyword arguments for `redis.Redis.from_url(redis_url(settings), ...)`."""
    return dict(redis_ssl(settings) or {})


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def require_credentials(settings: Settings) -> None:
    """Raise RedisUnsafe (one line) when Redis is on the network and no password is set."""
    parts = urlsplit(settings.redis_url)
    if parts.scheme == "unix" or _loopback(parts.hostname or "127.0.0.1"):
        return
    if parts.password or _password(settings):
        return
    raise RedisUnsafe(
        f"refusing to use Redis at {parts.hostname}:{parts.port or 6379} without credentials:"
        " a Redis on the network needs a password (set redis_password_file, or"
        " APPLIANCE_REDIS_PASSWORD, with redis_username for an ACL user)"
    )

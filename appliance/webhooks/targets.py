"""Where a webhook may go: `[webhooks] allow` lists host names, addresses and CIDR networks.

A box inside a hospital network must not become a way to probe that network, so:

- only `http`/`https` URLs with a host and no credentials;
- a host named in the list is allowed by name; any other host is allowed only when *every*
  address it resolves to lies in a listed network (a name that resolves partly outside is
  refused, so a second DNS answer cannot sneak past);
- the check runs at creation and again before every attempt, and the attempt connects to the
  address that was checked (`Target.addresses`), not to a second lookup's answer.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from appliance.errors import TargetRefused

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], list[str]]
_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class Target:
    url: str
    scheme: str
    host: str
    port: int
    # Path and query, as sent in the request line.
    path: str
    # The checked addresses, in the resolver's order: the attempt connects to one of these.
    addresses: tuple[str, ...]

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == _DEFAULT_PORTS[self.scheme] else f"{host}:{self.port}"


def resolve(host: str, port: int) -> list[str]:
    """Every address `host` resolves to (stream sockets), in the resolver's order."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    seen: dict[str, None] = {}
    for info in infos:
        seen.setdefault(str(info[4][0]).split("%")[0], None)
    return list(seen)


def _address(text: str) -> IPAddress:
    addr = ipaddress.ip_address(text)
    # ::ffff:10.0.0.5 is 10.0.0.5: judge it as IPv4, or a v4 network entry would miss it.
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


class AllowList:
    def __init__(self, entries: list[str], resolver: Resolver = resolve) -> None:
        self.entries = list(entries)
        self.resolver = resolver
        self.networks: list[Network] = []
        self.hosts: set[str] = set()
        for entry in entries:
            try:
                self.networks.append(ipaddress.ip_network(entry.strip(), strict=False))
            except ValueError:
                self.hosts.add(entry.strip().lower().rstrip("."))

    def check(self, url: str) -> Target:
        """The target `url` names, resolved and allowed; else `TargetRefused` with the reason."""
        parts = urlsplit(url.strip())
        scheme = parts.scheme.lower()
        if scheme not in _DEFAULT_PORTS:
            raise TargetRefused(f"webhook URL must be http:// or https://, not {url!r}")
        if parts.username or parts.password:
            raise TargetRefused("webhook URL must not carry credentials; sign with the secret")
        host = (parts.hostname or "").lower().rstrip(".")
        if not host:
            raise TargetRefused(f"webhook URL has no host: {url!r}")
        try:
            port = parts.port or _DEFAULT_PORTS[scheme]
        except ValueError as exc:
            raise TargetRefused(f"webhook URL has a bad port: {exc}") from None
        if not self.entries:
            raise TargetRefused(
                "no webhook targets are allowed on this box: list hosts or networks in the "
                "settings ([webhooks] allow)"
            )
        try:
            literal = _address(host)
            addresses = [str(literal)]
        except ValueError:
            addresses = self._resolve(host, port)
        if host not in self.hosts:
            outside = [a for a in addresses if not any(_address(a) in n for n in self.networks)]
            if outside:
                shown = host if host == addresses[0] else f"{host} ({', '.join(addresses)})"
                raise TargetRefused(
                    f"webhook target {shown} is outside the allowed hosts and networks "
                    f"({', '.join(self.entries)})"
                )
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        return Target(url.strip(), scheme, host, port, path, tuple(addresses))

    def _resolve(self, host: str, port: int) -> list[str]:
        try:
            addresses = self.resolver(host, port)
        except (OSError, UnicodeError) as exc:
            raise TargetRefused(f"webhook host {host} does not resolve: {exc}") from None
        if not addresses:
            raise TargetRefused(f"webhook host {host} does not resolve")
        return addresses

"""Several booted targets on a network of their own (the head node's test), and what the
provisioning tests ask a booted box: /readyz with its admin token, its journal.

The network: one namespace per host (`ip netns`) plus one holding a bridge, a veth pair per
host, addresses from a private /24. Nothing leaves the machine; every namespace is deleted
afterwards. A container boots inside its host's namespace (`systemd-nspawn
--network-namespace-path`), so its services bind and reach the /24 addresses as on a LAN."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

from tests.provisioning import target as t

SUBNET = "10.231.0"


def _ip(*args: str) -> None:
    t.run(["ip", *args], timeout=30)


@contextlib.contextmanager
def lan(hosts: list[str]) -> Iterator[dict[str, tuple[str, str]]]:
    """Namespaces for `hosts` on one bridge; yields {host: (namespace path, address)}, the
    addresses .1, .2, ... in the order of `hosts`."""
    tag = f"hn{os.getpid() % 10000}"  # short: interface names have at most 15 characters
    bridge = f"{tag}-br"
    made = [bridge]
    addresses: dict[str, tuple[str, str]] = {}
    try:
        _ip("netns", "add", bridge)
        _ip("-n", bridge, "link", "add", "br0", "type", "bridge")
        _ip("-n", bridge, "link", "set", "br0", "up")
        for index, host in enumerate(hosts, start=1):
            ns, inner, outer = f"{tag}-{index}", f"{tag}i{index}", f"{tag}o{index}"
            _ip("netns", "add", ns)
            made.append(ns)
            _ip("link", "add", inner, "type", "veth", "peer", "name", outer)
            _ip("link", "set", inner, "netns", ns)
            _ip("link", "set", outer, "netns", bridge)
            _ip("-n", ns, "addr", "add", f"{SUBNET}.{index}/24", "dev", inner)
            _ip("-n", ns, "link", "set", inner, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", bridge, "link", "set", outer, "master", "br0")
            _ip("-n", bridge, "link", "set", outer, "up")
            addresses[host] = (f"/run/netns/{ns}", f"{SUBNET}.{index}")
        yield addresses
    finally:
        for ns in reversed(made):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def http_status(machine: t.Booted, url: str) -> int:
    """GET `url` inside the box with the admin token Ansible made (/readyz wants a token)."""
    token = (machine.root / "etc/appliance/admin.token").read_text().strip()
    code = (
        "import sys, urllib.request\n"
        f"req = urllib.request.Request({url!r}, headers={{'Authorization': 'Bearer {token}'}})\n"
        "try:\n"
        "    print(urllib.request.urlopen(req, timeout=5).status)\n"
        "except urllib.error.HTTPError as e:\n"
        "    print(e.code)\n"
        "except Exception as e:\n"
        "    print(0)\n"
    )
    out = machine.sh("/usr/bin/python3", "-c", code, timeout=30).stdout.strip()
    return int(out or 0)


def journal(machine: t.Booted, lines: int = 80) -> str:
    return machine.sh("journalctl", "--no-pager", "-n", str(lines), timeout=30).stdout


def nsenter_host(machine: t.Booted, bundle: Path, **hostvars: object) -> dict[str, object]:
    """An inventory entry that reaches a booted box through nsenter."""
    return {
        "ansible_connection": "community.docker.nsenter",
        "ansible_nsenter_pid": machine.leader,
        "ansible_python_interpreter": "/usr/bin/python3",
        "ansible_become": False,
        "appliance_bundle_dir": str(bundle),
        **hostvars,
    }

"""A fleet with a head node, provisioned offline (issue 13): roles/head on one booted root,
two appliance boxes on the same test-owned network, one ansible/site.yml run for all three.

The head is a copy of the pristine debootstrap root; the boxes are copies of the root the
provisioning module already applied (session fixtures, tests/provisioning/fixtures.py), so
this test adds no debootstrap and no first apply. Box A takes the job in and runs no worker;
the job is done by box B's worker through the head's Redis, PostgreSQL and S3 store.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

import pytest

from tests.provisioning import target as t
from tests.provisioning.fixtures import BOX_VARS, TIMINGS, VENV, Applied
from tests.provisioning.fleet import http_status, journal, lan, nsenter_host

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

if os.geteuid() != 0:
    pytest.skip("provisioning tests need root (mount, chroot, nspawn)", allow_module_level=True)
if os.environ.get("APPLIANCE_SKIP_PROVISIONING") == "1":
    pytest.skip("APPLIANCE_SKIP_PROVISIONING=1", allow_module_level=True)
if t.missing_tools() or not Path("/usr/sbin/ip").exists() and not Path("/usr/bin/ip").exists():
    pytest.skip(f"missing: {', '.join(t.missing_tools()) or 'ip'}", allow_module_level=True)

SECRETS = ["postgres_password", "redis_password", "s3_access_key", "s3_secret_key"]
BOX_SECRETS = ["redis.password", "pgpass", "s3.access_key", "s3.secret_key"]


def _active(machine: t.Booted, unit: str) -> str:
    return machine.sh("systemctl", "is-active", unit).stdout.strip()


def _cmdlines(machine: t.Booted) -> str:
    """Every process's command line in the container (minbase has no `ps`)."""
    script = "for f in /proc/[0-9]*/cmdline; do tr '\\0' ' ' < $f; echo; done"
    return machine.sh("sh", "-c", script).stdout


def _unit_log(machine: t.Booted) -> str:
    """The state and last lines of the appliance's worker and web services."""
    status = machine.sh("systemctl", "--no-pager", "status", "appliance-worker@cpu",
                        "appliance-web", timeout=30).stdout  # fmt: skip
    return status + machine.sh("journalctl", "--no-pager", "-n", "40", "-u",
                               "appliance-worker@cpu", timeout=30).stdout  # fmt: skip


def _redis_says(machine: t.Booted, address: str, command: str) -> str:
    """One raw RESP command to the head's Redis from a box, without credentials."""
    code = (
        "import socket\n"
        f"s = socket.create_connection(({address!r}, 6379), timeout=5)\n"
        f"s.sendall({(command + chr(13) + chr(10)).encode()!r})\n"
        "print(s.recv(200).decode(errors='replace').strip())\n"
    )
    return machine.sh("/usr/bin/python3", "-c", code, timeout=30).stdout.strip()


def test_head_and_two_boxes_share_one_queue(applied: Applied, tmp_path: Path) -> None:
    overlays = {
        "head": t.mount_overlay(tmp_path / "head", [applied.pristine]),
        "box-a": t.mount_overlay(tmp_path / "box-a", [applied.layer, applied.pristine]),
        "box-b": t.mount_overlay(tmp_path / "box-b", [applied.layer, applied.pristine]),
    }
    try:
        for name, ov in overlays.items():  # machines of a fleet have names of their own
            (ov.root / "etc/hostname").write_text(f"hn-{name}\n")
        with lan(list(overlays)) as net, contextlib.ExitStack() as stack:
            started = time.monotonic()
            m = {
                name: stack.enter_context(
                    t.booted(f"hn-{name}", ov.root, tmp_path / f"{name}.log", netns=net[name][0])
                )
                for name, ov in overlays.items()
            }
            TIMINGS["head_boot_three_s"] = round(time.monotonic() - started, 1)
            head_address = net["head"][1]
            box = {"health_gate_timeout": 150, **BOX_VARS}
            inventory = {"all": {"children": {
                "head": {"hosts": {"head-1": nsenter_host(m["head"], applied.bundle,
                                                        head_address=head_address)}},
                # The box with the worker first: box A's /readyz needs a worker somewhere.
                "appliances": {"hosts": {
                    "box-b": nsenter_host(m["box-b"], applied.bundle, **box),
                    "box-a": nsenter_host(m["box-a"], applied.bundle, gpu_workers_enabled=False,
                                          **box),
                }},
            }}}  # fmt: skip
            inv = tmp_path / "fleet.json"
            inv.write_text(json.dumps(inventory))
            play = t.play(inv)
            TIMINGS["head_fleet_apply_s"] = round(play.seconds, 1)
            assert play.rc == 0, play.output[-5000:] + "".join(
                f"\n--- {name}\n{_unit_log(machine)}" for name, machine in m.items()
            )
            hosts = ["head-1", "box-a", "box-b"]
            assert {h: play.recap[h]["failed"] for h in hosts} == dict.fromkeys(hosts, 0)

            # The head: its services up, credentials kept by root only, none on a command line.
            for unit in ("postgresql@15-main", "redis-server", "seaweedfs"):
                assert _active(m["head"], unit) == "active", (unit, journal(m["head"]))
            head_root = overlays["head"].root
            secrets = {}
            for name in SECRETS:
                path = head_root / "etc/appliance-head" / name
                assert (path.stat().st_uid, path.stat().st_mode & 0o777) == (0, 0o600), name
                secrets[name] = path.read_text().strip()
            assert all(len(value) >= 20 for value in secrets.values())
            cmdlines = "".join(_cmdlines(m[name]) for name in ("head", "box-a", "box-b"))
            assert "weed server" in cmdlines and "-s3.config=" in cmdlines
            assert not [s for s in secrets.values() if s in cmdlines]
            # SeaweedFS's unit is hardened (exposure 0-10 as systemd rates it; 2.0 or less).
            unit = head_root / "etc/systemd/system/seaweedfs.service"
            rating = t.run(["systemd-analyze", "security", "--offline=yes", "--threshold=20",
                            str(unit)], check=False)  # fmt: skip
            assert rating.returncode == 0, rating.stdout[-1500:] + rating.stderr
            # Redis on the LAN: protected, the default user off; a box without the password
            # gets nothing.
            assert _redis_says(m["box-a"], head_address, "PING").startswith("-NOAUTH"), _redis_says(
                m["box-a"], head_address, "PING"
            )

            # The boxes: the head's URLs in their settings, credentials in files of their own.
            for name in ("box-a", "box-b"):
                root = overlays[name].root
                toml = (root / "etc/appliance/appliance.toml").read_text()
                assert f'redis_url = "redis://{head_address}:6379/0"' in toml, toml
                assert f"@{head_address}:5432/appliance?" in toml, toml
                assert f'endpoint_url = "http://{head_address}:8333"' in toml, toml
                assert not [s for s in secrets.values() if s in toml]
                for file in BOX_SECRETS:
                    st = (root / "etc/appliance" / file).stat()
                    assert st.st_mode & 0o777 == 0o600 and st.st_uid != 0, (name, file)
            assert _active(m["box-a"], "appliance-worker@cpu.service") != "active"
            assert _active(m["box-b"], "appliance-worker@cpu.service") == "active"

            # A file submitted on box A is done by box B's worker.
            image = "/var/lib/appliance/data/probe.png"
            m["box-a"].sh(
                "runuser", "-u", "appliance", "--", f"{VENV}/bin/python", "-c",
                f"from PIL import Image; Image.new('RGB', (64, 48), (30, 90, 200)).save({image!r})",
                check=True,
            )  # fmt: skip
            started = time.monotonic()
            job = m["box-a"].sh(
                "runuser", "-u", "appliance", "--", "env",
                "APPLIANCE_CONFIG_FILE=/etc/appliance/appliance.toml", "HOME=/var/lib/appliance/data",
                f"{VENV}/bin/appliance", "submit", image, "--task", "caption", "--max-new-tokens", "8",
                "--wait", "--timeout", "240", "--json",
                timeout=300,
            )  # fmt: skip
            TIMINGS["head_job_s"] = round(time.monotonic() - started, 1)
            logs = f"{job.stdout}\n{job.stderr}\n{journal(m['box-a'])}\n{journal(m['box-b'])}"
            assert job.returncode == 0, logs
            result = json.loads(job.stdout.strip().splitlines()[-1])
            assert result["state"] == "succeeded", result
            assert "hn-box-b" in (result.get("worker") or ""), result

            for name in ("box-a", "box-b"):
                status = http_status(m[name], "http://127.0.0.1:8000/readyz")
                assert status == 200, (name, status, journal(m[name]))
    finally:
        for ov in overlays.values():
            ov.unmount()

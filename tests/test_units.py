"""The systemd units in systemd/: they parse cleanly, they are hardened (one shared drop-in,
appliance-.service.d/hardening.conf, plus what differs per unit), their stop timeouts let a
running job be re-queued, and `systemd-analyze security` rates them.

`systemd-analyze verify` exits 0 on parse errors ("Unknown key ...", "Failed to parse ...,
ignoring"), so any output on stderr counts as a failure. Each unit is verified inside a small
root (the host's own systemd units plus an `appliance` executable where ExecStart points) so
that the ExecStart check resolves. Device rules and IP rules are not enforced on this machine
(cgroup v1): they are checked statically here.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.provisioning.units import (
    HARDENING_DROPIN,
    SERVICE_FILES,
    SERVICES,
    UNITS_DIR,
    effective,
    parse_unit,
)

needs_systemd_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)

HOST_UNITS = Path("/usr/lib/systemd/system")
# `systemd-analyze security` (systemd 252, Debian 12) on each unit with the drop-in: the README
# quotes these ("OK" is anything up to 4.0); a change in the hardening shows up here first.
EXPOSURE = {
    "appliance-web.service": 1.2,
    "appliance-watch.service": 1.2,
    "appliance-text-worker.service": 1.4,
    "appliance-worker@0.service": 1.6,
    "appliance-worker@cpu.service": 1.6,
}
# The checks of `systemd-analyze security` a unit does not pass, by their names in --json.
# Every unit: it talks to Redis and the web over sockets (no PrivateNetwork=, no address
# family or IP allow list to tighten), runs in the host's root without private mounts, makes
# group-readable files, and systemd's own device ACL lets in /dev/rtc.
OPEN_TO_ALL = {
    "DeviceAllow=",
    "IPAddressDeny=",
    "PrivateMounts=",
    "PrivateNetwork=",
    "RestrictAddressFamilies=~AF_(INET|INET6)",
    "RestrictAddressFamilies=~AF_UNIX",
    "RootDirectory=/RootImage=",
    "UMask=",
}
# The workers, in their units' words: JIT code, /proc/cpuinfo, thread pinning; the GPU ones
# see the NVIDIA devices.
OPEN_TO_WORKERS = {"MemoryDenyWriteExecute=", "ProcSubset=", "SystemCallFilter=~@resources"}
OPEN = {
    "appliance-web.service": OPEN_TO_ALL,
    "appliance-watch.service": OPEN_TO_ALL,
    "appliance-text-worker.service": OPEN_TO_ALL | OPEN_TO_WORKERS,
    "appliance-worker@0.service": OPEN_TO_ALL | OPEN_TO_WORKERS | {"PrivateDevices="},
    "appliance-worker@cpu.service": OPEN_TO_ALL | OPEN_TO_WORKERS | {"PrivateDevices="},
}
# Settings every service ends with (its unit file and drop-ins read as systemd reads them).
HARDENING = {
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateUsers": "yes",
    "RestrictNamespaces": "yes",
    "LockPersonality": "yes",
    "DevicePolicy": "closed",
    "User": "appliance",
    "Group": "appliance",
    "Restart": "on-failure",
    "CapabilityBoundingSet": "",
    "AmbientCapabilities": "",
    "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
    "SystemCallErrorNumber": "EPERM",
}
# What a drop-in must not set: read after the unit, it would override or extend what differs
# between the units (PrivateDevices= would hide the GPU; an allow list in SystemCallFilter=
# would put back what a unit's "~" list took out).
PER_UNIT = {
    "PrivateDevices",
    "DeviceAllow",
    "MemoryDenyWriteExecute",
    "ProcSubset",
    "SystemCallFilter",
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
        if unit.is_dir():  # the drop-ins: appliance-.service.d/
            shutil.copytree(unit, etc / unit.name)
        else:
            shutil.copy(unit, etc / unit.name)
    return root


def _verify(root: Path, unit: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", "verify", f"--root={root}", unit],
        capture_output=True,
        text=True,
        timeout=60,
    )


def _security(root: Path, unit: str, *args: str) -> str:
    out = subprocess.run(
        [
            "systemd-analyze",
            "security",
            "--offline=yes",
            f"--root={root}",
            "--no-pager",
            *args,
            unit,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return out.stdout + out.stderr


def _exposure(root: Path, unit: str) -> float:
    out = _security(root, unit)
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?) (\w+)", out)
    assert match, f"no exposure line for {unit}: {out[-500:]}"
    return float(match.group(1))


@needs_systemd_analyze
@pytest.mark.parametrize("unit", [*SERVICES, "appliance.target"])
def test_verify_has_no_output_on_stderr(unit_root: Path, unit: str) -> None:
    result = _verify(unit_root, unit)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr


@needs_systemd_analyze
@pytest.mark.parametrize("unit", ["appliance-web.service", "appliance-worker@0.service"])
def test_verify_check_catches_a_typo(unit_root: Path, tmp_path: Path, unit: str) -> None:
    """The stderr rule has teeth: one misspelt key is reported although the exit code is 0,
    and the shared drop-in is read for a plain unit and for a template's instance alike."""
    root = tmp_path / "root"
    shutil.copytree(unit_root, root, symlinks=True)
    dropin = root / "etc/systemd/system/appliance-.service.d/hardening.conf"
    dropin.write_text(dropin.read_text().replace("PrivateTmp=yes", "PrivateTemp=yes"))
    result = _verify(root, unit)
    assert "PrivateTemp" in result.stderr


@needs_systemd_analyze
@pytest.mark.parametrize("unit", sorted(EXPOSURE))
def test_security_exposure(unit_root: Path, unit: str) -> None:
    score = _exposure(unit_root, unit)
    print(f"{unit}: exposure {score}")
    assert score == EXPOSURE[unit], f"{unit}: {score}; update EXPOSURE and the README"


@needs_systemd_analyze
@pytest.mark.parametrize("unit", sorted(OPEN))
def test_security_checks_each_unit_passes(unit_root: Path, unit: str) -> None:
    """systemd's own reading of the unit plus the drop-in: every check passes but the listed
    ones, so PrivateUsers=, ProtectSystem= ... reach the template's instances too."""
    checks = json.loads(_security(unit_root, unit, "--json=short"))
    failing = {check["name"] for check in checks if not check["set"]}
    assert failing == OPEN[unit]


def test_readme_quotes_the_exposure_scores() -> None:
    readme = " ".join((UNITS_DIR.parent / "README.md").read_text().split())
    match = re.search(
        r"`systemd-analyze security`: web ([\d.]+), watcher ([\d.]+), text worker ([\d.]+), "
        r"GPU and CPU workers ([\d.]+)",
        readme,
    )
    assert match, "the README no longer quotes the exposure scores"
    web, watcher, text, workers = map(float, match.groups())
    assert (web, watcher, text) == (
        EXPOSURE["appliance-web.service"],
        EXPOSURE["appliance-watch.service"],
        EXPOSURE["appliance-text-worker.service"],
    )
    assert (
        workers
        == EXPOSURE["appliance-worker@0.service"]
        == EXPOSURE["appliance-worker@cpu.service"]
    )


def test_hardening_lives_in_one_file() -> None:
    """The shared settings are in the drop-in and nowhere else; what differs is never in it."""
    shared = parse_unit(HARDENING_DROPIN)
    assert set(shared) == {"Service"}
    shared_keys = set(shared["Service"])
    assert shared_keys >= set(HARDENING) - {"User", "Group", "Restart"}
    assert not shared_keys & PER_UNIT, shared_keys & PER_UNIT
    for name in SERVICE_FILES:
        own = set(parse_unit(UNITS_DIR / name)["Service"])
        assert not own & shared_keys, f"{name} repeats {sorted(own & shared_keys)}"
    dropins = sorted(p.relative_to(UNITS_DIR).as_posix() for p in UNITS_DIR.glob("*.d/*"))
    assert dropins == ["appliance-.service.d/hardening.conf"]


@pytest.mark.parametrize("name", SERVICES)
def test_hardening_settings(name: str) -> None:
    unit = effective(name)
    service = unit["Service"]
    for key, want in HARDENING.items():
        assert service.get(key, [None])[-1] == want, f"{name}: {key}={want} missing"
    assert "/var/lib/appliance/data" in service["ReadWritePaths"]
    assert service["SystemCallFilter"][0] == "@system-service"  # an allow list, then ~ lists
    assert service["SystemCallFilter"][-1].split()[0] == "~@privileged"
    assert "appliance.target" in unit["Install"]["WantedBy"]
    assert "appliance.target" in unit["Unit"]["PartOf"]
    assert "redis-server.service" in unit["Unit"]["After"][0].split()


def test_only_gpu_workers_see_nvidia_devices() -> None:
    gpu = effective("appliance-worker@0.service")["Service"]
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
        service = effective(name)["Service"]
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


def _role_yaml() -> dict[Path, object]:
    import yaml

    return {
        p: yaml.safe_load(p.read_text()) for p in sorted((ANSIBLE_DIR / "roles").rglob("*.yml"))
    }


def test_handlers_are_lower_case_and_every_notify_names_one() -> None:
    docs = _role_yaml()
    handlers = {
        task["name"]
        for path, tasks in docs.items()
        if path.parent.name == "handlers"
        for task in tasks or []
    }
    assert handlers and all(name == name.lower() for name in handlers), handlers
    notified: set[str] = set()
    for path, tasks in docs.items():
        if path.parent.name == "tasks":
            for task in tasks or []:
                notify = task.get("notify", [])
                notified.update([notify] if isinstance(notify, str) else notify)
    assert notified == handlers, notified ^ handlers


def test_fixed_paths_are_defined_once() -> None:
    """The box's paths and service user are set in roles/appliance/vars/main.yml only; every
    other role file refers to the appliance_* variables (comments aside)."""
    home = ANSIBLE_DIR / "roles/appliance/vars/main.yml"
    for path in sorted((ANSIBLE_DIR / "roles").rglob("*.yml")):
        if path == home or path.parent.name == "meta":
            continue
        for line in path.read_text().splitlines():
            code = line.split("#", 1)[0].rstrip()
            # (the head's own `/etc/appliance-head` is another path, defined in roles/head)
            box_path = r"(/opt/appliance|/etc/appliance|/var/lib/appliance)(?![\w-])"
            assert not re.search(box_path, code), line
            if "head" in path.parts:
                continue  # the head's own accounts (database, Redis ACL user, S3 identity)
            assert not re.search(r":\s+['\"]?appliance['\"]?$", code), f"{path}: {line}"

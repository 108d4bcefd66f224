"""The expensive provisioning setup, made once per session and shared by every provisioning
module (tests/test_provisioning.py, tests/test_provisioning_head.py): the bundle, and the
debootstrap root with ansible/site.yml applied offline, kept as an overlay layer.
Registered as a plugin in tests/conftest.py; the modules decide whether they can run."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.provisioning import target as t
from tests.provisioning.units import SERVICES

VENV = "/opt/appliance/venv"
ENABLED = [
    "etc/systemd/system/multi-user.target.wants/appliance.target",
    "etc/systemd/system/appliance.target.wants/appliance-web.service",
    "etc/systemd/system/appliance.target.wants/appliance-worker@cpu.service",
    "etc/systemd/system/multi-user.target.wants/redis-server.service",
    "etc/systemd/system/appliance.target.wants/appliance-watch.service",
]
TIMINGS: dict[str, float] = {}
DROP = "/srv/drop/inbox"
HARDENING_ON_BOX = "etc/systemd/system/appliance-.service.d/hardening.conf"
BOX_VARS = {"drop_folders_list": [{"path": DROP, "task": "caption", "digest": False}]}


@dataclass
class Applied:
    bundle: Path
    pristine: Path
    layer: Path  # the upper dir of the applied root: a lower layer for later tests
    first: t.PlayResult
    second: t.PlayResult
    pip_probe: str
    checks: dict[str, str] = field(default_factory=dict)


@pytest.fixture(scope="session")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bundle") / "bundle"
    TIMINGS["bundle_build_s"] = round(t.build_bundle(out), 1)
    return out


def _probe_pip(root: Path) -> str:
    """A plain `pip install six` inside the target, in a network namespace like the apply's
    (into a scratch --target: six is already in the venv, as a dependency)."""
    result = t.in_root(
        root, f"{VENV}/bin/pip", "install", "--target", "/tmp/pip-probe", "--no-cache-dir", "--timeout", "5", "--retries", "0",
        "six", offline=True, timeout=120,
    )  # fmt: skip
    return f"rc={result.returncode}\n{result.stdout}\n{result.stderr}"


@pytest.fixture(scope="session")
def applied(bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Applied]:
    pristine = t.pristine_root()
    base = tmp_path_factory.mktemp("applied")
    ov = t.mount_overlay(base, [pristine])
    try:
        inv = t.chroot_inventory(base / "hosts.json", {"box": ov.root}, bundle, **BOX_VARS)
        first = t.play(inv)
        TIMINGS["first_apply_s"] = round(first.seconds, 1)
        assert first.rc == 0, first.output[-6000:]
        second = t.play(inv)
        TIMINGS["second_apply_s"] = round(second.seconds, 1)
        app = Applied(bundle, pristine, ov.upper, first, second, _probe_pip(ov.root))
        app.checks["import"] = t.in_root(
            ov.root, f"{VENV}/bin/python", "-c", "import appliance, sys; print(appliance.__file__)"
        ).stdout
        verify = t.in_root(
            ov.root, f"{VENV}/bin/appliance", "models", "verify", "--no-progress",
            "--models-dir", "/var/lib/appliance/models",
        )  # fmt: skip
        app.checks["verify"] = f"rc={verify.returncode}\n{verify.stdout}{verify.stderr}"
        for unit in [*SERVICES, "appliance.target"]:
            res = t.run(["systemd-analyze", "verify", f"--root={ov.root}", unit], check=False)
            app.checks[f"analyze {unit}"] = f"rc={res.returncode} stderr={res.stderr.strip()}"
        app.checks["enabled"] = json.dumps({rel: (ov.root / rel).is_symlink() for rel in ENABLED})
        app.checks["hardening"] = (ov.root / HARDENING_ON_BOX).read_text()
        app.checks["worker.env"] = (ov.root / "etc/appliance/worker.env").read_text()
    finally:
        ov.unmount()
    yield app
    print(f"\nprovisioning timings: {json.dumps(TIMINGS)}")

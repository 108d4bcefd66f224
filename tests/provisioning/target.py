"""Debian targets for the provisioning tests: a debootstrap root cached on disk, overlay copies
that reset in milliseconds, Ansible runs with the network cut, and `systemd-nspawn -b` boots.

Everything slow is cached under APPLIANCE_TEST_CACHE (default /var/cache/appliance-test):
the pristine bookworm root (debootstrap, ~80 s once), the .deb cache of debootstrap, the bundle
downloads (wheels, .debs), and the two Ansible collections the tests use as connections
(community.general for chroot, community.docker for nsenter), taken from the `ansible` wheel on
PyPI because Galaxy is unreachable. See PROVISIONING-NOTES.md for the facts this relies on.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("APPLIANCE_TEST_CACHE", "/var/cache/appliance-test"))
ROOT_PACKAGES = "python3,python3-venv,python3-packaging,systemd,systemd-sysv,dbus"
ROOT_STAMP = f"debootstrap minbase bookworm {ROOT_PACKAGES}\n"
ANSIBLE_WHEEL = "ansible>=12,<13"  # the collections matching ansible-core 2.19
VENV_BIN = Path(sys.executable).parent
RECAP = re.compile(
    r"^(\S+)\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.MULTILINE
)


def missing_tools() -> list[str]:
    tools = ["debootstrap", "systemd-nspawn", "unshare", "nsenter", "mount", "chroot"]
    gone = [t for t in tools if shutil.which(t) is None]
    if not (VENV_BIN / "ansible-playbook").exists() and shutil.which("ansible-playbook") is None:
        gone.append("ansible-playbook")
    return gone


def run(
    cmd: list[str], timeout: float = 600, check: bool = True, **kw
) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} -> {result.returncode}\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
        )
    return result


def _mirror() -> str:
    for path in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]:
        with contextlib.suppress(OSError):
            for line in path.read_text().splitlines():
                match = re.match(r"^(?:URIs:\s*|deb\s+(?:\[[^]]*\]\s+)?)(\S+/debian)/?\s*", line)
                if match and "security" not in line:
                    return match.group(1)
    return "http://deb.debian.org/debian"


@contextlib.contextmanager
def cache_lock(name: str) -> Iterator[None]:
    """Serialise cache builders across concurrent test sessions on this machine."""
    import fcntl

    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f".{name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def pristine_root() -> Path:
    """The cached bookworm root (debootstrap once; later calls return at once)."""
    with cache_lock("root"):
        return _pristine_root()


def _pristine_root() -> Path:
    root = CACHE / "bookworm-minbase"
    stamp = CACHE / "bookworm-minbase.stamp"
    if root.is_dir() and stamp.is_file() and stamp.read_text() == ROOT_STAMP:
        return root
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = CACHE / "bookworm-minbase.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    (CACHE / "debootstrap-debs").mkdir(exist_ok=True)
    run(
        [
            "debootstrap",
            "--variant=minbase",
            f"--cache-dir={CACHE / 'debootstrap-debs'}",
            f"--include={ROOT_PACKAGES}",
            "bookworm",
            str(tmp),
            _mirror(),
        ],
        timeout=900,
    )
    shutil.rmtree(root, ignore_errors=True)
    tmp.rename(root)
    stamp.write_text(ROOT_STAMP)
    return root


def collections() -> Path:
    """A collections path with community.general and community.docker (no Galaxy here)."""
    with cache_lock("collections"):
        return _collections()


def _collections() -> Path:
    dest = CACHE / "collections"
    marker = dest / "ansible_collections/community/docker/plugins/connection/nsenter.py"
    if (dest / "ansible_collections/community/general/plugins/connection/chroot.py").is_file() and (
        marker.is_file()
    ):
        return dest
    dl = CACHE / "dl"
    dl.mkdir(parents=True, exist_ok=True)
    wheels = sorted(dl.glob("ansible-*.whl"))
    if not wheels:
        run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "-q",
                "--no-deps",
                "-d",
                str(dl),
                ANSIBLE_WHEEL,
            ]
        )
        wheels = sorted(dl.glob("ansible-*.whl"))
    tmp = CACHE / "collections.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    with zipfile.ZipFile(wheels[-1]) as zf:
        for info in zf.infolist():
            if info.filename.startswith(
                ("ansible_collections/community/general/", "ansible_collections/community/docker/")
            ):
                zf.extract(info, tmp)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest


def build_bundle(out: Path) -> float:
    """`appliance bundle build OUT --tiny-models` with the cache; returns seconds taken."""
    started = time.monotonic()
    with cache_lock("bundle"):
        _build_bundle(out)
    return time.monotonic() - started


def _build_bundle(out: Path) -> None:
    run(
        [
            sys.executable, "-m", "cli", "bundle", "build", str(out), "--tiny-models",
            "--cache", str(CACHE / "bundle-cache"), "--project", str(REPO),
        ],
        timeout=1800,
        cwd=REPO,
    )  # fmt: skip


# -- overlays ------------------------------------------------------------------------------


@dataclass
class Overlay:
    root: Path
    upper: Path
    work: Path

    def unmount(self) -> None:
        subprocess.run(["umount", "-l", str(self.root)], capture_output=True)


def mount_overlay(base: Path, lowers: list[Path]) -> Overlay:
    """A writable root at base/root over `lowers` (first = topmost); writes go to base/upper."""
    ov = Overlay(base / "root", base / "upper", base / "work")
    for path in (ov.root, ov.upper, ov.work):
        path.mkdir(parents=True, exist_ok=True)
    lower = ":".join(str(p) for p in lowers)
    run(
        ["mount", "-t", "overlay", "overlay", "-o",
         f"lowerdir={lower},upperdir={ov.upper},workdir={ov.work}", str(ov.root)]
    )  # fmt: skip
    return ov


# -- ansible -------------------------------------------------------------------------------


@dataclass
class PlayResult:
    rc: int
    output: str
    recap: dict[str, dict[str, int]]
    seconds: float

    def changed(self, host: str) -> int:
        return self.recap[host]["changed"]


def clean_env() -> dict[str, str]:
    """What `env -i` leaves, plus what ansible needs: no PIP_*, proxies, or pyenv leak through."""
    return {
        "PATH": f"{VENV_BIN}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": os.environ.get("HOME", "/root"),
        "LANG": "C.UTF-8",
        "ANSIBLE_CONFIG": str(REPO / "ansible/ansible.cfg"),
        "ANSIBLE_COLLECTIONS_PATH": str(collections()),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_LOCAL_TEMP": str(CACHE / "ansible-tmp"),
    }


def playbook_command(inventory: Path, *extra: str) -> list[str]:
    return [
        "env", "-i", *(f"{k}={v}" for k, v in clean_env().items()),
        str(VENV_BIN / "ansible-playbook"), "-i", str(inventory),
        str(REPO / "ansible/site.yml"), *extra,
    ]  # fmt: skip


def parse_recap(output: str) -> dict[str, dict[str, int]]:
    tail = output.rsplit("PLAY RECAP", 1)[-1]
    return {
        m.group(1): {
            "ok": int(m.group(2)),
            "changed": int(m.group(3)),
            "unreachable": int(m.group(4)),
            "failed": int(m.group(5)),
        }
        for m in RECAP.finditer(tail)
    }


def play(inventory: Path, *extra: str, offline: bool = True, timeout: float = 900) -> PlayResult:
    """ansible-playbook site.yml in a clean environment; with `offline`, in a new network
    namespace (`unshare -n`): only the loopback, down."""
    cmd = playbook_command(inventory, *extra)
    if offline:
        cmd = ["unshare", "-n", *cmd]
    started = time.monotonic()
    result = subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO / "ansible"
    )
    out = result.stdout + result.stderr
    return PlayResult(result.returncode, out, parse_recap(out), time.monotonic() - started)


def chroot_inventory(path: Path, hosts: dict[str, Path], bundle: Path, **hostvars: object) -> Path:
    import json

    entries = {
        name: {
            "ansible_connection": "community.general.chroot",
            "ansible_host": str(root),
            "ansible_python_interpreter": "/usr/bin/python3",
            "ansible_become": False,
            "appliance_bundle_dir": str(bundle),
            **hostvars,
        }
        for name, root in hosts.items()
    }
    path.write_text(json.dumps({"all": {"children": {"appliances": {"hosts": entries}}}}))
    return path


def in_root(root: Path, *cmd: str, offline: bool = False, timeout: float = 300,
            check: bool = False) -> subprocess.CompletedProcess:  # fmt: skip
    """Run a command inside the (not booted) root, with a clean environment."""
    argv = ["env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8", "HOME=/root",
            "chroot", str(root), *cmd]  # fmt: skip
    if offline:
        argv = ["unshare", "-n", *argv]
    return run(argv, timeout=timeout, check=check)


# -- booted containers ---------------------------------------------------------------------


@dataclass
class Booted:
    name: str
    root: Path
    proc: subprocess.Popen
    leader: int
    log: Path

    def sh(
        self, *cmd: str, timeout: float = 120, check: bool = False
    ) -> subprocess.CompletedProcess:
        return run(["nsenter", "-t", str(self.leader), "-a", *cmd], timeout=timeout, check=check)

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(Exception):
                self.sh("systemctl", "poweroff", "--no-block", timeout=20)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _container_init(nspawn_pid: int) -> int | None:
    """The host PID of the container's PID 1 (a descendant of nspawn whose NSpid ends in 1)."""
    for pid in _descendants(nspawn_pid):
        with contextlib.suppress(OSError):
            status = Path(f"/proc/{pid}/status").read_text()
            match = re.search(r"^NSpid:\s+(.*)$", status, re.MULTILINE)
            if match and match.group(1).split()[-1] == "1" and len(match.group(1).split()) > 1:
                return pid
    return None


def boot(name: str, root: Path, log: Path, timeout: float = 60, netns: str = "") -> Booted:
    """`systemd-nspawn -b` the root (a private network, or the namespace at path `netns`) and
    wait until systemd is up."""
    network = f"--network-namespace-path={netns}" if netns else "--private-network"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            ["systemd-nspawn", "-b", "--register=no", "--keep-unit", f"--machine={name}",
             network, "-D", str(root), "--console=pipe"],
            stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
    deadline = time.monotonic() + timeout
    leader = None
    while leader is None:
        if proc.poll() is not None:
            raise AssertionError(f"nspawn exited {proc.returncode}: {log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"no container init after {timeout}s: {log.read_text()[-3000:]}")
        leader = _container_init(proc.pid)
        if leader is None:
            time.sleep(0.1)
    booted = Booted(name, root, proc, leader, log)
    state = ""
    while True:
        state = booted.sh("systemctl", "is-system-running", timeout=30).stdout.strip()
        if state in ("running", "degraded"):
            break
        if time.monotonic() > deadline:
            booted.stop()
            raise AssertionError(f"{name}: system state {state!r} after {timeout}s")
        time.sleep(0.2)
    return booted


def wait_for(check, timeout: float, interval: float = 0.5, what: str = "condition"):  # type: ignore[no-untyped-def]
    """Poll `check()` until it returns a truthy value or `timeout` passes (then fail)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


@contextlib.contextmanager
def booted(name: str, root: Path, log: Path, netns: str = "") -> Iterator[Booted]:
    machine = boot(name, root, log, netns=netns)
    try:
        yield machine
    finally:
        machine.stop()

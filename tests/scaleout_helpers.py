"""Two "boxes" on one machine for the scale-out tests and bench: a real SeaweedFS (S3), and
process groups whose data dirs are their own. Box B's processes run in a mount namespace
where box A's directory is an empty tmpfs, so a stray read of box A's disk fails there as it
would on another machine."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

from tests.queue_helpers import REPO, wait_for

WEED = shutil.which("weed") or str(Path(sys.executable).parent / "weed")


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def weed_ports() -> list[int]:
    """Four ports whose gRPC twins (+10000, SeaweedFS's rule) are free as well."""
    ports: list[int] = []
    while len(ports) < 4:
        port = random.randrange(12000, 19000)
        if port not in ports and _free(port) and _free(port + 10000):
            ports.append(port)
    return ports


class SeaweedFS:
    """`weed server -s3`: master, volume, filer and S3 gateway in one process."""

    def __init__(self, home: Path, credentials: tuple[str, str] | None = None) -> None:
        """`credentials`: (access key, secret key) the S3 gateway demands; None: anonymous."""
        self.home = home
        self.credentials = credentials
        self.ports = weed_ports()
        self.endpoint = f"http://127.0.0.1:{self.ports[3]}"
        self.proc: subprocess.Popen[bytes] | None = None
        home.mkdir(parents=True, exist_ok=True)

    def start(self) -> SeaweedFS:
        master, volume, filer, s3 = self.ports
        args = [
            WEED, "server", f"-dir={self.home}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-master.port={master}", f"-volume.port={volume}", f"-filer.port={filer}",
            "-s3", f"-s3.port={s3}", "-master.volumeSizeLimitMB=64",
            # Its Iceberg and Lance catalogs listen on fixed ports (8181, 9101) by default:
            # off, or a second store on this machine fails to start ("address already in use").
            "-s3.port.iceberg=0", "-s3.port.lance=0",
        ]  # fmt: skip
        if self.credentials is not None:
            access, secret = self.credentials
            actions = ["Admin", "Read", "Write", "List", "Tagging"]
            ident = {"name": "appliance", "actions": actions}
            ident["credentials"] = [{"accessKey": access, "secretKey": secret}]
            config = self.home / "s3.json"
            config.write_text(json.dumps({"identities": [ident]}))
            args.append(f"-s3.config={config}")
        with open(self.home / "weed.log", "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        wait_for(self.answers, 60, f"SeaweedFS S3 on {self.endpoint}", poll=0.3)
        return self

    def answers(self) -> bool:
        import urllib.error
        import urllib.request

        try:
            urllib.request.urlopen(self.endpoint + "/", timeout=1).close()
        except urllib.error.HTTPError:
            return True  # an S3 error document: the gateway is up
        except OSError:
            return False
        return True

    def stop(self, *, kill: bool = False) -> None:
        """It flushes for a few seconds on SIGTERM; then SIGKILL (at once with `kill`)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        if kill:
            self.proc.kill()
            self.proc.wait(5)
            return
        self.proc.terminate()
        try:
            self.proc.wait(8)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


class BoxProcess:
    """`python -m cli ARGS` in its own process group; with `hide`, inside a mount namespace
    where that directory is an empty tmpfs."""

    def __init__(self, env: dict[str, str], args: list[str], log: Path, hide: Path | None = None):
        self.env, self.args, self.log, self.hide = env, args, log, hide
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> BoxProcess:
        cmd = [sys.executable, "-m", "cli", *self.args]
        if self.hide is not None:
            script = 'mount -t tmpfs none "$1" && shift && exec "$@"'
            cmd = ["unshare", "-m", "sh", "-c", script, "sh", str(self.hide), *cmd]
        with open(self.log, "ab") as handle:
            self.proc = subprocess.Popen(
                cmd, env=self.env, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, *, kill: bool = False) -> None:
        """SIGTERM to the group (SIGKILL after 20 s), or SIGKILL at once with `kill`."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL if kill else signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(20)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def can_hide_dirs() -> str | None:
    """None if this process may make mount namespaces (root), else why not."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return "the two-box tests need root and unshare(1) to hide box A's disk from box B"
    return None

"""Real Redis servers, PostgreSQL databases and `appliance worker` processes for the queue tests.

Nothing here sleeps and hopes: `wait_for` polls a condition until a deadline and fails with
what it was waiting for.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
PG_ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres connect_timeout=3"
T = TypeVar("T")


def wait_for(check: Callable[[], T], timeout: float, what: str, poll: float = 0.1) -> T:
    """Poll `check()` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(poll)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """A private `redis-server` on a free port, its files in `home`."""

    def __init__(
        self,
        home: Path,
        *,
        appendonly: bool = False,
        port: int | None = None,
        password: str | None = None,
    ) -> None:
        self.home = home
        self.port = port or free_port()
        self.appendonly = appendonly
        self.password = password
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None
        home.mkdir(parents=True, exist_ok=True)

    def start(self) -> RedisServer:
        args = [
            "redis-server",
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.home),
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "everysec",
            "--maxmemory-policy", "noeviction",
            "--logfile", str(self.home / "redis.log"),
        ]  # fmt: skip
        if self.password:
            args += ["--requirepass", self.password]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(self.ping, 10, f"redis-server on port {self.port}")
        return self

    def ping(self) -> bool:
        import redis

        try:
            client = redis.Redis(port=self.port, password=self.password, socket_connect_timeout=0.5)
            return bool(client.ping())
        except redis.RedisError:
            return False

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


def postgres_reachable() -> str | None:
    """None if PostgreSQL answers on 127.0.0.1:5432, else why not."""
    try:
        import psycopg

        with psycopg.connect(PG_ADMIN):
            return None
    except Exception as exc:
        return f"PostgreSQL not reachable on 127.0.0.1:5432 ({str(exc).strip() or exc!r})"


def create_pg_database() -> str:
    import psycopg

    name = f"appliance_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name


def drop_pg_database(name: str) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def models_or_tiny(models: Path | None, tmp: Path) -> Path:
    """`models`, or tiny random-weight models (what `appliance models make-tiny` builds)
    built under `tmp`."""
    if models is not None:
        return models
    from appliance.build.tiny import make_tiny

    print("building tiny models ...", file=sys.stderr)
    make_tiny(tmp / "models")
    return tmp / "models"


def worker_env(tmp: Path, models: Path, redis_url: str, **more: str) -> dict[str, str]:
    """The environment of an `appliance worker` on a private store under `tmp` (no config
    file, the models offline, on the CPU, the given Redis); `more` adds or overrides."""
    return {
        **os.environ,
        "APPLIANCE_CONFIG_FILE": str(tmp / "none.toml"),
        "APPLIANCE_DATA_DIR": str(tmp / "data"),
        "APPLIANCE_MODELS_DIR": str(models),
        "APPLIANCE_REDIS_URL": redis_url,
        "APPLIANCE_DEVICE": "cpu",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "PYTHONPATH": str(REPO),
        **more,
    }


def png_bytes(seed: int, size: tuple[int, int] = (64, 48)) -> bytes:
    image = Image.new("RGB", size, ((seed * 53) % 256, (seed * 97) % 256, (seed * 31) % 256))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


class WorkerProcess:
    """`appliance worker ...` in its own process group (so the test can kill all of it)."""

    def __init__(self, env: dict[str, str], args: list[str], log: Path) -> None:
        self.env = env
        self.args = args
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        cmd = [sys.executable, "-m", "cli", "worker", *self.args]
        cmd += ["--include", "tests.queue_hooks", "--loglevel", "WARNING", "--stop-timeout", "10"]
        handle = open(self.log, "ab")  # noqa: SIM115 - the child keeps it
        self.proc = subprocess.Popen(
            cmd, env=self.env, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        handle.close()
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill_all(self) -> None:
        """SIGKILL the supervisor and its workers at once (a power cut, `kill -9` of the unit)."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if not self.alive:
            return
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.kill_all()
        # Children die with the supervisor (PDEATHSIG); make sure of it.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

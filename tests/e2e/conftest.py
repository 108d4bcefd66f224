"""The whole appliance for browser tests: private Redis, gunicorn (`appliance web`), a real
Celery worker (`appliance worker`) on the tiny models, two panel users, headless Chromium.

Screenshots go to `artifacts/` (gitignored) at the repository root.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.queue_helpers import free_port

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "artifacts"
CHROMIUM = os.environ.get("APPLIANCE_TEST_CHROMIUM", "/usr/bin/chromium")
# Chromium must not phone home either: the test asserts the page talks only to the box.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PASSWORD = "e2e-password-123"


@dataclass
class Box:
    url: str
    env: dict[str, str]
    data_dir: Path
    logs: Path


def _wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url} died on start:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer in {seconds} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="session")
def box(
    tmp_path_factory: pytest.TempPathFactory, tiny_models_dir: Path, redis_server: str
) -> Iterator[Box]:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt install chromium)")
    home = tmp_path_factory.mktemp("e2e-box")
    logs = home / "logs"
    logs.mkdir()
    env = {
        **os.environ,
        "APPLIANCE_CONFIG_FILE": str(home / "none.toml"),
        "APPLIANCE_DATA_DIR": str(home / "data"),
        "APPLIANCE_MODELS_DIR": str(tiny_models_dir),
        "APPLIANCE_REDIS_URL": redis_server,
        "APPLIANCE_DEVICE": "cpu",
        # Short answers: the test is about the plumbing, and the CPU is small.
        "APPLIANCE_GENERATION__MAX_NEW_TOKENS": "24",
        "PYTHONUNBUFFERED": "1",
    }
    me = [sys.executable, "-m", "cli"]
    for name, admin in (("alice", False), ("bob", False)):
        argv = [*me, "users", "create", name, "--password-stdin"] + (["--admin"] if admin else [])
        subprocess.run(argv, input=PASSWORD + "\n", text=True, env=env, check=True, cwd=ROOT)
    port = free_port()
    procs: list[tuple[str, subprocess.Popen[bytes], Any]] = []

    def start(name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        out = open(logs / f"{name}.log", "wb")  # noqa: SIM115 - closed in the finally below
        proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        procs.append((name, proc, out))
        return proc

    try:
        web = start("web", [*me, "web", "--bind", f"127.0.0.1:{port}", "--workers", "1"])
        start("worker", [*me, "worker"])
        url = f"http://127.0.0.1:{port}"
        _wait_http(f"{url}/healthz", web, logs / "web.log")
        yield Box(url=url, env=env, data_dir=home / "data", logs=logs)
    finally:
        for name, proc, _out in reversed(procs):
            # gunicorn's graceful TERM waits for open SSE streams; INT is its quick stop.
            proc.send_signal(signal.SIGINT if name == "web" else signal.SIGTERM)
        for name, proc, out in reversed(procs):
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
            out.close()
            # Keep the server logs next to the screenshots: the first thing to read on a failure.
            ARTIFACTS.mkdir(exist_ok=True)
            shutil.copy(logs / f"{name}.log", ARTIFACTS / f"e2e-{name}.log")


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS

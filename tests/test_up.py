"""`appliance up` (what `make run` runs): a quiet start that ends in a short banner, children
that log to files, and Ctrl-C that stops them all. Known library noise is filtered at its
source (`appliance.quiet`); a real warning still shows."""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from appliance.quiet import KNOWN_NOISE, silence_known_noise
from tests.queue_helpers import free_port

ROOT = Path(__file__).resolve().parents[1]
# The messages a newcomer saw before this existed (the list), as they look in a log.
NOISE = [
    *(re.compile(n.pattern) for n in KNOWN_NOISE),
    re.compile(r"running the worker with superuser privileges"),
]


def test_known_noise_is_dropped_and_real_warnings_still_show(
    caplog: pytest.LogCaptureFixture,
) -> None:
    silence_known_noise()
    with caplog.at_level(logging.WARNING):
        logging.getLogger("torchao").warning(
            "Failed to load /x/site-packages/torchao/_C_mxfp8.cpython-310-x86_64-linux-gnu.so: no"
        )
        logging.getLogger("torchao.kernel.intmm").warning(
            "Warning: Detected no triton, on systems without Triton certain kernels will not work"
        )
        logging.getLogger("torchao").warning("torchao: a real problem")
        logging.getLogger("transformers.configuration_utils").warning("something else entirely")
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["torchao: a real problem", "something else entirely"]


@pytest.mark.slow
def test_up_starts_quietly_shows_the_banner_and_stops_everything(
    tmp_path: Path, redis_server: str
) -> None:
    """From nothing: `up` builds the tiny demo models (the noisiest step), starts the worker
    and the web server, and prints nothing but its own lines and the banner."""
    port = free_port()
    home = tmp_path / "var"
    env = {
        **os.environ,
        "APPLIANCE_CONFIG_FILE": str(tmp_path / "none.toml"),
        "APPLIANCE_MODELS_DIR": str(tmp_path / "no-models"),  # no real weights configured
        "APPLIANCE_REDIS_URL": redis_server,
        "APPLIANCE_DEVICE": "cpu",
        "PYTHONUNBUFFERED": "1",
    }
    out = tmp_path / "up.out"
    with open(out, "wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cli", "up", "--home", str(home), "--bind", f"127.0.0.1:{port}"],
            env=env,
            cwd=tmp_path,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 300
        while "Ctrl-C stops everything" not in out.read_text():
            assert proc.poll() is None, out.read_text()
            assert time.monotonic() < deadline, out.read_text()
            time.sleep(0.5)
        text = out.read_text()
        before, banner = text.split("Vision appliance is up", 1)
        noisy = [line for line in before.splitlines() if any(p.search(line) for p in NOISE)]
        assert noisy == [], noisy
        # Only `up`'s own lines come before the banner; children write to their logs.
        assert [line for line in before.splitlines() if line.strip()] == [
            f"no real weights in {tmp_path / 'no-models'}: building tiny demo models in {home / 'models'}"
        ]
        assert f"http://127.0.0.1:{port}/" in banner
        assert re.search(r"login +admin / \S+", banner)
        assert "vision tiny-mllama-vision" in banner
        assert "tiny demo models: the text is random by design" in banner
        assert f"{home / 'logs'}/{{worker,web}}.log" in banner
        for name in ("worker", "web"):
            log = (home / "logs" / f"{name}.log").read_text()
            assert [ln for ln in log.splitlines() if any(p.search(ln) for p in NOISE)] == []
        assert "cpu@" in (home / "logs" / "worker.log").read_text()  # the worker did log there

        children = subprocess.run(
            ["pgrep", "-s", str(os.getpgid(proc.pid))], capture_output=True, text=True
        ).stdout.split()
        assert len(children) >= 3  # up, the worker (supervisor + celery), gunicorn
        proc.send_signal(signal.SIGINT)
        assert proc.wait(90) == 0
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            left = subprocess.run(
                ["pgrep", "-s", str(proc.pid)], capture_output=True, text=True
            ).stdout.split()
            if not left:
                break
            time.sleep(0.5)
        assert left == [], f"processes left running: {left}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)

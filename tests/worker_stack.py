"""One real API + worker stack for the whole session: a Flask app on a private Redis
database, a real `celery worker` subprocess, the tiny models, with tiny guards steered by their
weights (the vision guard answers `unsafe\\nS2`, the 1B guard `safe`; tests/safety_helpers.py).

Shared by tests/test_api_worker.py and tests/test_safety_worker.py through the session fixture
`api_worker_stack` (tests/conftest.py), so the worker starts and warms up once. The safety
stage is off for every door but the tokens named in `SAFETY_TOKENS`, so other tests' jobs run
exactly as without it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.api_fixtures import auth, make_settings
from tests.safety_helpers import steered_root

ROOT = Path(__file__).resolve().parents[1]
SAFETY_TOKENS = {"flagger": "flag", "blocker": "block"}


@contextmanager
def running_stack(tmp: Path, redis_server: str, tiny_models_dir: Path) -> Iterator[dict[str, Any]]:
    from web import create_app

    models = steered_root(tiny_models_dir, tmp / "models", vision="unsafe\nS2", text="safe")
    # Its own Redis database: other API tests' queued jobs never reach this worker.
    redis_url = redis_server.rsplit("/", 1)[0] + "/7"
    safety = {"check": "both", "tokens": SAFETY_TOKENS}
    settings = make_settings(tmp, redis_url, models_dir=models, safety=safety)
    settings.api.rate_limit_per_minute = 0
    settings.generation.max_new_tokens = 8
    env = {
        **os.environ,
        "APPLIANCE_CONFIG_FILE": str(tmp / "none.toml"),
        "APPLIANCE_DATA_DIR": str(settings.data_dir),
        "APPLIANCE_MODELS_DIR": str(models),
        "APPLIANCE_REDIS_URL": redis_url,
        "APPLIANCE_DEVICE": "cpu",
        "APPLIANCE_GENERATION__MAX_NEW_TOKENS": "8",
        # The worker judges what the jobs' policies ask, and warms the guards up front.
        "APPLIANCE_SAFETY__CHECK": "both",
        "APPLIANCE_SAFETY__TOKENS": json.dumps(SAFETY_TOKENS),
        "CUDA_VISIBLE_DEVICES": "",
    }
    app = create_app(settings)
    tokens = app.extensions["appliance"].tokens
    _info, secret = tokens.create("e2e", "submit")
    secrets = {name: tokens.create(name, "submit")[1] for name in SAFETY_TOKENS}
    log = open(tmp / "worker.log", "wb")  # noqa: SIM115 - closed in the finally below
    worker = subprocess.Popen(
        [sys.executable, "-m", "cli", "worker", "--exec", "--loglevel", "WARNING"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    client = app.test_client()
    try:
        deadline = time.monotonic() + 180
        while client.get("/readyz", headers=auth(secret)).status_code != 200:
            if worker.poll() is not None or time.monotonic() > deadline:
                log.flush()
                pytest.fail(
                    "worker did not become ready:\n" + (tmp / "worker.log").read_text()[-3000:]
                )
            time.sleep(0.5)
        yield {
            "app": app,
            "client": client,
            "secret": secret,
            "secrets": secrets,
            "settings": settings,
            "tmp": tmp,
        }
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(10)
        log.close()

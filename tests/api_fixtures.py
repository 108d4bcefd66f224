"""Fixtures for the API tests (`tests/test_api*.py`): a private Redis, an app, tokens.

Import with `from tests.api_fixtures import *` in each API test module. Never touches the
shared Redis on 6379: every session starts its own on a free port in a temp dir.
"""

from __future__ import annotations

import io
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from appliance.settings import Settings, load_settings

__all__ = [
    "api_redis_url",
    "api_settings",
    "app",
    "client",
    "tokens",
    "auth",
    "jpeg_bytes",
    "make_settings",
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_redis(directory: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A throwaway redis-server bound to loopback, gone when the process is terminated."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (apt install redis-server)")
    port = _free_port()
    proc = subprocess.Popen(
        [
            "redis-server",
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--dir",
            str(directory),
            "--save",
            "",
            "--appendonly",
            "no",
            "--maxmemory-policy",
            "noeviction",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return proc, url
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("private redis-server did not start")


@pytest.fixture(scope="session")
def api_redis_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The suite's `redis_server` fixture when conftest has one, else a private server."""
    try:
        server = request.getfixturevalue("redis_server")
    except pytest.FixtureLookupError:
        server = None
    if server is not None:
        yield server if isinstance(server, str) else server.url
        return
    proc, url = start_redis(tmp_path_factory.mktemp("api-redis"))
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def make_settings(tmp_path: Path, redis_url: str, **overrides: Any) -> Settings:
    data = tmp_path / "data"
    return load_settings(
        config_file=tmp_path / "none.toml",
        data_dir=data,
        models_dir=overrides.pop("models_dir", tmp_path / "models"),
        redis_url=redis_url,
        device="cpu",
        **overrides,
    )


@pytest.fixture
def api_settings(tmp_path: Path, api_redis_url: str) -> Settings:
    return make_settings(tmp_path, api_redis_url)


@pytest.fixture
def app(api_settings: Settings) -> Any:
    from web import create_app

    return create_app(api_settings, {"TESTING": True})


@pytest.fixture
def client(app: Any) -> Any:
    return app.test_client()


@pytest.fixture
def tokens(app: Any) -> dict[str, str]:
    """One secret per scope: {"read": "apl_...", "submit": ..., "admin": ...}."""
    store = app.extensions["appliance"].tokens
    return {scope: store.create(f"test-{scope}", scope)[1] for scope in ("read", "submit", "admin")}


def auth(secret: str, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}", **extra}


def jpeg_bytes(
    size: tuple[int, int] = (96, 64), colour: tuple[int, int, int] = (200, 30, 30)
) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, "JPEG", quality=90)
    return out.getvalue()

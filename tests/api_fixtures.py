"""Fixtures for the API tests (`tests/test_api*.py`): a private Redis, an app, tokens.

Import with `from tests.api_fixtures import *` in each API test module. Never touches the
shared Redis on 6379: every session starts its own on a free port in a temp dir.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from appliance.settings import Settings, load_settings

__all__ = [
    "api_settings",
    "app",
    "client",
    "tokens",
    "auth",
    "jpeg_bytes",
    "make_settings",
]


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
def api_settings(tmp_path: Path, redis_server: str) -> Settings:
    return make_settings(tmp_path, redis_server)


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

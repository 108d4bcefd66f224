"""Faults are waits (issue 13): with the database away the API answers 503 with Retry-After,
not a 500 and not a refusal of the file. (The object store's outage, with the watcher and the
workers, is in tests/test_scaleout.py.)"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest

from tests.api_fixtures import auth, jpeg_bytes, make_settings
from tests.queue_helpers import free_port


def test_database_away_is_503_with_retry_after(tmp_path: Path, redis_server: str) -> None:
    from web import create_app

    dead = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/gone?connect_timeout=2"
    settings = make_settings(tmp_path, redis_server, database_url=dead)
    client = create_app(settings, {"TESTING": True}).test_client()
    resp = client.post(
        "/api/v1/jobs",
        data={"file": (io.BytesIO(jpeg_bytes()), "a.jpg"), "task": "caption"},
        headers=auth("apl_whatever"),
    )
    assert resp.status_code == 503, resp.get_data(as_text=True)
    assert resp.headers["Retry-After"] == str(settings.storage.retry_after_s)
    assert "database is not reachable" in resp.get_json()["detail"]


def test_s3_keys_from_files_are_used_and_a_wrong_secret_is_refused(tmp_path: Path) -> None:
    """A store with real credentials (SeaweedFS `-s3.config`): the keys come from 0600 files;
    a wrong secret is refused by the store (a wait with the store's reason, never a job's
    failure)."""
    from appliance.settings import load_settings
    from appliance.storage import StorageUnavailable, open_blobs
    from tests.scaleout_helpers import SeaweedFS

    weed = SeaweedFS(tmp_path / "weed", credentials=("appliance-ak", "right-secret")).start()
    try:
        keys = {}
        for name, value in (("access", "appliance-ak"), ("secret", "right-secret")):
            keys[name] = tmp_path / f"s3.{name}"
            keys[name].write_text(value + "\n")
            keys[name].chmod(0o600)
        storage = {"url": "s3://appliance/keys", "endpoint_url": weed.endpoint}
        good = load_settings(
            config_file=tmp_path / "none.toml",
            data_dir=tmp_path / "data",
            storage=storage
            | {"access_key_file": keys["access"], "secret_key_file": keys["secret"]},
        )
        blobs = open_blobs(good)
        where = blobs.put(b"scan bytes")
        assert blobs.get(where, hashlib.sha256(b"scan bytes").hexdigest()) == b"scan bytes"
        bad = good.model_copy(deep=True)
        bad.storage.secret_key_file = None
        bad.storage.secret_key = "wrong-secret"
        with pytest.raises(StorageUnavailable, match="SignatureDoesNotMatch|AccessDenied|403"):
            open_blobs(bad).put(b"other bytes")
    finally:
        weed.stop(kill=True)

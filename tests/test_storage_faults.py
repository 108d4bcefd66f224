"""Faults are waits (issue 13): with the database away the API answers 503 with Retry-After,
not a 500 and not a refusal of the file. (The object store's outage, with the watcher and the
workers, is in tests/test_scaleout.py.)"""

from __future__ import annotations

import io
from pathlib import Path

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

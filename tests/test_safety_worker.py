"""The safety stage through the queue: the session's real worker (tests/worker_stack.py) with
real tiny guards steered by their weights (the vision guard answers `unsafe\\nS2`, the 1B
guard `safe`), policies per source: an API token's flag and block (for the REST API and the
OpenAI endpoint), a drop folder's block, the panel's view. Every test submits through a door."""

from __future__ import annotations

import base64
import io
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from werkzeug.serving import make_server

from appliance.build.tiny_guards import VISION_GUARD_NAME
from appliance.vocab import BLOCKED, SUCCEEDED, TERMINAL
from tests.api_fixtures import auth, jpeg_bytes
from tests.queue_helpers import wait_for

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="module")
def stack(api_worker_stack: dict[str, Any]) -> dict[str, Any]:
    return api_worker_stack


def _submit(stack: dict[str, Any], token: str) -> dict[str, Any]:
    resp = stack["client"].post(
        "/api/v1/jobs",
        data={"task": "caption", "file": (io.BytesIO(jpeg_bytes()), "shelf.jpg")},
        headers=auth(stack["secrets"][token]),
    )
    assert resp.status_code == 201, resp.get_json()
    return resp.get_json()["jobs"][0]


def _ended(stack: dict[str, Any], token: str, job_id: str) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        job = stack["client"].get(f"/api/v1/jobs/{job_id}", headers=auth(stack["secrets"][token]))
        body = job.get_json()
        return body if body["state"] in TERMINAL else None

    return wait_for(done, 120, f"job {job_id} to end")


def test_api_flag_stores_both_verdicts_and_releases_the_result(stack: dict[str, Any]) -> None:
    job = _ended(stack, "flagger", _submit(stack, "flagger")["id"])
    assert job["state"] == SUCCEEDED
    safety = job["safety"]
    assert (safety["stage"], safety["verdict"], safety["categories"]) == ("input", "unsafe", ["S2"])
    assert safety["model"] == VISION_GUARD_NAME and safety["ms"] > 0
    assert [(c["stage"], c["verdict"]) for c in safety["checks"]] == [
        ("input", "unsafe"),
        ("output", "unsafe"),
    ]
    result = stack["client"].get(
        f"/api/v1/jobs/{job['id']}/result", headers=auth(stack["secrets"]["flagger"])
    )
    assert result.status_code == 200
    metrics = stack["client"].get("/metrics", headers=auth(stack["secrets"]["flagger"]))
    text = metrics.get_data(as_text=True)
    for stage in ("input", "output"):
        line = f'appliance_safety_verdicts{{category="S2",stage="{stage}",verdict="unsafe"}}'
        assert re.search(re.escape(line) + r" [1-9]", text), text[-2000:]


def test_token_block_ends_blocked_with_a_clear_4xx_and_is_not_retried(
    stack: dict[str, Any],
) -> None:
    headers = auth(stack["secrets"]["blocker"])
    job = _ended(stack, "blocker", _submit(stack, "blocker")["id"])
    assert job["state"] == BLOCKED
    assert job["error"] == "blocked by the safety check (input): unsafe: S2 Non-Violent Crimes"
    # Blocked at input: the analysis never ran, so there is no output check.
    assert [c["stage"] for c in job["safety"]["checks"]] == ["input"]
    result = stack["client"].get(f"/api/v1/jobs/{job['id']}/result", headers=headers)
    assert result.status_code == 451
    body = result.get_json()
    assert body["state"] == BLOCKED and "S2 Non-Violent Crimes" in body["detail"]
    assert body["safety"]["categories"] == ["S2"]
    assert (
        stack["client"].post(f"/api/v1/jobs/{job['id']}/retry", headers=headers).status_code == 409
    )
    # The user's file is kept.
    svc = stack["app"].extensions["appliance"]
    assert Path(svc.jobs.get(job["id"]).input_path).is_file()


@pytest.fixture(scope="module")
def openai_client(stack: dict[str, Any]) -> Iterator[Any]:
    from openai import OpenAI

    server = make_server("127.0.0.1", 0, stack["app"], threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield OpenAI(base_url=f"http://127.0.0.1:{server.server_port}/v1",
                     api_key=stack["secrets"]["blocker"], max_retries=0)  # fmt: skip
    finally:
        server.shutdown()


def test_openai_client_sees_content_filter(openai_client: Any) -> None:
    data = base64.b64encode(jpeg_bytes()).decode()
    image = {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{data}"}}
    blocked = openai_client.chat.completions.create(
        model="x",
        messages=[{"role": "user", "content": [{"type": "text", "text": "what?"}, image]}],
        max_tokens=4,
    )
    assert blocked.choices[0].finish_reason == "content_filter"
    assert not blocked.choices[0].message.content
    # Text only: the 1B guard judges it safe, the answer is released.
    fine = openai_client.chat.completions.create(
        model="x", messages=[{"role": "user", "content": "hello"}], max_tokens=4
    )
    assert fine.choices[0].finish_reason in ("stop", "length")


def test_drop_folder_block_lands_in_blocked_with_its_reason(stack: dict[str, Any]) -> None:
    import json

    from appliance.settings import DropFolder
    from appliance.watch.service import ServiceJobs
    from appliance.watch.watcher import FolderWatcher

    settings = stack["settings"]
    drop: Path = stack["tmp"] / "drop"
    drop.mkdir()
    (drop / "shelf.jpg").write_bytes(jpeg_bytes())
    folder = DropFolder(path=drop, safety="block", digest=False, settle_seconds=0)
    watcher = FolderWatcher(folder, ServiceJobs.from_settings(settings))
    watcher.start()
    try:

        def placed() -> bool:
            watcher.tick()
            return (drop / "blocked" / "shelf.jpg").is_file()

        wait_for(placed, 120, "the blocked file in blocked/")
    finally:
        watcher.close()
    note = (drop / "blocked" / "shelf.jpg.error.txt").read_text()
    assert "blocked by the safety check (input): unsafe: S2 Non-Violent Crimes" in note
    sidecar = json.loads((drop / "blocked" / "shelf.jpg.json").read_text())
    assert sidecar["state"] == BLOCKED and sidecar["safety"]["categories"] == ["S2"]
    assert not (drop / "done").exists() or not any((drop / "done").iterdir())


def test_panel_shows_the_badge_and_filters_blocked(stack: dict[str, Any]) -> None:
    from tests.test_panel import login

    app = stack["app"]
    with app.app_context():
        from web.panel.auth import user_store

        if user_store().get("ops") is None:
            user_store().create("ops", PASSWORD, admin=True)
    client = app.test_client()
    assert login(client, "ops", PASSWORD).status_code == 302
    flagged = _submit(stack, "flagger")["id"]
    blocked_id = _submit(stack, "blocker")["id"]
    _ended(stack, "flagger", flagged)
    _ended(stack, "blocker", blocked_id)
    page = client.get(f"/panel/jobs/{flagged}").get_data(as_text=True)
    assert 'id="job-safety"' in page and "unsafe: S2 Non-Violent Crimes" in page
    blocked = client.get("/panel/history?state=blocked").get_data(as_text=True)
    assert blocked_id in blocked and "state-blocked" in blocked
    assert "unsafe: S2 Non-Violent Crimes" in blocked

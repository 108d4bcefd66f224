"""Webhooks over the REST API (admin scope), the panel page and the CLI, against a real
receiver; deliveries are drained in-process here (the real-worker path is in
`test_webhooks_worker.py`)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from appliance.settings import Settings
from appliance.vocab import DELIVERED, JOB_EVENT_PREFIX, SUCCEEDED
from appliance.webhooks import Deliverer
from tests.api_fixtures import auth, make_settings
from tests.test_panel import _csrf, _users, login
from tests.test_store import claim, new_job
from tests.test_webhooks import RESULT
from tests.webhook_helpers import Receiver

API = "/api/v1/webhooks"


@pytest.fixture
def settings(tmp_path: Path, redis_server: str) -> Settings:
    hooks = {"allow": ["127.0.0.1/32"], "retry_schedule_s": [0.05, 0.05], "jitter": 0.0}
    return make_settings(tmp_path, redis_server, webhooks=hooks)


@pytest.fixture
def app(settings: Settings) -> Any:
    from web import create_app

    app = create_app(settings, {"TESTING": True})
    _users(app).create("root", "correct horse battery", admin=True)
    _users(app).create("alice", "correct horse battery")
    return app


@pytest.fixture
def tokens(app: Any) -> dict[str, str]:
    store = app.extensions["appliance"].tokens
    return {scope: store.create(f"t-{scope}", scope)[1] for scope in ("read", "submit", "admin")}


def end_a_job(app: Any) -> str:
    store = app.extensions["appliance"].jobs.backend.store
    job, _ = store.create_job(new_job())
    claim(store, job.id)
    assert store.succeed(job.id, "t1", **RESULT)
    return job.id


def drain(app: Any, settings: Settings, until: Any) -> None:
    deliverer = Deliverer(app.extensions["appliance"].jobs.backend.store, settings)
    deadline = time.monotonic() + 10
    while not until():
        assert time.monotonic() < deadline
        deliverer.drain(max_s=0.5)


def test_api_subscribe_deliver_log_redeliver_disable(
    app: Any, settings: Settings, tokens: dict[str, str]
) -> None:
    client = app.test_client()
    admin = auth(tokens["admin"])
    assert client.get(API, headers=auth(tokens["submit"])).status_code == 403
    refused = client.post(API, json={"url": "http://10.0.0.5/hook"}, headers=admin)
    assert refused.status_code == 422
    assert "outside the allowed hosts" in refused.get_json()["detail"]
    bad_event = client.post(API, json={"url": "http://127.0.0.1/", "events": ["x"]}, headers=admin)
    assert bad_event.status_code == 422
    with Receiver() as receiver:
        made = client.post(API, json={"url": receiver.url, "description": "lims"}, headers=admin)
        assert made.status_code == 201, made.get_json()
        sub = made.get_json()
        receiver.secret = sub["secret"]
        listed = client.get(API, headers=admin).get_json()
        assert [s["id"] for s in listed] == [sub["id"]] and "secret" not in listed[0]
        job_id = end_a_job(app)
        drain(app, settings, lambda: receiver.requests())
        (got,) = receiver.requests()
        assert got.signature_ok and got.library_ok
        assert got.event == JOB_EVENT_PREFIX + SUCCEEDED and got.json["data"]["job_id"] == job_id
        deliveries = client.get(f"{API}/{sub['id']}/deliveries", headers=admin).get_json()
        assert [d["state"] for d in deliveries] == [DELIVERED]
        one = client.get(f"{API}/deliveries/{deliveries[0]['id']}", headers=admin).get_json()
        assert [(a["attempt"], a["status"], a["ok"]) for a in one["log"]] == [(1, 200, True)]
        again = client.post(f"{API}/deliveries/{one['id']}/redeliver", headers=admin)
        assert again.status_code == 202
        drain(app, settings, lambda: len(receiver.requests()) == 2)
        assert receiver.requests()[1].headers["webhook-id"] == one["id"]
        off = client.post(f"{API}/{sub['id']}/disable", json={"reason": "moved"}, headers=admin)
        assert off.get_json()["enabled"] is False and off.get_json()["disabled_reason"] == "moved"
        end_a_job(app)
        drain(app, settings, lambda: True)
        assert len(receiver.requests()) == 2
        assert client.post(f"{API}/{sub['id']}/enable", headers=admin).get_json()["enabled"]
    assert client.get(f"{API}/nope", headers=admin).status_code == 404


def test_panel_page_is_for_admins_and_shows_the_secret_once(app: Any) -> None:
    alice = app.test_client()
    login(alice, "alice", "correct horse battery")
    assert alice.get("/panel/webhooks").status_code == 403
    root = app.test_client()
    assert login(root, "root", "correct horse battery").status_code == 302
    csrf = _csrf(root, "/panel/webhooks")
    refused = root.post("/panel/webhooks", data={"url": "http://10.0.0.5/x", "csrf_token": csrf})
    assert refused.status_code == 422 and "outside the allowed" in refused.get_data(as_text=True)
    made = root.post(
        "/panel/webhooks",
        data={"url": "http://127.0.0.1:9/x", "events": ["job.failed"], "csrf_token": csrf},
    )
    assert made.status_code == 200 and "whsec_" in made.get_data(as_text=True)
    page = root.get("/panel/webhooks").get_data(as_text=True)
    assert "http://127.0.0.1:9/x" in page and "whsec_" not in page


def test_cli_create_list_disable(tmp_path: Path, settings: Settings) -> None:
    from cli import cli

    env = {
        "APPLIANCE_CONFIG_FILE": str(tmp_path / "none.toml"),
        "APPLIANCE_DATA_DIR": str(settings.data_dir),
        "APPLIANCE_REDIS_URL": settings.redis_url,
        "APPLIANCE_WEBHOOKS__ALLOW": '["127.0.0.1"]',
    }
    runner = CliRunner()
    made = runner.invoke(cli, ["webhooks", "create", "http://127.0.0.1:9/x"], env=env)
    assert made.exit_code == 0, made.output
    assert made.stdout.strip().startswith("whsec_")
    refused = runner.invoke(cli, ["webhooks", "create", "http://10.0.0.5/x"], env=env)
    assert refused.exit_code != 0 and "outside" in refused.output
    listed = runner.invoke(cli, ["webhooks", "list"], env=env)
    sub_id = listed.stdout.split()[0]
    assert "(enabled)" in listed.stdout and "whsec_" not in listed.stdout
    assert runner.invoke(cli, ["webhooks", "disable", sub_id], env=env).exit_code == 0
    assert "disabled" in runner.invoke(cli, ["webhooks", "list"], env=env).stdout
    assert runner.invoke(cli, ["webhooks", "deliveries", sub_id], env=env).exit_code == 0
    assert runner.invoke(cli, ["webhooks", "secret"]).stdout.startswith("whsec_")

"""Full-text search through the API, the panel and the CLI, on SQLite and PostgreSQL:
ranking and marks, visibility, malformed queries."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from appliance.store.repo import JobStore
from tests.api_fixtures import auth, jpeg_bytes, make_settings
from tests.test_store import new_job


@pytest.fixture
def app(tmp_path: Path, redis_server: str, store_url: str) -> Any:
    from web import create_app

    settings = make_settings(tmp_path, redis_server, database_url=store_url)
    app = create_app(settings, {"TESTING": True})
    with app.app_context():
        from web.panel.auth import user_store

        user_store().create("alice", "correct horse battery")
        user_store().create("bob", "correct horse battery")
    return app


def _store(app: Any) -> JobStore:
    return app.extensions["appliance"].jobs.store


def _finish(app: Any, job_id: str, text_: str) -> None:
    store = _store(app)
    assert store.claim(job_id, worker="gpu0@h", device="cpu", claim="c1") is not None
    result = {"task": "ocr", "model": "m", "pages": [{"page": 1, "text": text_, "data": None}]}
    store.succeed(job_id, "c1", result=result, text=text_, timings={}, pages=1, summary_state=None)


def test_api_search_ranks_marks_and_refuses_malformed_queries(app: Any) -> None:
    client = app.test_client()
    tokens = app.extensions["appliance"].tokens
    submit = tokens.create("lims", "submit")[1]
    read = tokens.create("viewer", "read")[1]
    made = []
    for name, words in (("a.jpg", "blue car, house behind"), ("b.jpg", "a blue house <b>")):
        form = {"task": "ocr", "file": (io.BytesIO(jpeg_bytes()), name)}
        resp = client.post("/api/v1/jobs", data=form, headers=auth(submit))
        job_id = resp.get_json()["jobs"][0]["id"]
        _finish(app, job_id, words)
        made.append(job_id)
    resp = client.get("/api/v1/search?q=blue+house", headers=auth(read))
    assert resp.status_code == 200, resp.get_data(as_text=True)
    items = resp.get_json()["items"]
    assert [i["job"]["id"] for i in items] == [made[1], made[0]]
    assert items[0]["snippet_html"] == "a <mark>blue</mark> <mark>house</mark> &lt;b&gt;"
    assert items[0]["snippet"][slice(*items[0]["highlights"][1])] == "house"
    assert "input_path" not in items[0]["job"] and "result_text" not in items[0]["job"]
    # The read token sees what the listing shows it: every job.
    listed = client.get("/api/v1/jobs", headers=auth(read)).get_json()["items"]
    assert {j["id"] for j in listed} == {i["job"]["id"] for i in items}
    for bad in ('"blue', "*", "%25", "blue&cursor=zzz"):
        resp = client.get(f"/api/v1/search?q={bad}", headers=auth(read))
        assert resp.status_code == 400, bad
        assert resp.content_type.startswith("application/problem+json")
    spec = client.get("/api/v1/openapi.json", headers=auth(read)).get_json()
    assert "400" in spec["paths"]["/api/v1/search"]["get"]["responses"]


def test_panel_search_shows_only_the_users_own_jobs(app: Any) -> None:
    from tests.test_panel import _csrf, login, upload

    alice, bob = app.test_client(), app.test_client()
    for client, name in ((alice, "alice"), (bob, "bob")):
        assert login(client, name).status_code == 302
        client.csrf = _csrf(client, "/panel/")
    mine = upload(alice, jpeg_bytes(), "mine.jpg").get_json()["job"]["id"]
    theirs = upload(bob, jpeg_bytes(colour=(1, 2, 3)), "theirs.jpg").get_json()["job"]["id"]
    _finish(app, mine, "Lieferschein <i>Kartons</i> von Alice")
    _finish(app, theirs, "Lieferschein Kartons von Bob")
    html = alice.get("/panel/history?q=lieferschein+kartons").get_data(as_text=True)
    assert "mine.jpg" in html and "theirs.jpg" not in html
    assert "<mark>Lieferschein</mark> &lt;i&gt;<mark>Kartons</mark>&lt;/i&gt;" in html
    assert "theirs.jpg" not in alice.get("/panel/history?q=bob").get_data(as_text=True)
    resp = alice.get('/panel/history?q="lieferschein')
    assert resp.status_code == 400 and "unbalanced quote" in resp.get_data(as_text=True)


def test_cli_search(app: Any, tmp_path: Path, store_url: str) -> None:
    from cli import cli

    job, _ = _store(app).create_job(new_job(owner="ana", filename="note.png"))
    _finish(app, job.id, "a note about SPARE parts")
    env = {"APPLIANCE_DATABASE_URL": store_url, "APPLIANCE_DATA_DIR": str(tmp_path / "data")}
    runner = CliRunner()
    out = runner.invoke(cli, ["jobs", "search", "spare part*"], env=env)
    assert out.exit_code == 0, out.output
    assert job.id in out.output and "[SPARE] [parts]" in out.output
    out = runner.invoke(cli, ["jobs", "search", "spare", "--json"], env=env)
    assert out.exit_code == 0 and f'"id": "{job.id}"' in out.output
    out = runner.invoke(cli, ["jobs", "search", '"spare'], env=env)
    assert out.exit_code == 2 and "unbalanced quote" in out.output

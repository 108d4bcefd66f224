"""The browser panel over Flask's test client: login, CSRF, ownership, upload intake, queue,
results, search, system page. Real store and JobService (private Redis); no worker runs, so
finished jobs are written into the store directly."""

from __future__ import annotations

import io
import re
import struct
import zlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from appliance.settings import Settings
from tests.api_fixtures import jpeg_bytes, make_settings  # noqa: F401

PASSWORD = "correct horse battery"


@pytest.fixture
def settings(tmp_path: Path, redis_server: str) -> Settings:
    return make_settings(tmp_path, redis_server)


@pytest.fixture
def app(settings: Settings) -> Any:
    from web import create_app

    app = create_app(settings, {"TESTING": True})
    users = _users(app)
    users.create("alice", PASSWORD)
    users.create("bob", PASSWORD)
    users.create("root", PASSWORD, admin=True)
    return app


def _users(app: Any) -> Any:
    with app.app_context():
        from web.panel.auth import user_store

        return user_store()


def _csrf(client: Any, path: str = "/panel/login") -> str:
    html = client.get(path).get_data(as_text=True)
    match = re.search(r'name="csrf-token" content="([^"]+)"', html)
    assert match, html[:500]
    return match.group(1)


def login(client: Any, name: str, password: str = PASSWORD) -> Any:
    token = _csrf(client)
    return client.post(
        "/panel/login", data={"username": name, "password": password, "csrf_token": token}
    )


@pytest.fixture
def alice(app: Any) -> Any:
    client = app.test_client()
    assert login(client, "alice").status_code == 302
    client.csrf = _csrf(client, "/panel/")
    return client


def png_bomb(width: int = 40_000, height: int = 40_000) -> bytes:
    """A valid PNG header claiming 1.6 gigapixels, with a tiny (truncated) body."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))


def upload(client: Any, data: bytes, name: str = "photo.jpg", **form: str) -> Any:
    fields = {"task": "caption", "language": "en", **form}
    fields["file"] = (io.BytesIO(data), name)
    return client.post(
        "/panel/upload",
        data=fields,
        headers={"X-CSRFToken": client.csrf, "Accept": "application/json"},
        content_type="multipart/form-data",
    )


def finish(app: Any, job_id: str, text: str, **extra: Any) -> None:
    """Mark a job succeeded with `text` as its result, as a worker would (its search
    document too, in the same transaction, as `JobStore.succeed` does)."""
    from appliance.store import init_db, search_index
    from appliance.store.tables import Job

    now = datetime.now(UTC)
    result = {
        "task": extra.pop("task", "caption"),
        "model": "tiny-mllama-vision",
        "pages": extra.pop("pages", None) or [{"page": 1, "text": text, "data": None}],
        "summary": None,
    }
    engine = init_db(app.extensions["appliance"].settings)
    with engine.begin() as conn:
        conn.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(
                state="succeeded",
                result=result,
                result_text=text,
                started_at=now - timedelta(seconds=2),
                finished_at=now,
                worker="cpu@test",
                **extra,
            )
        )
        search_index.refresh(conn, [job_id])


# --- login, cookies, CSRF ---------------------------------------------------------------------


def test_login_page_has_labelled_controls(app: Any) -> None:
    html = app.test_client().get("/panel/login").get_data(as_text=True)
    for control in ("username", "password"):
        assert f'<label for="{control}">' in html and f'id="{control}"' in html
    # Local assets only.
    assert "http://" not in html and "https://" not in html


def test_anonymous_is_sent_to_login(app: Any) -> None:
    client = app.test_client()
    resp = client.get("/panel/history?q=x")
    assert resp.status_code == 302 and "/panel/login?next=" in resp.headers["Location"]
    assert (
        client.get("/panel/queue.json", headers={"Accept": "application/json"}).status_code == 401
    )
    assert client.get("/").headers["Location"].endswith("/panel/")


def test_login_sets_a_safe_cookie_and_logout_ends_it(app: Any) -> None:
    client = app.test_client()
    assert login(client, "alice", "wrong password").status_code == 401
    resp = login(client, "alice")
    assert resp.status_code == 302
    cookie = resp.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    assert "Secure" not in cookie  # plain HTTP on a LAN must still work ("auto")
    assert client.get("/panel/").status_code == 200
    token = _csrf(client, "/panel/")
    assert client.post("/panel/logout", data={"csrf_token": token}).status_code == 302
    assert client.get("/panel/").status_code == 302


def test_cookie_is_secure_over_https(app: Any) -> None:
    client = app.test_client()
    html = client.get("/panel/login", base_url="https://box.local").get_data(as_text=True)
    token = re.search(r'name="csrf-token" content="([^"]+)"', html).group(1)
    resp = client.post(
        "/panel/login",
        data={"username": "alice", "password": PASSWORD, "csrf_token": token},
        base_url="https://box.local",
        headers={"Referer": "https://box.local/panel/login"},
    )
    assert resp.status_code == 302
    assert "Secure" in resp.headers["Set-Cookie"]


def test_requests_without_csrf_token_are_refused(app: Any, alice: Any) -> None:
    # Login form.
    fresh = app.test_client()
    resp = fresh.post("/panel/login", data={"username": "alice", "password": PASSWORD})
    assert resp.status_code == 400 and "CSRF" in resp.get_data(as_text=True)
    # A fetch without the header, and one with a wrong token.
    data = {"task": "caption", "file": (io.BytesIO(jpeg_bytes()), "a.jpg")}
    resp = alice.post("/panel/upload", data=data, headers={"Accept": "application/json"})
    assert resp.status_code == 400 and "CSRF" in resp.get_json()["detail"]
    data = {"task": "caption", "file": (io.BytesIO(jpeg_bytes()), "a.jpg")}
    resp = alice.post("/panel/upload", data=data, headers={"X-CSRFToken": "forged"})
    assert resp.status_code == 400
    assert alice.post("/panel/logout").status_code == 400


def test_next_cannot_redirect_off_the_box(app: Any) -> None:
    client = app.test_client()
    token = _csrf(client)
    for target in ("https://evil.example/", "//evil.example/x", "/\\evil.example"):
        resp = client.post(
            "/panel/login?next=" + target,
            data={"username": "alice", "password": PASSWORD, "csrf_token": token},
        )
        assert resp.headers["Location"] == "/panel/", target
        client.post("/panel/logout", data={"csrf_token": _csrf(client, "/panel/")})
        token = _csrf(client)


def test_password_change_ends_open_sessions(app: Any, alice: Any) -> None:
    assert alice.get("/panel/").status_code == 200
    _users(app).set_password("alice", "another long password")
    assert alice.get("/panel/").status_code == 302


# --- upload -----------------------------------------------------------------------------------


def test_upload_queues_a_job_at_once(alice: Any) -> None:
    resp = upload(alice, jpeg_bytes(), "shelf.jpg", task="question", prompt="How many boxes?")
    assert resp.status_code == 201, resp.get_json()
    job = resp.get_json()["job"]
    assert job["state"] == "queued" and job["filename"] == "shelf.jpg"
    assert job["position"] >= 1 and job["task"] == "question" and job["owner"] == "alice"
    queue = alice.get("/panel/queue.json").get_json()["jobs"]
    assert [j["id"] for j in queue] == [job["id"]]


@pytest.mark.parametrize(
    ("data", "form", "reason"),
    [
        (png_bomb(), {}, "megapixels"),
        (b"", {}, "empty"),
        (b"PK\x03\x04" + b"\0" * 100, {}, "ZIP archive"),
        (jpeg_bytes()[:200], {}, "JPEG"),
        (jpeg_bytes(), {"task": "question"}, "needs a prompt"),
        (jpeg_bytes(), {"task": "classify", "labels": "one"}, "two labels"),
    ],
)
def test_upload_rejects_with_the_reason(alice: Any, data: bytes, form: dict, reason: str) -> None:
    resp = upload(alice, data, "bad.png", **form)
    assert resp.status_code == 422
    assert reason in resp.get_json()["detail"]
    assert alice.get("/panel/queue.json").get_json()["jobs"] == []


def test_multi_file_upload_is_one_batch_closed_by_the_browser(app: Any, alice: Any) -> None:
    ids = [
        upload(
            alice, jpeg_bytes(colour=(i, 0, 0)), f"{i}.jpg", batch="abc123", key=f"k{i}"
        ).get_json()["job"]["id"]
        for i in range(2)
    ]
    service = app.extensions["appliance"].jobs
    batch_ids = {service.get(i).batch_id for i in ids}
    assert len(batch_ids) == 1 and None not in batch_ids
    resp = alice.post("/panel/batches/close", data={"batch": "abc123"},
                      headers={"X-CSRFToken": alice.csrf})  # fmt: skip
    assert resp.status_code == 200
    assert service.get_batch(batch_ids.pop()).closed_at is not None
    # The same client id from another user is another batch: it cannot be closed by bob.
    bob = app.test_client()
    login(bob, "bob")
    resp = bob.post("/panel/batches/close", data={"batch": "abc123"},
                    headers={"X-CSRFToken": _csrf(bob, "/panel/"), "Accept": "application/json"})  # fmt: skip
    assert resp.status_code == 404


def test_idempotent_upload_key(alice: Any) -> None:
    first = upload(alice, jpeg_bytes(), key="same1").get_json()["job"]["id"]
    again = upload(alice, jpeg_bytes(), key="same1").get_json()["job"]["id"]
    assert first == again


# --- ownership ----------------------------------------------------------------------------------


def test_users_cannot_see_each_others_jobs(app: Any, alice: Any) -> None:
    job_id = upload(alice, jpeg_bytes()).get_json()["job"]["id"]
    finish(app, job_id, "a red forklift")
    bob = app.test_client()
    login(bob, "bob")
    token = _csrf(bob, "/panel/")
    for path in (
        f"/panel/jobs/{job_id}",
        f"/panel/jobs/{job_id}/pages/1.jpg",
        f"/panel/jobs/{job_id}/download.json",
    ):
        assert bob.get(path).status_code == 404, path
    assert (
        bob.post(f"/panel/jobs/{job_id}/retry", headers={"X-CSRFToken": token}).status_code == 404
    )
    assert bob.get("/panel/queue.json").get_json()["jobs"] == []
    assert "No jobs match" in bob.get("/panel/history?q=forklift").get_data(as_text=True)
    # The admin sees everything.
    root = app.test_client()
    login(root, "root")
    assert root.get(f"/panel/jobs/{job_id}").status_code == 200
    assert "<mark>forklift</mark>" in root.get("/panel/history?q=forklift").get_data(as_text=True)


# --- results, downloads, search -----------------------------------------------------------------


def test_result_page_shows_pages_beside_results_and_downloads(app: Any, alice: Any) -> None:
    job_id = upload(
        alice, jpeg_bytes(), "inv.jpg", task="extract", fields="number,total"
    ).get_json()["job"]["id"]
    pages = [{"page": 1, "text": '{"number": "A-1", "total": "=1+1"}',
              "data": {"number": "A-1", "total": "=1+1"}}]  # fmt: skip
    finish(app, job_id, '{"number": "A-1", "total": "=1+1"}', task="extract", pages=pages)
    html = alice.get(f"/panel/jobs/{job_id}").get_data(as_text=True)
    assert f"/panel/jobs/{job_id}/pages/1.jpg" in html and "&#34;number&#34;" in html
    img = alice.get(f"/panel/jobs/{job_id}/pages/1.jpg")
    assert img.status_code == 200 and img.data[:3] == b"\xff\xd8\xff"
    data = alice.get(f"/panel/jobs/{job_id}/download.json")
    assert data.status_code == 200 and "attachment" in data.headers["Content-Disposition"]
    assert data.get_json()["result"]["pages"][0]["data"]["number"] == "A-1"
    csv_text = alice.get(f"/panel/jobs/{job_id}/download.csv").get_data(as_text=True)
    assert csv_text.splitlines() == ["page,number,total", "1,A-1,'=1+1"]
    assert alice.get(f"/panel/jobs/{job_id}/download.txt").get_data(as_text=True).startswith("{")


def test_search_finds_words_in_results_with_filters(app: Any, alice: Any) -> None:
    a = upload(alice, jpeg_bytes(), "yard.jpg").get_json()["job"]["id"]
    b = upload(alice, jpeg_bytes(colour=(1, 2, 3)), "desk.jpg").get_json()["job"]["id"]
    finish(app, a, "A yellow FORKLIFT in the yard")
    finish(app, b, "Invoice 2024-05 from ACME, 100% paid")
    html = alice.get("/panel/history?q=forklift").get_data(as_text=True)
    assert "yard.jpg" in html and "desk.jpg" not in html and "<mark>FORKLIFT</mark>" in html
    html = alice.get("/panel/history?q=invoice+2024").get_data(as_text=True)
    assert "desk.jpg" in html and "yard.jpg" not in html
    # LIKE wildcards in the query are literal.
    assert "yard.jpg" not in alice.get("/panel/history?q=%25").get_data(as_text=True)
    assert "desk.jpg" in alice.get("/panel/history?q=100%25").get_data(as_text=True)
    html = alice.get("/panel/history?state=queued").get_data(as_text=True)
    assert "No jobs match" in html
    today = datetime.now(UTC).date().isoformat()
    html = alice.get(f"/panel/history?task=caption&source=panel&from={today}&to={today}").get_data(
        as_text=True
    )
    assert "yard.jpg" in html and "desk.jpg" in html


def test_history_pages_with_a_cursor(app: Any, alice: Any) -> None:
    from web.panel import queries

    for i in range(3):
        upload(alice, jpeg_bytes(colour=(i, 9, 9)), f"f{i}.jpg")
    with app.app_context():
        user = _users(app).get("alice")
        first = queries.history(user, queries.HistoryQuery(limit=2))
        second = queries.history(user, queries.HistoryQuery(limit=2, cursor=first.next_cursor))
        mangled = queries.history(user, queries.HistoryQuery(limit=2, cursor="not-a-cursor"))
    assert [j.filename for j in first.items] == ["f2.jpg", "f1.jpg"]
    assert [j.filename for j in second.items] == ["f0.jpg"] and second.next_cursor is None
    assert mangled.items == first.items  # a bad cursor in the URL: the first page, no error


def test_cancel_and_retry(alice: Any) -> None:
    job = upload(alice, jpeg_bytes()).get_json()["job"]
    headers = {"X-CSRFToken": alice.csrf, "Accept": "application/json"}
    resp = alice.post(job["cancel_url"], headers=headers)
    assert resp.get_json()["job"]["state"] == "cancelled"
    assert alice.post(job["cancel_url"], headers=headers).status_code == 409
    assert alice.post(job["retry_url"], headers=headers).get_json()["job"]["state"] == "queued"


def test_event_stream_sends_snapshot_then_changes(app: Any, alice: Any) -> None:
    from web.panel import actions

    job_id = upload(alice, jpeg_bytes()).get_json()["job"]["id"]
    with app.test_request_context("/panel/events"):
        user = _users(app).get("alice")
        stream = actions._stream(user, seconds=5)
        assert next(stream).startswith("retry:")
        snapshot = next(stream)
        assert snapshot.startswith("event: snapshot") and job_id in snapshot
        finish(app, job_id, "done")
        change = next(stream)
        assert change.startswith("event: job") and '"state": "succeeded"' in change
        stream.close()


def test_system_page(app: Any, alice: Any) -> None:
    job_id = upload(alice, jpeg_bytes()).get_json()["job"]["id"]
    finish(app, job_id, "x")
    html = alice.get("/panel/system").get_data(as_text=True)
    assert "<svg" in html and "1 jobs finished" in html and "interactive" in html
    assert "No drop folders" in html


# --- small pure pieces --------------------------------------------------------------------------


def test_markdown_escapes_and_renders_tables() -> None:
    from web.panel.render import markdown

    html = str(
        markdown("# Title\n<script>x</script> **b**\n\n| a | b |\n|---|---|\n| 1 | <i> |\n- x\n- y")
    )
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "<strong>b</strong>" in html and "<h3>Title</h3>" in html
    assert "<th>a</th>" in html and "<td>&lt;i&gt;</td>" in html
    assert "<ul><li>x</li><li>y</li></ul>" in html


def test_chart_buckets() -> None:
    from web.panel import stats

    now = datetime(2025, 1, 1, 12, 30, tzinfo=UTC)
    rows = [
        (now - timedelta(seconds=10), now - timedelta(seconds=5), "succeeded"),
        (now - timedelta(hours=2, seconds=30), now - timedelta(hours=2), "failed"),
        (now - timedelta(hours=30), now - timedelta(hours=30), "succeeded"),  # too old
    ]
    buckets = stats.hourly(rows, now)
    assert len(buckets) == 24 and sum(b.jobs for b in buckets) == 2
    assert buckets[-1].jobs == 1 and buckets[-1].mean_latency == 5
    assert buckets[-3].failed == 1
    assert str(stats.chart(buckets)).count("<rect") == 24


def test_users_cli(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from cli import cli

    env = {"APPLIANCE_DATA_DIR": str(tmp_path), "APPLIANCE_CONFIG_FILE": str(tmp_path / "x.toml")}
    runner = CliRunner()
    res = runner.invoke(cli, ["users", "create", "ana", "--admin", "--password-stdin"],
                        input="s3cret-password\n", env=env)  # fmt: skip
    assert res.exit_code == 0, res.output
    res = runner.invoke(
        cli, ["users", "create", "ana", "--password-stdin"], input="another-pw1\n", env=env
    )
    assert res.exit_code != 0 and "already exists" in res.output
    res = runner.invoke(
        cli, ["users", "create", "x y", "--password-stdin"], input="another-pw1\n", env=env
    )
    assert res.exit_code != 0 and "user name" in res.output
    res = runner.invoke(cli, ["users", "create", "b", "--password-stdin"], input="short\n", env=env)
    assert res.exit_code != 0 and "at least" in res.output
    assert "ana\tadmin" in runner.invoke(cli, ["users", "list"], env=env).output
    assert runner.invoke(cli, ["users", "delete", "ana"], env=env).exit_code == 0
    assert runner.invoke(cli, ["users", "list"], env=env).output == ""


def test_pages_forbid_foreign_content_and_framing(alice: Any) -> None:
    resp = alice.get("/panel/")
    csp = resp.headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert resp.headers["Cache-Control"] == "no-store"
    html = resp.get_data(as_text=True)
    assert "<script>" not in html and "style=" not in html  # nothing inline for the CSP to block


def test_secret_key_file_is_made_once_and_private(tmp_path: Path) -> None:
    from web.panel import load_secret_key

    path = tmp_path / "sub" / "panel.key"
    key = load_secret_key(path)
    assert len(key) == 64 and load_secret_key(path) == key
    assert path.stat().st_mode & 0o777 == 0o600


# -- browser paths and the demo banner (issue 17) -----------------------------------------

BROWSER = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}


@pytest.mark.parametrize("path", ["/login", "/admin", "/api/v1/jobs"])
def test_a_browser_on_a_path_without_a_page_is_sent_to_the_login(app: Any, path: str) -> None:
    client = app.test_client()
    answer = client.get(path, headers=BROWSER)
    assert answer.status_code == 302
    assert answer.headers["Location"].endswith("/panel/login")
    # Programs still get the API's problem, as before.
    api = client.get(path, headers={"Accept": "application/json"})
    assert api.status_code == 401
    assert api.get_json()["detail"].startswith("an API token is required")
    # A bad token is a bad token, even from a browser.
    bad = client.get(path, headers={**BROWSER, "Authorization": "Bearer nope"})
    assert bad.status_code == 401


def test_favicon_is_served(app: Any) -> None:
    answer = app.test_client().get("/favicon.ico", headers=BROWSER)
    assert answer.status_code == 200
    assert answer.mimetype == "image/vnd.microsoft.icon"
    assert answer.data[:4] == b"\x00\x00\x01\x00"  # an ICO header
    page = app.test_client().get("/panel/login").get_data(as_text=True)
    assert 'rel="icon" href="/panel/static/favicon.ico"' in page


def _manifest(folder: Path, name: str, role: str, demo: bool) -> None:
    from appliance.registry import write_manifest

    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    write_manifest(folder, name, role, "MllamaForConditionalGeneration", demo=demo)


@pytest.mark.parametrize("demo", [True, False])
def test_demo_banner_shows_with_tiny_models_only(
    tmp_path: Path, redis_server: str, demo: bool
) -> None:
    from web import create_app

    models = tmp_path / "models"
    _manifest(models / "vision-model", "some-vision", "vision", demo)
    app = create_app(make_settings(tmp_path, redis_server, models_dir=models), {"TESTING": True})
    _users(app).create("alice", PASSWORD)
    client = app.test_client()
    assert login(client, "alice").status_code == 302
    page = client.get("/panel/").get_data(as_text=True)
    assert ('id="demo-banner"' in page) is demo
    if demo:
        assert "random" in page and "some-vision" in page and "Using real" in page


def test_file_picker_and_hint_offer_every_type_intake_takes(alice: Any) -> None:
    from appliance.intake.filetypes import FILE_TYPES

    html = alice.get("/panel/").get_data(as_text=True)
    accept = re.search(r'accept="([^"]+)"', html)
    hint = re.search(r'<p class="hint">([^<]*) up to', html)
    assert accept and hint, html[:500]
    offered = set(accept.group(1).split(","))
    for kind in FILE_TYPES:
        assert kind.label in hint.group(1), (kind.label, hint.group(1))
        assert kind.mime in offered and set(kind.extensions) <= offered, kind
    assert {"image/heic", ".heic", "image/avif", ".avif"} <= offered

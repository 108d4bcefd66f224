"""Tokens, scopes, rate limits and the guards in front of the queue."""

from __future__ import annotations

import io
import re
from typing import Any

import pytest

from tests.api_fixtures import *  # noqa: F403
from tests.api_fixtures import auth, jpeg_bytes, make_settings


def _routes(app: Any) -> list[tuple[str, str]]:
    routes = []
    for rule in app.url_map.iter_rules():
        if rule.endpoint.startswith("panel"):
            continue  # the panel authenticates by session (its own tests)
        path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", "x", rule.rule)
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            routes.append((method, path))
    return routes


def test_every_endpoint_but_healthz_needs_a_token(app: Any, client: Any) -> None:
    routes = _routes(app)
    assert ("POST", "/v1/chat/completions") in routes and ("GET", "/metrics") in routes
    for method, path in routes:
        resp = client.open(path, method=method)
        if path == "/healthz":
            assert resp.status_code == 200
            continue
        assert resp.status_code == 401, (method, path, resp.status_code)
        assert resp.mimetype == "application/problem+json"
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        assert "token" in resp.json["detail"]


def test_unknown_and_malformed_tokens_are_401(client: Any, tokens: dict[str, str]) -> None:
    for header in (
        "Bearer apl_nope",
        "Bearer " + tokens["read"] + "x",
        "Basic " + tokens["read"],
        "Bearer",
        "Bearer " + "a" * 5000,
    ):
        resp = client.get("/api/v1/jobs", headers={"Authorization": header})
        assert resp.status_code == 401, header


def test_revoked_token_stops_working(tmp_path: Any, redis_server: str) -> None:
    from web import create_app

    settings = make_settings(tmp_path, redis_server)
    settings.api.token_cache_seconds = 0
    app = create_app(settings)
    store = app.extensions["appliance"].tokens
    _info, secret = store.create("soon-gone", "read")
    client = app.test_client()
    assert client.get("/api/v1/workers", headers=auth(secret)).status_code == 200
    assert store.revoke("soon-gone") == 1
    assert client.get("/api/v1/workers", headers=auth(secret)).status_code == 401


def test_read_scope_cannot_submit(client: Any, tokens: dict[str, str]) -> None:
    read = auth(tokens["read"])
    assert client.get("/api/v1/jobs", headers=read).status_code == 200
    resp = client.post(
        "/api/v1/jobs", headers=read, data={"file": (io.BytesIO(jpeg_bytes()), "a.jpg")}
    )
    assert resp.status_code == 403
    assert "scope 'read'" in resp.json["detail"]
    chat = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    assert client.post("/v1/chat/completions", headers=read, json=chat).status_code == 403
    assert client.post("/api/v1/jobs/x/cancel", headers=read).status_code == 403
    assert client.post("/api/v1/jobs/x/retry", headers=read).status_code == 403


def test_rate_limit_answers_429_with_retry_after(tmp_path: Any, redis_server: str) -> None:
    from web import create_app

    settings = make_settings(tmp_path, redis_server)
    settings.api.rate_limit_per_minute = 3
    app = create_app(settings)
    _info, secret = app.extensions["appliance"].tokens.create("busy", "read")
    client = app.test_client()
    codes = [client.get("/api/v1/workers", headers=auth(secret)) for _ in range(5)]
    assert [r.status_code for r in codes[:3]] == [200, 200, 200]
    limited = codes[3]
    assert limited.status_code == 429
    assert 1 <= int(limited.headers["Retry-After"]) <= 60
    assert "rate limit" in limited.json["detail"]
    # Another token has its own budget.
    _info, other = app.extensions["appliance"].tokens.create("calm", "read")
    assert client.get("/api/v1/workers", headers=auth(other)).status_code == 200


def test_full_queue_answers_503_with_retry_after(tmp_path: Any, redis_server: str) -> None:
    from web import create_app

    settings = make_settings(tmp_path, redis_server)
    settings.api.max_queue_depth = 1
    app = create_app(settings)
    _info, secret = app.extensions["appliance"].tokens.create("filler", "submit")
    client = app.test_client()

    def submit() -> Any:
        return client.post(
            "/api/v1/jobs", headers=auth(secret), data={"file": (io.BytesIO(jpeg_bytes()), "a.jpg")}
        )

    assert submit().status_code == 201  # no worker runs: it stays queued
    full = submit()
    assert full.status_code == 503
    assert int(full.headers["Retry-After"]) > 0
    assert "queue is full" in full.json["detail"]


def test_oversized_request_is_413(tmp_path: Any, redis_server: str) -> None:
    from web import create_app

    settings = make_settings(tmp_path, redis_server)
    settings.api.max_request_bytes = 50_000
    settings.api.max_files = 2
    app = create_app(settings)
    _info, secret = app.extensions["appliance"].tokens.create("big", "submit")
    client = app.test_client()
    big = client.post(
        "/api/v1/jobs", headers=auth(secret), data={"file": (io.BytesIO(b"\xff" * 80_000), "a.jpg")}
    )
    assert big.status_code == 413 and big.mimetype == "application/problem+json"
    many = client.post(
        "/api/v1/jobs",
        headers=auth(secret),
        data={"file": [(io.BytesIO(jpeg_bytes()), f"{i}.jpg") for i in range(3)]},
    )
    assert many.status_code == 413
    assert "at most 2 files" in many.json["detail"]


def test_same_idempotency_key_gives_the_same_job(client: Any, tokens: dict[str, str]) -> None:
    headers = auth(tokens["submit"], **{"Idempotency-Key": "lims-4711"})

    def submit() -> Any:
        return client.post(
            "/api/v1/jobs", headers=headers, data={"file": (io.BytesIO(jpeg_bytes()), "xray.jpg")}
        )

    first, second = submit(), submit()
    assert first.status_code in (200, 201) and second.status_code in (200, 201)
    assert first.json["jobs"][0]["id"] == second.json["jobs"][0]["id"]
    listing = client.get("/api/v1/jobs", headers=auth(tokens["read"])).json
    assert len(listing["items"]) == 1


@pytest.mark.parametrize(
    ("path", "status"),
    [("/api/v1/jobs/does-not-exist", 404), ("/api/v1/batches/nope", 404), ("/nowhere", 404)],
)
def test_errors_are_problem_json(
    client: Any, tokens: dict[str, str], path: str, status: int
) -> None:
    resp = client.get(path, headers=auth(tokens["read"]))
    assert resp.status_code == status
    assert resp.mimetype == "application/problem+json"
    body = resp.json
    assert body["status"] == status and body["title"] and body["detail"]


def test_healthz_needs_nothing(tmp_path: Any) -> None:
    from web import create_app

    # Redis and the database do not even exist: liveness must not touch them.
    settings = make_settings(tmp_path, "redis://127.0.0.1:1/0")
    resp = create_app(settings).test_client().get("/healthz")
    assert resp.status_code == 200 and resp.json == {"status": "ok"}


def test_docs_page_is_local_html(client: Any, tokens: dict[str, str]) -> None:
    resp = client.get("/api/v1/docs", headers=auth(tokens["read"]))
    assert resp.status_code == 200 and resp.mimetype == "text/html"
    html = resp.get_data(as_text=True)
    assert "/api/v1/jobs" in html and "/v1/chat/completions" in html
    assert "http://" not in html and "https://" not in html  # nothing from a CDN

"""The unmodified `openai` package against the real stack (a Flask server, a real Redis, a real
`celery worker` on the tiny models): upload a JSONL, create a batch, poll it to `completed`,
download its output and error files; cancel a running batch."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from werkzeug.serving import make_server

from tests.api_fixtures import auth, jpeg_bytes, make_settings

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
ENDPOINT = "/v1/chat/completions"


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, redis_server: str, tiny_models_dir: Path
) -> Iterator[dict[str, Any]]:
    from web import create_app

    tmp = tmp_path_factory.mktemp("openai-batches")
    # Its own Redis database: no other test's queued jobs reach this worker.
    redis_url = redis_server.rsplit("/", 1)[0] + "/8"
    settings = make_settings(tmp, redis_url, models_dir=tiny_models_dir)
    settings.api.rate_limit_per_minute = 0
    env = {
        **os.environ,
        "APPLIANCE_CONFIG_FILE": str(tmp / "none.toml"),
        "APPLIANCE_DATA_DIR": str(settings.data_dir),
        "APPLIANCE_MODELS_DIR": str(tiny_models_dir),
        "APPLIANCE_REDIS_URL": redis_url,
        "APPLIANCE_DEVICE": "cpu",
        "APPLIANCE_GENERATION__MAX_NEW_TOKENS": "8",
        # One job per run, so a cancel finds lines still queued; a quick reconciler, so a
        # batch whose last line was cancelled from a request gets its files soon.
        "APPLIANCE_QUEUE__BATCH_SIZE": "1",
        "APPLIANCE_QUEUE__RECONCILE_S": "1",
        "CUDA_VISIBLE_DEVICES": "",
    }
    app = create_app(settings)
    tokens = app.extensions["appliance"].tokens
    secrets = {name: tokens.create(name, scope)[1] for name, scope in _TOKENS}
    log = open(tmp / "worker.log", "wb")  # noqa: SIM115 - closed in the finally below
    worker = subprocess.Popen(
        [sys.executable, "-m", "cli", "worker", "--exec", "--loglevel", "WARNING"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    client = app.test_client()
    try:
        deadline = time.monotonic() + 180
        while client.get("/readyz", headers=auth(secrets["ana"])).status_code != 200:
            if worker.poll() is not None or time.monotonic() > deadline:
                log.flush()
                pytest.fail("worker not ready:\n" + (tmp / "worker.log").read_text()[-3000:])
            time.sleep(0.5)
        url = f"http://127.0.0.1:{server.server_port}/v1"
        yield {"url": url, "secrets": secrets, "log": tmp / "worker.log"}
    finally:
        server.shutdown()
        os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(10)
        log.close()


_TOKENS = (("ana", "submit"), ("bob", "submit"), ("reader", "read"), ("root", "admin"))


def _client(stack: dict[str, Any], name: str = "ana") -> Any:
    from openai import OpenAI

    return OpenAI(base_url=stack["url"], api_key=stack["secrets"][name], max_retries=0, timeout=60)


def _line(custom_id: str, content: Any, max_tokens: int = 4) -> str:
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": content}]}
    body["max_tokens"] = max_tokens
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": ENDPOINT, "body": body})


def _image_content(seed: int) -> list[dict[str, Any]]:
    data = base64.b64encode(jpeg_bytes((64, 48), (seed * 40 % 256, 90, 160))).decode()
    url = f"data:image/jpeg;base64,{data}"
    return [
        {"type": "text", "text": "Describe it."},
        {"type": "image_url", "image_url": {"url": url}},
    ]


def _poll(client: Any, batch_id: str, until: set[str], budget_s: float = 300) -> Any:
    deadline = time.monotonic() + budget_s
    while True:
        batch = client.batches.retrieve(batch_id)
        if batch.status in until or time.monotonic() > deadline:
            return batch
        time.sleep(0.5)


def _jsonl(client: Any, file_id: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines()]


def test_a_batch_of_20_requests_round_trips_through_the_openai_client(
    stack: dict[str, Any],
) -> None:
    client = _client(stack)
    lines = [
        _line(f"req-{i}", _image_content(i) if i % 3 == 0 else f"Question {i}?") for i in range(18)
    ]
    lines.insert(5, '{"custom_id": "broken", "body": ')  # not JSON
    lines.insert(12, json.dumps({"custom_id": "no-messages", "url": ENDPOINT, "body": {}}))
    upload = client.files.create(
        file=("requests.jsonl", io.BytesIO("\n".join(lines).encode())), purpose="batch"
    )
    assert upload.object == "file" and upload.purpose == "batch" and upload.status == "processed"
    assert upload.bytes > 0 and upload.filename == "requests.jsonl"
    assert client.files.retrieve(upload.id).id == upload.id
    assert upload.id in [f.id for f in client.files.list(purpose="batch")]

    batch = client.batches.create(
        input_file_id=upload.id,
        endpoint=ENDPOINT,
        completion_window="24h",
        metadata={"run": "acceptance"},
    )
    assert batch.status in ("validating", "in_progress") and batch.metadata == {"run": "acceptance"}
    done = _poll(client, batch.id, {"completed", "failed", "expired", "cancelled"})
    assert done.status == "completed", done
    assert done.request_counts.total == 20
    assert (done.request_counts.completed, done.request_counts.failed) == (18, 2)
    assert done.in_progress_at and done.finalizing_at and done.completed_at
    assert done.created_at <= done.in_progress_at <= done.finalizing_at <= done.completed_at

    output = _jsonl(client, done.output_file_id)
    errors = _jsonl(client, done.error_file_id)
    assert len(output) == 18 and len(errors) == 2
    assert {o["custom_id"] for o in output} == {f"req-{i}" for i in range(18)}
    for line in output:
        assert line["error"] is None and line["response"]["status_code"] == 200
        body = line["response"]["body"]
        assert body["object"] == "chat.completion" and body["model"] == "tiny-mllama-vision"
        assert isinstance(body["choices"][0]["message"]["content"], str)
        assert body["choices"][0]["finish_reason"] in ("stop", "length")
        assert body["usage"]["completion_tokens"] <= 4
    assert {(e["custom_id"], e["error"]["code"]) for e in errors} == {
        (None, "invalid_json_line"),
        ("no-messages", "invalid_request"),
    }
    assert all(e["response"] is None and e["error"]["message"] for e in errors)
    assert client.files.retrieve(done.output_file_id).purpose == "batch_output"
    assert done.id in [b.id for b in client.batches.list(limit=5)]

    # Owners: another token sees none of it; an admin token sees it all; read may only read.
    from openai import BadRequestError, NotFoundError, PermissionDeniedError

    with pytest.raises(BadRequestError):
        client.batches.create(
            input_file_id=upload.id, endpoint="/v1/embeddings", completion_window="24h"
        )
    with pytest.raises(BadRequestError):
        client.files.create(file=("x.jsonl", io.BytesIO(b"{}")), purpose="fine-tune")

    other = _client(stack, "bob")
    with pytest.raises(NotFoundError):
        other.batches.retrieve(done.id)
    with pytest.raises(NotFoundError):
        other.files.content(done.output_file_id)
    assert done.id not in [b.id for b in other.batches.list()]
    assert _client(stack, "root").batches.retrieve(done.id).status == "completed"
    with pytest.raises(PermissionDeniedError):
        _client(stack, "reader").batches.create(
            input_file_id=upload.id, endpoint=ENDPOINT, completion_window="24h"
        )
    assert client.files.delete(upload.id).deleted
    with pytest.raises(NotFoundError):
        client.files.retrieve(upload.id)


def test_cancelling_a_running_batch_keeps_finished_lines_and_cancels_the_rest(
    stack: dict[str, Any],
) -> None:
    client = _client(stack)
    # Long enough to be cancelled mid-way: many lines, each generating up to 48 tokens.
    lines = [_line(f"long-{i}", f"Tell a long story number {i}.", max_tokens=48) for i in range(40)]
    upload = client.files.create(
        file=("long.jsonl", io.BytesIO("\n".join(lines).encode())), purpose="batch"
    )
    batch = client.batches.create(
        input_file_id=upload.id, endpoint=ENDPOINT, completion_window="24h"
    )
    deadline = time.monotonic() + 180
    while client.batches.retrieve(batch.id).request_counts.completed < 1:
        assert time.monotonic() < deadline, "no line finished"
        time.sleep(0.2)
    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status in ("cancelling", "cancelled") and cancelling.cancelling_at
    ended = _poll(client, batch.id, {"cancelled", "completed", "failed"}, budget_s=120)
    assert ended.status == "cancelled" and ended.cancelled_at, ended
    output = _jsonl(client, ended.output_file_id)
    errors = _jsonl(client, ended.error_file_id)
    assert len(output) >= 1 and len(errors) >= 1 and len(output) + len(errors) == 40
    assert (ended.request_counts.completed, ended.request_counts.failed) == (
        len(output),
        len(errors),
    )
    assert all(o["response"]["status_code"] == 200 for o in output)
    assert {e["error"]["code"] for e in errors} == {"batch_cancelled"}
    ids = [o["custom_id"] for o in output] + [e["custom_id"] for e in errors]
    assert sorted(ids) == sorted(f"long-{i}" for i in range(40))

"""End to end with a real Redis, a real `celery worker` subprocess and the tiny models:
submit -> SSE shows the state changes -> result; the `openai` client gets an answer."""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from werkzeug.serving import make_server

from tests.api_fixtures import *  # noqa: F403
from tests.api_fixtures import auth, jpeg_bytes

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def stack(api_worker_stack: dict[str, Any]) -> dict[str, Any]:
    """The session's API + worker stack (tests/worker_stack.py), shared with the safety tests."""
    return api_worker_stack


def _sse_events(response: Any, until_state: str, budget_s: float = 120) -> list[dict[str, Any]]:
    events, buffer = [], b""
    deadline = time.monotonic() + budget_s
    for chunk in response.response:
        buffer += chunk if isinstance(chunk, bytes) else chunk.encode()
        while b"\n\n" in buffer:
            block, buffer = buffer.split(b"\n\n", 1)
            data = [line[5:].strip() for line in block.split(b"\n") if line.startswith(b"data:")]
            if data:
                events.append(json.loads(b"\n".join(data)))
                if events[-1].get("state") == until_state:
                    return events
        if time.monotonic() > deadline:
            break
    return events


def test_submit_then_sse_then_result(stack: dict[str, Any]) -> None:
    client, headers = stack["client"], auth(stack["secret"])
    # Open the stream first (from "now"), then submit: every change must show up.
    stream = client.get("/api/v1/events?timeout=120", headers=headers, buffered=False)
    assert stream.status_code == 200 and stream.mimetype == "text/event-stream"
    resp = client.post(
        "/api/v1/jobs",
        headers=headers,
        data={"file": (io.BytesIO(jpeg_bytes((200, 150))), "shelf.jpg"), "task": "caption"},
    )
    assert resp.status_code == 201, resp.json
    job_id = resp.json["jobs"][0]["id"]
    events = [e for e in _sse_events(stream, "succeeded") if e.get("job_id") == job_id]
    stream.close()
    states = [e["state"] for e in events if e.get("state")]
    assert states[0] == "queued" and "running" in states and states[-1] == "succeeded", states

    job = client.get(f"/api/v1/jobs/{job_id}", headers=headers).json
    assert job["state"] == "succeeded" and job["worker"]
    result = client.get(f"/api/v1/jobs/{job_id}/result", headers=headers)
    assert result.status_code == 200 and result.json["result"]["pages"][0]["page"] == 1
    for fmt, mimetype in (("txt", "text/plain"), ("md", "text/markdown"), ("csv", "text/csv")):
        other = client.get(f"/api/v1/jobs/{job_id}/result?format={fmt}", headers=headers)
        assert other.status_code == 200 and other.mimetype == mimetype
    assert (
        client.get(f"/api/v1/jobs/{job_id}/result?format=csv", headers=headers)
        .get_data(as_text=True)
        .startswith("job_id,filename,task,page")
    )
    original = client.get(f"/api/v1/jobs/{job_id}/image", headers=headers)
    assert original.mimetype == "image/jpeg" and original.data == jpeg_bytes((200, 150))
    thumb = client.get(f"/api/v1/jobs/{job_id}/image?variant=thumbnail&size=64", headers=headers)
    assert thumb.status_code == 200 and thumb.mimetype == "image/jpeg"
    assert client.post(f"/api/v1/jobs/{job_id}/cancel", headers=headers).status_code == 409

    metrics = client.get("/metrics", headers=headers).get_data(as_text=True)
    assert 'appliance_jobs{source="api",state="succeeded"}' in metrics
    assert "appliance_job_latency_seconds_bucket" in metrics
    assert 'appliance_queue_depth{lane="interactive"}' in metrics
    workers = client.get("/api/v1/workers", headers=headers).json
    assert workers["workers"] and "interactive" in workers["queue_depth"]


@pytest.fixture(scope="module")
def live_url(stack: dict[str, Any]) -> Iterator[str]:
    server = make_server("127.0.0.1", 0, stack["app"], threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()


def _openai(stack: dict[str, Any], live_url: str) -> Any:
    from openai import OpenAI

    return OpenAI(base_url=f"{live_url}/v1", api_key=stack["secret"], max_retries=0, timeout=120)


def _job_of(stack: dict[str, Any], completion_id: str) -> dict[str, Any]:
    job_id = completion_id.removeprefix("chatcmpl-")
    return stack["client"].get(f"/api/v1/jobs/{job_id}", headers=auth(stack["secret"])).json


def test_openai_client_gets_an_answer(stack: dict[str, Any], live_url: str) -> None:
    client = _openai(stack, live_url)
    listed = client.models.list().data
    roles = {m.id: getattr(m, "role", None) for m in listed}
    assert roles == {"tiny-mllama-vision": "vision", "tiny-llama-summarizer": "summarizer"}
    assert all(m.object == "model" and m.created > 0 for m in listed)
    models = ["tiny-mllama-vision"]
    image = base64.b64encode(jpeg_bytes((120, 90), (20, 140, 60))).decode()
    messages: Any = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What colour is this?"},
                {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{image}"}},
            ],
        }
    ]
    answer = client.chat.completions.create(model=models[0], messages=messages, max_tokens=6)
    assert answer.choices[0].message.role == "assistant"
    assert isinstance(answer.choices[0].message.content, str)
    assert answer.model == models[0] and answer.usage is not None
    # The reason matches the generation: a reply shorter than its budget ended on its own.
    cut = answer.usage.completion_tokens == 6
    assert answer.choices[0].finish_reason == ("length" if cut else "stop")

    chunks = list(
        client.chat.completions.create(
            model=models[0],
            messages=messages,
            max_tokens=6,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == answer.choices[0].finish_reason  # greedy: the same answer
    assert chunks[-1].usage is not None and chunks[-1].usage == answer.usage
    assert text == answer.choices[0].message.content

    # An https image URL cannot be fetched offline: a clear 400, in OpenAI's error shape too.
    from openai import BadRequestError

    with pytest.raises(BadRequestError) as err:
        client.chat.completions.create(
            model=models[0],
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": "https://example.com/a.jpg"}}
                    ],
                }
            ],
        )
    assert "only data: image URLs" in str(err.value)


def test_openai_text_only_chat_is_answered_and_cut_at_max_tokens(
    stack: dict[str, Any], live_url: str
) -> None:
    client = _openai(stack, live_url)
    messages: Any = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Hello! What can you do?"},
    ]
    answer = client.chat.completions.create(model="gpt-4o", messages=messages, max_tokens=3)
    assert answer.choices[0].message.content.strip()
    assert answer.model == "tiny-mllama-vision"  # the model that answered, not the one named
    assert answer.choices[0].finish_reason == "length"
    usage = answer.usage
    assert usage.completion_tokens == 3 and usage.prompt_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens

    # A job like any other: its stored input file is the conversation itself.
    job = _job_of(stack, answer.id)
    assert job["state"] == "succeeded" and job["filename"] == "chat.json"
    assert job["request"]["task"] == "chat" and job["request"]["prompt"] == messages[1]["content"]
    original = stack["client"].get(f"/api/v1/jobs/{job['id']}/image", headers=auth(stack["secret"]))
    stored = json.loads(original.data)["messages"]
    assert [(t["role"], t["text"], t["image"]) for t in stored] == [
        ("system", messages[0]["content"], False),
        ("user", messages[1]["content"], False),
    ]

    chunks = list(
        client.chat.completions.create(
            model="tiny-mllama-vision",
            messages=messages,
            max_tokens=3,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "length" and all(f is None for f in finishes[:-1])
    assert chunks[-1].usage.completion_tokens == 3 and chunks[-1].usage.prompt_tokens > 0
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).strip()

    from openai import BadRequestError

    with pytest.raises(BadRequestError, match="summarizer model"):
        client.chat.completions.create(model="tiny-llama-summarizer", messages=messages)


def test_openai_follow_up_about_an_image_from_an_earlier_turn(
    stack: dict[str, Any], live_url: str
) -> None:
    client = _openai(stack, live_url)
    jpeg = jpeg_bytes((120, 90), (200, 40, 40))
    image = {
        "type": "image_url",
        "image_url": {"url": f"data:image/jpeg;base64,{base64.b64encode(jpeg).decode()}"},
    }
    follow_up = "Is it a light or a dark colour?"
    messages: Any = [
        {"role": "user", "content": [{"type": "text", "text": "What colour is this?"}, image]},
        {"role": "assistant", "content": "It is red."},
        {"role": "user", "content": follow_up},
    ]
    answer = client.chat.completions.create(model="tiny-mllama-vision", messages=messages)
    assert answer.choices[0].message.content.strip()
    assert answer.choices[0].finish_reason in ("stop", "length")
    job = _job_of(stack, answer.id)
    assert job["request"]["prompt"] == follow_up
    assert [t["image"] for t in job["request"]["messages"]] == [True, False, False]
    # The image from the first turn is the job's input file, as an upload's would be.
    original = stack["client"].get(f"/api/v1/jobs/{job['id']}/image", headers=auth(stack["secret"]))
    assert original.mimetype == "image/jpeg" and original.data == jpeg

    # The earlier turns are in the prompt: the follow-up alone is a shorter one.
    alone = client.chat.completions.create(
        model="tiny-mllama-vision",
        messages=[{"role": "user", "content": [{"type": "text", "text": follow_up}, image]}],
    )
    assert answer.usage.prompt_tokens > alone.usage.prompt_tokens > 0

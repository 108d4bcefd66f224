"""OpenAI-compatible chat completions, routed through the job queue like every other request.

`appliance.openai.chat` reads the conversation (system, user and assistant turns) and the
images of its latest user message that has any (`openai_messages` turns its refusals into
OpenAI errors); `appliance.openai.completion` builds the reply, as it does for batch lines. The vision model answers, text-only chats included: each
image becomes one `interactive` `chat` job with source `api`, and a chat without an image one
job of its own (`JobService.submit_chat`). The view waits for them, so these requests share the
GPUs fairly with uploads and drop folders. `finish_reason` and `usage` come from what the
worker's generation reported.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import marshmallow as ma
from flask import g
from flask.views import MethodView
from flask_smorest import Blueprint

from appliance.errors import JobNotFound
from appliance.openai import completion
from appliance.registry import MANIFEST
from appliance.safety import mode_for
from appliance.vocab import INTERACTIVE
from web import sse
from web.api import jobview
from web.api.openai_messages import read_chat
from web.api.openai_models import chat_model, served
from web.problems import Problem
from web.services import services

blp = Blueprint(
    "openai",
    __name__,
    url_prefix="/v1",
    description="OpenAI-compatible chat completions (vision), routed through the job queue",
)

# How often an idle stream says it is alive, so proxies do not cut it.
_KEEPALIVE_SECONDS = 10.0


class ChatRequestSchema(ma.Schema):
    class Meta:
        # OpenAI clients send many options we do not use (top_p, n, user, ...): accept them.
        unknown = ma.EXCLUDE

    model = ma.fields.String(load_default="")
    messages = ma.fields.List(
        ma.fields.Dict(),
        required=True,
        validate=ma.validate.Length(min=1, max=256),
        metadata={"description": "OpenAI chat messages; images as image_url parts with data: URLs"},
    )
    max_tokens = ma.fields.Integer(load_default=None, validate=ma.validate.Range(1, 8192))
    max_completion_tokens = ma.fields.Integer(
        load_default=None, validate=ma.validate.Range(1, 8192)
    )
    temperature = ma.fields.Float(load_default=None, validate=ma.validate.Range(0, 2))
    seed = ma.fields.Integer(load_default=None, validate=ma.validate.Range(0, 2**31 - 1))
    stream = ma.fields.Boolean(load_default=False)
    stream_options = ma.fields.Dict(load_default=None, allow_none=True)


class ChatMessageSchema(ma.Schema):
    role = ma.fields.String()
    content = ma.fields.String()


class ChatChoiceSchema(ma.Schema):
    index = ma.fields.Integer()
    message = ma.fields.Nested(ChatMessageSchema)
    finish_reason = ma.fields.String()


class UsageSchema(ma.Schema):
    prompt_tokens = ma.fields.Integer()
    completion_tokens = ma.fields.Integer()
    total_tokens = ma.fields.Integer()


class ChatCompletionSchema(ma.Schema):
    id = ma.fields.String()
    object = ma.fields.String()
    created = ma.fields.Integer()
    model = ma.fields.String()
    choices = ma.fields.List(ma.fields.Nested(ChatChoiceSchema))
    usage = ma.fields.Nested(UsageSchema)


class ModelSchema(ma.Schema):
    id = ma.fields.String()
    object = ma.fields.String()
    created = ma.fields.Integer()
    owned_by = ma.fields.String()
    role = ma.fields.String(metadata={"description": "vision (answers chats) or summarizer"})


class ModelListSchema(ma.Schema):
    object = ma.fields.String()
    data = ma.fields.List(ma.fields.Nested(ModelSchema))


@blp.route("/models")
class Models(MethodView):
    @blp.response(200, ModelListSchema)
    def get(self) -> dict[str, Any]:
        """The models this box serves, as OpenAI's model list, each with its `role`."""
        return {
            "object": "list",
            "data": [
                {
                    "id": info.name,
                    "object": "model",
                    # When the model was installed: its manifest's time.
                    "created": int((info.path / MANIFEST).stat().st_mtime),
                    "owned_by": "appliance",
                    "role": info.role,
                }
                for info in served()
            ],
        }


@blp.route("/chat/completions")
class ChatCompletions(MethodView):
    @blp.arguments(ChatRequestSchema)
    @blp.response(200, ChatCompletionSchema)
    @blp.alt_response(
        200, description="With stream=true: text/event-stream of chunks", success=True
    )
    def post(self, body: dict[str, Any]) -> Any:
        """Answer a chat, text-only or about an image (non-streaming, or streaming as OpenAI
        SSE chunks)."""
        svc = services()
        settings = svc.settings
        model = chat_model(body.get("model") or "")
        call = read_chat(body, settings)
        jobview.check_queue_capacity(svc, max(1, len(call.images)))
        owner = getattr(g, "principal", None)
        call.request.safety = mode_for(settings, "openai", owner.name if owner else None)
        done = svc.jobs.submit_chat(
            call.images,
            call.request,
            source="api",
            owner=owner.name if owner else None,
            priority=INTERACTIVE,
        )
        job_ids = [job.id for job in done.jobs]
        completion_id = f"chatcmpl-{job_ids[0]}"
        created = int(time.time())
        timeout = settings.api.sync_timeout_seconds
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            stream = _stream(svc, job_ids, timeout, completion_id, created, model, include_usage)
            return sse.response(stream)
        jobs = jobview.wait_all(svc.jobs, job_ids, timeout, cancel_on_timeout=True)
        _check_succeeded(jobs)
        return completion.completion(completion_id, created, model, jobs)


def _check_succeeded(jobs: list[Any]) -> None:
    """A problem naming why a job did not succeed, if one did not."""
    for job in jobs:
        failure = jobview.failure(job)
        if failure is not None:
            raise Problem(
                422, failure, error={"message": failure, "type": "job_failed", "code": None}
            )


def _stream(
    svc: Any,
    job_ids: list[str],
    timeout: float,
    completion_id: str,
    created: int,
    model: str,
    include_usage: bool,
) -> Iterator[str]:
    def chunk(choices: list[dict[str, Any]], **extra: Any) -> str:
        head = {"id": completion_id, "object": "chat.completion.chunk", "created": created}
        return sse.message({**head, "model": model, "choices": choices, **extra})

    def delta(content: dict[str, Any], finish: str | None = None) -> str:
        return chunk([{"index": 0, "delta": content, "finish_reason": finish}])

    yield delta({"role": "assistant", "content": ""})
    deadline = time.monotonic() + timeout
    while True:
        budget = min(_KEEPALIVE_SECONDS, deadline - time.monotonic())
        if budget <= 0:
            for job_id in job_ids:
                jobview.cancel_quietly(svc.jobs, job_id)
            yield sse.message(
                {"error": {"message": "timed out waiting for the job", "type": "timeout"}}
            )
            return
        try:
            jobs = svc.jobs.wait(job_ids, timeout=budget, poll_s=0.5)
        except JobNotFound as exc:
            yield sse.message({"error": {"message": str(exc), "type": "job_failed"}})
            return
        if all(job.done for job in jobs):
            break
        yield sse.KEEPALIVE
    try:
        _check_succeeded(jobs)
        content, finish, usage = completion.answer(jobs)
    except Problem as exc:
        yield sse.message({"error": {"message": exc.detail, "type": "job_failed"}})
        return
    # The queue returns the whole answer at once; send it word by word so clients render a
    # stream as they would from a token-by-token server.
    for piece in re.findall(r"\S+\s*|\s+", content):
        yield delta({"content": piece})
    yield delta({}, finish)
    if include_usage:
        yield chunk([], usage=usage)
    yield sse.message("[DONE]")

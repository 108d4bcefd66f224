"""OpenAI-compatible chat completions, routed through the job queue like every other request.

`openai_messages` reads what a request carries: the images of the latest user message that has
any, and the last user message's text as the question. Each image becomes one `interactive` job
with source `api`; the view waits for them, so these requests share the GPUs fairly with
uploads and drop folders.
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

from appliance.errors import ApplianceError, JobNotFound, ModelError
from appliance.registry import ModelRegistry
from appliance.schema import TaskRequest
from appliance.vocab import INTERACTIVE
from web import sse
from web.api import jobview
from web.api.openai_messages import bad_request, parse_messages
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


class ModelListSchema(ma.Schema):
    object = ma.fields.String()
    data = ma.fields.List(ma.fields.Nested(ModelSchema))


def _vision_model_name() -> str:
    settings = services().settings
    try:
        return ModelRegistry(settings.models_dir).resolve("vision", settings.vision_model).name
    except ModelError:
        return settings.vision_model or "vision"


@blp.route("/models")
class Models(MethodView):
    @blp.response(200, ModelListSchema)
    def get(self) -> dict[str, Any]:
        """Installed vision models, as OpenAI's model list."""
        settings = services().settings
        try:
            infos = [i for i in ModelRegistry(settings.models_dir).list() if i.role == "vision"]
        except ModelError:
            infos = []
        return {
            "object": "list",
            "data": [
                {"id": i.name, "object": "model", "created": 0, "owned_by": "appliance"}
                for i in infos
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
        """Answer an image question (non-streaming, or streaming as OpenAI SSE chunks)."""
        svc = services()
        settings = svc.settings
        images, text = parse_messages(
            body["messages"], settings.api.max_files, settings.limits.max_bytes
        )
        try:
            request = TaskRequest(
                task="question" if text else "caption",
                prompt=text or None,
                max_new_tokens=body.get("max_completion_tokens") or body.get("max_tokens"),
                temperature=body.get("temperature"),
                seed=body.get("seed"),
            )
        except ApplianceError as exc:
            raise bad_request(str(exc)) from None
        jobview.check_queue_capacity(svc, len(images))
        owner = getattr(g, "principal", None)
        done = svc.jobs.submit_many(
            [(data, f"chat-image-{index + 1}") for index, data in enumerate(images)],
            request,
            source="api",
            owner=owner.name if owner else None,
            priority=INTERACTIVE,
            grouped=False,  # one answer, no digest: the images are not a batch
        )
        job_ids = [job.id for job in done.jobs]
        model = body.get("model") or _vision_model_name()
        completion_id = f"chatcmpl-{job_ids[0]}"
        created = int(time.time())
        timeout = settings.api.sync_timeout_seconds
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            stream = _stream(svc, job_ids, timeout, completion_id, created, model, include_usage)
            return sse.response(stream)
        jobs = jobview.wait_all(svc.jobs, job_ids, timeout, cancel_on_timeout=True)
        content, tokens = _answer(svc, jobs)
        return {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": "stop",
                }
            ],
            "usage": _usage(tokens),
        }


def _answer(svc: Any, jobs: list[Any]) -> tuple[str, int]:
    """The joined answers, or a problem naming why a job did not succeed."""
    texts, tokens = [], 0
    for job in jobs:
        failure = jobview.failure(job)
        if failure is not None:
            raise Problem(
                422, failure, error={"message": failure, "type": "job_failed", "code": None}
            )
        result = jobview.result_of(job)
        texts.append(result.text if result else "")
        tokens += sum(p.tokens for p in result.pages) if result else 0
    if len(texts) == 1:
        return texts[0], tokens
    return "\n\n".join(f"[image {i + 1}]\n{t}" for i, t in enumerate(texts)), tokens


def _usage(tokens: int) -> dict[str, int]:
    # Workers report the tokens they generate; the prompt (an image) is not counted.
    return {"prompt_tokens": 0, "completion_tokens": tokens, "total_tokens": tokens}


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
        content, tokens = _answer(svc, jobs)
    except Problem as exc:
        yield sse.message({"error": {"message": exc.detail, "type": "job_failed"}})
        return
    # The queue returns the whole answer at once; send it word by word so clients render a
    # stream as they would from a token-by-token server.
    for piece in re.findall(r"\S+\s*|\s+", content):
        yield delta({"content": piece})
    yield delta({}, "stop")
    if include_usage:
        yield chunk([], usage=_usage(tokens))
    yield sse.message("[DONE]")

"""OpenAI-compatible chat completions, routed through the job queue like every other request.

Only what vision clients use: the images (as `data:` URLs: the box is offline, it cannot fetch
`https://` images) of the latest user message that has any, and the text of the last user
message as the question. Each image becomes one `interactive` job with source `api`; the view
waits for it, so these requests share the GPUs fairly with uploads and drop folders.
"""

from __future__ import annotations

import base64
import binascii
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
from web.problems import Problem
from web.services import services

blp = Blueprint(
    "openai",
    __name__,
    url_prefix="/v1",
    description="OpenAI-compatible chat completions (vision), routed through the job queue",
)

_DATA_URL = re.compile(
    r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?:;[^,;]*)*?;base64,(?P<data>.*)$", re.S
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


def _bad(detail: str, code: str = "invalid_request_error") -> Problem:
    # The `error` member is what OpenAI clients read; the rest is RFC 9457.
    return Problem(400, detail, error={"message": detail, "type": code, "code": None})


def _decode_image(url: Any, max_bytes: int) -> bytes:
    if not isinstance(url, str):
        raise _bad("image_url.url must be a string")
    if not url.startswith("data:"):
        raise _bad("only data: image URLs are supported (this appliance has no internet access)")
    match = _DATA_URL.match(url)
    if not match:
        raise _bad("image_url must be a base64 data: URL (data:image/png;base64,...)")
    payload = match.group("data")
    if len(payload) > max_bytes * 4 // 3 + 4:
        raise Problem(413, f"image is larger than {max_bytes // (1024 * 1024)} MB")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise _bad("image_url data is not valid base64") from None


def parse_messages(
    messages: list[dict[str, Any]], max_images: int, max_bytes: int
) -> tuple[list[bytes], str]:
    """The images of the latest user message that has any, and the last user message's text."""
    images: list[bytes] = []
    text = ""
    text_found = False
    for message in reversed(messages):
        if message.get("role") != "user":
            continue
        content = message.get("content")
        parts: list[Any] = (
            [{"type": "text", "text": content}] if isinstance(content, str) else content
        )
        if not isinstance(parts, list):
            raise _bad("message content must be a string or a list of parts")
        found: list[bytes] = []
        texts: list[str] = []
        for part in parts:
            if not isinstance(part, dict):
                raise _bad("each content part must be an object")
            if part.get("type") == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif part.get("type") == "image_url":
                image_url = part.get("image_url")
                url = image_url.get("url") if isinstance(image_url, dict) else image_url
                found.append(_decode_image(url, max_bytes))
        if not text_found:
            text, text_found = "\n".join(t for t in texts if t.strip()), True
        if found and not images:
            images = found
            break
    if not images:
        raise _bad("no image in the conversation: send an image_url part with a data: URL")
    if len(images) > max_images:
        raise Problem(413, f"at most {max_images} images per request")
    return images, text.strip()


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
            raise _bad(str(exc)) from None
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

"""An OpenAI `/v1/chat/completions` body as the queue takes it: the conversation's turns, the
images of its latest user message that has any, and the `TaskRequest` of its `chat` job(s).

One reading for both doors: the live endpoint (`web.api.openai_compat`) and each line of a
batch (`appliance.openai.batch_input`), so a body means the same wherever it comes from.
Only what chat and vision clients use: system, user and assistant text, and images as `data:`
URLs (the box is offline, it cannot fetch `https://` images).
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import Any

import pydantic

from appliance.errors import InvalidRequest, TooLarge
from appliance.schema import MAX_PROMPT_CHARS, ChatTurn, TaskRequest

_DATA_URL = re.compile(
    r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?:;[^,;]*)*?;base64,(?P<data>.*)$", re.S
)
# OpenAI's roles as the model's chat template knows them ("developer" is the newer "system").
_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


class ChatBody(pydantic.BaseModel):
    """The members of a chat body the queue uses; the rest (top_p, n, user, ...) is ignored,
    as OpenAI clients send many options. Limits as the live endpoint's schema documents."""

    model_config = pydantic.ConfigDict(extra="ignore")

    model: str = ""
    messages: list[dict[str, Any]] = pydantic.Field(min_length=1, max_length=256)
    max_tokens: int | None = pydantic.Field(default=None, ge=1, le=8192)
    max_completion_tokens: int | None = pydantic.Field(default=None, ge=1, le=8192)
    temperature: float | None = pydantic.Field(default=None, ge=0, le=2)
    seed: int | None = pydantic.Field(default=None, ge=0, le=2**31 - 1)


@dataclass(frozen=True)
class ChatCall:
    """What a chat body asks the queue for: its images (one job each; none: one text job)."""

    images: list[bytes]
    request: TaskRequest


def chat_call(body: dict[str, Any], *, max_images: int, max_bytes: int) -> ChatCall:
    """Read a chat body; raises InvalidRequest (or TooLarge) with the one-line reason."""
    try:
        parsed = ChatBody.model_validate(body)
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise InvalidRequest(f"{where}: {first['msg']}") from None
    images, turns = parse_messages(parsed.messages, max_images, max_bytes)
    try:
        request = TaskRequest(
            task="chat",
            messages=turns,
            prompt=question(turns),
            max_new_tokens=parsed.max_completion_tokens or parsed.max_tokens,
            temperature=parsed.temperature,
            seed=parsed.seed,
        )
    except pydantic.ValidationError as exc:
        raise InvalidRequest(str(exc.errors()[0]["msg"])) from None
    return ChatCall(images, request)


def question(turns: list[ChatTurn]) -> str | None:
    """The last user turn's text: the job's `prompt`, which listings and search show."""
    last = next((t.text for t in reversed(turns) if t.role == "user"), "")
    return last.strip()[:MAX_PROMPT_CHARS] or None


def parse_messages(
    messages: list[dict[str, Any]], max_images: int, max_bytes: int
) -> tuple[list[bytes], list[ChatTurn]]:
    """The conversation as turns, and the images of the latest user message that has any
    (that turn is marked `image`). Images of earlier messages are not decoded: the model sees
    one image per answer (Llama 3.2 Vision is trained on single images); their text stays."""
    turns: list[ChatTurn] = []
    urls: list[list[Any]] = []
    for message in messages:
        if not isinstance(message, dict):
            raise InvalidRequest("each message must be an object")
        role = _ROLES.get(str(message.get("role")))
        if role is None:
            continue  # tool calls and tool results: nothing this model reads
        texts, found = _parts(message.get("content"))
        if found and role != "user":
            raise InvalidRequest("images belong in user messages")
        if role == "assistant" and not texts:
            continue  # an assistant turn that only called tools
        turns.append(ChatTurn(role=role, text="\n".join(t for t in texts if t.strip())))
        urls.append(found)
    with_images = [index for index, found in enumerate(urls) if found]
    if not with_images:
        return [], turns
    last = with_images[-1]
    if len(urls[last]) > max_images:
        raise TooLarge(f"at most {max_images} images per request")
    turns[last].image = True
    return [_decode_image(url, max_bytes) for url in urls[last]], turns


def _decode_image(url: Any, max_bytes: int) -> bytes:
    if not isinstance(url, str):
        raise InvalidRequest("image_url.url must be a string")
    if not url.startswith("data:"):
        raise InvalidRequest(
            "only data: image URLs are supported (this appliance has no internet access)"
        )
    match = _DATA_URL.match(url)
    if not match:
        raise InvalidRequest("image_url must be a base64 data: URL (data:image/png;base64,...)")
    payload = match.group("data")
    if len(payload) > max_bytes * 4 // 3 + 4:
        raise TooLarge(f"image is larger than {max_bytes // (1024 * 1024)} MB")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest("image_url data is not valid base64") from None


def _parts(content: Any) -> tuple[list[str], list[Any]]:
    """The text parts and the image URLs of one message's content."""
    if content is None:
        return [], []
    parts: list[Any] = [{"type": "text", "text": content}] if isinstance(content, str) else content
    if not isinstance(parts, list):
        raise InvalidRequest("message content must be a string or a list of parts")
    texts: list[str] = []
    urls: list[Any] = []
    for part in parts:
        if not isinstance(part, dict):
            raise InvalidRequest("each content part must be an object")
        if part.get("type") == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif part.get("type") == "image_url":
            image_url = part.get("image_url")
            urls.append(image_url.get("url") if isinstance(image_url, dict) else image_url)
    return texts, urls

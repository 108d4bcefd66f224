"""The OpenAI chat request's messages: the conversation's turns and which images it carries.

Only what chat and vision clients use: system, user and assistant text, and the images (as
`data:` URLs: the box is offline, it cannot fetch `https://` images) of the latest user message
that has any.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

from appliance.schema import ChatTurn
from web.problems import Problem

_DATA_URL = re.compile(
    r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?:;[^,;]*)*?;base64,(?P<data>.*)$", re.S
)


def bad_request(detail: str, code: str = "invalid_request_error") -> Problem:
    """A 400 that OpenAI clients understand."""
    # The `error` member is what OpenAI clients read; the rest is RFC 9457.
    return Problem(400, detail, error={"message": detail, "type": code, "code": None})


def _decode_image(url: Any, max_bytes: int) -> bytes:
    if not isinstance(url, str):
        raise bad_request("image_url.url must be a string")
    if not url.startswith("data:"):
        raise bad_request(
            "only data: image URLs are supported (this appliance has no internet access)"
        )
    match = _DATA_URL.match(url)
    if not match:
        raise bad_request("image_url must be a base64 data: URL (data:image/png;base64,...)")
    payload = match.group("data")
    if len(payload) > max_bytes * 4 // 3 + 4:
        raise Problem(413, f"image is larger than {max_bytes // (1024 * 1024)} MB")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise bad_request("image_url data is not valid base64") from None


def parse_messages(
    messages: list[dict[str, Any]], max_images: int, max_bytes: int
) -> tuple[list[bytes], list[ChatTurn]]:
    """The conversation as turns, and the images of the latest user message that has any
    (that turn is marked `image`). Images of earlier messages are not decoded: the model sees
    one image per answer (Llama 3.2 Vision is trained on single images); their text stays."""
    turns: list[ChatTurn] = []
    urls: list[list[Any]] = []
    for message in messages:
        role = _ROLES.get(str(message.get("role")))
        if role is None:
            continue  # tool calls and tool results: nothing this model reads
        texts, found = _parts(message.get("content"))
        if found and role != "user":
            raise bad_request("images belong in user messages")
        if role == "assistant" and not texts:
            continue  # an assistant turn that only called tools
        turns.append(ChatTurn(role=role, text="\n".join(t for t in texts if t.strip())))
        urls.append(found)
    with_images = [index for index, found in enumerate(urls) if found]
    if not with_images:
        return [], turns
    last = with_images[-1]
    if len(urls[last]) > max_images:
        raise Problem(413, f"at most {max_images} images per request")
    turns[last].image = True
    return [_decode_image(url, max_bytes) for url in urls[last]], turns


# OpenAI's roles as the model's chat template knows them ("developer" is the newer "system").
_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


def _parts(content: Any) -> tuple[list[str], list[Any]]:
    """The text parts and the image URLs of one message's content."""
    if content is None:
        return [], []
    parts: list[Any] = [{"type": "text", "text": content}] if isinstance(content, str) else content
    if not isinstance(parts, list):
        raise bad_request("message content must be a string or a list of parts")
    texts: list[str] = []
    urls: list[Any] = []
    for part in parts:
        if not isinstance(part, dict):
            raise bad_request("each content part must be an object")
        if part.get("type") == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif part.get("type") == "image_url":
            image_url = part.get("image_url")
            urls.append(image_url.get("url") if isinstance(image_url, dict) else image_url)
    return texts, urls

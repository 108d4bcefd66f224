"""The OpenAI chat request's messages: which images and which question a request carries.

Only what vision clients use: the images (as `data:` URLs: the box is offline, it cannot fetch
`https://` images) of the latest user message that has any, and the text of the last user
message as the question.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

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
            raise bad_request("message content must be a string or a list of parts")
        found: list[bytes] = []
        texts: list[str] = []
        for part in parts:
            if not isinstance(part, dict):
                raise bad_request("each content part must be an object")
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
        raise bad_request("no image in the conversation: send an image_url part with a data: URL")
    if len(images) > max_images:
        raise Problem(413, f"at most {max_images} images per request")
    return images, text.strip()

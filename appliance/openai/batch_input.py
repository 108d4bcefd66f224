"""A batch's input file read line by line: each line a request (`custom_id`, `method`, `url`,
`body`) whose body is a `/v1/chat/completions` body, or the reason it is refused.

A refused line becomes a line of the batch's error file; it never sinks the batch (only a file
with no usable line at all does). The body is read by `appliance.openai.chat`, as the live
endpoint reads it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

from appliance.errors import InvalidRequest, TooLarge
from appliance.openai.chat import ChatCall, chat_call

CHAT_ENDPOINT = "/v1/chat/completions"
# One job per line: a line answers about at most one image (Llama 3.2 Vision reads one).
MAX_IMAGES_PER_LINE = 1
# The error codes of refused lines (OpenAI's `error.code` / `errors.data[].code`).
INVALID_JSON = "invalid_json_line"
INVALID_REQUEST = "invalid_request"
INVALID_URL = "invalid_url"
MISSING_CUSTOM_ID = "missing_custom_id"
DUPLICATE_CUSTOM_ID = "duplicate_custom_id"
# A line that never ran because its batch was cancelled, or ran out of its completion window.
BATCH_CANCELLED = "batch_cancelled"
CANCELLED_MESSAGE = "the batch was cancelled before this request ran"
BATCH_EXPIRED = "batch_expired"
EXPIRED_MESSAGE = "the batch's completion window ended before this request ran"


@dataclass(frozen=True)
class InputLine:
    """Line `number` (1-based) of the input: a request to queue (`call`), or refused."""

    number: int
    custom_id: str | None
    call: ChatCall | None = None
    error_code: str | None = None
    error_message: str | None = None


def read_lines(
    data: bytes, *, endpoint: str = CHAT_ENDPOINT, max_bytes: int
) -> Iterator[InputLine]:
    """Every non-blank line of a JSONL batch input, in order, read or refused."""
    seen: set[str] = set()
    for number, raw in enumerate(data.decode("utf-8", "replace").splitlines(), start=1):
        if not raw.strip():
            continue  # a trailing newline, a blank line between requests: not a request
        line = _read(number, raw, endpoint, max_bytes)
        if line.custom_id is not None and line.error_code is None:
            if line.custom_id in seen:
                message = f"custom_id {line.custom_id!r} repeats an earlier line's"
                line = _refuse(number, line.custom_id, DUPLICATE_CUSTOM_ID, message)
            seen.add(line.custom_id)
        yield line


def _refuse(number: int, custom_id: str | None, code: str, message: str) -> InputLine:
    return InputLine(number, custom_id, error_code=code, error_message=message)


def _read(number: int, raw: str, endpoint: str, max_bytes: int) -> InputLine:
    try:
        request = json.loads(raw)
    except ValueError as exc:
        return _refuse(number, None, INVALID_JSON, f"line {number} is not JSON: {exc.msg}")
    if not isinstance(request, dict):
        return _refuse(number, None, INVALID_JSON, f"line {number} is not a JSON object")
    custom_id = request.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id or len(custom_id) > 512:
        return _refuse(number, None, MISSING_CUSTOM_ID, "custom_id must be a string (1-512)")
    if str(request.get("method", "POST")).upper() != "POST":
        return _refuse(number, custom_id, INVALID_REQUEST, "method must be POST")
    if request.get("url", endpoint) != endpoint:
        return _refuse(
            number, custom_id, INVALID_URL, f"url must be the batch's endpoint {endpoint}"
        )
    body = request.get("body")
    if not isinstance(body, dict):
        return _refuse(number, custom_id, INVALID_REQUEST, "body must be a JSON object")
    if body.get("stream"):
        return _refuse(number, custom_id, INVALID_REQUEST, "stream is not supported in a batch")
    try:
        call = chat_call(body, max_images=MAX_IMAGES_PER_LINE, max_bytes=max_bytes)
    except (InvalidRequest, TooLarge) as exc:
        return _refuse(number, custom_id, INVALID_REQUEST, str(exc))
    return InputLine(number, custom_id, call=call)

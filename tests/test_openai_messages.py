"""How the OpenAI endpoint reads a request's messages into a conversation (no server needed)."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from web.api.openai_messages import parse_messages
from web.problems import Problem


def _image(data: bytes) -> dict[str, Any]:
    url = f"data:image/png;base64,{base64.b64encode(data).decode()}"
    return {"type": "image_url", "image_url": {"url": url}}


def test_turns_keep_their_order_and_the_latest_images_their_turn() -> None:
    messages = [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "First?"}, _image(b"old")]},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "x"}]},
        {"role": "tool", "content": "42", "tool_call_id": "x"},
        {"role": "assistant", "content": [{"type": "text", "text": "An answer."}]},
        {
            "role": "user",
            "content": [_image(b"new-1"), _image(b"new-2"), {"type": "text", "text": "Now?"}],
        },
        {"role": "assistant", "content": "Two pictures."},
        {"role": "user", "content": "And then?"},
    ]
    images, turns = parse_messages(messages, max_images=4, max_bytes=1 << 20)
    # Only the latest image message's images are decoded; the earlier one's text stays.
    assert images == [b"new-1", b"new-2"]
    assert [(t.role, t.text, t.image) for t in turns] == [
        ("system", "Be brief.", False),
        ("user", "First?", False),
        ("assistant", "An answer.", False),
        ("user", "Now?", True),
        ("assistant", "Two pictures.", False),
        ("user", "And then?", False),
    ]


def test_a_text_only_conversation_has_no_images() -> None:
    images, turns = parse_messages([{"role": "user", "content": "Hi"}], 4, 1 << 20)
    assert images == [] and [(t.role, t.text) for t in turns] == [("user", "Hi")]


@pytest.mark.parametrize(
    ("messages", "status", "detail"),
    [
        ([{"role": "assistant", "content": [_image(b"x")]}], 400, "images belong in user"),
        ([{"role": "user", "content": 3}], 400, "string or a list of parts"),
        ([{"role": "user", "content": [_image(b"a"), _image(b"b")]}], 413, "at most 1 images"),
    ],
)
def test_bad_messages_are_refused(messages: list[dict[str, Any]], status: int, detail: str) -> None:
    with pytest.raises(Problem) as info:
        parse_messages(messages, max_images=1, max_bytes=1 << 20)
    assert info.value.status == status and detail in info.value.detail

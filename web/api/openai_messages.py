"""What the OpenAI endpoints share: errors as OpenAI clients read them, the chat body read by
the core (`appliance.openai.chat`) with its refusals turned into those errors, and whose files
and batches a caller sees."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from flask import g

from appliance.errors import EmptyFile, InvalidRequest, TooLarge
from appliance.openai import chat
from appliance.schema import ChatTurn
from appliance.settings import Settings
from appliance.tokens import scope_allows
from web.problems import Problem


def bad_request(detail: str, code: str = "invalid_request_error") -> Problem:
    """A 400 that OpenAI clients understand."""
    # The `error` member is what OpenAI clients read; the rest is RFC 9457.
    return Problem(400, detail, error={"message": detail, "type": code, "code": None})


def refused(exc: InvalidRequest | TooLarge) -> Problem:
    """The core's refusal of a body as the HTTP error OpenAI clients expect."""
    if isinstance(exc, TooLarge):
        detail = str(exc)
        error = {"message": detail, "type": "invalid_request_error", "code": None}
        return Problem(413, detail, error=error)
    return bad_request(str(exc))


@contextmanager
def refusing() -> Iterator[None]:
    """The core's refusals of what a client sent as OpenAI's 400 (or 413), not the REST API's
    422: OpenAI clients raise `BadRequestError` for them."""
    try:
        yield
    except (InvalidRequest, TooLarge) as exc:
        raise refused(exc) from None
    except EmptyFile as exc:
        raise bad_request(str(exc)) from None


def parse_messages(
    messages: list[dict[str, Any]], max_images: int, max_bytes: int
) -> tuple[list[bytes], list[ChatTurn]]:
    """`appliance.openai.chat.parse_messages`, refusing with a 400 or 413."""
    try:
        return chat.parse_messages(messages, max_images, max_bytes)
    except (InvalidRequest, TooLarge) as exc:
        raise refused(exc) from None


def read_chat(body: dict[str, Any], settings: Settings) -> chat.ChatCall:
    """A chat body as the queue takes it (`appliance.openai.chat.chat_call`), or a 400/413."""
    try:
        return chat.chat_call(
            body, max_images=settings.api.max_files, max_bytes=settings.limits.max_bytes
        )
    except (InvalidRequest, TooLarge) as exc:
        raise refused(exc) from None


def owner_name() -> str | None:
    """Who owns what this request creates: the token's name."""
    principal = getattr(g, "principal", None)
    return principal.name if principal else None


def visible_to() -> str | None:
    """Whose files and batches this request sees: its own, or every one (None) for admins."""
    principal = getattr(g, "principal", None)
    if principal is not None and scope_allows(principal.scope, "admin"):
        return None
    return owner_name()

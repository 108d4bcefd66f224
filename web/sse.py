"""Server-Sent Events, written in one place: the API's job events, the panel's live queue and
the OpenAI-compatible stream all send their messages through here."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from flask import Response

# Sent first: EventSource reconnects this many ms after we end a stream, with Last-Event-ID.
RETRY = "retry: 1000\n\n"
# A comment line: clients ignore it, proxies see traffic and keep the connection.
KEEPALIVE = ": keep-alive\n\n"


def message(
    data: Any, *, event: str | None = None, event_id: int | str | None = None, compact: bool = True
) -> str:
    """One message: `id:` and `event:` lines when given, then `data:` (a string as it is,
    anything else as one line of JSON; `compact=False` keeps json.dumps' spaces)."""
    if not isinstance(data, str):
        data = json.dumps(data, default=str, separators=(",", ":") if compact else None)
    head = f"id: {event_id}\n" if event_id is not None else ""
    head += f"event: {event}\n" if event else ""
    return f"{head}data: {data}\n\n"


def response(stream: Iterable[str]) -> Response:
    """A streaming `text/event-stream` response that no cache or proxy buffers."""
    return Response(
        stream,
        mimetype="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )

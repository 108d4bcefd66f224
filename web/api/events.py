"""/api/v1/events: job state changes as Server-Sent Events."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import marshmallow as ma
from flask import Response, request
from flask.views import MethodView
from flask_smorest import Blueprint

from web import sse
from web.services import services

blp = Blueprint("events", __name__, url_prefix="/api/v1/events", description="Live job events")

_KEEPALIVE_SECONDS = 15.0


class EventsQuerySchema(ma.Schema):
    job = ma.fields.String(load_default=None, validate=ma.validate.Length(max=100))
    batch = ma.fields.String(load_default=None, validate=ma.validate.Length(max=100))
    after = ma.fields.Integer(
        load_default=None,
        validate=ma.validate.Range(0, 2**62),
        metadata={"description": "replay events after this id (or send Last-Event-ID)"},
    )
    timeout = ma.fields.Float(
        load_default=None,
        validate=ma.validate.Range(0.1, 3600),
        metadata={"description": "close the stream after this many seconds"},
    )


def stream(events: Iterator[dict[str, Any] | None]) -> Iterator[str]:
    """SSE text: `id` + `event: <kind>` + JSON per change, a comment while idle."""
    yield sse.RETRY
    try:
        for event in events:
            if event is None:
                yield sse.KEEPALIVE
                continue
            yield sse.message(event, event=event.get("event") or "job", event_id=event["id"])
    finally:
        close = getattr(events, "close", None)
        if close is not None:
            close()


def _last_event_id() -> int | None:
    value = request.headers.get("Last-Event-ID", "")
    return int(value) if value.isdigit() and len(value) < 19 else None


@blp.route("")
class Events(MethodView):
    @blp.arguments(EventsQuerySchema, location="query")
    @blp.response(200, description="text/event-stream of job events (queued, running, ...)")
    def get(self, query: dict[str, Any]) -> Response:
        """Stream job state changes (optionally for one job or batch); resumable by event id."""
        svc = services()
        limit = svc.settings.api.events_max_seconds
        after = query["after"] if query["after"] is not None else _last_event_id()
        if after is None:
            # "From now" means now, not when the lazy generator first runs: a client that
            # opens the stream and then submits must see its job's `queued` event.
            after = svc.jobs.last_event_id()
        events = svc.jobs.events(
            after=after,
            job_id=query["job"],
            batch_id=query["batch"],
            poll_s=_KEEPALIVE_SECONDS if query["timeout"] is None else min(1.0, query["timeout"]),
            max_s=min(query["timeout"] or limit, limit),
        )
        return sse.response(stream(events))

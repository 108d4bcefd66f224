"""Operations: /healthz (liveness, no token), /readyz (dependencies), /metrics (Prometheus)."""

from __future__ import annotations

from typing import Any

import marshmallow as ma
from flask import Response
from flask.views import MethodView
from flask_smorest import Blueprint

from web import metrics
from web.services import services

blp = Blueprint("ops", __name__, url_prefix="", description="Health and metrics")


class HealthSchema(ma.Schema):
    status = ma.fields.String()


class ReadySchema(ma.Schema):
    status = ma.fields.String(metadata={"description": "ready | not ready"})
    checks = ma.fields.Dict(
        keys=ma.fields.String(),
        values=ma.fields.String(),
        metadata={"description": "ok or the reason"},
    )


@blp.route("/healthz")
class Healthz(MethodView):
    @blp.response(200, HealthSchema)
    @blp.doc(security=[])
    def get(self) -> dict[str, str]:
        """The process is up (no token needed, touches nothing)."""
        return {"status": "ok"}


def _check(fn: Any) -> str:
    try:
        reason = fn()
    except Exception as exc:  # any failure of a dependency is "not ready", with its reason
        return f"{type(exc).__name__}: {exc}"[:300]
    return reason or "ok"


def _ready_workers() -> str | None:
    # "starting" workers are still loading their model: not ready to take a job yet.
    ready = [w for w in services().jobs.workers() if w.alive and w.state in ("idle", "busy")]
    return None if ready else "no ready worker (start one with `appliance worker`)"


@blp.route("/readyz")
class Readyz(MethodView):
    @blp.response(200, ReadySchema)
    @blp.alt_response(503, schema=ReadySchema, description="A dependency is not ready")
    def get(self) -> tuple[dict[str, Any], int]:
        """Redis answers, the database answers, and at least one worker is ready."""
        svc = services()
        checks = {
            "redis": _check(lambda: None if svc.redis.ping() else "no PONG"),
            "database": _check(lambda: svc.jobs.queue_depth() and None),
            "workers": _check(_ready_workers),
        }
        if svc.jobs.backend.blobs.shared:  # the object store the boxes share
            checks["storage"] = _check(svc.jobs.backend.blobs.check)
        ok = all(v == "ok" for v in checks.values())
        return {"status": "ready" if ok else "not ready", "checks": checks}, 200 if ok else 503


@blp.route("/metrics")
class Metrics(MethodView):
    @blp.response(200, description="Prometheus text exposition format")
    def get(self) -> Response:
        """Jobs by state and source, queue depth per lane, latency, tokens/s, GPU memory."""
        body, content_type = metrics.render(services())
        return Response(body, content_type=content_type)

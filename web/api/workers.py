"""/api/v1/workers: who is draining the queue, on which GPU, and how deep each lane is."""

from __future__ import annotations

from typing import Any

import marshmallow as ma
from flask.views import MethodView
from flask_smorest import Blueprint

from web.services import services

blp = Blueprint("workers", __name__, url_prefix="/api/v1/workers", description="Workers and lanes")


class WorkersSchema(ma.Schema):
    workers = ma.fields.List(
        ma.fields.Dict(),
        metadata={"description": "hostname, device (GPU), model, state (idle/busy/...), heartbeat"},
    )
    queue_depth = ma.fields.Dict(
        keys=ma.fields.String(),
        values=ma.fields.Integer(),
        metadata={"description": "interactive, bulk, text (summaries), running"},
    )


@blp.route("")
class Workers(MethodView):
    @blp.response(200, WorkersSchema)
    def get(self) -> dict[str, Any]:
        """Workers with their GPU, model and busy/idle state; queue depth per lane."""
        jobs = services().jobs
        depth = jobs.queue_depth()
        return {
            "workers": [w.to_dict() for w in jobs.workers()],
            "queue_depth": depth,
        }

"""/api/v1/batches/{id}: the jobs of one batch, their counts and the digest."""

from __future__ import annotations

from typing import Any

import marshmallow as ma
from flask.views import MethodView
from flask_smorest import Blueprint

from web.api import jobview
from web.api.jobs import JobSchema
from web.problems import Problem
from web.services import services

blp = Blueprint("batches", __name__, url_prefix="/api/v1/batches", description="Batches of jobs")

# A batch page lists this many jobs; page through all of them with GET /jobs?batch=ID.
_JOBS_SHOWN = 500


class BatchSchema(ma.Schema):
    id = ma.fields.String()
    source = ma.fields.String()
    owner = ma.fields.String(allow_none=True)
    label = ma.fields.String(allow_none=True)
    language = ma.fields.String()
    total = ma.fields.Integer()
    counts = ma.fields.Dict(keys=ma.fields.String(), values=ma.fields.Integer())
    created_at = ma.fields.String()
    closed_at = ma.fields.String(allow_none=True)
    finished_at = ma.fields.String(allow_none=True)
    digest_state = ma.fields.String(allow_none=True)
    digest = ma.fields.String(allow_none=True, metadata={"description": "summary of all results"})
    digest_error = ma.fields.String(allow_none=True)
    jobs = ma.fields.List(ma.fields.Nested(JobSchema))
    more_jobs = ma.fields.Boolean(metadata={"description": "list the rest with /jobs?batch=ID"})


def _batch(batch_id: str) -> dict[str, Any]:
    jobs = services().jobs
    batch = jobs.get_batch(batch_id)
    if batch is None:
        raise Problem(404, f"no batch with id {batch_id!r}")
    page = jobs.list(batch_id=batch_id, limit=_JOBS_SHOWN)
    return batch.to_dict() | {
        "jobs": [jobview.to_dict(j) for j in page.items],
        "more_jobs": page.next_cursor is not None,
    }


@blp.route("/<batch_id>")
class Batch(MethodView):
    @blp.response(200, BatchSchema)
    def get(self, batch_id: str) -> dict[str, Any]:
        """A batch: its jobs, counts by state and (once all ended) the digest."""
        return _batch(batch_id)


@blp.route("/<batch_id>/close")
class CloseBatch(MethodView):
    @blp.response(200, BatchSchema)
    def post(self, batch_id: str) -> dict[str, Any]:
        """No more jobs will join this batch (named with `batch=`): make its digest when done."""
        if services().jobs.get_batch(batch_id) is None:
            raise Problem(404, f"no batch with id {batch_id!r}")
        services().jobs.close_batch(batch_id)
        return _batch(batch_id)

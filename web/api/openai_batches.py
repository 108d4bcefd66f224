"""OpenAI Batches: `/v1/batches` (create from an uploaded JSONL, show, list, cancel).

Thin: parse, call `appliance.openai.OpenAIBatches`, return OpenAI's `batch` object. Creating
needs scope `submit`, reading `read`; a token sees its own batches, an admin token all of them.
"""

from __future__ import annotations

from typing import Any

import marshmallow as ma
from flask.views import MethodView

from appliance.openai.batch_input import CHAT_ENDPOINT
from appliance.openai.batches import COMPLETION_WINDOW
from appliance.openai.completion import list_object
from appliance.vocab import OPENAI_BATCH_STATUSES
from web.api import Blueprint, jobview
from web.api.openai_messages import owner_name, refusing, visible_to
from web.services import services

blp = Blueprint(
    "openai_batches",
    __name__,
    url_prefix="/v1",
    description="OpenAI-compatible batches: each JSONL line one bulk chat job",
)


class CreateBatchSchema(ma.Schema):
    class Meta:
        unknown = ma.EXCLUDE

    input_file_id = ma.fields.String(required=True)
    endpoint = ma.fields.String(required=True, metadata={"description": CHAT_ENDPOINT})
    completion_window = ma.fields.String(
        load_default=COMPLETION_WINDOW, metadata={"description": COMPLETION_WINDOW}
    )
    metadata = ma.fields.Dict(
        keys=ma.fields.String(), values=ma.fields.String(), load_default=None, allow_none=True
    )


class RequestCountsSchema(ma.Schema):
    total = ma.fields.Integer()
    completed = ma.fields.Integer()
    failed = ma.fields.Integer()


_TIME = {"allow_none": True, "metadata": {"description": "Unix seconds"}}


class OpenAIBatchSchema(ma.Schema):
    id = ma.fields.String()
    object = ma.fields.String()
    endpoint = ma.fields.String()
    errors = ma.fields.Dict(allow_none=True)
    input_file_id = ma.fields.String()
    completion_window = ma.fields.String()
    status = ma.fields.String(metadata={"enum": list(OPENAI_BATCH_STATUSES)})
    output_file_id = ma.fields.String(allow_none=True)
    error_file_id = ma.fields.String(allow_none=True)
    created_at = ma.fields.Integer()
    in_progress_at = ma.fields.Integer(**_TIME)
    expires_at = ma.fields.Integer(**_TIME)
    finalizing_at = ma.fields.Integer(**_TIME)
    completed_at = ma.fields.Integer(**_TIME)
    failed_at = ma.fields.Integer(**_TIME)
    expired_at = ma.fields.Integer(**_TIME)
    cancelling_at = ma.fields.Integer(**_TIME)
    cancelled_at = ma.fields.Integer(**_TIME)
    request_counts = ma.fields.Nested(RequestCountsSchema)
    metadata = ma.fields.Dict(allow_none=True)


class BatchListQuery(ma.Schema):
    after = ma.fields.String(load_default=None)
    limit = ma.fields.Integer(load_default=20, validate=ma.validate.Range(1, 100))


class OpenAIBatchListSchema(ma.Schema):
    object = ma.fields.String()
    data = ma.fields.List(ma.fields.Nested(OpenAIBatchSchema))
    has_more = ma.fields.Boolean()
    first_id = ma.fields.String(allow_none=True)
    last_id = ma.fields.String(allow_none=True)


@blp.route("/batches")
class Batches(MethodView):
    @blp.arguments(CreateBatchSchema)
    @blp.response(200, OpenAIBatchSchema)
    def post(self, body: dict[str, Any]) -> dict[str, Any]:
        """Create a batch from an uploaded JSONL: its lines are queued as bulk jobs."""
        jobview.check_queue_capacity(services())
        with refusing():
            return services().openai_batches.create(
                owner=owner_name(),
                input_file_id=body["input_file_id"],
                endpoint=body["endpoint"],
                completion_window=body["completion_window"],
                metadata=body["metadata"],
            )

    @blp.arguments(BatchListQuery, location="query")
    @blp.response(200, OpenAIBatchListSchema)
    def get(self, query: dict[str, Any]) -> dict[str, Any]:
        """The batches this token sees, newest first; page with `after`."""
        data, more = services().openai_batches.page(
            visible_to(), after=query["after"], limit=query["limit"]
        )
        return list_object(data, more)


@blp.route("/batches/<batch_id>")
class Batch(MethodView):
    @blp.response(200, OpenAIBatchSchema)
    def get(self, batch_id: str) -> dict[str, Any]:
        """One batch: its status, request counts and (once ended) its output files."""
        return services().openai_batches.get(batch_id, visible_to())


@blp.route("/batches/<batch_id>/cancel")
class CancelBatch(MethodView):
    @blp.response(200, OpenAIBatchSchema)
    def post(self, batch_id: str) -> dict[str, Any]:
        """Cancel: queued lines stop at once, running ones finish; then `cancelled`."""
        return services().openai_batches.cancel(batch_id, visible_to())

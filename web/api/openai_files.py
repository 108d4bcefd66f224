"""OpenAI Files: `/v1/files` (upload a batch's JSONL, list, show, download, delete).

Thin: parse, call `appliance.openai.OpenAIFiles`, return OpenAI's shapes. A token sees the
files it uploaded and those its batches wrote; an admin token sees every file.
"""

from __future__ import annotations

import io
from typing import Any

import marshmallow as ma
from flask import send_file
from flask.views import MethodView
from flask_smorest.fields import Upload
from werkzeug.datastructures import FileStorage

from appliance.openai import file_object
from appliance.openai.completion import list_object
from appliance.vocab import FILE_PURPOSE_BATCH
from web.api import Blueprint
from web.api.openai_messages import bad_request, owner_name, refusing, visible_to
from web.services import services

blp = Blueprint(
    "openai_files", __name__, url_prefix="/v1", description="OpenAI-compatible files (batch JSONL)"
)


class UploadSchema(ma.Schema):
    class Meta:
        unknown = ma.EXCLUDE

    file = Upload(required=True, metadata={"description": "the JSONL of batch requests"})
    purpose = ma.fields.String(required=True, metadata={"description": "batch"})


class FileSchema(ma.Schema):
    id = ma.fields.String()
    object = ma.fields.String()
    bytes = ma.fields.Integer()
    created_at = ma.fields.Integer()
    filename = ma.fields.String()
    purpose = ma.fields.String()
    status = ma.fields.String()
    status_details = ma.fields.String(allow_none=True)
    expires_at = ma.fields.Integer(allow_none=True)


class FileListQuery(ma.Schema):
    purpose = ma.fields.String(load_default=None)
    after = ma.fields.String(load_default=None)
    limit = ma.fields.Integer(load_default=10_000, validate=ma.validate.Range(1, 10_000))
    order = ma.fields.String(load_default="desc", validate=ma.validate.OneOf(["asc", "desc"]))


class FileListSchema(ma.Schema):
    object = ma.fields.String()
    data = ma.fields.List(ma.fields.Nested(FileSchema))
    has_more = ma.fields.Boolean()
    first_id = ma.fields.String(allow_none=True)
    last_id = ma.fields.String(allow_none=True)


class FileDeletedSchema(ma.Schema):
    id = ma.fields.String()
    object = ma.fields.String()
    deleted = ma.fields.Boolean()


@blp.route("/files")
class Files(MethodView):
    @blp.arguments(UploadSchema, location="multipart")
    @blp.response(200, FileSchema)
    def post(self, form: dict[str, Any]) -> dict[str, Any]:
        """Upload a JSONL of requests for a batch (purpose `batch`)."""
        upload = form["file"]
        if not isinstance(upload, FileStorage):
            raise bad_request("send the file as a multipart part named 'file'")
        if form["purpose"] != FILE_PURPOSE_BATCH:
            raise bad_request(f"purpose {form['purpose']!r} is not supported here; use 'batch'")
        # Read one byte past the limit: enough to refuse, never the whole of a huge upload.
        data = upload.stream.read(services().settings.api.max_batch_file_bytes + 1)
        name = upload.filename or "batch.jsonl"
        with refusing():
            row = services().openai_files.upload(data, name, form["purpose"], owner_name())
        return file_object(row)

    @blp.arguments(FileListQuery, location="query")
    @blp.response(200, FileListSchema)
    def get(self, query: dict[str, Any]) -> dict[str, Any]:
        """The files this token sees, newest first (`order=asc`: oldest); page with `after`."""
        rows, more = services().openai_files.page(
            visible_to(),
            purpose=query["purpose"],
            after=query["after"],
            limit=query["limit"],
            ascending=query["order"] == "asc",
        )
        data = [file_object(row) for row in rows]
        return list_object(data, more)


@blp.route("/files/<file_id>")
class File(MethodView):
    @blp.response(200, FileSchema)
    def get(self, file_id: str) -> dict[str, Any]:
        """One file."""
        return file_object(services().openai_files.get(file_id, visible_to()))

    @blp.response(200, FileDeletedSchema)
    def delete(self, file_id: str) -> dict[str, Any]:
        """Delete a file and its content."""
        services().openai_files.delete(file_id, visible_to())
        return {"id": file_id, "object": "file", "deleted": True}


@blp.route("/files/<file_id>/content")
class FileContent(MethodView):
    @blp.response(200, description="The file's bytes (JSONL)")
    def get(self, file_id: str) -> Any:
        """The file's content."""
        data = services().openai_files.content(file_id, visible_to())
        return send_file(
            io.BytesIO(data), mimetype="application/jsonl", download_name=f"{file_id}.jsonl"
        )

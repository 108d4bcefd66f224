"""The REST API's flask-smorest `Api`: OpenAPI 3 from the code, errors as problem+json."""

from __future__ import annotations

import http
from typing import Any

import flask
import flask_smorest
import marshmallow as ma
from flask import Flask, Response
from flask_smorest.utils import prepare_response
from webargs.flaskparser import FlaskParser
from werkzeug.datastructures import CombinedMultiDict
from werkzeug.exceptions import HTTPException

from web.problems import MEDIA_TYPE, http_exception_response

API_PREFIX = "/api/v1"


class ProblemSchema(ma.Schema):
    """RFC 9457 problem details."""

    class Meta:
        unknown = ma.INCLUDE

    type = ma.fields.String(metadata={"description": "URI of the problem type (about:blank)"})
    title = ma.fields.String(metadata={"description": "HTTP status phrase"})
    status = ma.fields.Integer()
    detail = ma.fields.String(metadata={"description": "The human reason"})
    instance = ma.fields.String(metadata={"description": "Request path"})
    errors = ma.fields.Raw(metadata={"description": "Field errors, for validation problems"})


class _Parser(FlaskParser):
    """Adds location `multipart`: form fields and files in one schema (and one requestBody)."""

    def load_multipart(self, req: flask.Request, schema: ma.Schema) -> Any:
        return self._makeproxy(CombinedMultiDict([req.form, req.files]), schema)


_Parser.__location_map__ = {**FlaskParser.__location_map__, "multipart": "load_multipart"}


class Blueprint(flask_smorest.Blueprint):
    """flask-smorest's Blueprint, plus `location="multipart"` for uploads with form fields.

    flask-smorest documents `form` and `files` arguments as two request bodies and keeps one;
    a single schema over both keeps the spec true (schemathesis sends what it says).
    """

    ARGUMENTS_PARSER = _Parser()
    DEFAULT_LOCATION_CONTENT_TYPE_MAPPING = {
        **flask_smorest.Blueprint.DEFAULT_LOCATION_CONTENT_TYPE_MAPPING,
        "multipart": "multipart/form-data",
    }


class Api(flask_smorest.Api):
    ERROR_SCHEMA = ProblemSchema

    def _register_responses(self) -> None:
        # As flask-smorest's, but error bodies are documented as application/problem+json,
        # which is what `problems.py` sends (schemathesis checks the content type too).
        for status in http.HTTPStatus:
            response: dict[str, Any] = {"description": status.phrase}
            if not (100 <= status < 200) and status not in (204, 304):
                response["schema"] = self.ERROR_SCHEMA
            prepare_response(response, self.spec, MEDIA_TYPE)
            self.spec.components.response(status.name, response, lazy=True)
        response = {"description": "Problem details (RFC 9457)", "schema": self.ERROR_SCHEMA}
        prepare_response(response, self.spec, MEDIA_TYPE)
        self.spec.components.response("DEFAULT_ERROR", response, lazy=True)

    def handle_http_exception(self, error: HTTPException) -> Response:  # type: ignore[override]
        return http_exception_response(error)


def init_api(app: Flask) -> Api:
    app.config.setdefault("API_TITLE", "Vision appliance API")
    app.config.setdefault("API_VERSION", "v1")
    app.config.setdefault("OPENAPI_VERSION", "3.0.3")
    app.config.setdefault("OPENAPI_URL_PREFIX", API_PREFIX)
    app.config.setdefault("OPENAPI_JSON_PATH", "openapi.json")
    # No Swagger UI/ReDoc: they load from a CDN and the box is offline; see web/api/docs.py.
    app.config.setdefault(
        "API_SPEC_OPTIONS",
        {
            "security": [{"bearerAuth": []}],
            "components": {
                "securitySchemes": {
                    "bearerAuth": {
                        "type": "http",
                        "scheme": "bearer",
                        "description": "`appliance tokens create NAME --scope read|submit|admin`",
                    }
                }
            },
        },
    )
    api = Api(app)

    from web.api import (
        batches,
        docs,
        events,
        jobs,
        openai_batches,
        openai_compat,
        openai_files,
        ops,
        search,
        webhooks,
        workers,
    )

    for module in (
        ops,
        jobs,
        search,
        batches,
        events,
        workers,
        webhooks,
        openai_compat,
        openai_files,
        openai_batches,
    ):
        api.register_blueprint(module.blp)
    app.register_blueprint(docs.bp)
    return api

"""RFC 9457 problem details: every error the API returns is `application/problem+json`.

Views raise `Problem` (or an `ApplianceError`, or let werkzeug raise its HTTP errors); the
handlers registered by `register_error_handlers` turn all of them into one body shape with a
human `detail`, so a script and a person both get the reason without reading logs.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from flask import Flask, Response, current_app, json, request
from sqlalchemy.exc import DBAPIError, OperationalError
from werkzeug.exceptions import HTTPException

from appliance.errors import (
    ApplianceError,
    CorruptFile,
    DecompressionBomb,
    EmptyFile,
    IntakeError,
    InvalidRequest,
    JobNotFound,
    JobStateConflict,
    TooLarge,
    TooManyPages,
)
from appliance.storage import StorageUnavailable

log = logging.getLogger(__name__)

MEDIA_TYPE = "application/problem+json"


class Problem(Exception):
    """An HTTP error with a one-line human reason and optional headers/extension members."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        headers: Mapping[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = dict(headers or {})
        self.extra = extra


def problem_response(
    status: int,
    detail: str | None = None,
    *,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> Response:
    """The problem+json response itself (also used by handlers outside Flask's dispatch)."""
    try:
        title = HTTPStatus(status).phrase
    except ValueError:
        title = "Error"
    body: dict[str, Any] = {"type": "about:blank", "title": title, "status": status}
    body["detail"] = detail or title
    with contextlib.suppress(RuntimeError):  # outside a request context: no instance
        body["instance"] = request.path
    body.update(extra)
    resp = Response(json.dumps(body), status=status, mimetype=MEDIA_TYPE)
    for key, value in (headers or {}).items():
        resp.headers[key] = value
    return resp


# Intake failures are the client's file, never our fault: map them to the closest 4xx.
_APPLIANCE_STATUS: list[tuple[type[ApplianceError], int]] = [
    (TooLarge, 413),
    (TooManyPages, 413),
    (DecompressionBomb, 413),
    (EmptyFile, 400),
    # A file of a type we take that cannot be decoded: the request was understood, its content
    # is bad (422). Every other intake refusal is a type or layout we do not take (415).
    (CorruptFile, 422),
    (IntakeError, 415),
    (InvalidRequest, 422),
    (JobNotFound, 404),
    (JobStateConflict, 409),
]


def status_for(err: ApplianceError) -> int:
    for cls, status in _APPLIANCE_STATUS:
        if isinstance(err, cls):
            return status
    # Anything else (model missing, store down) is ours, and retrying later may help.
    return 503 if err.transient else 500


def http_exception_response(err: HTTPException) -> Response:
    code = err.code or 500
    data = getattr(err, "data", None) or {}
    extra: dict[str, Any] = {}
    # webargs (flask-smorest) puts field errors in data["messages"]; keep them as an extension.
    messages = data.get("errors") or data.get("messages")
    detail = data.get("message") or err.description
    if messages:
        extra["errors"] = messages
        detail = data.get("message") or _summarise(messages)
    if code == 413:
        detail = "request body is larger than this server accepts"
    headers = dict(data.get("headers") or {})
    if code == 405 and err.get_response().headers.get("Allow"):
        headers["Allow"] = err.get_response().headers["Allow"]
    return problem_response(code, detail, headers=headers, **extra)


def _summarise(messages: Any) -> str:
    """One line out of webargs' nested {location: {field: [msg]}} errors."""
    parts: list[str] = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, Mapping):
            for key, value in node.items():
                walk(value, f"{path}.{key}" if path else str(key))
        elif isinstance(node, list | tuple):
            for item in node:
                walk(item, path)
        else:
            parts.append(f"{path}: {node}" if path else str(node))

    walk(messages, "")
    # Drop the location prefix ("form.", "json.") that means nothing to a client.
    cleaned = [p.split(".", 1)[1] if p.split(".", 1)[0] in _LOCATIONS else p for p in parts]
    return "invalid request: " + "; ".join(cleaned[:5])


_LOCATIONS = {"json", "form", "files", "multipart", "query", "headers", "view_args", "json_or_form"}


def _retry_after() -> int:
    services = current_app.extensions.get("appliance")
    return services.settings.storage.retry_after_s if services is not None else 10


def _is_connection_error(err: DBAPIError) -> bool:
    """OperationalError is how both drivers say the server is away (refused, reset, gone)."""
    return err.connection_invalidated or isinstance(err, OperationalError)


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(Problem)
    def _problem(err: Problem) -> Response:
        return problem_response(err.status, err.detail, headers=err.headers, **err.extra)

    @app.errorhandler(ApplianceError)
    def _appliance(err: ApplianceError) -> Response:
        status = status_for(err)
        if status >= 500:
            log.error("request failed: %s", err, exc_info=err)
        return problem_response(status, str(err))

    # The object store or the database is away (a head node restarting, a network blip): a
    # wait for the client, never a refusal of its file.
    @app.errorhandler(StorageUnavailable)
    @app.errorhandler(DBAPIError)
    def _unavailable(err: Exception) -> Response:
        if isinstance(err, DBAPIError) and not _is_connection_error(err):
            return _unexpected(err)
        log.warning("dependency unavailable on %s %s: %s", request.method, request.path, err)
        what = "object store" if isinstance(err, StorageUnavailable) else "database"
        wait = _retry_after()
        return problem_response(
            503,
            f"the {what} is not reachable right now; try again in {wait} s",
            headers={"Retry-After": str(wait)},
        )

    @app.errorhandler(HTTPException)
    def _http(err: HTTPException) -> Response:
        return http_exception_response(err)

    @app.errorhandler(Exception)
    def _unexpected(err: Exception) -> Response:
        if isinstance(err, HTTPException):  # pragma: no cover - handled above
            return http_exception_response(err)
        log.exception("unhandled error on %s %s", request.method, request.path)
        return problem_response(500, "internal error; the details are in the server log")

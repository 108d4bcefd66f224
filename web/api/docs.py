"""A docs page rendered on the server from the OpenAPI spec: no JavaScript, no CDN (offline box)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, render_template

bp = Blueprint("docs", __name__)

_METHODS = ("get", "post", "put", "patch", "delete")


def _resolve(spec: dict[str, Any], node: Any) -> Any:
    if isinstance(node, dict) and "$ref" in node:
        target: Any = spec
        for part in node["$ref"].lstrip("#/").split("/"):
            target = target.get(part, {})
        return target
    return node


def operations(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """Flat, template-friendly list of the spec's operations."""
    ops = []
    for path, item in spec.get("paths", {}).items():
        for method in _METHODS:
            op = item.get(method)
            if not op:
                continue
            params = [
                _resolve(spec, p) for p in item.get("parameters", []) + op.get("parameters", [])
            ]
            body = op.get("requestBody", {}).get("content", {})
            responses = {code: _resolve(spec, r) for code, r in op.get("responses", {}).items()}
            ops.append(
                {
                    "method": method.upper(),
                    "path": path,
                    "summary": op.get("summary", ""),
                    "description": op.get("description", ""),
                    "tag": (op.get("tags") or [""])[0],
                    "params": params,
                    "body": sorted(body),
                    "responses": responses,
                    "public": op.get("security") == [],
                }
            )
    return ops


@bp.get("/api/v1/docs")
def docs() -> str:
    """The API reference as plain HTML, from the same spec as /api/v1/openapi.json."""
    spec = current_app.extensions["appliance_api"].spec.to_dict()
    return render_template(
        "api/docs.html", spec=spec, info=spec.get("info", {}), operations=operations(spec)
    )

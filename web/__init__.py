"""Flask app factory: REST API v1, OpenAI-compatible API, health and metrics (and the panel).

`gunicorn 'web:create_app()'` or `appliance web` serve it; tests call `create_app(settings)`.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from flask import Flask

from appliance.redis_conn import require_credentials
from appliance.settings import Settings, load_settings
from web import auth
from web.problems import register_error_handlers
from web.services import Services
from web.uploads import UploadRequest


def create_app(
    settings: Settings | None = None,
    test_config: dict[str, Any] | None = None,
    **services: Any,
) -> Flask:
    """The WSGI app. `services` overrides collaborators (jobs=, tokens=, redis=) in tests."""
    settings = settings or load_settings()
    require_credentials(settings)  # a LAN Redis without a password: refuse to serve
    app = Flask(__name__)
    app.request_class = UploadRequest
    app.config.update(
        # Werkzeug answers 413 itself beyond these, before any view runs.
        MAX_CONTENT_LENGTH=settings.api.max_request_bytes,
        MAX_FORM_MEMORY_SIZE=1024 * 1024,
        MAX_FORM_PARTS=settings.api.max_files + 64,
        JSON_SORT_KEYS=False,
    )
    if test_config:
        app.config.update(test_config)
    app.extensions["appliance"] = Services(settings, **services)

    register_error_handlers(app)
    auth.init_app(app)

    from web.api import init_api

    app.extensions["appliance_api"] = init_api(app)
    # Re-register ours after flask-smorest's own HTTPException handler, so ours wins.
    register_error_handlers(app)
    _register_panel(app)
    return app


def _register_panel(app: Flask) -> None:
    """The browser panel lives in `web.panel`; mount it when present and not switched off."""
    if not app.config.get("PANEL_ENABLED", True) or importlib.util.find_spec("web.panel") is None:
        return
    from web import panel

    init = getattr(panel, "init_app", None)
    if init is not None:
        init(app)

"""The browser panel: login, upload, live queue, results, history and search, system, and
webhooks for admins.

Authenticated by a signed session cookie (not API tokens) and protected against CSRF on every
state-changing request (forms carry `csrf_token`, fetches send `X-CSRFToken`). The panel calls
the job service in-process: same store and queue as the API, no HTTP hop. Every asset is local.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any

from flask import Blueprint, Flask, current_app, redirect, request, send_from_directory, url_for
from flask.sessions import SecureCookieSessionInterface
from flask_wtf.csrf import CSRFProtect

from appliance.settings import Settings

bp = Blueprint(
    "panel",
    __name__,
    url_prefix="/panel",
    template_folder="templates",
    static_folder="static",
    static_url_path="/static",
)


class _SessionInterface(SecureCookieSessionInterface):
    """`Secure` cookies when the request came over HTTPS, for `cookie_secure = "auto"`.

    A box on a plain-HTTP LAN must still be able to log in, while the same box behind TLS
    must never send its session in clear text.
    """

    def __init__(self, mode: str) -> None:
        self.mode = mode

    def get_cookie_secure(self, app: Flask) -> bool:
        if self.mode == "always":
            return True
        if self.mode == "never":
            return False
        try:
            return request.is_secure
        except RuntimeError:  # outside a request
            return False


def load_secret_key(path: Path) -> bytes:
    """The key in `path`, created (0600, atomically) on first use.

    Every gunicorn worker runs this at start: the key is written to a temp file and hard-linked
    into place, so a racing worker either wins or reads the complete winner's key.
    """
    try:
        data = path.read_bytes()
        if len(data) >= 32:
            return data
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".panel-key-")
    try:
        os.write(fd, secrets.token_bytes(64))
        os.fsync(fd)
        os.close(fd)
        # Another worker won the race: its key is the key.
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        os.unlink(tmp)
    return path.read_bytes()


def _setup(app: Flask) -> None:
    settings: Settings = app.extensions["appliance"].settings
    panel = settings.panel
    if not app.config.get("SECRET_KEY"):
        app.config["SECRET_KEY"] = load_secret_key(
            panel.secret_key_file or settings.data_dir / "panel.key"
        )
    app.config.update(
        SESSION_COOKIE_NAME="appliance_panel",
        SESSION_COOKIE_HTTPONLY=True,
        # Lax, not Strict: a link to a result pasted into chat or e-mail should open logged in;
        # cross-site POSTs are refused by the CSRF token anyway.
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_PATH="/",
        PERMANENT_SESSION_LIFETIME=timedelta(hours=panel.session_hours),
        # Tokens live as long as the session: a queue page left open for hours must still cancel.
        WTF_CSRF_TIME_LIMIT=None,
    )
    app.session_interface = _SessionInterface(panel.cookie_secure)
    if "csrf" not in app.extensions:
        # The API authenticates by Bearer token and must not demand a CSRF token, so the
        # app-wide check is off and the panel checks its own requests (see auth.before_request).
        app.config["WTF_CSRF_CHECK_DEFAULT"] = False
        CSRFProtect(app)
    from web.auth import exempt_blueprint

    exempt_blueprint(app, bp.name)
    if "/" not in {rule.rule for rule in app.url_map.iter_rules()}:
        # People type the box's address, not /panel/. A blueprint of its own, so the API's
        # token check lets it through like the panel.
        home = Blueprint("panel_home", __name__)
        home.add_url_rule("/", "root", lambda: redirect(url_for("panel.index")))
        # Every browser asks for it; without a route it got the API's JSON 401.
        home.add_url_rule("/favicon.ico", "favicon", _favicon)
        app.register_blueprint(home)
        exempt_blueprint(app, home.name)
    app.config.setdefault("HTML_LOGIN_ENDPOINT", "panel.login")
    app.context_processor(_demo_banner)
    app.add_template_filter(_safety_badge, "safety_badge")


def _favicon() -> Any:
    return send_from_directory(
        bp.static_folder or "", "favicon.ico", mimetype="image/vnd.microsoft.icon", max_age=86400
    )


def _safety_badge(job: Any) -> str | None:
    """The badge text of a job the safety stage flagged or blocked (None: nothing found)."""
    from appliance.safety.template import DEFAULT_CATEGORIES
    from appliance.safety.verdicts import badge

    site = current_app.extensions["appliance"].settings.safety.categories
    return badge(getattr(job, "safety", None), {**DEFAULT_CATEGORIES, **site})


def _demo_banner() -> dict[str, Any]:
    """`demo_models`: the tiny random-weight models are the ones configured (see base.html)."""
    return {"demo_models": current_app.extensions["appliance"].demo_models}


def init_app(app: Flask) -> None:
    """Mount the panel (called by `web.create_app`)."""
    app.register_blueprint(bp)
    _setup(app)


# Views register on import.
from web.panel import actions, auth, files, views, webhooks  # noqa: E402,F401

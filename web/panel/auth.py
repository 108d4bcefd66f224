"""Panel login: session cookie, CSRF check on every state-changing request, logout.

The session holds only the user name and a stamp of their password hash; each request reloads
the user, so a deleted user or a changed password ends every open session at once, and an
admin flag taken away counts immediately.
"""

from __future__ import annotations

import logging
import time
from typing import Any
from urllib.parse import urlsplit

from flask import (
    Response,
    current_app,
    g,
    jsonify,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException

from appliance.users import UserInfo, UserStore
from web.panel import bp

log = logging.getLogger(__name__)

# Reachable without a session (the login form still needs its CSRF token).
_PUBLIC = {"panel.login", "panel.static"}
LOGIN_FAILURES_PER_MINUTE = 10


def user_store() -> UserStore:
    services = current_app.extensions["appliance"]
    # `create_app(settings, users=...)` puts a ready store there in tests.
    store = getattr(services, "users", None)
    if store is None:
        store = services.__dict__.setdefault("users", UserStore.from_settings(services.settings))
    return store


def current_user() -> UserInfo:
    """The logged-in user (every non-public panel view runs after `_load_user`)."""
    return g.panel_user


def wants_json() -> bool:
    # The panel's scripts always ask for JSON; a browser navigating asks for HTML.
    best = request.accept_mimetypes.best_match(["application/json", "text/html"])
    return best == "application/json" or request.path.endswith(".json")


def _safe_next(target: str | None) -> str:
    """Only local paths: `?next=https://evil.example` must not turn login into a redirector."""
    default = url_for("panel.index")
    if not target:
        return default
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//"):
        return default
    if "\\" in target:
        return default
    return target


@bp.before_request
def _load_user() -> Response | None:
    g.panel_user = None
    if request.endpoint not in _PUBLIC:
        name, stamp = session.get("user"), session.get("stamp")
        user = user_store().get(name) if isinstance(name, str) else None
        if user is None or user.stamp != stamp:
            session.clear()
            if wants_json() or request.method != "GET":
                return _error(401, "your session has ended; log in again")
            return redirect(url_for("panel.login", next=request.full_path.rstrip("?")))
        g.panel_user = user
    # After the session check, so an anonymous client never gets its upload body parsed.
    current_app.extensions["csrf"].protect()
    return None


def _failures_key() -> str:
    # Per client address and fixed minute; shared by every web process through Redis.
    return f"appliance:panel-login-failures:{request.remote_addr or '?'}:{int(time.time() // 60)}"


def _too_many_failures() -> bool:
    """Only failed attempts count, so a busy ward PC logging in all day is never locked out."""
    try:
        count = current_app.extensions["appliance"].redis.get(_failures_key())
        return int(count or 0) >= LOGIN_FAILURES_PER_MINUTE
    except Exception:  # Redis down: logging in must still work; scrypt slows guessing anyway
        log.warning("login rate limit unavailable", exc_info=True)
        return False


def _count_failure() -> None:
    try:
        pipe = current_app.extensions["appliance"].redis.pipeline()
        pipe.incr(_failures_key())
        pipe.expire(_failures_key(), 120)
        pipe.execute()
    except Exception:
        log.warning("login rate limit unavailable", exc_info=True)


@bp.route("/login", methods=["GET", "POST"])
def login() -> Any:
    error = None
    status = 200
    if request.method == "POST":
        name = request.form.get("username", "").strip()
        password = request.form.get("password", "")
        if _too_many_failures():
            error, status = "Too many failed logins; wait a minute and try again.", 429
        else:
            user = user_store().authenticate(name, password)
            if user is not None:
                # A fresh session: nothing from before login survives (no session fixation).
                session.clear()
                session.permanent = True
                session["user"] = user.name
                session["stamp"] = user.stamp
                log.info("panel login: %s", user.name)
                return redirect(_safe_next(request.args.get("next")))
            _count_failure()
            log.info("panel login failed for %r from %s", name[:64], request.remote_addr)
            error, status = "Wrong user name or password.", 401
    return render_template("panel/login.html", error=error), status


@bp.route("/logout", methods=["POST"])
def logout() -> Response:
    session.clear()
    return redirect(url_for("panel.login"))


# Everything the panel loads is its own: a CSP that says so also blunts any XSS that slipped
# through (no inline script, no foreign host), and framing is refused (clickjacking).
_CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)


@bp.after_request
def _security_headers(resp: Response) -> Response:
    resp.headers.setdefault("Content-Security-Policy", _CSP)
    resp.headers.setdefault("X-Frame-Options", "DENY")
    resp.headers.setdefault("X-Content-Type-Options", "nosniff")
    resp.headers.setdefault("Referrer-Policy", "same-origin")
    if g.get("panel_user") is not None:
        # Pages with someone's results must not linger in shared caches or the back button
        # after logout.
        resp.headers.setdefault("Cache-Control", "no-store")
    return resp


def _error(status: int, detail: str) -> Response:
    if wants_json():
        resp = jsonify({"status": status, "detail": detail})
    else:
        resp = current_app.make_response(
            render_template("panel/error.html", status=status, detail=detail)
        )
    resp.status_code = status
    return resp


@bp.errorhandler(CSRFError)
def _csrf_error(err: CSRFError) -> Response:
    return _error(400, f"request refused: {err.description} Reload the page and try again.")


@bp.errorhandler(HTTPException)
def _http_error(err: HTTPException) -> Response:
    return _error(err.code or 500, err.description or "error")

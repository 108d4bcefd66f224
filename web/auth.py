"""Bearer-token authentication, scopes and the per-token rate limit, for every route.

Runs as a `before_request` hook, i.e. before Flask parses any body: an anonymous or over-limit
client never gets an upload spooled. Public endpoints are listed explicitly (only `/healthz`
today); the panel registers its own blueprint as exempt and authenticates by session instead.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

from flask import Flask, abort, current_app, g, redirect, request, url_for

from appliance.tokens import TokenInfo, scope_allows
from web.problems import Problem

F = TypeVar("F", bound=Callable[..., object])

# Endpoints anyone may call: liveness only. Everything else, /metrics included, needs a token.
PUBLIC_ENDPOINTS = {"ops.Healthz"}
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}

#: An extra authenticator (e.g. the panel's session) returns a TokenInfo-like principal or None.
Authenticator = Callable[[], TokenInfo | None]


def scope(required: str) -> Callable[[F], F]:
    """Mark a view as needing `required` (default: `read` for GET, `submit` otherwise)."""

    def mark(view: F) -> F:
        view._required_scope = required  # type: ignore[attr-defined]
        return view

    return mark


def exempt_blueprint(app: Flask, name: str) -> None:
    """Let a blueprint (the panel) do its own authentication."""
    app.config.setdefault("AUTH_EXEMPT_BLUEPRINTS", set()).add(name)


def add_authenticator(app: Flask, fn: Authenticator) -> None:
    """Another way to authenticate API calls (tried after the Bearer header)."""
    app.config.setdefault("AUTH_EXTRA", []).append(fn)


class _TokenCache:
    """Verified tokens per process for a few seconds: most requests skip the database."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[TokenInfo, float]] = {}

    def get(self, secret: str) -> TokenInfo | None:
        with self._lock:
            hit = self._entries.get(secret)
            if hit and hit[1] > time.monotonic():
                return hit[0]
            self._entries.pop(secret, None)
            return None

    def put(self, secret: str, info: TokenInfo) -> None:
        with self._lock:
            if len(self._entries) > 10_000:  # bounded: many distinct valid tokens is unusual
                self._entries.clear()
            self._entries[secret] = (info, time.monotonic() + self.ttl)


def _bearer() -> str | None:
    header = request.headers.get("Authorization", "")
    kind, _, value = header.partition(" ")
    if kind.lower() != "bearer":
        return None
    return value.strip() or None


def _browser_navigation() -> bool:
    """A browser loading a page: GET, no credentials at all, and HTML preferred over JSON."""
    if request.method not in ("GET", "HEAD") or "Authorization" in request.headers:
        return False
    best = request.accept_mimetypes.best_match(["application/json", "text/html"])
    return best == "text/html" and request.accept_mimetypes["text/html"] > 0


def _unauthorized(detail: str) -> Problem:
    return Problem(401, detail, headers={"WWW-Authenticate": 'Bearer realm="appliance"'})


def _required_scope() -> str:
    view = current_app.view_functions.get(request.endpoint or "")
    marked = getattr(view, "_required_scope", None)
    # A flask-smorest MethodView: the mark sits on its method or on the class itself.
    view_class = getattr(view, "view_class", None)
    if not marked and view_class is not None:
        method = getattr(view_class, request.method.lower(), None)
        marked = getattr(method, "_required_scope", None) or getattr(
            view_class, "_required_scope", None
        )
    if marked:
        return marked
    return "read" if request.method in SAFE_METHODS else "submit"


def authenticate() -> None:
    """The before_request hook: sets `g.principal` or raises a 401/403/429 problem."""
    if request.endpoint in PUBLIC_ENDPOINTS:
        return
    if request.blueprint and request.blueprint.split(".")[0] in current_app.config.get(
        "AUTH_EXEMPT_BLUEPRINTS", ()
    ):
        return
    services = current_app.extensions["appliance"]
    principal: TokenInfo | None = None
    secret = _bearer()
    if secret is not None:
        cache: _TokenCache = services.token_cache
        principal = cache.get(secret)
        if principal is None:
            principal = services.tokens.verify(secret)
            if principal is not None:
                cache.put(secret, principal)
        if principal is None:
            raise _unauthorized("the API token is unknown or revoked")
    else:
        for extra in current_app.config.get("AUTH_EXTRA", ()):
            principal = extra()
            if principal is not None:
                break
    if principal is None:
        if _browser_navigation():
            # A person typed a path into a browser (/login, an old bookmark): show them the
            # panel's login page, not a JSON error meant for programs.
            login = current_app.config.get("HTML_LOGIN_ENDPOINT")
            if login is not None:
                abort(redirect(url_for(login)))
        raise _unauthorized("an API token is required: send 'Authorization: Bearer <token>'")
    need = _required_scope()
    if not scope_allows(principal.scope, need):
        raise Problem(403, f"this token has scope '{principal.scope}'; this needs '{need}'")
    g.principal = principal
    # Keyed by the random prefix, not the row id: ids repeat across databases sharing a Redis.
    retry_after = services.limiter.hit(f"token:{principal.prefix}")
    if retry_after is not None:
        raise Problem(
            429,
            f"rate limit of {services.limiter.per_minute} requests per minute exceeded",
            headers={"Retry-After": str(retry_after)},
        )


def init_app(app: Flask) -> None:
    app.before_request(authenticate)

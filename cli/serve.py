"""`appliance web`: gunicorn serving the Flask app factory (API and panel)."""

from __future__ import annotations

import os
from typing import Any

import click

from appliance.settings import Settings
from cli.group import cli, get_settings, refuse_unsafe_redis


def _gunicorn_app(settings: Settings, options: dict[str, Any]) -> Any:
    from gunicorn.app.base import BaseApplication

    class WebApplication(BaseApplication):  # type: ignore[misc]
        """Gunicorn with our app object: settings are passed in, not re-read from argv."""

        def load_config(self) -> None:
            for key, value in options.items():
                self.cfg.set(key, value)

        def load(self) -> Any:
            # Runs in each worker after the fork, so Redis/DB connections are per worker.
            from web import create_app

            return create_app(settings)

    return WebApplication()


@cli.command()
@click.option("--bind", default="127.0.0.1:8000", show_default=True, help="HOST:PORT to listen on.")
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=None,
    help="Gunicorn worker processes (default: CPU cores, at most 4).",
)
@click.option("--threads", type=click.IntRange(1, 256), default=16, show_default=True)
@click.pass_context
def web(ctx: click.Context, bind: str, workers: int | None, threads: int) -> None:
    """Serve the REST API, the OpenAI-compatible API and the panel with gunicorn."""
    settings = get_settings(ctx)
    refuse_unsafe_redis(settings)
    options = {
        "bind": [bind],
        "workers": workers or min(4, os.cpu_count() or 1),
        # Threads: SSE streams and /v1/chat/completions wait on the queue for a long time;
        # with sync workers each would hold a whole process.
        "worker_class": "gthread",
        "threads": threads,
        "timeout": 60,
        "graceful_timeout": 30,
        "keepalive": 5,
        # Gunicorn's own request-line/header caps (Flask caps the body).
        "limit_request_line": 8190,
        "limit_request_fields": 100,
        "limit_request_field_size": 8190,
        "accesslog": "-",
        "proc_name": "appliance-web",
    }
    _gunicorn_app(settings, options).run()

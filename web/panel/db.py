"""The panel's handles on the shared services: settings, the job service, a read-only store."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flask import current_app
from sqlalchemy.orm import Session, sessionmaker

from appliance.settings import Settings

if TYPE_CHECKING:
    from appliance.jobs import JobService


def _services() -> Any:
    return current_app.extensions["appliance"]


def settings() -> Settings:
    return _services().settings


def jobs_service() -> JobService:
    return _services().jobs


def read_db() -> sessionmaker[Session]:
    """Read-only sessions on the job store (no SQLite write lock taken)."""
    services = _services()
    factory = services.__dict__.get("panel_read_db")
    if factory is None:
        from appliance.store import init_db, session_factory

        factory = session_factory(init_db(services.settings), readonly=True)
        services.__dict__["panel_read_db"] = factory
    return factory

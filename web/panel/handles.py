"""The panel's handles on the shared services: settings and the job service."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flask import current_app

from appliance.settings import Settings

if TYPE_CHECKING:
    from appliance.jobs import JobService


def _services() -> Any:
    return current_app.extensions["appliance"]


def settings() -> Settings:
    return _services().settings


def jobs_service() -> JobService:
    return _services().jobs

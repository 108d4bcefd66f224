"""The durable job store: SQLAlchemy 2 models, engines, Alembic migrations.

- `tables`: `Job`, `Batch`, `JobEvent`, `WorkerRow`; `accounts`: `ApiToken`, `User`;
  `webhook_tables`: webhook subscriptions, deliveries and attempts.
- `db`: `init_db(settings)` (migrate to head, return the engine), `get_engine`, sessions.
- `repo`: `JobStore`, composed of one module per concern (see its docstring);
  `JobFilter`, what a job listing selects. State names live in `appliance.vocab`.

Other modules of this package may define more tables on `Base`; `all_metadata()` imports them
all, for Alembic's autogenerate.
"""

from __future__ import annotations

import importlib
import pkgutil

from sqlalchemy import MetaData

from appliance.store.base import Base
from appliance.store.db import get_engine, init_db, session_factory
from appliance.store.tables import Batch, Job, JobEvent, WorkerRow

__all__ = [
    "Base",
    "Batch",
    "Job",
    "JobEvent",
    "WorkerRow",
    "all_metadata",
    "get_engine",
    "init_db",
    "session_factory",
]


def all_metadata() -> MetaData:
    """`Base.metadata` after importing every table module of this package."""
    for info in pkgutil.iter_modules(__path__):
        if info.name not in ("migrations",) and not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")
    return Base.metadata

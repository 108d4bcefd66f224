"""The append-only event log, read back for SSE and a job's history."""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    func,
    select,
)

from appliance.store.session import StoreSession, event_dict
from appliance.store.tables import JobEvent


class EventLog(StoreSession):
    def events_after(
        self, after: int, *, limit: int = 500, **filters: str | None
    ) -> list[dict[str, Any]]:
        stmt = select(JobEvent).where(JobEvent.id > after)
        for name in ("job_id", "batch_id", "owner"):
            if filters.get(name):
                stmt = stmt.where(getattr(JobEvent, name) == filters[name])
        with self.read() as session:
            return [event_dict(e) for e in session.scalars(stmt.order_by(JobEvent.id).limit(limit))]

    def last_event_id(self) -> int:
        with self.read() as session:
            return int(session.scalar(select(func.max(JobEvent.id))) or 0)

    def job_events(self, job_id: str) -> list[dict[str, Any]]:
        return self.events_after(0, limit=10_000, job_id=job_id)

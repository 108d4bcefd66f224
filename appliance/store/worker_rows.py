"""Worker rows: registration, heartbeats, staleness."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    select,
    update,
)

from appliance.store.base import utcnow
from appliance.store.session import StoreSession
from appliance.store.tables import WorkerRow


class WorkerRecords(StoreSession):
    def register_worker(self, row: WorkerRow) -> WorkerRow | None:
        """Insert or take over `row.hostname`; returns the previous row (None if new)."""
        with self.write() as session:
            old = session.get(WorkerRow, row.hostname)
            previous = None
            if old is not None:
                previous = WorkerRow(
                    hostname=old.hostname,
                    pid=old.pid,
                    boot=old.boot,
                    device=old.device,
                    state=old.state,
                    heartbeat_at=old.heartbeat_at,
                    started_at=old.started_at,
                )
                session.delete(old)
                session.flush()
            now = utcnow()
            row.started_at = row.heartbeat_at = now
            row.jobs_done = 0
            session.add(row)
            return previous

    def heartbeat(
        self,
        hostname: str,
        boot: str,
        *,
        state: str | None = None,
        current_jobs: list[str] | None = None,
        jobs_done: int | None = None,
        model: str | None = None,
    ) -> bool:
        values: dict[str, Any] = {"heartbeat_at": utcnow()}
        if state is not None:
            values["state"] = state
        if model is not None:
            values["model"] = model
        if current_jobs is not None:
            values["current_jobs"] = current_jobs
        if jobs_done is not None:
            values["jobs_done"] = jobs_done
        with self.write() as session:
            stmt = (
                update(WorkerRow)
                .where(WorkerRow.hostname == hostname, WorkerRow.boot == boot)
                .values(**values)
            )
            result = session.execute(stmt, execution_options={"synchronize_session": False})
            return bool(result.rowcount)  # type: ignore[attr-defined]

    def stale_workers(self, heartbeat_before: datetime) -> list[str]:
        with self.read() as session:
            return list(
                session.scalars(
                    select(WorkerRow.hostname).where(WorkerRow.heartbeat_at < heartbeat_before)
                )
            )

    def list_workers(self) -> list[WorkerRow]:
        with self.read() as session:
            return list(session.scalars(select(WorkerRow).order_by(WorkerRow.hostname)))

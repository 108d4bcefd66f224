"""What recovery and retention look for: jobs on dead workers, lost messages, purgeable inputs."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    and_,
    exists,
    or_,
    select,
)

from appliance.store import search_index
from appliance.store.base import utcnow
from appliance.store.session import StoreSession
from appliance.store.tables import Job, WorkerRow
from appliance.vocab import (
    QUEUED,
    RUNNING,
    TERMINAL,
)


class Retention(StoreSession):
    def running_on(self, workers: list[str]) -> list[Job]:
        with self.read() as session:
            return list(
                session.scalars(select(Job).where(Job.state == RUNNING, Job.worker.in_(workers)))
            )

    def orphaned_running(self, started_before: datetime) -> list[Job]:
        """Running jobs whose worker has no row at all (rows are never deleted, but be safe)."""
        with self.read() as session:
            known = select(WorkerRow.hostname).where(WorkerRow.hostname == Job.worker)
            return list(
                session.scalars(
                    select(Job).where(
                        Job.state == RUNNING,
                        Job.started_at < started_before,
                        ~exists(known),
                    )
                )
            )

    def queued_before(self, enqueued_before: datetime) -> list[Job]:
        """Queued jobs last sent before this time (and due), oldest first."""
        now = utcnow()
        with self.read() as session:
            return list(
                session.scalars(
                    select(Job)
                    .where(
                        Job.state == QUEUED,
                        or_(Job.enqueued_at.is_(None), Job.enqueued_at < enqueued_before),
                        or_(Job.not_before.is_(None), Job.not_before <= now),
                    )
                    .order_by(Job.created_at)
                )
            )

    def purgeable(self, finished_before: datetime) -> tuple[list[str], set[str]]:
        """(ids of ended jobs past retention, input paths no other job still needs)."""
        old = and_(Job.state.in_(TERMINAL), Job.finished_at < finished_before)
        with self.read() as session:
            rows = session.execute(
                select(Job.id, Job.input_path).where(old, Job.input_purged_at.is_(None))
            ).all()
            paths = {p for _, p in rows}
            if not paths:
                return [], set()
            keep = set(
                session.scalars(
                    select(Job.input_path).where(Job.input_path.in_(paths), ~old).distinct()
                )
            )
        return [i for i, _ in rows], paths - keep

    def mark_purged(self, job_ids: list[str]) -> None:
        with self.write() as session:
            for chunk in range(0, len(job_ids), 500):
                self._update(
                    session,
                    [Job.id.in_(job_ids[chunk : chunk + 500])],
                    input_purged_at=utcnow(),
                )
            # Retention is when the box forgets a job: search no longer finds it.
            search_index.drop(session.connection(), job_ids)

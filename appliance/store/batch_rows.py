"""Batches and follow-up text: open/close/finish a batch, its digest, job summaries."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    and_,
    case,
    exists,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from appliance.store import search_index
from appliance.store.base import utcnow
from appliance.store.session import StoreSession, clean_text
from appliance.store.tables import Batch, Job, JobEvent
from appliance.vocab import (
    ACTIVE,
    BATCH_FINISHED,
    DONE,
    FAILED,
    OFF,
    PENDING,
    SUCCEEDED,
)


def ensure_batch(session: Session, batch: Batch) -> None:
    """Insert the batch unless a row with its id exists (an upsert that keeps the first)."""
    values = {
        "id": batch.id,
        "created_at": utcnow(),
        "source": batch.source,
        "owner": batch.owner,
        "label": batch.label,
        "language": batch.language or "en",
        "total": 0,
        "digest_requested": bool(batch.digest_requested),
    }
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = insert(Batch).values(**values).on_conflict_do_nothing(index_elements=["id"])
    session.execute(stmt)


class BatchRecords(StoreSession):
    def open_batch(self, batch: Batch) -> Batch:
        with self.write() as session:
            ensure_batch(session, batch)
            row = session.get(Batch, batch.id, populate_existing=True)
            assert row is not None
            return row

    def close_batch(self, batch_id: str) -> Batch | None:
        with self.write() as session:
            row = session.get(Batch, batch_id)
            if row is None:
                return None
            if row.closed_at is None:
                row.closed_at = utcnow()
            return row

    def finish_batch_if_done(self, batch_id: str) -> tuple[bool, bool]:
        """Mark a closed batch whose jobs have all ended finished, once.

        Returns (finished_now, digest_wanted): the caller that finishes it sends the digest.
        """
        active = exists(select(Job.id).where(Job.batch_id == Batch.id, Job.state.in_(ACTIVE)))
        with self.write() as session:
            stmt = (
                update(Batch)
                .where(
                    Batch.id == batch_id,
                    Batch.closed_at.is_not(None),
                    Batch.finished_at.is_(None),
                    ~active,
                )
                .values(
                    finished_at=utcnow(),
                    digest_state=case(
                        (and_(Batch.digest_requested, Batch.digest_state.is_(None)), PENDING),
                        else_=Batch.digest_state,
                    ),
                )
            )
            changed = session.execute(stmt, execution_options={"synchronize_session": False})
            if not changed.rowcount:  # type: ignore[attr-defined]
                return False, False
            batch = session.get(Batch, batch_id, populate_existing=True)
            assert batch is not None
            self._batch_event(session, batch, BATCH_FINISHED)
            return True, batch.digest_state == PENDING

    @staticmethod
    def _batch_event(session: Session, batch: Batch, event: str, detail: str | None = None) -> None:
        row = JobEvent(
            at=utcnow(),
            event=event,
            batch_id=batch.id,
            owner=batch.owner,
            detail=clean_text(detail),
        )
        session.add(row)
        session.flush()
        session.info["events"].append(row)

    def digest_done(self, batch_id: str, text: str | None, error: str | None = None) -> bool:
        with self.write() as session:
            stmt = (
                update(Batch)
                .where(Batch.id == batch_id, Batch.digest_state == PENDING)
                .values(
                    digest_state=DONE if error is None else FAILED,
                    digest=clean_text(text),
                    digest_error=clean_text(error),
                    digest_at=utcnow(),
                )
            )
            changed = session.execute(stmt, execution_options={"synchronize_session": False})
            if not changed.rowcount:  # type: ignore[attr-defined]
                return False
            batch = session.get(Batch, batch_id, populate_existing=True)
            assert batch is not None
            self._batch_event(session, batch, "digest", detail=error)
            return True

    def pending_digests(self, finished_before: datetime) -> list[str]:
        with self.read() as session:
            return list(
                session.scalars(
                    select(Batch.id).where(
                        Batch.digest_state == PENDING, Batch.finished_at < finished_before
                    )
                )
            )

    def unfinished_closed_batches(self) -> list[str]:
        """Closed, unfinished batches with no active job: a finish that a crash interrupted."""
        active = exists(select(Job.id).where(Job.batch_id == Batch.id, Job.state.in_(ACTIVE)))
        with self.read() as session:
            return list(
                session.scalars(
                    select(Batch.id).where(
                        Batch.closed_at.is_not(None), Batch.finished_at.is_(None), ~active
                    )
                )
            )

    def batch_texts(self, batch_id: str) -> list[str]:
        with self.read() as session:
            return [
                t or ""
                for t in session.scalars(
                    select(Job.result_text)
                    .where(Job.batch_id == batch_id, Job.state == SUCCEEDED)
                    .order_by(Job.created_at, Job.id)
                )
            ]

    def batch_safety_modes(self, batch_id: str) -> set[str]:
        """The safety policies of a batch's succeeded jobs (its digest follows the strictest)."""
        with self.read() as session:
            rows = session.scalars(
                select(Job.params).where(Job.batch_id == batch_id, Job.state == SUCCEEDED)
            )
            return {str((params or {}).get("safety") or OFF) for params in rows}

    def summary_done(self, job_id: str, text: str | None, error: str | None = None) -> bool:
        with self.write() as session:
            changed = self._update(
                session,
                [Job.id == job_id, Job.summary_state == PENDING],
                summary_state=DONE if error is None else FAILED,
                summary=clean_text(text),
                summary_error=clean_text(error),
            )
            if changed:
                self._event(session, self._fresh(session, job_id), "summary", detail=error)
                if self.index_results and text:
                    search_index.refresh(session.connection(), [job_id])
            return bool(changed)

    def pending_summaries(self, updated_before: datetime) -> list[str]:
        with self.read() as session:
            return list(
                session.scalars(
                    select(Job.id).where(
                        Job.summary_state == PENDING, Job.updated_at < updated_before
                    )
                )
            )

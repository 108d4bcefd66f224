"""The store's sessions and the helpers every part of `JobStore` writes with: a write
transaction that publishes its events after the commit, the event row, conditional updates."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, insert, update
from sqlalchemy.orm import Session

from appliance.store.base import utcnow
from appliance.store.db import session_factory
from appliance.store.outbox import fan_out
from appliance.store.tables import Job, JobEvent

Notify = Callable[[list[dict[str, Any]]], None]
_EVENT_COLUMNS = [c for c in JobEvent.__table__.columns if c.key != "id"]
# Prebuilt, like the claim and result statements in `job_transitions`: see there.
_INSERT_EVENT = insert(JobEvent.__table__)


def clean_text(value: str | None) -> str | None:
    """Text as PostgreSQL can store it: model output may contain NUL characters."""
    return value.replace("\x00", "\ufffd") if value else value


def event_dict(event: JobEvent) -> dict[str, Any]:
    """The JSON form of an event, as published on the events channel and replayed by SSE."""
    return {
        "id": event.id,
        "at": event.at.isoformat(),
        "event": event.event,
        "job_id": event.job_id,
        "batch_id": event.batch_id,
        "owner": event.owner,
        "state": event.state,
        "attempt": event.attempt,
        "worker": event.worker,
        "detail": event.detail,
    }


class StoreSession:
    """Sessions and write helpers shared by the parts of `JobStore`."""

    # Results go into the full-text index as they are written (see `search_index`); only
    # bench/search.py turns this off, to measure what indexing costs a result write.
    index_results = True

    def __init__(
        self,
        engine: Engine,
        notify: Notify | None = None,
        on_outbox: Callable[[], object] | None = None,
    ) -> None:
        self.engine = engine
        self.notify = notify
        # Rung after a commit that queued webhook deliveries (the broker's doorbell for them).
        self.on_outbox = on_outbox
        self._writer = session_factory(engine)
        self._reader = session_factory(engine, readonly=True)

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A write transaction; events added with `_event` are published after the commit, and
        the webhook deliveries they call for are written in it (`outbox.fan_out`)."""
        events: list[JobEvent] = []
        queued = 0
        with self._writer.begin() as session:
            session.info["events"] = events
            yield session
            if events:
                queued = fan_out(session, events)
        if events and self.notify is not None:
            self.notify([event_dict(e) for e in events])
        if queued and self.on_outbox is not None:
            self.on_outbox()

    @contextmanager
    def read(self) -> Iterator[Session]:
        with self._reader() as session:
            yield session

    @staticmethod
    def _event(session: Session, job: Job | None, event: str, **fields: Any) -> None:
        fields["detail"] = clean_text(fields.get("detail"))
        row = JobEvent(at=utcnow(), event=event, **fields)
        if job is not None:
            row.job_id = job.id
            row.batch_id = job.batch_id
            row.owner = job.owner
            row.state = job.state
            row.attempt = job.attempts
            row.worker = fields.get("worker", job.worker)
        # A Core INSERT on the transaction's connection: the row is only published, never
        # changed, so it needs none of the unit of work's bookkeeping (a flush per event).
        values = {c.key: getattr(row, c.key) for c in _EVENT_COLUMNS}
        result = session.connection().execute(_INSERT_EVENT, values)
        row.id = result.inserted_primary_key[0]
        session.info["events"].append(row)

    @staticmethod
    def _update(session: Session, where: Iterable[Any], **values: Any) -> int:
        values.setdefault("updated_at", utcnow())
        stmt = update(Job).where(*where).values(**values)
        result = session.execute(stmt, execution_options={"synchronize_session": False})
        return result.rowcount  # type: ignore[attr-defined,no-any-return]

    @staticmethod
    def _transition(session: Session, where: Iterable[Any], **values: Any) -> Job | None:
        """One conditional UPDATE that hands back the changed row (RETURNING): None if no row
        matched, and no SELECT after it. (Claim and result, once per job, use the prebuilt
        statements above instead.)"""
        values.setdefault("updated_at", utcnow())
        stmt = update(Job).where(*where).values(**values).returning(Job)
        rows = session.scalars(stmt, execution_options={"synchronize_session": False})
        return rows.one_or_none()

    @staticmethod
    def _fresh(session: Session, job_id: str) -> Job:
        job = session.get(Job, job_id, populate_existing=True)
        assert job is not None
        return job

"""OpenAI Files + Batches rows: files, batches, their input lines, and the writes that move a
batch along (each a conditional update, so a request, a worker and a reconciler racing on one
batch move it once)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import and_, case, delete, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from appliance.store.base import utcnow
from appliance.store.batch_rows import ensure_batch
from appliance.store.openai_tables import OpenAIBatch, OpenAIBatchLine, OpenAIFile
from appliance.store.session import StoreSession
from appliance.store.tables import Batch, Job
from appliance.vocab import CANCELLED, FAILED, OPENAI_BATCH_OPEN, QUEUED, SUCCEEDED

Row = OpenAIFile | OpenAIBatch


def _insert(session: Session) -> Any:
    return postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert


class OpenAIRecords(StoreSession):
    # -- files ------------------------------------------------------------------------------

    def add_file(self, row: OpenAIFile) -> OpenAIFile:
        with self.write() as session:
            session.add(row)
            session.flush()
            return row

    def get_file(self, file_id: str) -> OpenAIFile | None:
        return self._get(OpenAIFile, file_id)  # type: ignore[return-value]

    def list_files(
        self,
        *,
        owner: str | None,
        purpose: str | None,
        after: str | None,
        limit: int,
        ascending: bool = False,
    ) -> tuple[list[OpenAIFile], bool]:
        where = [OpenAIFile.purpose == purpose] if purpose else []
        return self._page(OpenAIFile, owner, after, limit, ascending, where)  # type: ignore[return-value]

    def delete_file(self, file_id: str) -> OpenAIFile | None:
        with self.write() as session:
            row = session.get(OpenAIFile, file_id)
            if row is not None:
                session.execute(delete(OpenAIFile).where(OpenAIFile.id == file_id))
            return row

    def file_location_used(self, location: str) -> bool:
        """Whether any file row still names these (content-addressed) bytes."""
        with self.read() as session:
            found = session.scalar(select(OpenAIFile.id).where(OpenAIFile.path == location))
            return found is not None

    # -- batches ----------------------------------------------------------------------------

    def create_openai_batch(self, row: OpenAIBatch, label: str) -> OpenAIBatch:
        """The batch and its job batch (same id, open until every line is queued), together."""
        with self.write() as session:
            ensure_batch(session, Batch(id=row.id, source="api", owner=row.owner, label=label))
            session.add(row)
            session.flush()
            return row

    def get_openai_batch(self, batch_id: str) -> OpenAIBatch | None:
        return self._get(OpenAIBatch, batch_id)  # type: ignore[return-value]

    def list_openai_batches(
        self, *, owner: str | None, after: str | None, limit: int
    ) -> tuple[list[OpenAIBatch], bool]:
        return self._page(OpenAIBatch, owner, after, limit, False, [])  # type: ignore[return-value]

    def move_openai_batch(self, batch_id: str, from_states: Sequence[str], **values: Any) -> bool:
        """One conditional status change (`status` and its timestamp in `values`)."""
        with self.write() as session:
            stmt = (
                update(OpenAIBatch)
                .where(OpenAIBatch.id == batch_id, OpenAIBatch.status.in_(from_states))
                .values(**values)
            )
            done = session.execute(stmt, execution_options={"synchronize_session": False})
            return bool(done.rowcount)  # type: ignore[attr-defined]

    def end_openai_batch(
        self, batch_id: str, from_states: Sequence[str], files: list[OpenAIFile], **values: Any
    ) -> bool:
        """Its final status and its output/error file rows, in one transaction: a batch whose
        status says it ended always has its files."""
        with self.write() as session:
            stmt = (
                update(OpenAIBatch)
                .where(OpenAIBatch.id == batch_id, OpenAIBatch.status.in_(from_states))
                .values(**values)
            )
            done = session.execute(stmt, execution_options={"synchronize_session": False})
            if not done.rowcount:  # type: ignore[attr-defined]
                return False
            for row in files:
                values_ = {c.key: getattr(row, c.key) for c in OpenAIFile.__table__.columns}
                insert = _insert(session)(OpenAIFile).values(**values_)
                session.execute(insert.on_conflict_do_nothing(index_elements=["id"]))
            return True

    def open_openai_batches(self) -> list[tuple[OpenAIBatch, bool, bool]]:
        """Batches not yet ended, each with whether its job batch is closed (every line was
        queued) and finished (and every line's job ended): what the reconciler sweeps."""
        with self.read() as session:
            rows = session.execute(
                select(OpenAIBatch, Batch.closed_at.is_not(None), Batch.finished_at.is_not(None))
                .join(Batch, Batch.id == OpenAIBatch.id)
                .where(OpenAIBatch.status.in_(OPENAI_BATCH_OPEN))
            ).all()
            return [(row, bool(closed), bool(finished)) for row, closed, finished in rows]

    # -- lines ------------------------------------------------------------------------------

    def add_batch_lines(self, batch_id: str, lines: list[dict[str, Any]]) -> None:
        """Record lines ({line, custom_id, job_id, error_code, error_message}); a line already
        recorded (a resumed expansion) keeps its first record."""
        if not lines:
            return
        with self.write() as session:
            stmt = _insert(session)(OpenAIBatchLine).values(
                [{"batch_id": batch_id, **line} for line in lines]
            )
            session.execute(stmt.on_conflict_do_nothing(index_elements=["batch_id", "line"]))

    def batch_lines(self, batch_id: str) -> list[tuple[OpenAIBatchLine, Job | None]]:
        """Every recorded line, in input order, with its job (None for a refused line)."""
        with self.read() as session:
            rows = session.execute(
                select(OpenAIBatchLine, Job)
                .outerjoin(Job, Job.id == OpenAIBatchLine.job_id)
                .where(OpenAIBatchLine.batch_id == batch_id)
                .order_by(OpenAIBatchLine.line)
            ).all()
            return [(line, job) for line, job in rows]

    def openai_batch_counts(self, batch_id: str) -> tuple[int, int]:
        """(completed, failed) so far: succeeded jobs; refused lines plus failed and cancelled
        jobs (each of those is a line of the error file)."""
        bad = or_(OpenAIBatchLine.job_id.is_(None), Job.state.in_((FAILED, CANCELLED)))
        with self.read() as session:
            done, failed = session.execute(
                select(func.count(case((Job.state == SUCCEEDED, 1))), func.count(case((bad, 1))))
                .select_from(OpenAIBatchLine)
                .outerjoin(Job, Job.id == OpenAIBatchLine.job_id)
                .where(OpenAIBatchLine.batch_id == batch_id)
            ).one()
            return int(done), int(failed)

    def cancel_queued_in_batch(self, batch_id: str) -> int:
        """Cancel the batch's jobs still waiting (queued -> cancelled, one event each); running
        ones are left to finish, as OpenAI lets in-flight requests end."""
        now = utcnow()
        with self.write() as session:
            ids = list(
                session.scalars(select(Job.id).where(Job.batch_id == batch_id, Job.state == QUEUED))
            )
            for job_id in ids:
                job = self._transition(
                    session,
                    [Job.id == job_id, Job.state == QUEUED],
                    state=CANCELLED,
                    error=CANCELLED,
                    error_code=CANCELLED,
                    claim=None,
                    finished_at=now,
                )
                if job is not None:
                    self._event(session, job, CANCELLED)
            return len(ids)

    # -- paging -----------------------------------------------------------------------------

    def _get(self, table: type[Any], key: str) -> Any:
        with self.read() as session:
            return session.get(table, key)

    def _page(
        self,
        model: type[Row],
        owner: str | None,
        after: str | None,
        limit: int,
        ascending: bool,
        where: list[Any],
    ) -> tuple[list[Row], bool]:
        """Newest first (or oldest), `after` an id of the previous page: OpenAI's cursor."""
        with self.read() as session:
            stmt = select(model).where(*where)
            if owner is not None:
                stmt = stmt.where(model.owner == owner)
            if after:
                mark = session.execute(
                    select(model.created_at, model.id).where(model.id == after)
                ).one_or_none()
                if mark is not None:
                    at, id_ = mark
                    older = or_(model.created_at < at, and_(model.created_at == at, model.id < id_))
                    newer = or_(model.created_at > at, and_(model.created_at == at, model.id > id_))
                    stmt = stmt.where(newer if ascending else older)
            order = (
                (model.created_at, model.id)
                if ascending
                else (
                    model.created_at.desc(),
                    model.id.desc(),
                )
            )
            rows = list(session.scalars(stmt.order_by(*order).limit(limit + 1)))
            return rows[:limit], len(rows) > limit

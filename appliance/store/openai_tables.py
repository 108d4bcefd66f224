"""The OpenAI Files + Batches tables: uploaded and written files, batches, and each batch's
input lines with the job that answers them (or why the line was refused).

An OpenAI batch shares its id with a job `Batch` whose jobs are its lines: the job batch's
finish (every job ended, see `batch_rows.finish_batch_if_done`) is what tells the worker side
to write the batch's output files. Everything a restart needs is in these rows.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from appliance.store.base import Base, UTCDateTime, utcnow
from appliance.vocab import FILE_PROCESSED, VALIDATING


class OpenAIFile(Base):
    """An uploaded JSONL (purpose `batch`) or a batch's output/error file (`batch_output`)."""

    __tablename__ = "openai_files"
    __table_args__ = (Index("ix_openai_files_owner_created", "owner", "created_at", "id"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    # The token name that uploaded it (or the batch's owner); only it and admins see it.
    owner: Mapped[str | None] = mapped_column(String(255))
    filename: Mapped[str] = mapped_column(String(512))
    purpose: Mapped[str] = mapped_column(String(32))
    bytes: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16), default=FILE_PROCESSED)
    # Where the content lies: a path under `settings.openai_files_dir`, or `s3://...` (by
    # sha256) in the object store the boxes share.
    path: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class OpenAIBatch(Base):
    """One `/v1/batches` batch. Its id is also its job batch's id (`batches.id`)."""

    __tablename__ = "openai_batches"
    __table_args__ = (
        Index("ix_openai_batches_owner_created", "owner", "created_at", "id"),
        # The reconciler's sweep: batches still open.
        Index("ix_openai_batches_status", "status"),
    )

    id: Mapped[str] = mapped_column(ForeignKey("batches.id"), primary_key=True)
    owner: Mapped[str | None] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(16), default=VALIDATING)
    endpoint: Mapped[str] = mapped_column(String(64))
    completion_window: Mapped[str] = mapped_column(String(16))
    input_file_id: Mapped[str] = mapped_column(String(40))
    # The client's metadata (up to 16 string pairs), returned as given.
    meta: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON)
    # Lines in the input file; what they became is in `openai_batch_lines`.
    total: Mapped[int] = mapped_column(Integer, default=0)
    # Fixed when the batch ends; while it runs they are counted from its jobs.
    completed: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    # Why a batch failed as a whole ([{code, message, line, param}]), as OpenAI's `errors`.
    errors: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    output_file_id: Mapped[str | None] = mapped_column(String(40))
    error_file_id: Mapped[str | None] = mapped_column(String(40))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    in_progress_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finalizing_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    failed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    expired_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    cancelling_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    cancelled_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class OpenAIBatchLine(Base):
    """One input line: the job that answers it, or the error that refused it."""

    __tablename__ = "openai_batch_lines"

    batch_id: Mapped[str] = mapped_column(ForeignKey("openai_batches.id"), primary_key=True)
    # 1-based, as OpenAI's `errors[].line` counts.
    line: Mapped[int] = mapped_column(Integer, primary_key=True)
    custom_id: Mapped[str | None] = mapped_column(String(512))
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id"), index=True)
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)

"""jobs, batches, job events, workers

Revision ID: 0001_jobs
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001_jobs"
down_revision = None
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "batches",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("closed_at", sa.DateTime(), nullable=True),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("owner", sa.String(255), nullable=True),
        sa.Column("label", sa.String(512), nullable=True),
        sa.Column("language", sa.String(8), nullable=False),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("digest_requested", sa.Boolean(), nullable=False),
        sa.Column("digest_state", sa.String(16), nullable=True),
        sa.Column("digest", sa.Text(), nullable=True),
        sa.Column("digest_error", sa.Text(), nullable=True),
        sa.Column("digest_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_batches")),
    )
    op.create_index(op.f("ix_batches_owner"), "batches", ["owner"])

    op.create_table(
        "jobs",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.Column("enqueued_at", sa.DateTime(), nullable=True),
        sa.Column("started_at", sa.DateTime(), nullable=True),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("priority", sa.String(16), nullable=False),
        sa.Column("owner", sa.String(255), nullable=True),
        sa.Column("batch_id", sa.String(36), nullable=True),
        sa.Column("idempotency_key", sa.String(600), nullable=True),
        sa.Column("filename", sa.String(512), nullable=False),
        sa.Column("input_path", sa.Text(), nullable=False),
        sa.Column("input_sha256", sa.String(64), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("pages", sa.Integer(), nullable=True),
        sa.Column("input_purged_at", sa.DateTime(), nullable=True),
        sa.Column("task", sa.String(32), nullable=False),
        sa.Column("prompt", sa.Text(), nullable=True),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("compat_key", sa.String(255), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("run_alone", sa.Boolean(), nullable=False),
        sa.Column("not_before", sa.DateTime(), nullable=True),
        sa.Column("worker", sa.String(255), nullable=True),
        sa.Column("device", sa.String(255), nullable=True),
        sa.Column("claim", sa.String(36), nullable=True),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("result_text", sa.Text(), nullable=True),
        sa.Column("timings", sa.JSON(), nullable=True),
        sa.Column("summary_state", sa.String(16), nullable=True),
        sa.Column("summary", sa.Text(), nullable=True),
        sa.Column("summary_error", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("error_code", sa.String(32), nullable=True),
        sa.ForeignKeyConstraint(
            ["batch_id"], ["batches.id"], name=op.f("fk_jobs_batch_id_batches")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_jobs_idempotency_key")),
    )
    op.create_index(op.f("ix_jobs_owner"), "jobs", ["owner"])
    op.create_index(op.f("ix_jobs_batch_id"), "jobs", ["batch_id"])
    op.create_index(op.f("ix_jobs_input_sha256"), "jobs", ["input_sha256"])
    op.create_index(op.f("ix_jobs_state"), "jobs", ["state"])
    op.create_index("ix_jobs_state_compat", "jobs", ["state", "compat_key", "created_at"])
    op.create_index("ix_jobs_created", "jobs", ["created_at", "id"])

    op.create_table(
        "job_events",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("job_id", sa.String(36), nullable=True),
        sa.Column("batch_id", sa.String(36), nullable=True),
        sa.Column("owner", sa.String(255), nullable=True),
        sa.Column("event", sa.String(24), nullable=False),
        sa.Column("state", sa.String(16), nullable=True),
        sa.Column("attempt", sa.Integer(), nullable=True),
        sa.Column("worker", sa.String(255), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_job_events")),
    )
    op.create_index(op.f("ix_job_events_job_id"), "job_events", ["job_id"])
    op.create_index(op.f("ix_job_events_batch_id"), "job_events", ["batch_id"])

    op.create_table(
        "workers",
        sa.Column("hostname", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("boot", sa.String(36), nullable=False),
        sa.Column("device", sa.String(255), nullable=False),
        sa.Column("model", sa.String(255), nullable=True),
        sa.Column("queues", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("current_jobs", sa.JSON(), nullable=False),
        sa.Column("jobs_done", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("hostname", name=op.f("pk_workers")),
    )


def downgrade() -> None:
    op.drop_table("workers")
    op.drop_index(op.f("ix_job_events_batch_id"), table_name="job_events")
    op.drop_index(op.f("ix_job_events_job_id"), table_name="job_events")
    op.drop_table("job_events")
    op.drop_table("jobs")
    op.drop_table("batches")

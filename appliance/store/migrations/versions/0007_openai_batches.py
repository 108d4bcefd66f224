"""OpenAI Files + Batches: files, batches and each batch's input lines

Revision ID: 0007_openai_batches
Revises: 0006_search
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007_openai_batches"
down_revision = "0006_search"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "openai_files",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("owner", sa.String(255), nullable=True),
        sa.Column("filename", sa.String(512), nullable=False),
        sa.Column("purpose", sa.String(32), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_openai_files")),
    )
    op.create_index("ix_openai_files_owner_created", "openai_files", ["owner", "created_at", "id"])
    op.create_table(
        "openai_batches",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("owner", sa.String(255), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("endpoint", sa.String(64), nullable=False),
        sa.Column("completion_window", sa.String(16), nullable=False),
        sa.Column("input_file_id", sa.String(40), nullable=False),
        sa.Column("metadata", sa.JSON(), nullable=True),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("completed", sa.Integer(), nullable=False),
        sa.Column("failed", sa.Integer(), nullable=False),
        sa.Column("errors", sa.JSON(), nullable=True),
        sa.Column("output_file_id", sa.String(40), nullable=True),
        sa.Column("error_file_id", sa.String(40), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=True),
        sa.Column("in_progress_at", sa.DateTime(), nullable=True),
        sa.Column("finalizing_at", sa.DateTime(), nullable=True),
        sa.Column("completed_at", sa.DateTime(), nullable=True),
        sa.Column("failed_at", sa.DateTime(), nullable=True),
        sa.Column("expired_at", sa.DateTime(), nullable=True),
        sa.Column("cancelling_at", sa.DateTime(), nullable=True),
        sa.Column("cancelled_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(["id"], ["batches.id"], name=op.f("fk_openai_batches_id_batches")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_openai_batches")),
    )
    op.create_index(
        "ix_openai_batches_owner_created", "openai_batches", ["owner", "created_at", "id"]
    )
    op.create_index("ix_openai_batches_status", "openai_batches", ["status"])
    op.create_table(
        "openai_batch_lines",
        sa.Column("batch_id", sa.String(36), nullable=False),
        sa.Column("line", sa.Integer(), nullable=False),
        sa.Column("custom_id", sa.String(512), nullable=True),
        sa.Column("job_id", sa.String(36), nullable=True),
        sa.Column("error_code", sa.String(64), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["batch_id"],
            ["openai_batches.id"],
            name=op.f("fk_openai_batch_lines_batch_id_openai_batches"),
        ),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_openai_batch_lines_job_id_jobs")
        ),
        sa.PrimaryKeyConstraint("batch_id", "line", name=op.f("pk_openai_batch_lines")),
    )
    op.create_index(op.f("ix_openai_batch_lines_job_id"), "openai_batch_lines", ["job_id"])


def downgrade() -> None:
    op.drop_table("openai_batch_lines")
    op.drop_table("openai_batches")
    op.drop_table("openai_files")

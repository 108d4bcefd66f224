"""index jobs by end time (retention purge, system page)

Revision ID: 0004_jobs_finished_index
Revises: 0003_users
Create Date: 2026-11-24
"""

from __future__ import annotations

from alembic import op

revision = "0004_jobs_finished_index"
down_revision = "0003_users"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_jobs_state_finished", "jobs", ["state", "finished_at"])


def downgrade() -> None:
    op.drop_index("ix_jobs_state_finished", table_name="jobs")

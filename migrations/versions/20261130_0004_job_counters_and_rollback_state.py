"""A job keeps what it skipped and left alone, and whether it was rolled back.

``skipped_invalid`` (memories skipped for bad data), ``conflicts`` (clusters and
archives left for next night because an agent changed a memory meanwhile) and
``pairs_kept_apart`` (similar pairs the value guard kept apart) were only in the
``job.completed`` event; ``rolled_back_at`` and ``rolled_back_by`` say that, when and
by whom ``orchestration jobs rollback`` undid the job. Existing jobs get 0 and NULL.

Columns are added and dropped in place (SQLite 3.35 and later drop a column without
copying the table; copying ``consolidation_jobs`` would delete its audit rows by
``ON DELETE CASCADE``).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import orchestration.store.types

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COUNTERS = ("skipped_invalid", "conflicts", "pairs_kept_apart")


def upgrade() -> None:
    for name in COUNTERS:
        op.add_column("consolidation_jobs", sa.Column(name, sa.Integer(), server_default=sa.text("0"), nullable=False))
    op.add_column(
        "consolidation_jobs",
        sa.Column("rolled_back_at", orchestration.store.types.UTCDateTime(timezone=True), nullable=True),
    )
    op.add_column("consolidation_jobs", sa.Column("rolled_back_by", sa.String(length=200), nullable=True))


def downgrade() -> None:
    for name in ("rolled_back_by", "rolled_back_at", *reversed(COUNTERS)):
        op.drop_column("consolidation_jobs", name)

"""A job's ``heartbeat_at`` has one meaning: when a process last vouched for the
unfinished job (``orchestration.jobs.transitions.effects``). A finished job has none:
the end is ``completed_at``, which the finishing transitions used to copy into it.

Data only: finished jobs' ``heartbeat_at`` is cleared; the downgrade copies
``completed_at`` back.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import orchestration.store.types

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The finished statuses as they were at this revision.
FINISHED = ("completed", "failed", "skipped")

jobs = sa.table(
    "consolidation_jobs",
    sa.column("status", sa.String()),
    sa.column("completed_at", orchestration.store.types.UTCDateTime(timezone=True)),
    sa.column("heartbeat_at", orchestration.store.types.UTCDateTime(timezone=True)),
)


def upgrade() -> None:
    op.execute(jobs.update().where(jobs.c.status.in_(FINISHED)).values(heartbeat_at=None))


def downgrade() -> None:
    op.execute(jobs.update().where(jobs.c.status.in_(FINISHED)).values(heartbeat_at=jobs.c.completed_at))

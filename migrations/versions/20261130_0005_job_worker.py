"""A job names the worker process that started its latest attempt.

``consolidation_jobs.worker`` (``host:pid``) gives the dashboard's run timeline one
lane per worker process. Existing jobs get NULL (drawn as "not recorded"). Added and
dropped in place, as in 0004.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("consolidation_jobs", sa.Column("worker", sa.String(length=200), nullable=True))


def downgrade() -> None:
    op.drop_column("consolidation_jobs", "worker")

"""What a completed pass found it could not read in bulk: ``consolidation_jobs.irregular_ids``.

A pass records the memories it found bad data in or read row by row (``{"checks":
version, "ids": [...]}``, or NULL when it knows no such list: more than 10,000, nothing
read in bulk, SQLite). The project's
next incremental pass checks again, in full, only those and the memories marked since
(``orchestration.consolidation.passes``); an unmarked memory's other columns are
as the last pass checked them. Existing jobs have none: the next pass checks all.

Not in batch mode: on SQLite that would re-create the table (ADD COLUMN needs none).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import orchestration.store.types

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("consolidation_jobs", sa.Column("irregular_ids", orchestration.store.types.JSONType, nullable=True))


def downgrade() -> None:
    # Not in batch mode either: on SQLite that re-creates the table, and dropping the
    # old one would cascade to the audit trail (consolidation_changes).
    op.execute("ALTER TABLE consolidation_jobs DROP COLUMN irregular_ids")  # SQLite >= 3.35 too

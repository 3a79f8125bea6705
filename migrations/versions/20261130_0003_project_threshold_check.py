"""A project's own consolidation threshold is NULL (the default setting) or at least 1.

A project is eligible when it has more active memories than its threshold, so a
threshold below 1 made a project with a single memory eligible (a threshold of -1
archived a project's only memory). The CHECK constraint ``ck_projects_consolidation_threshold``
now refuses such values.

Existing rows with a threshold below 1 are set to NULL before the constraint is
added: those projects use the default threshold (``ORCHESTRATION_DEFAULT_THRESHOLD``)
from then on. Downgrading drops the constraint; it does not bring those values back.

PostgreSQL: ``projects`` is locked against writes from the update to the commit, so
no bad value can arrive between the two; adding the constraint reads ``projects``
once (one row per project, no memories).

SQLite cannot add a constraint to a table: Alembic's batch mode copies ``projects``
into a new table with the constraint, drops the old one and renames the new one.
Foreign key enforcement is switched off around it (outside the transaction, the only
place SQLite lets it change): dropping ``projects`` with it on would delete every
memory, job, lock and count of every project by ``ON DELETE CASCADE``. The re-created
table has no triggers, so the one of migration 0002 on ``projects`` is created again.
``PRAGMA foreign_key_check`` must then find no row it did not find before, or the
block is rolled back and the upgrade stops.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import orchestration.store.types
from orchestration.store import rebuilds

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NAME = "ck_projects_consolidation_threshold"
CONDITION = "consolidation_threshold >= 1"
RESET = "UPDATE projects SET consolidation_threshold = NULL WHERE consolidation_threshold < 1"
# Migration 0002's trigger on ``projects`` (SQLite), lost when batch mode re-creates the table.
SQLITE_PROJECT_TRIGGER = """
    CREATE TRIGGER projects_memory_count_row AFTER INSERT ON projects BEGIN
        INSERT INTO project_memory_counts (project_id, active_count) VALUES (NEW.id, 0);
    END
    """


def _projects(*constraints: sa.Constraint) -> sa.Table:
    """``projects`` as migration 0001 created it (batch mode copies it from this, not
    from reflection, so the copy is the same online and offline)."""
    return sa.Table(
        "projects",
        sa.MetaData(),
        sa.Column("id", orchestration.store.types.GUID(length=36), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("consolidation_enabled", sa.Boolean(), server_default=sa.text("(true)"), nullable=False),
        sa.Column("consolidation_threshold", sa.Integer(), nullable=True),
        sa.Column(
            "consolidation_options",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("created_at", orchestration.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_projects"),
        *constraints,
    )


def _is_sqlite() -> bool:
    return op.get_bind().dialect.name == "sqlite"


def upgrade() -> None:
    if _is_sqlite():
        with rebuilds.foreign_keys_off("projects", SQLITE_PROJECT_TRIGGER):
            op.execute(RESET)
            with op.batch_alter_table("projects", recreate="always", copy_from=_projects()) as batch_op:
                batch_op.create_check_constraint(op.f(NAME), CONDITION)
        return
    op.execute("LOCK TABLE projects IN SHARE ROW EXCLUSIVE MODE")
    op.execute(RESET)
    op.create_check_constraint(op.f(NAME), "projects", CONDITION)


def downgrade() -> None:
    if _is_sqlite():
        checked = _projects(sa.CheckConstraint(CONDITION, name=op.f(NAME)))
        with (
            rebuilds.foreign_keys_off("projects", SQLITE_PROJECT_TRIGGER),
            op.batch_alter_table("projects", recreate="always", copy_from=checked) as batch_op,
        ):
            batch_op.drop_constraint(op.f(NAME), type_="check")
        return
    op.drop_constraint(op.f(NAME), "projects", type_="check")

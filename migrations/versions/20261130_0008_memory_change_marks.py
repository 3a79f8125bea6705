"""Memory change marks, for incremental consolidation passes.

``task_memories.change_mark`` says when a memory last changed in a way that matters to
consolidation: inserted; its content, embedding, type, project, tags, file links,
``consolidated_from`` or ``learned_at`` edited; or made active again (a rollback, an
un-archive). Database triggers set it, so that every
writer's changes are seen (agents write memories without this package). A pass
records a watermark; the next compares only the memories marked at or above it
(``orchestration.consolidation.passes``).

- PostgreSQL: the mark is the writing transaction's id (``pg_current_xact_id()``); a
  watermark is the oldest transaction still running when the pass began
  (``pg_snapshot_xmin``), so a change committed later is never taken as seen.
- SQLite (one writer at a time): the mark is the next value of a counter row
  (``memory_change_counter``); a watermark is the counter's value plus one.

Existing memories get mark 0: a project's first pass after this migration is full.
The jobs table records each completed pass: ``mode``, ``memories_new``,
``full_reason``, ``watermark`` and ``signature``.

On SQLite, Alembic's batch mode re-creates a table to alter it, and the re-created
table has no triggers: this migration alters ``task_memories`` without it, and a later
one that alters it in batch mode must create the triggers of this one and of 0002
again.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30
"""

from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext

import sqlalchemy as sa
from alembic import op

from orchestration.store import rebuilds

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The columns whose edit makes a memory new to the next pass (besides becoming active):
# what it is compared on, and what a pass skips it for when malformed (fixing them
# makes it comparable). Not ``reused_count`` and ``last_reused_at``: agents bump them
# on every reuse.
MARKED = ("content", "embedding", "memory_type", "project_id", "tags", "file_links", "consolidated_from", "learned_at")
REACTIVATED = "(OLD.is_duplicate OR OLD.is_archived) AND NOT NEW.is_duplicate AND NOT NEW.is_archived"

POSTGRESQL_UP = [
    """
    CREATE FUNCTION task_memories_mark_change() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        NEW.change_mark := pg_current_xact_id()::text::bigint;
        RETURN NEW;
    END $$
    """,
    """
    CREATE TRIGGER task_memories_change_insert BEFORE INSERT ON task_memories
        FOR EACH ROW EXECUTE FUNCTION task_memories_mark_change()
    """,
    f"""
    CREATE TRIGGER task_memories_change_update
        BEFORE UPDATE OF {", ".join(MARKED)}, is_duplicate, is_archived ON task_memories FOR EACH ROW
        WHEN ({" OR ".join(f"OLD.{c} IS DISTINCT FROM NEW.{c}" for c in MARKED)} OR ({REACTIVATED}))
        EXECUTE FUNCTION task_memories_mark_change()
    """,
]
POSTGRESQL_DOWN = [
    "DROP TRIGGER task_memories_change_update ON task_memories",
    "DROP TRIGGER task_memories_change_insert ON task_memories",
    "DROP FUNCTION task_memories_mark_change()",
]
_NEXT_MARK = """
        UPDATE memory_change_counter SET value = value + 1 WHERE id = 1;
        UPDATE task_memories SET change_mark = (SELECT value FROM memory_change_counter WHERE id = 1)
        WHERE rowid = NEW.rowid;
"""
SQLITE_UP = [
    f"""
    CREATE TRIGGER task_memories_change_insert AFTER INSERT ON task_memories BEGIN{_NEXT_MARK}    END
    """,
    f"""
    CREATE TRIGGER task_memories_change_update
    AFTER UPDATE OF {", ".join(MARKED)}, is_duplicate, is_archived ON task_memories
    WHEN {" OR ".join(f"OLD.{c} IS NOT NEW.{c}" for c in MARKED)} OR ({REACTIVATED}) BEGIN{_NEXT_MARK}    END
    """,
]
SQLITE_DOWN = ["DROP TRIGGER task_memories_change_update", "DROP TRIGGER task_memories_change_insert"]
JOB_COLUMNS = (
    ("mode", sa.String(length=16)),
    ("memories_new", sa.Integer()),
    ("full_reason", sa.Text()),
    ("watermark", sa.BigInteger()),
    ("signature", sa.String(length=64)),
)


def _statements(postgresql: list[str], sqlite: list[str]) -> list[str]:
    dialect = op.get_bind().dialect.name
    if dialect == "postgresql":
        return postgresql
    if dialect == "sqlite":
        return sqlite
    raise NotImplementedError(f"no memory change triggers for {dialect}")


def _jobs_rebuilt() -> AbstractContextManager[None]:
    """Around the batch that adds (drops) the ``mode`` CHECK: on SQLite it re-creates
    ``consolidation_jobs``, which must not cascade to the audit trail (:mod:`rebuilds`)."""
    return rebuilds.foreign_keys_off("consolidation_jobs") if op.get_bind().dialect.name == "sqlite" else nullcontext()


def upgrade() -> None:
    op.create_table(
        "memory_change_counter",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_memory_change_counter")),
    )
    # Not in batch mode: on SQLite that would re-create the table without 0002's triggers.
    op.add_column(
        "task_memories", sa.Column("change_mark", sa.BigInteger(), server_default=sa.text("0"), nullable=False)
    )
    op.create_index("ix_task_memories_project_change", "task_memories", ["project_id", "change_mark"], unique=False)
    with _jobs_rebuilt(), op.batch_alter_table("consolidation_jobs", schema=None) as batch_op:
        for name, type_ in JOB_COLUMNS:
            batch_op.add_column(sa.Column(name, type_, nullable=True))
        batch_op.create_check_constraint("mode", "mode IN ('incremental', 'full')")
    if op.get_bind().dialect.name == "sqlite":
        op.execute("INSERT INTO memory_change_counter (id, value) VALUES (1, 0)")
    for statement in _statements(POSTGRESQL_UP, SQLITE_UP):
        op.execute(statement)


def downgrade() -> None:
    for statement in _statements(POSTGRESQL_DOWN, SQLITE_DOWN):
        op.execute(statement)
    with _jobs_rebuilt(), op.batch_alter_table("consolidation_jobs", schema=None) as batch_op:
        batch_op.drop_constraint("mode", type_="check")
        for name, _ in reversed(JOB_COLUMNS):
            batch_op.drop_column(name)
    op.drop_index("ix_task_memories_project_change", table_name="task_memories")
    op.execute("ALTER TABLE task_memories DROP COLUMN change_mark")  # SQLite >= 3.35 too, keeping its triggers
    op.drop_table("memory_change_counter")

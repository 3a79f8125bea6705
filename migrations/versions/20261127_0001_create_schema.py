"""Create the whole schema: projects, task memories, runs, jobs, audit changes, project locks.

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import orchestration.store.types

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "consolidation_runs",
        sa.Column("id", orchestration.store.types.GUID(length=36), nullable=False),
        sa.Column("trigger_type", sa.String(length=16), nullable=False),
        sa.Column("scheduled_for", orchestration.store.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("projects_checked", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("projects_eligible", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("projects_skipped", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("jobs_total", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("jobs_completed", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("jobs_failed", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("memories_before", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("memories_after", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("memories_merged", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("memories_archived", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("started_at", orchestration.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("finished_at", orchestration.store.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column(
            "summary", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=True
        ),
        sa.CheckConstraint(
            "status IN ('running', 'completed', 'partial', 'failed')", name=op.f("ck_consolidation_runs_status")
        ),
        sa.CheckConstraint("trigger_type IN ('scheduled', 'manual')", name=op.f("ck_consolidation_runs_trigger_type")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_consolidation_runs")),
        sa.UniqueConstraint("scheduled_for", name=op.f("uq_consolidation_runs_scheduled_for")),
    )
    with op.batch_alter_table("consolidation_runs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_consolidation_runs_started_at"), ["started_at"], unique=False)

    op.create_table(
        "projects",
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
        sa.PrimaryKeyConstraint("id", name=op.f("pk_projects")),
    )
    op.create_table(
        "consolidation_jobs",
        sa.Column("id", orchestration.store.types.GUID(length=36), nullable=False),
        sa.Column("run_id", orchestration.store.types.GUID(length=36), nullable=True),
        sa.Column("project_id", orchestration.store.types.GUID(length=36), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("trigger_type", sa.String(length=16), nullable=False),
        sa.Column("triggered_by", sa.String(length=200), nullable=False),
        sa.Column(
            "options", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=True
        ),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("progress", sa.Float(), server_default=sa.text("0"), nullable=False),
        sa.Column("memories_before", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("memories_after", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("clusters_found", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("memories_merged", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("memories_archived", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("started_at", orchestration.store.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("completed_at", orchestration.store.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("heartbeat_at", orchestration.store.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("celery_task_id", sa.String(length=64), nullable=True),
        sa.Column("created_at", orchestration.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "status IN ('pending', 'running', 'retrying', 'completed', 'failed', 'skipped')",
            name=op.f("ck_consolidation_jobs_status"),
        ),
        sa.CheckConstraint("trigger_type IN ('scheduled', 'manual')", name=op.f("ck_consolidation_jobs_trigger_type")),
        sa.CheckConstraint("progress >= 0 AND progress <= 1", name=op.f("ck_consolidation_jobs_progress")),
        sa.ForeignKeyConstraint(
            ["project_id"], ["projects.id"], name=op.f("fk_consolidation_jobs_project_id_projects"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["consolidation_runs.id"],
            name=op.f("fk_consolidation_jobs_run_id_consolidation_runs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_consolidation_jobs")),
        sa.UniqueConstraint("run_id", "project_id", name=op.f("uq_consolidation_jobs_run_id_project_id")),
    )
    with op.batch_alter_table("consolidation_jobs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_consolidation_jobs_project_id"), ["project_id"], unique=False)
        batch_op.create_index("ix_consolidation_jobs_status_heartbeat", ["status", "heartbeat_at"], unique=False)

    op.create_table(
        "project_locks",
        sa.Column("project_id", orchestration.store.types.GUID(length=36), nullable=False),
        sa.Column("holder", sa.String(length=64), nullable=False),
        sa.Column("acquired_at", orchestration.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", orchestration.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id"], ["projects.id"], name=op.f("fk_project_locks_project_id_projects"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("project_id", name=op.f("pk_project_locks")),
    )
    op.create_table(
        "task_memories",
        sa.Column("id", orchestration.store.types.GUID(length=36), nullable=False),
        sa.Column("project_id", orchestration.store.types.GUID(length=36), nullable=False),
        sa.Column("memory_type", sa.String(length=32), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("embedding", sa.LargeBinary(), nullable=True),
        sa.Column(
            "tags", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=False
        ),
        sa.Column(
            "file_links", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=False
        ),
        sa.Column("reused_count", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("last_reused_at", orchestration.store.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("learned_at", orchestration.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("is_duplicate", sa.Boolean(), server_default=sa.text("(false)"), nullable=False),
        sa.Column("duplicate_of", orchestration.store.types.GUID(length=36), nullable=True),
        sa.Column("is_archived", sa.Boolean(), server_default=sa.text("(false)"), nullable=False),
        sa.Column("archived_at", orchestration.store.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("archive_reason", sa.String(length=16), nullable=True),
        sa.Column(
            "consolidated_from",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("consolidated_at", orchestration.store.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("version", sa.Integer(), server_default=sa.text("1"), nullable=False),
        sa.CheckConstraint(
            "archive_reason IN ('staleness', 'low_value', 'manual')", name=op.f("ck_task_memories_archive_reason")
        ),
        sa.CheckConstraint(
            "memory_type IN ('error_fix', 'discovery', 'decision', 'learning', 'warning', 'codebase_knowledge', 'consolidated', 'synthesis')",
            name=op.f("ck_task_memories_memory_type"),
        ),
        sa.ForeignKeyConstraint(
            ["duplicate_of"],
            ["task_memories.id"],
            name=op.f("fk_task_memories_duplicate_of_task_memories"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["project_id"], ["projects.id"], name=op.f("fk_task_memories_project_id_projects"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_task_memories")),
    )
    with op.batch_alter_table("task_memories", schema=None) as batch_op:
        batch_op.create_index(
            "ix_task_memories_active_project",
            ["project_id"],
            unique=False,
            postgresql_where=sa.text("NOT is_duplicate AND NOT is_archived"),
            sqlite_where=sa.text("is_duplicate = 0 AND is_archived = 0"),
        )
        batch_op.create_index(batch_op.f("ix_task_memories_duplicate_of"), ["duplicate_of"], unique=False)
        batch_op.create_index(batch_op.f("ix_task_memories_project_id"), ["project_id"], unique=False)

    op.create_table(
        "consolidation_changes",
        sa.Column("id", orchestration.store.types.GUID(length=36), nullable=False),
        sa.Column("job_id", orchestration.store.types.GUID(length=36), nullable=False),
        sa.Column("operation", sa.String(length=16), nullable=False),
        sa.Column("memory_id", orchestration.store.types.GUID(length=36), nullable=False),
        sa.Column(
            "previous_state",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column(
            "new_state", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=True
        ),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("confidence", sa.Float(), nullable=True),
        sa.Column("changed_at", orchestration.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("changed_by", sa.String(length=200), nullable=False),
        sa.CheckConstraint(
            "operation IN ('merge', 'archive', 'rollback')", name=op.f("ck_consolidation_changes_operation")
        ),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["consolidation_jobs.id"],
            name=op.f("fk_consolidation_changes_job_id_consolidation_jobs"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["memory_id"],
            ["task_memories.id"],
            name=op.f("fk_consolidation_changes_memory_id_task_memories"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_consolidation_changes")),
    )
    with op.batch_alter_table("consolidation_changes", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_consolidation_changes_changed_at"), ["changed_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_consolidation_changes_job_id"), ["job_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_consolidation_changes_memory_id"), ["memory_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("consolidation_changes", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_consolidation_changes_memory_id"))
        batch_op.drop_index(batch_op.f("ix_consolidation_changes_job_id"))
        batch_op.drop_index(batch_op.f("ix_consolidation_changes_changed_at"))

    op.drop_table("consolidation_changes")
    with op.batch_alter_table("task_memories", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_task_memories_project_id"))
        batch_op.drop_index(batch_op.f("ix_task_memories_duplicate_of"))
        batch_op.drop_index(
            "ix_task_memories_active_project",
            postgresql_where=sa.text("NOT is_duplicate AND NOT is_archived"),
            sqlite_where=sa.text("is_duplicate = 0 AND is_archived = 0"),
        )

    op.drop_table("task_memories")
    op.drop_table("project_locks")
    with op.batch_alter_table("consolidation_jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_consolidation_jobs_status_heartbeat")
        batch_op.drop_index(batch_op.f("ix_consolidation_jobs_project_id"))

    op.drop_table("consolidation_jobs")
    op.drop_table("projects")
    with op.batch_alter_table("consolidation_runs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_consolidation_runs_started_at"))

    op.drop_table("consolidation_runs")

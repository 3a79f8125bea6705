"""SQLAlchemy models of SPEC §3: projects, task memories, runs, jobs and the audit trail;
and this package's own tables: project locks and the kept active memory counts.

Alembic migrations are generated from this metadata (``alembic check`` keeps them in
step). Constraint names come from the naming convention on the metadata.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any, cast

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from orchestration.store.statuses import (
    ArchiveReason,
    JobStatus,
    MemoryType,
    Operation,
    PassMode,
    RunStatus,
    TriggerType,
)
from orchestration.store.types import GUID, JSONType, UTCDateTime, utcnow

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def _in(column: str, values: type[StrEnum]) -> str:
    return f"{column} IN ({', '.join(repr(v.value) for v in values)})"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def table_of(model: type[Base]) -> Table:
    """A model's table, typed as the ``Table`` it is (Core statements take one)."""
    return cast(Table, model.__table__)


def _pk() -> Mapped[uuid.UUID]:
    return mapped_column(GUID(), primary_key=True, default=uuid.uuid4)


def _counter() -> Mapped[int]:
    return mapped_column(Integer, nullable=False, default=0, server_default=text("0"))


# The smallest per-project threshold: a project is eligible with more active memories
# than its threshold, so below 1 a project with a single memory would be consolidated
# (and its only memory archived). NULL means the default setting.
MIN_THRESHOLD = 1


class Project(Base):
    __tablename__ = "projects"
    __table_args__ = (CheckConstraint(f"consolidation_threshold >= {MIN_THRESHOLD}", name="consolidation_threshold"),)

    id: Mapped[uuid.UUID] = _pk()
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    consolidation_enabled: Mapped[bool] = mapped_column(
        Boolean, nullable=False, default=True, server_default=text("true")
    )
    consolidation_threshold: Mapped[int | None] = mapped_column(Integer)
    consolidation_options: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False, default=utcnow)


class TaskMemory(Base):
    __tablename__ = "task_memories"
    __table_args__ = (
        CheckConstraint(_in("memory_type", MemoryType), name="memory_type"),
        CheckConstraint(_in("archive_reason", ArchiveReason), name="archive_reason"),
        # A job reads its project's active memories through this partial index. Each
        # predicate is spelled the way SQLAlchemy renders ``active_filter()`` on that
        # dialect, so the planner matches it.
        Index(
            "ix_task_memories_active_project",
            "project_id",
            postgresql_where=text("NOT is_duplicate AND NOT is_archived"),
            sqlite_where=text("is_duplicate = 0 AND is_archived = 0"),
        ),
        Index("ix_task_memories_project_change", "project_id", "change_mark"),
    )

    id: Mapped[uuid.UUID] = _pk()
    project_id: Mapped[uuid.UUID] = mapped_column(
        GUID(), ForeignKey("projects.id", ondelete="CASCADE"), nullable=False, index=True
    )
    memory_type: Mapped[str] = mapped_column(String(32), nullable=False)
    content: Mapped[str] = mapped_column(Text, nullable=False)
    embedding: Mapped[bytes | None] = mapped_column(LargeBinary)
    tags: Mapped[list[str]] = mapped_column(JSONType, nullable=False, default=list)
    file_links: Mapped[list[str]] = mapped_column(JSONType, nullable=False, default=list)
    reused_count: Mapped[int] = _counter()
    last_reused_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    learned_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False, default=utcnow)
    is_duplicate: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False, server_default=text("false"))
    duplicate_of: Mapped[uuid.UUID | None] = mapped_column(
        GUID(), ForeignKey("task_memories.id", ondelete="SET NULL"), index=True
    )
    is_archived: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False, server_default=text("false"))
    archived_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    archive_reason: Mapped[str | None] = mapped_column(String(16))
    consolidated_from: Mapped[list[str] | None] = mapped_column(JSONType)
    consolidated_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    version: Mapped[int] = mapped_column(Integer, nullable=False, default=1, server_default=text("1"))
    # When the memory last changed in a way that matters to consolidation (inserted, its
    # content, embedding, type or project edited, or made active again), set by database
    # triggers (migration 0008; ``orchestration.consolidation.passes``).
    change_mark: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default=text("0"))

    # ORM writers (agents) get optimistic concurrency for free: every UPDATE checks
    # and bumps the version. Bulk statements here do the same by hand. The change mark
    # is the triggers' business: an INSERT neither sets nor fetches it.
    __mapper_args__ = {"version_id_col": version, "eager_defaults": False}


class ConsolidationRun(Base):
    __tablename__ = "consolidation_runs"
    __table_args__ = (
        CheckConstraint(_in("trigger_type", TriggerType), name="trigger_type"),
        CheckConstraint(_in("status", RunStatus), name="status"),
        UniqueConstraint("scheduled_for"),
    )

    id: Mapped[uuid.UUID] = _pk()
    trigger_type: Mapped[str] = mapped_column(String(16), nullable=False)
    scheduled_for: Mapped[datetime | None] = mapped_column(UTCDateTime())
    status: Mapped[str] = mapped_column(String(16), nullable=False, default=RunStatus.RUNNING)
    projects_checked: Mapped[int] = _counter()
    projects_eligible: Mapped[int] = _counter()
    projects_skipped: Mapped[int] = _counter()
    jobs_total: Mapped[int] = _counter()
    jobs_completed: Mapped[int] = _counter()
    jobs_failed: Mapped[int] = _counter()
    memories_before: Mapped[int] = _counter()
    memories_after: Mapped[int] = _counter()
    memories_merged: Mapped[int] = _counter()
    memories_archived: Mapped[int] = _counter()
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False, default=utcnow, index=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    error_message: Mapped[str | None] = mapped_column(Text)
    summary: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    # When the run's chord was sent; NULL: not (yet) sent. A claim found running with
    # none well after its start was orphaned before sending (``nightly.runs``).
    dispatched_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class ConsolidationJob(Base):
    __tablename__ = "consolidation_jobs"
    __table_args__ = (
        CheckConstraint(_in("status", JobStatus), name="status"),
        CheckConstraint(_in("trigger_type", TriggerType), name="trigger_type"),
        CheckConstraint("progress >= 0 AND progress <= 1", name="progress"),
        CheckConstraint(_in("mode", PassMode), name="mode"),
        UniqueConstraint("run_id", "project_id"),
        Index("ix_consolidation_jobs_status_heartbeat", "status", "heartbeat_at"),
    )

    id: Mapped[uuid.UUID] = _pk()
    run_id: Mapped[uuid.UUID | None] = mapped_column(GUID(), ForeignKey("consolidation_runs.id", ondelete="CASCADE"))
    # SET NULL: a job outlives its project so the run can report it as skipped.
    project_id: Mapped[uuid.UUID | None] = mapped_column(
        GUID(), ForeignKey("projects.id", ondelete="SET NULL"), index=True
    )
    status: Mapped[str] = mapped_column(String(16), nullable=False, default=JobStatus.PENDING)
    trigger_type: Mapped[str] = mapped_column(String(16), nullable=False)
    triggered_by: Mapped[str] = mapped_column(String(200), nullable=False, default="system")
    options: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    attempts: Mapped[int] = _counter()
    progress: Mapped[float] = mapped_column(Float, nullable=False, default=0.0, server_default=text("0"))
    memories_before: Mapped[int] = _counter()
    memories_after: Mapped[int] = _counter()
    clusters_found: Mapped[int] = _counter()
    memories_merged: Mapped[int] = _counter()
    memories_archived: Mapped[int] = _counter()
    # Memories skipped for bad data, clusters and archives left for next night because
    # an agent changed a memory meanwhile, and similar pairs the value guard kept apart.
    skipped_invalid: Mapped[int] = _counter()
    conflicts: Mapped[int] = _counter()
    pairs_kept_apart: Mapped[int] = _counter()
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # When a process last vouched for the unfinished job; NULL while it waits unreceived
    # in the queue and once it finished (orchestration.jobs.transitions.effects).
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    error_message: Mapped[str | None] = mapped_column(Text)
    celery_task_id: Mapped[str | None] = mapped_column(String(64))
    # The process that started the latest attempt (``host:pid``): the dashboard's
    # timeline draws one lane per worker process.
    worker: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False, default=utcnow)
    # Set when the job's changes were undone (``orchestration jobs rollback``), and by whom.
    rolled_back_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    rolled_back_by: Mapped[str | None] = mapped_column(String(200))
    # How a completed job compared (``incremental`` or ``full``), how many memories were
    # new to it, why it was full, and what the next pass starts from: the watermark of
    # memory changes it saw and the signature of the options that decide which pairs merge.
    mode: Mapped[str | None] = mapped_column(String(16))
    memories_new: Mapped[int | None] = mapped_column(Integer)
    full_reason: Mapped[str | None] = mapped_column(Text)
    watermark: Mapped[int | None] = mapped_column(BigInteger)
    signature: Mapped[str | None] = mapped_column(String(64))
    # The memories the pass found bad data in or could not read in bulk, which the next
    # pass checks again though unchanged: {"checks": version, "ids": [...]}; NULL: all.
    irregular_ids: Mapped[dict[str, Any] | None] = mapped_column(JSONType, info={"internal": True})


class ConsolidationChange(Base):
    __tablename__ = "consolidation_changes"
    __table_args__ = (CheckConstraint(_in("operation", Operation), name="operation"),)

    id: Mapped[uuid.UUID] = _pk()
    job_id: Mapped[uuid.UUID] = mapped_column(
        GUID(), ForeignKey("consolidation_jobs.id", ondelete="CASCADE"), nullable=False, index=True
    )
    operation: Mapped[str] = mapped_column(String(16), nullable=False)
    memory_id: Mapped[uuid.UUID] = mapped_column(
        GUID(), ForeignKey("task_memories.id", ondelete="CASCADE"), nullable=False, index=True
    )
    previous_state: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    new_state: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    reason: Mapped[str | None] = mapped_column(Text)
    confidence: Mapped[float | None] = mapped_column(Float)
    changed_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False, default=utcnow, index=True)
    changed_by: Mapped[str] = mapped_column(String(200), nullable=False, default="system")


class MemoryChangeCounter(Base):
    """SQLite's sequence of memory change marks (one row; its triggers count on). On
    PostgreSQL a change is marked with its transaction's id instead and this stays empty."""

    __tablename__ = "memory_change_counter"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger, nullable=False)


class ProjectMemoryCount(Base):
    """The number of active memories of each project, for the eligibility check; kept
    by database triggers (migration 0002, see ``orchestration.store.counts``). A row is
    created with each project."""

    __tablename__ = "project_memory_counts"

    project_id: Mapped[uuid.UUID] = mapped_column(
        GUID(), ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True
    )
    active_count: Mapped[int] = _counter()


class ProjectMemoryCountDelta(Base):
    """A change of a project's active count not yet folded into ``project_memory_counts``
    (PostgreSQL; see ``orchestration.store.counts``). No foreign key on purpose: the rows
    of a project's memories deleted along with it point at a project that is gone,
    and the next fold drops them."""

    __tablename__ = "project_memory_count_deltas"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    project_id: Mapped[uuid.UUID] = mapped_column(GUID(), nullable=False, index=True)
    delta: Mapped[int] = mapped_column(Integer, nullable=False)


class ProjectLock(Base):
    """One row while a job consolidates a project: two jobs never work on one project."""

    __tablename__ = "project_locks"

    project_id: Mapped[uuid.UUID] = mapped_column(
        GUID(), ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True
    )
    holder: Mapped[str] = mapped_column(String(64), nullable=False)
    acquired_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False, default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False, default=utcnow)

"""The audit trail: the rows a consolidation writes, rolling a job back exactly, and
pruning old audit rows.

Each ``consolidation_changes`` row holds only the columns the change touched (never
the embedding or content), plus the memory's ``version`` before and after. Rollback
checks every touched memory still has the version the job left it at, then restores
the previous values (the version moves on, it never goes back) and deletes the
consolidated memories the job created. One conflict refuses the whole rollback.
:func:`preview_rollback` runs the same checks and says what would be restored, changing
nothing (``jobs rollback --dry-run``). A rollback stamps the job row
(``rolled_back_at``, ``rolled_back_by``) in its own transaction; a second one is
refused, naming when and by whom.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from orchestration.store.db import chunks
from orchestration.store.models import ConsolidationChange, ConsolidationJob, TaskMemory
from orchestration.store.statuses import UNFINISHED_JOB_STATUSES, Operation
from orchestration.store.types import utcnow

PRUNE_BATCH = 5000
_DATETIME_COLUMNS = {"archived_at"}


@dataclass(frozen=True)
class Author:
    """Who and what the audit rows of one batch name: the job, the user (or
    ``system``) and the batch's time."""

    job_id: uuid.UUID
    changed_by: str
    at: datetime

    def change(
        self,
        operation: Operation,
        memory_id: uuid.UUID,
        *,
        before: dict[str, Any] | None,
        after: dict[str, Any],
        reason: str,
        confidence: float | None = None,
    ) -> dict[str, Any]:
        """One ``consolidation_changes`` row, as parameters of a bulk insert.
        ``before`` is ``None`` for a memory the change created."""
        return {
            "id": uuid.uuid4(),
            "job_id": self.job_id,
            "operation": operation,
            "memory_id": memory_id,
            "previous_state": before,
            "new_state": after,
            "reason": reason,
            "confidence": confidence,
            "changed_at": self.at,
            "changed_by": self.changed_by,
        }


class RollbackRefused(RuntimeError):
    """The rollback cannot be done; nothing was changed."""


@dataclass(frozen=True)
class Conflict:
    """A memory the job touched that changed since: its version is not the one the job
    left it at (``current_version`` is ``None`` when the memory was deleted)."""

    memory_id: str
    expected_version: int | None
    current_version: int | None


@dataclass
class RollbackPlan:
    """What rolling a job back would do, or why it would be refused (``refused``).

    ``unmerged``: duplicates the job made that become active again; ``repointed``:
    duplicates pointed back at the consolidated memory they were duplicates of before;
    ``unarchived``: memories it archived; ``removed``: consolidated memories it created,
    deleted; ``changes``: the audit rows undone."""

    job_id: str
    project_id: str | None = None
    status: str | None = None
    finished_at: datetime | None = None
    unmerged: int = 0
    repointed: int = 0
    unarchived: int = 0
    removed: int = 0
    changes: int = 0
    conflicts: list[Conflict] = field(default_factory=list)
    refused: str | None = None
    rolled_back_at: datetime | None = None
    rolled_back_by: str | None = None


@dataclass
class RollbackResult:
    job_id: str
    restored: int  # audit rows undone (one per memory change, so per ``rollback`` row written)
    removed: int
    unmerged: int = 0
    repointed: int = 0
    unarchived: int = 0
    rolled_back_at: datetime | None = None
    rolled_back_by: str | None = None


def _restored_values(previous: dict[str, Any]) -> dict[str, Any]:
    values = {}
    for key, value in previous.items():
        if key == "version":
            continue
        if key == "duplicate_of" and value is not None:
            value = uuid.UUID(value)
        elif key in _DATETIME_COLUMNS and value is not None:
            value = datetime.fromisoformat(value)
        values[key] = value
    return values


@dataclass
class _Planned:
    plan: RollbackPlan
    job: ConsolidationJob | None = None
    changes: Sequence[ConsolidationChange] = ()
    versions: dict[uuid.UUID, int] = field(default_factory=dict)


def _plan(session: Session, job_id: uuid.UUID, retention_days: int, now: datetime, *, lock: bool) -> _Planned:
    """Every check of a rollback, and what it would restore. ``lock``: hold the job row
    and the touched memories until the caller's transaction ends (the real rollback;
    a second rollback of the job waits, then sees the first)."""
    plan = RollbackPlan(job_id=str(job_id))
    job = session.get(ConsolidationJob, job_id, with_for_update=lock or None)
    if job is None:
        plan.refused = f"job {job_id} does not exist"
        return _Planned(plan)
    plan.project_id = str(job.project_id) if job.project_id else None
    plan.status = job.status
    plan.finished_at = job.completed_at or job.started_at or job.created_at
    if job.status in UNFINISHED_JOB_STATUSES:
        plan.refused = f"job {job_id} is {job.status}; wait until it has finished"
        return _Planned(plan, job)
    changes = session.scalars(
        select(ConsolidationChange)
        .where(ConsolidationChange.job_id == job_id)
        .order_by(ConsolidationChange.changed_at, ConsolidationChange.id)
    ).all()
    undone = [c for c in changes if c.operation == Operation.ROLLBACK]
    if job.rolled_back_at is not None or undone:
        # Jobs rolled back before the job row said so (migration 0004): the audit rows do.
        plan.rolled_back_at = job.rolled_back_at or undone[0].changed_at
        plan.rolled_back_by = job.rolled_back_by or undone[0].changed_by
        plan.refused = (
            f"job {job_id} was already rolled back at {plan.rolled_back_at:%Y-%m-%dT%H:%M:%SZ} by {plan.rolled_back_by}"
        )
        return _Planned(plan, job)
    made_changes = job.clusters_found + job.memories_merged + job.memories_archived > 0
    if made_changes and (not changes or plan.finished_at < now - timedelta(days=retention_days)):
        plan.refused = (
            f"job {job_id} finished {plan.finished_at:%Y-%m-%d}, more than ORCHESTRATION_AUDIT_RETENTION_DAYS="
            f"{retention_days} days ago; its audit rows are pruned and it can no longer be rolled back"
        )
        return _Planned(plan, job)
    if not changes:
        plan.refused = f"job {job_id} changed nothing; there is nothing to roll back"
        return _Planned(plan, job)

    query = select(TaskMemory.id, TaskMemory.version)
    versions = {
        row.id: row.version
        for chunk in chunks(list({c.memory_id for c in changes}))
        for row in session.execute((query.with_for_update() if lock else query).where(TaskMemory.id.in_(chunk)))
    }
    # A memory touched twice by the job (re-pointed, then merged) must match its last
    # state, and gets back the state before its first change.
    last_change = {c.memory_id: c for c in changes}
    first_change = {c.memory_id: c for c in reversed(changes)}
    plan.conflicts = [
        Conflict(str(m), (c.new_state or {}).get("version"), versions.get(m))
        for m, c in last_change.items()
        if versions.get(m) != (c.new_state or {}).get("version")
    ]
    for change in first_change.values():
        before = change.previous_state
        if before is None:
            plan.removed += 1
        elif change.operation == Operation.ARCHIVE:
            plan.unarchived += 1
        elif "is_duplicate" in before:
            plan.unmerged += 1
        else:
            plan.repointed += 1
    plan.changes = sum(1 for c in changes if c.previous_state is not None)
    if plan.conflicts:
        plan.refused = (
            f"{len(plan.conflicts)} memories changed since job {job_id} ran (e.g. {plan.conflicts[0].memory_id}); "
            "rolling back would overwrite those changes, so nothing was changed"
        )
    return _Planned(plan, job, changes, versions)


def preview_rollback(
    session: Session, job_id: uuid.UUID, retention_days: int, now: datetime | None = None
) -> RollbackPlan:
    """What :func:`rollback_job` would restore, and the conflicts or the reason that
    would refuse it; changes nothing and locks nothing."""
    return _plan(session, job_id, retention_days, now or utcnow(), lock=False).plan


def rollback_job(
    session: Session, job_id: uuid.UUID, retention_days: int, changed_by: str = "rollback", now: datetime | None = None
) -> RollbackResult:
    """Undo every merge and archive of ``job_id`` (the restored memories and the
    ``rollback`` rows, in the caller's transaction), or raise :class:`RollbackRefused`.
    The job row records it through ``orchestration.jobs.rollback``."""
    now = now or utcnow()
    planned = _plan(session, job_id, retention_days, now, lock=True)
    plan, versions = planned.plan, planned.versions
    if plan.refused is not None:
        raise RollbackRefused(plan.refused)
    assert planned.job is not None

    created = [c.memory_id for c in planned.changes if c.previous_state is None]
    restored = 0
    for change in reversed(planned.changes):
        if change.previous_state is None:
            continue
        before, after = versions[change.memory_id], versions[change.memory_id] + 1
        values = _restored_values(change.previous_state)
        session.execute(update(TaskMemory).where(TaskMemory.id == change.memory_id).values(version=after, **values))
        session.add(
            ConsolidationChange(
                job_id=job_id,
                operation=Operation.ROLLBACK,
                memory_id=change.memory_id,
                previous_state={**{k: (change.new_state or {}).get(k) for k in values}, "version": before},
                new_state={**change.previous_state, "version": after},
                reason=f"rollback of {change.operation}",
                changed_at=now,
                changed_by=changed_by,
            )
        )
        versions[change.memory_id] = after
        restored += 1
    session.flush()
    for chunk in chunks(created):
        session.execute(delete(TaskMemory).where(TaskMemory.id.in_(chunk)))
    return RollbackResult(
        job_id=str(job_id),
        restored=restored,
        removed=len(created),
        unmerged=plan.unmerged,
        repointed=plan.repointed,
        unarchived=plan.unarchived,
        rolled_back_at=now,
        rolled_back_by=changed_by,
    )


def prune_audit(
    session_factory, retention_days: int, now: datetime | None = None, batch_size: int = PRUNE_BATCH
) -> int:
    """Delete audit rows older than the retention period, ``batch_size`` per transaction.

    ``session_factory`` is a context manager factory such as ``db.session_scope``.
    """
    cutoff = (now or utcnow()) - timedelta(days=retention_days)
    total = 0
    while True:
        with session_factory() as session:
            ids = session.scalars(
                select(ConsolidationChange.id).where(ConsolidationChange.changed_at < cutoff).limit(batch_size)
            ).all()
            if ids:
                session.execute(delete(ConsolidationChange).where(ConsolidationChange.id.in_(ids)))
        total += len(ids)
        if len(ids) < batch_size:
            return total


def change_counts(session: Session, job_id: uuid.UUID) -> dict[str, int]:
    """Number of audit rows of a job by operation."""
    return dict(
        session.execute(
            select(ConsolidationChange.operation, func.count())
            .where(ConsolidationChange.job_id == job_id)
            .group_by(ConsolidationChange.operation)
        ).all()
    )

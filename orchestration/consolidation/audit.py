"""The audit trail: the rows a consolidation writes, rolling a job back exactly, and
pruning old audit rows.

Each ``consolidation_changes`` row holds only the columns the change touched (never
the embedding or content), plus the memory's ``version`` before and after. Rollback
checks every touched memory still has the version the job left it at, then restores
the previous values (the version moves on, it never goes back) and deletes the
consolidated memories the job created. One conflict refuses the whole rollback.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
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


@dataclass
class RollbackResult:
    job_id: str
    restored: int
    removed: int


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


def rollback_job(
    session: Session, job_id: uuid.UUID, retention_days: int, changed_by: str = "rollback", now: datetime | None = None
) -> RollbackResult:
    """Undo every merge and archive of ``job_id``, or raise :class:`RollbackRefused`."""
    now = now or utcnow()
    job = session.get(ConsolidationJob, job_id)
    if job is None:
        raise RollbackRefused(f"job {job_id} does not exist")
    if job.status in UNFINISHED_JOB_STATUSES:
        raise RollbackRefused(f"job {job_id} is {job.status}; wait until it has finished")
    changes = session.scalars(
        select(ConsolidationChange)
        .where(ConsolidationChange.job_id == job_id)
        .order_by(ConsolidationChange.changed_at, ConsolidationChange.id)
    ).all()
    if any(c.operation == Operation.ROLLBACK for c in changes):
        raise RollbackRefused(f"job {job_id} was already rolled back")
    finished = job.completed_at or job.started_at or job.created_at
    made_changes = job.clusters_found + job.memories_merged + job.memories_archived > 0
    if made_changes and (not changes or finished < now - timedelta(days=retention_days)):
        raise RollbackRefused(
            f"job {job_id} finished {finished:%Y-%m-%d}, more than ORCHESTRATION_AUDIT_RETENTION_DAYS="
            f"{retention_days} days ago; its audit rows are pruned and it can no longer be rolled back"
        )
    if not changes:
        raise RollbackRefused(f"job {job_id} changed nothing; there is nothing to roll back")

    versions = {
        row.id: row.version
        for chunk in chunks(list({c.memory_id for c in changes}))
        for row in session.execute(
            select(TaskMemory.id, TaskMemory.version).where(TaskMemory.id.in_(chunk)).with_for_update()
        )
    }
    # A memory touched twice by the job (re-pointed, then merged) must match its last state.
    last_change = {c.memory_id: c for c in changes}
    conflicts = [str(m) for m, c in last_change.items() if versions.get(m) != (c.new_state or {}).get("version")]
    if conflicts:
        raise RollbackRefused(
            f"{len(conflicts)} memories changed since job {job_id} ran (e.g. {conflicts[0]}); "
            "rolling back would overwrite those changes, so nothing was changed"
        )

    created = [c.memory_id for c in changes if c.previous_state is None]
    restored = 0
    for change in reversed(changes):
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
    return RollbackResult(job_id=str(job_id), restored=restored, removed=len(created))


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

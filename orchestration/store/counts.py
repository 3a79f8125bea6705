"""Active memories per project, kept by database triggers (migration 0002), so that
neither the nightly check nor a job has to count memories.

``project_memory_counts`` holds one count per project. On PostgreSQL the triggers on
``task_memories`` do not update it: they append signed deltas to
``project_memory_count_deltas``, so concurrent writers of one project never wait on a
shared row, and a transaction that changes many memories never updates one row
thousands of times (PostgreSQL would chain every version of that row). The nightly
check folds the deltas into the counts first (:func:`fold`). On SQLite, a single
writer that updates rows in place, the triggers update the counts directly and the
delta table stays empty. Either way, a project's count is its row plus its
unfolded deltas, this transaction's own writes included.
"""

from __future__ import annotations

import uuid

from sqlalchemy import ColumnElement, func, select, text
from sqlalchemy.orm import Session

from orchestration.store.models import ProjectMemoryCount, ProjectMemoryCountDelta

_FOLD = text("""
WITH moved AS (DELETE FROM project_memory_count_deltas RETURNING project_id, delta),
     summed AS (SELECT project_id, sum(delta) AS delta FROM moved GROUP BY project_id)
UPDATE project_memory_counts AS c SET active_count = c.active_count + summed.delta
FROM summed WHERE c.project_id = summed.project_id AND summed.delta <> 0
""")


def fold(session: Session) -> None:
    """Move the pending deltas into the counts, in the caller's transaction. Deltas
    written meanwhile by others stay for the next fold; deltas of deleted projects
    are dropped."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(_FOLD)


def pending_deltas():
    """Unfolded deltas summed per project, as a subquery (``project_id``, ``delta``)."""
    return (
        select(ProjectMemoryCountDelta.project_id, func.sum(ProjectMemoryCountDelta.delta).label("delta"))
        .group_by(ProjectMemoryCountDelta.project_id)
        .subquery("pending")
    )


def active_count_expr(project_id: uuid.UUID) -> ColumnElement[int]:
    """The project's active memories as an expression, so that an UPDATE can store it
    without a round trip of its own."""
    kept = select(ProjectMemoryCount.active_count).where(ProjectMemoryCount.project_id == project_id)
    pending = select(func.sum(ProjectMemoryCountDelta.delta)).where(ProjectMemoryCountDelta.project_id == project_id)
    return func.coalesce(kept.scalar_subquery(), 0) + func.coalesce(pending.scalar_subquery(), 0)


def count_active(session: Session, project_id: uuid.UUID) -> int:
    return session.scalar(select(active_count_expr(project_id))) or 0

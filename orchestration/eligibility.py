"""Which projects the nightly run consolidates: enabled, and with more active memories
than their threshold (or the default threshold when theirs is NULL).

One query over all projects. The active count is a correlated subquery that the
partial index ``ix_task_memories_active_project`` answers without touching the
memory rows, and it is skipped entirely for disabled projects.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from orchestration.consolidation import active_filter
from orchestration.models import Project, TaskMemory


@dataclass
class Eligibility:
    checked: int = 0
    skipped: int = 0  # consolidation disabled
    eligible: list[tuple[uuid.UUID, dict[str, Any] | None]] = field(default_factory=list)


def active_counts_query(default_threshold: int):
    active = (
        select(func.count())
        .select_from(TaskMemory)
        .where(TaskMemory.project_id == Project.id, active_filter())
        .correlate(Project)
        .scalar_subquery()
    )
    return select(
        Project.id,
        Project.consolidation_enabled,
        Project.consolidation_options,
        func.coalesce(Project.consolidation_threshold, default_threshold).label("threshold"),
        case((Project.consolidation_enabled, active), else_=None).label("active"),
    ).order_by(Project.id)


def check_projects(session: Session, default_threshold: int) -> Eligibility:
    result = Eligibility()
    for row in session.execute(active_counts_query(default_threshold)):
        result.checked += 1
        if not row.consolidation_enabled:
            result.skipped += 1
        elif row.active > row.threshold:
            result.eligible.append((row.id, row.consolidation_options))
    return result

"""Which projects the nightly run consolidates: enabled, and with more active memories
than their threshold (or the default threshold when theirs is NULL).

The eligible projects come from one query that counts active memories per project
*first* (an index-only scan of the partial index ``ix_task_memories_active_project``,
aggregated by project) and joins the few thousand counts to the projects after.
The ticket's literal ``JOIN ... GROUP BY ... HAVING`` joins every memory row before
aggregating (see bench/eligibility.py and docs/benchmarks.md). A second, trivial
query counts the projects checked and the disabled ones for the run summary.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from orchestration.consolidation import active_filter
from orchestration.models import Project, TaskMemory


@dataclass
class Eligibility:
    checked: int = 0
    skipped: int = 0  # consolidation disabled
    eligible: list[tuple[uuid.UUID, dict[str, Any] | None]] = field(default_factory=list)


def eligible_query(default_threshold: int):
    active = (
        select(TaskMemory.project_id, func.count().label("active"))
        .where(active_filter())
        .group_by(TaskMemory.project_id)
        .subquery("active")
    )
    return (
        select(Project.id, Project.consolidation_options)
        .join(active, active.c.project_id == Project.id)
        .where(
            Project.consolidation_enabled,
            active.c.active > func.coalesce(Project.consolidation_threshold, default_threshold),
        )
        .order_by(Project.id)
    )


def check_projects(session: Session, default_threshold: int) -> Eligibility:
    checked, disabled = session.execute(
        select(func.count(), func.count().filter(Project.consolidation_enabled.is_(False)))
    ).one()
    eligible = [(row.id, row.consolidation_options) for row in session.execute(eligible_query(default_threshold))]
    return Eligibility(checked=checked, skipped=disabled, eligible=eligible)

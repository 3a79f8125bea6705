"""Which projects the nightly run consolidates: enabled, and with more active memories
than their threshold (or the default threshold when theirs is NULL).

The active counts come from ``project_memory_counts``, which database triggers keep
exact (migration 0002), so the check reads one row per project instead of counting
every active memory; bench/eligibility.py compares it with the ticket's literal
``JOIN ... GROUP BY ... HAVING`` over the memories (docs/benchmarks.md). A second,
trivial query counts the projects checked and the disabled ones for the run summary.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from orchestration.models import Project, ProjectMemoryCount


@dataclass
class Eligibility:
    checked: int = 0
    skipped: int = 0  # consolidation disabled
    eligible: list[tuple[uuid.UUID, dict[str, Any] | None]] = field(default_factory=list)


def eligible_query(default_threshold: int) -> Select:
    counts = ProjectMemoryCount
    return (
        select(Project.id, Project.consolidation_options)
        .join(counts, counts.project_id == Project.id)
        .where(
            Project.consolidation_enabled,
            counts.active_count > func.coalesce(Project.consolidation_threshold, default_threshold),
        )
        .order_by(Project.id)
    )


def check_projects(session: Session, default_threshold: int) -> Eligibility:
    checked, disabled = session.execute(
        select(func.count(), func.count().filter(Project.consolidation_enabled.is_(False)))
    ).one()
    eligible = [(row.id, row.consolidation_options) for row in session.execute(eligible_query(default_threshold))]
    return Eligibility(checked=checked, skipped=disabled, eligible=eligible)

"""Which projects the nightly run consolidates: enabled, and with more active memories
than their threshold (or the default threshold when theirs is NULL).

The active counts are the trigger-kept ``project_memory_counts`` (see
``orchestration.store.counts``): the check folds the pending deltas into them, then reads
one row per project instead of counting every active memory. bench/eligibility.py
compares it with the ticket's literal ``JOIN ... GROUP BY ... HAVING`` over the
memories (docs/benchmarks.md). A second, trivial query counts the projects checked
and the disabled ones for the run summary.

A retry of a run (``runs retry``) checks only the projects it names: every enabled one
of them runs, even if it is now at or below its threshold, because the operator asked
for it.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from orchestration.store import counts
from orchestration.store.models import MIN_THRESHOLD, Project, ProjectMemoryCount


@dataclass
class Eligibility:
    checked: int = 0
    skipped: int = 0  # consolidation disabled
    eligible: list[tuple[uuid.UUID, dict[str, Any] | None]] = field(default_factory=list)


def check_default_threshold(default_threshold: int) -> None:
    """Raise ``ValueError`` unless ``default_threshold`` is a whole number of at least 1."""
    if isinstance(default_threshold, bool) or not isinstance(default_threshold, int):
        raise ValueError(f"the default threshold must be a whole number, got {default_threshold!r}")
    if default_threshold < MIN_THRESHOLD:
        raise ValueError(
            f"the default threshold (ORCHESTRATION_DEFAULT_THRESHOLD) must be at least {MIN_THRESHOLD}, "
            f"got {default_threshold}"
        )


def eligible_query(default_threshold: int) -> Select:
    check_default_threshold(default_threshold)
    kept, pending = ProjectMemoryCount, counts.pending_deltas()
    active = kept.active_count + func.coalesce(pending.c.delta, 0)
    threshold = func.coalesce(Project.consolidation_threshold, default_threshold)
    return (
        select(Project.id, Project.consolidation_options)
        .join(kept, kept.project_id == Project.id)
        .outerjoin(pending, pending.c.project_id == Project.id)
        .where(Project.consolidation_enabled, active > threshold, threshold >= MIN_THRESHOLD)
        .order_by(active.desc(), Project.id)  # largest first
    )


def named_query(project_ids: Sequence[uuid.UUID]) -> Select:
    """The enabled projects among ``project_ids``, whatever their count and threshold,
    largest first (a retry's projects: the operator named them)."""
    kept, pending = ProjectMemoryCount, counts.pending_deltas()
    active = func.coalesce(kept.active_count, 0) + func.coalesce(pending.c.delta, 0)
    return (
        select(Project.id, Project.consolidation_options)
        .outerjoin(kept, kept.project_id == Project.id)
        .outerjoin(pending, pending.c.project_id == Project.id)
        .where(Project.consolidation_enabled, Project.id.in_(project_ids))
        .order_by(active.desc(), Project.id)
    )


def check_projects(session: Session, default_threshold: int, only: Sequence[uuid.UUID] | None = None) -> Eligibility:
    """Fold the pending count deltas (in the caller's transaction) and select. Raises
    ``ValueError`` for a default threshold below 1, before changing anything.

    ``only`` (a retry): check just these projects, and take every enabled one of them
    regardless of its threshold; disabled ones are still skipped, deleted ones are gone."""
    check_default_threshold(default_threshold)
    counts.fold(session)
    if only is not None:
        checked, disabled = session.execute(
            select(func.count(), func.count().filter(Project.consolidation_enabled.is_(False))).where(
                Project.id.in_(list(only))
            )
        ).one()
        named = session.connection().execute(named_query(list(only))).all() if only else []
        return Eligibility(
            checked=checked, skipped=disabled, eligible=[(row.id, row.consolidation_options) for row in named]
        )
    checked, disabled = session.execute(
        select(func.count(), func.count().filter(Project.consolidation_enabled.is_(False)))
    ).one()
    # Core rows (tuple-like): ORM rows add per-row overhead to thousands of them.
    eligible = session.connection().execute(eligible_query(default_threshold)).all()
    return Eligibility(
        checked=checked, skipped=disabled, eligible=[(row.id, row.consolidation_options) for row in eligible]
    )

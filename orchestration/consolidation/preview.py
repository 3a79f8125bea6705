"""The dry run: what a consolidation would do, read in one transaction, nothing written."""

from __future__ import annotations

import uuid
from datetime import datetime

from orchestration.consolidation.options import ConsolidationOptions
from orchestration.consolidation.passes import choose
from orchestration.consolidation.planning import Plan, plan
from orchestration.consolidation.projects import load_project
from orchestration.consolidation.result import ConsolidationResult
from orchestration.store.db import session_scope
from orchestration.store.types import utcnow


def preview(
    project_id: uuid.UUID,
    options: ConsolidationOptions,
    force: bool = False,
    now: datetime | None = None,
    full: bool = False,
) -> ConsolidationResult:
    """Plan the project's consolidation, in the pass a job would make now (incremental
    or full, ``passes.choose``), and report it; raises ``ProjectGone`` or
    ``ProjectDisabled`` (unless ``force``) like a real run would."""
    now = now or utcnow()
    with session_scope() as session:
        load_project(session, project_id, force=force)
        return report(plan(session, project_id, options, now, choose(session, project_id, options, now, full=full)))


def report(planned: Plan) -> ConsolidationResult:
    """The dry-run result of a plan: its counters, clusters and archive list."""
    result = ConsolidationResult.of(planned, dry_run=True)
    result.clusters_found = len(planned.clusters)
    result.memories_merged = sum(len(c.source_ids) for c in planned.clusters)
    result.memories_archived = len(planned.archive)
    result.memories_after = (
        planned.memories_before - result.memories_merged + result.clusters_found - result.memories_archived
    )
    result.clusters = [
        {"representative": str(c.representative), "members": [{"id": str(m), "similarity": s} for m, s in c.members]}
        for c in planned.clusters
    ]
    result.archived = [str(m) for m in planned.archive]
    return result

"""Projects as documents: ``projects list`` and ``projects show``, ``/api/projects``
and ``/api/projects/{id}``.

Active memories are the trigger-kept counts plus their unfolded deltas, as the nightly
eligibility check reads them (``orchestration.store.counts``); nothing is folded here.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from orchestration.consolidation.options import InvalidOptions, resolve_options
from orchestration.documents.jobs import job_document
from orchestration.settings import get_settings
from orchestration.store import counts
from orchestration.store.db import session_scope
from orchestration.store.documents import row_dict
from orchestration.store.models import ConsolidationJob, Project, ProjectMemoryCount

# The jobs a project's document lists (``recent_jobs``): a month of nights.
RECENT_JOBS = 30


def project_documents(session: Session, project_id: uuid.UUID | None = None) -> list[dict[str, Any]]:
    """Projects (all, or one) by name: their columns, ``active_memories``, the
    ``threshold`` in force (``threshold_is_default``), whether the next nightly check
    would pick them (``eligible``) and their ``last_job`` (a job document, or null)."""
    default = get_settings().default_threshold
    pending = counts.pending_deltas()
    active = func.coalesce(ProjectMemoryCount.active_count, 0) + func.coalesce(pending.c.delta, 0)
    query = (
        select(Project, active.label("active"))
        .outerjoin(ProjectMemoryCount, ProjectMemoryCount.project_id == Project.id)
        .outerjoin(pending, pending.c.project_id == Project.id)
        .order_by(Project.name, Project.id)
    )
    if project_id is not None:
        query = query.where(Project.id == project_id)
    rows = session.execute(query).all()
    last = _last_jobs(session, project_id)
    documents = []
    for project, count in rows:
        threshold = default if project.consolidation_threshold is None else project.consolidation_threshold
        documents.append(
            {
                **row_dict(project),
                "active_memories": int(count),
                "threshold": threshold,
                "threshold_is_default": project.consolidation_threshold is None,
                "eligible": bool(project.consolidation_enabled and count > threshold),
                "last_job": {**last[project.id], "project_name": project.name} if project.id in last else None,
            }
        )
    return documents


def _last_jobs(session: Session, project_id: uuid.UUID | None) -> dict[uuid.UUID, dict[str, Any]]:
    """Each project's newest job, as a job document."""
    job = ConsolidationJob
    rank = func.row_number().over(partition_by=job.project_id, order_by=(job.created_at.desc(), job.id.desc()))
    ranked = select(job.id, rank.label("rank")).where(job.project_id.is_not(None))
    if project_id is not None:
        ranked = ranked.where(job.project_id == project_id)
    newest = ranked.subquery()
    rows = session.scalars(select(job).join(newest, newest.c.id == job.id).where(newest.c.rank == 1)).all()
    return {row.project_id: job_document(row, None) for row in rows if row.project_id is not None}


def project_detail(project_id: uuid.UUID, recent: int = RECENT_JOBS) -> dict[str, Any]:
    """One project as ``projects show --json`` prints it: its document, its effective
    options (or ``options_error``) and its ``recent_jobs``, newest first."""
    with session_scope() as session:
        (document,) = project_documents(session, project_id)
        jobs = session.scalars(
            select(ConsolidationJob)
            .where(ConsolidationJob.project_id == project_id)
            .order_by(ConsolidationJob.created_at.desc(), ConsolidationJob.id.desc())
            .limit(recent)
        ).all()
        document["recent_jobs"] = [job_document(job, document["name"]) for job in jobs]
    try:
        document["options"], document["options_error"] = (
            resolve_options(document["consolidation_options"]).as_dict(),
            None,
        )
    except InvalidOptions as exc:
        document["options"], document["options_error"] = None, str(exc)
    return document

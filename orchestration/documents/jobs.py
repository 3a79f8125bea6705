"""Jobs as documents: ``jobs list`` and ``jobs show``, ``/api/jobs/{id}``."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from orchestration.consolidation.audit import change_counts
from orchestration.documents.times import seconds
from orchestration.store.db import session_scope
from orchestration.store.documents import row_dict
from orchestration.store.models import ConsolidationJob, Project
from orchestration.store.statuses import JobStatus, PassMode


@dataclass(frozen=True)
class JobFilter:
    """What ``jobs list`` narrows the list by (all optional)."""

    run_id: uuid.UUID | None = None
    project_id: uuid.UUID | None = None
    status: str | None = None

    def __bool__(self) -> bool:
        return any(value is not None for value in (self.run_id, self.project_id, self.status))


def job_document(job: ConsolidationJob, project_name: str | None) -> dict[str, Any]:
    """A job's columns, its project's name and its ``duration_s``."""
    document = {**row_dict(job), "project_name": project_name}
    document["duration_s"] = seconds(document["started_at"], document["completed_at"])
    return document


def pass_text(doc: dict[str, Any]) -> str:
    """How a job or a dry run compared: ``pass: incremental, 12 new memories compared
    with the others``; for a job that has not completed, only a full pass asked for."""
    if not doc.get("mode"):
        return "pass: -"
    if doc.get("status") not in (None, "dry_run", JobStatus.COMPLETED):
        return f"pass: {doc['mode']} asked for" if doc["mode"] == PassMode.FULL else "pass: -"
    if doc["mode"] == PassMode.INCREMENTAL:
        return f"pass: incremental, {doc.get('memories_new') or 0} new memories compared with the others"
    reason = f" ({doc['full_reason']})" if doc.get("full_reason") else ""
    return f"pass: full{reason}, {doc.get('memories_new') or 0} memories compared"


def list_jobs(session: Session, limit: int, where: JobFilter = JobFilter()) -> list[dict[str, Any]]:
    """Job documents, newest first."""
    query = (
        select(ConsolidationJob, Project.name)
        .outerjoin(Project, Project.id == ConsolidationJob.project_id)
        .order_by(ConsolidationJob.created_at.desc(), ConsolidationJob.id.desc())
        .limit(limit)
    )
    if where.run_id is not None:
        query = query.where(ConsolidationJob.run_id == where.run_id)
    if where.project_id is not None:
        query = query.where(ConsolidationJob.project_id == where.project_id)
    if where.status:
        query = query.where(ConsolidationJob.status == where.status)
    return [job_document(job, name) for job, name in session.execute(query)]


def job_detail(job_id: uuid.UUID) -> dict[str, Any]:
    """One job as ``jobs show --json`` prints it: its document and its audit rows
    counted by operation (``changes``)."""
    with session_scope() as session:
        job = session.get_one(ConsolidationJob, job_id)
        project = session.get(Project, job.project_id) if job.project_id else None
        changes = change_counts(session, job.id)
        return {**job_document(job, project.name if project else None), "changes": changes}

"""Retrying a finished run (``orchestration runs retry``): a manual run of the failed
jobs' projects, linked to the original both ways (``retry_of`` in its summary,
``retried_by`` in the original's)."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from orchestration.store.models import ConsolidationJob, ConsolidationRun
from orchestration.store.statuses import JobStatus, RunStatus, TriggerType


class RetryRefused(ValueError):
    """The run cannot be retried (still running, or nothing of it failed)."""


def retry_projects(session: Session, run_id: uuid.UUID) -> list[uuid.UUID]:
    """The projects of a finished run's failed jobs, for its retry; skipped and
    completed jobs are not retried. Raises :class:`RetryRefused`."""
    run = session.get(ConsolidationRun, run_id)
    if run is None:
        raise RetryRefused(f"run {run_id} does not exist")
    if run.status == RunStatus.RUNNING:
        raise RetryRefused(f"run {run_id} is still running; retry it when it has finished")
    failed = session.execute(
        select(ConsolidationJob.project_id)
        .where(ConsolidationJob.run_id == run_id, ConsolidationJob.status == JobStatus.FAILED)
        .order_by(ConsolidationJob.created_at, ConsolidationJob.id)
    ).all()
    if not failed:
        raise RetryRefused(f"run {run_id} ({run.status}) had no failed jobs; there is nothing to retry")
    projects = [row.project_id for row in failed if row.project_id is not None]
    if not projects:
        raise RetryRefused(f"the projects of run {run_id}'s failed jobs were deleted; there is nothing to retry")
    return projects


def retry_message(trigger_type: TriggerType, projects: Any, retry_of: uuid.UUID | None) -> list[uuid.UUID] | None:
    """A ``run_scheduled`` message's ``projects`` as UUIDs (``None`` if not given).
    ``ValueError`` unless they are a non-empty list of project ids, and unless
    ``projects`` and ``retry_of`` come with a manual run only."""
    if (projects is not None or retry_of is not None) and trigger_type != TriggerType.MANUAL:
        raise ValueError("projects and retry_of go with a manual run only")
    if projects is None:
        return None
    if not isinstance(projects, list) or not projects or not all(isinstance(p, str) for p in projects):
        raise ValueError(f"projects must be a non-empty list of project ids, got {str(projects)[:64]!r}")
    parsed = []
    for project in projects:
        try:
            parsed.append(uuid.UUID(project))
        except ValueError:
            raise ValueError(f"projects: {project[:64]!r} is not a UUID") from None
    return parsed


def link_retry(session: Session, original_id: uuid.UUID, retry: ConsolidationRun) -> None:
    """``retry_of`` in the retry's summary, the retry's id added to ``retried_by`` in the
    original's (locked: two retries of one run both stay listed). An original that no
    longer exists is only named."""
    retry.summary = {**(retry.summary or {}), "retry_of": str(original_id)}
    original = session.get(ConsolidationRun, original_id, with_for_update=True)
    if original is not None:
        summary = original.summary or {}
        original.summary = {**summary, "retried_by": [*summary.get("retried_by", []), str(retry.id)]}

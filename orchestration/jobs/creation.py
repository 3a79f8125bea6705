"""New jobs: ``pending``, with the options they will run with."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import insert
from sqlalchemy.orm import Session

from orchestration.consolidation.options import InvalidOptions, resolve_options
from orchestration.store.models import ConsolidationJob, table_of
from orchestration.store.statuses import JobStatus, PassMode, TriggerType


def create_job(
    session: Session,
    project_id: uuid.UUID,
    *,
    run_id: uuid.UUID | None,
    trigger_type: TriggerType,
    triggered_by: str,
    options: dict[str, Any] | None,
    full: bool = False,
) -> ConsolidationJob:
    """One pending job (a manual one, or a test's); ``full``: it makes a full pass."""
    job = ConsolidationJob(**_new_job(project_id, run_id, trigger_type, triggered_by, options, full))
    session.add(job)
    session.flush()
    return job


def create_jobs(
    session: Session,
    projects: Sequence[tuple[uuid.UUID, dict[str, Any] | None]],
    *,
    run_id: uuid.UUID,
    trigger_type: TriggerType,
    now: datetime,
    full: bool = False,
) -> list[uuid.UUID]:
    """A run's pending jobs, one per ``(project_id, options)``, in one bulk insert. Their
    ``created_at`` grows by a microsecond each, so that they read back in this order."""
    rows = [
        {
            **_new_job(project_id, run_id, trigger_type, "system", options, full),
            "created_at": now + timedelta(microseconds=i),
        }
        for i, (project_id, options) in enumerate(projects)
    ]
    if rows:
        session.execute(insert(table_of(ConsolidationJob)), rows)
    return [row["id"] for row in rows]


def _new_job(
    project_id: uuid.UUID,
    run_id: uuid.UUID | None,
    trigger_type: TriggerType,
    triggered_by: str,
    options: dict[str, Any] | None,
    full: bool,
) -> dict[str, Any]:
    """A pending job; one asked to make a full pass has that ``mode`` from the start."""
    return {
        "id": uuid.uuid4(),
        "project_id": project_id,
        "run_id": run_id,
        "status": JobStatus.PENDING,
        "trigger_type": trigger_type,
        "triggered_by": triggered_by,
        "options": effective_options(options),
        "mode": PassMode.FULL if full else None,
    }


def effective_options(overrides: dict[str, Any] | None) -> dict[str, Any] | None:
    """The options a job will use, or the raw overrides when they are malformed
    (the job then fails naming the field)."""
    try:
        return resolve_options(overrides).as_dict()
    except InvalidOptions:
        return overrides

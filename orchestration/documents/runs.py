"""Runs as documents: ``runs list`` and ``runs show``, ``/api/runs`` and
``/api/runs/{id}``.

While a run is open its row's counters are still those of its start (finalizing writes
them), so its documents take them from its job rows (:func:`live_counters`) and say
so in ``counters_from``.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import String, case, cast, exists, func, select
from sqlalchemy.orm import Session

from orchestration.documents.jobs import job_document
from orchestration.documents.times import seconds
from orchestration.store.db import session_scope
from orchestration.store.documents import jsonable, row_dict
from orchestration.store.models import ConsolidationJob, ConsolidationRun, Project, table_of
from orchestration.store.statuses import UNFINISHED_JOB_STATUSES, JobStatus, RunStatus

# The run columns an open run takes from its job rows.
LIVE_COUNTERS = (
    "jobs_total",
    "jobs_completed",
    "jobs_failed",
    "memories_before",
    "memories_after",
    "memories_merged",
    "memories_archived",
)


@dataclass(frozen=True)
class RunFilter:
    """What ``runs list`` and ``/runs`` narrow the list by (all optional)."""

    status: str | None = None
    trigger: str | None = None
    since: datetime | None = None
    project_id: uuid.UUID | None = None

    def __bool__(self) -> bool:
        return any(value is not None for value in (self.status, self.trigger, self.since, self.project_id))


def live_counters(session: Session, run_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, dict[str, int]]:
    """The :data:`LIVE_COUNTERS` of open runs, summed over their job rows. An
    unfinished job's active memories after are its before minus what it merged and
    archived so far plus the consolidated memories it made (a pending job counts 0)."""
    if not run_ids:
        return {}
    job = ConsolidationJob
    unfinished = job.status.in_(UNFINISHED_JOB_STATUSES)
    after = case(
        (unfinished, job.memories_before - job.memories_merged - job.memories_archived + job.clusters_found),
        else_=job.memories_after,
    )
    rows = session.execute(
        select(
            job.run_id,
            func.count().label("jobs_total"),
            func.sum(case((job.status == JobStatus.COMPLETED, 1), else_=0)).label("jobs_completed"),
            func.sum(case((job.status == JobStatus.FAILED, 1), else_=0)).label("jobs_failed"),
            func.sum(job.memories_before).label("memories_before"),
            func.sum(after).label("memories_after"),
            func.sum(job.memories_merged).label("memories_merged"),
            func.sum(job.memories_archived).label("memories_archived"),
        )
        .where(job.run_id.in_(run_ids))
        .group_by(job.run_id)
    ).all()
    found = {row.run_id: {name: int(getattr(row, name) or 0) for name in LIVE_COUNTERS} for row in rows}
    return {run_id: found.get(run_id, dict.fromkeys(LIVE_COUNTERS, 0)) for run_id in run_ids}


def run_row(run: ConsolidationRun | Any, live: dict[uuid.UUID, dict[str, int]]) -> dict[str, Any]:
    """A run's columns and ``duration_s`` (null while open); an open run's counters
    from its jobs (``counters_from``). ``run`` is a model, or a row of some columns."""
    document = row_dict(run) if isinstance(run, ConsolidationRun) else jsonable(run._asdict())
    document["duration_s"] = seconds(document["started_at"], document["finished_at"])
    if run.status == RunStatus.RUNNING:
        document.update(live.get(run.id, {}))
    document["counters_from"] = "jobs" if run.status == RunStatus.RUNNING else "run"
    return document


def list_runs(
    session: Session, limit: int, where: RunFilter = RunFilter(), summary: bool = True
) -> list[dict[str, Any]]:
    """Run documents (:func:`run_row`), newest first; without their ``summary`` (a
    page that shows none need not read it: a night's can hold hundreds of job lines)."""
    run = ConsolidationRun
    query = select(run) if summary else select(*(column for column in table_of(run).c if column.name != "summary"))
    query = query.order_by(run.started_at.desc(), run.id.desc())
    if where.status:
        query = query.where(run.status == where.status)
    if where.trigger:
        query = query.where(run.trigger_type == where.trigger)
    if where.since is not None:
        query = query.where(run.started_at >= where.since)
    if where.project_id is not None:
        query = query.where(
            exists().where(ConsolidationJob.run_id == run.id, ConsolidationJob.project_id == where.project_id)
        )
    rows = (session.scalars if summary else session.execute)(query.limit(limit)).all()
    live = live_counters(session, [r.id for r in rows if r.status == RunStatus.RUNNING])
    return [run_row(r, live) for r in rows]


def run_document(run_id: uuid.UUID) -> dict[str, Any]:
    """A run's columns plus its jobs (failed first), as ``runs show --json`` prints it.
    While the run is open its counters come from the job rows (``counters_from``)."""
    with session_scope() as session:
        run = session.get_one(ConsolidationRun, run_id)
        live = live_counters(session, [run.id]) if run.status == RunStatus.RUNNING else {}
        rows = session.execute(
            select(ConsolidationJob, Project.name)
            .outerjoin(Project, Project.id == ConsolidationJob.project_id)
            .where(ConsolidationJob.run_id == run_id)
            .order_by(
                case((ConsolidationJob.status == JobStatus.FAILED, 0), else_=1), Project.name, ConsolidationJob.id
            )
        ).all()
        return {**run_row(run, live), "jobs": [job_document(job, name) for job, name in rows]}


# What the run page shows of each job (its timeline, lists and counters); the ids as
# text (a page prints them, and 40,000 UUID objects are a good part of its time).
PAGE_JOB_COLUMNS = (
    "status",
    "attempts",
    "created_at",
    "started_at",
    "completed_at",
    "worker",
    "error_message",
    "memories_before",
    "memories_after",
    "memories_merged",
    "memories_archived",
    "rolled_back_at",
)


def run_page(run_id: uuid.UUID) -> dict[str, Any]:
    """A run for its page: :func:`run_document`'s run, and its jobs (failed first) as
    plain rows of ``id``, ``project_id`` (text), :data:`PAGE_JOB_COLUMNS`,
    ``project_name`` and ``duration_s``, times as datetimes. A run of 20,000 jobs
    reads in a fraction of what the full documents cost (docs/benchmarks.md, "The
    dashboard")."""
    job = ConsolidationJob
    columns = [
        cast(job.id, String).label("id"),
        cast(job.project_id, String).label("project_id"),
        *(getattr(job, name) for name in PAGE_JOB_COLUMNS),
        Project.name.label("project_name"),
    ]
    with session_scope() as session:
        run = session.get_one(ConsolidationRun, run_id)
        live = live_counters(session, [run.id]) if run.status == RunStatus.RUNNING else {}
        result = session.execute(
            select(*columns)
            .outerjoin(Project, Project.id == job.project_id)
            .where(job.run_id == run_id)
            .order_by(case((job.status == JobStatus.FAILED, 0), else_=1), Project.name, job.id)
        )
        keys = list(result.keys())
        jobs = [dict(zip(keys, row, strict=True)) for row in result]
        for document in jobs:
            document["duration_s"] = seconds(document["started_at"], document["completed_at"])
        return {**run_row(run, live), "jobs": jobs}

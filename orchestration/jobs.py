"""A job's life: pending -> running (-> retrying -> running)* -> completed | failed,
or skipped. Used alike by the ``consolidation.run_project`` task and by
``orchestration consolidate``; no Celery here.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Callable

from sqlalchemy import update
from sqlalchemy.orm import Session

from orchestration import consolidation
from orchestration.consolidation import ConsolidationResult, ProjectDisabled, ProjectGone
from orchestration.db import session_scope
from orchestration.dbtypes import utcnow
from orchestration.logs import get_logger
from orchestration.models import ConsolidationJob, Project
from orchestration.options import ConsolidationOptions, InvalidOptions, resolve_options
from orchestration.settings import Settings

FINISHED = ("completed", "failed", "skipped")
PROGRESS_INTERVAL_S = 2.0
log = get_logger("orchestration.jobs")


class JobNotFound(LookupError):
    pass


@dataclass
class Attempt:
    job_id: uuid.UUID
    project_id: uuid.UUID | None
    run_id: uuid.UUID | None
    number: int
    started: float


@dataclass
class JobOutcome:
    """What a job ended as; small and JSON-friendly (it is the chord's result)."""

    job_id: str
    status: str
    error: str | None = None
    counters: dict[str, int] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"job_id": self.job_id, "status": self.status, "error": self.error}


def create_job(session: Session, project_id: uuid.UUID, *, run_id: uuid.UUID | None, trigger_type: str,
               triggered_by: str, options: dict[str, Any] | None) -> ConsolidationJob:
    job = ConsolidationJob(project_id=project_id, run_id=run_id, status="pending", trigger_type=trigger_type,
                           triggered_by=triggered_by, options=effective_options(options))
    session.add(job)
    session.flush()
    return job


def effective_options(overrides: dict[str, Any] | None) -> dict[str, Any] | None:
    """The options a job will use, or the raw overrides when they are malformed
    (the job then fails naming the field)."""
    try:
        return resolve_options(overrides).as_dict()
    except InvalidOptions:
        return overrides


def begin_attempt(job_id: uuid.UUID, celery_task_id: str | None = None, now: datetime | None = None) -> Attempt | None:
    """Mark the job running for one more attempt; ``None`` if it already finished
    (a redelivered message for a finished job does nothing)."""
    now = now or utcnow()
    with session_scope() as session:
        job = session.get(ConsolidationJob, job_id, with_for_update=True)
        if job is None:
            raise JobNotFound(f"job {job_id} does not exist")
        if job.status in FINISHED:
            return None
        job.attempts += 1
        if job.started_at is None:
            job.started_at = now
            if job.project_id is not None:
                job.memories_before = consolidation.count_active(session, job.project_id)
        job.status = "running"
        job.heartbeat_at = now
        job.error_message = None
        job.celery_task_id = celery_task_id or job.celery_task_id
        return Attempt(job.id, job.project_id, job.run_id, job.attempts, time.monotonic())


class ProgressRecorder:
    """Progress callback: writes the job row (throttled) and logs ``job.progress``.
    Progress never moves backwards, even across attempts."""

    def __init__(self, job_id: uuid.UUID, interval: float = PROGRESS_INTERVAL_S):
        self.job_id = job_id
        self.interval = interval
        self.last_write = 0.0
        self.last_value = -1.0

    def __call__(self, stage: str, fraction: float) -> None:
        now = time.monotonic()
        final = fraction >= 1.0
        if fraction <= self.last_value or (now - self.last_write < self.interval and not final):
            return
        self.last_write, self.last_value = now, fraction
        log.info("job.progress", progress=round(fraction, 3), stage=stage)
        with session_scope() as session:
            session.execute(
                update(ConsolidationJob)
                .where(ConsolidationJob.id == self.job_id, ConsolidationJob.progress < fraction)
                .values(progress=fraction, heartbeat_at=utcnow())
            )


def _project_options(attempt: Attempt, force: bool) -> ConsolidationOptions:
    """Load the project now (it may be gone or disabled since the check) and its options."""
    if attempt.project_id is None:
        raise ProjectGone(f"the project of job {attempt.job_id} was deleted")
    with session_scope() as session:
        project = consolidation.load_project(session, attempt.project_id, force=force)
        options = resolve_options(project.consolidation_options)
        session.execute(
            update(ConsolidationJob).where(ConsolidationJob.id == attempt.job_id).values(options=options.as_dict())
        )
    return options


def execute(attempt: Attempt, settings: Settings, *, force: bool = False,
            progress: Callable[[str, float], None] | None = None,
            changed_by: str = "system") -> JobOutcome:
    """Consolidate the job's project. Permanent problems end the job here (malformed
    options: failed; project gone or disabled: skipped); transient errors propagate so
    the caller can retry."""
    try:
        options = _project_options(attempt, force)
    except InvalidOptions as exc:
        return fail(attempt, str(exc))
    except (ProjectGone, ProjectDisabled) as exc:
        return skip(attempt, str(exc))
    try:
        result = consolidation.consolidate_project(
            attempt.project_id, options, job_id=attempt.job_id, force=force,
            progress=progress or ProgressRecorder(attempt.job_id),
            lock_stale_after=timedelta(seconds=settings.job_hard_limit), changed_by=changed_by,
        )
    except (ProjectGone, ProjectDisabled) as exc:
        return skip(attempt, str(exc))
    return complete(attempt, result)


def complete(attempt: Attempt, result: ConsolidationResult) -> JobOutcome:
    """Record success. The merge/archive counters were added batch by batch, in the same
    transactions as the changes, so they already include earlier partial attempts."""
    with session_scope() as session:
        job = session.get(ConsolidationJob, attempt.job_id)
        job.status = "completed"
        job.progress = 1.0
        job.memories_after = result.memories_after
        job.completed_at = job.heartbeat_at = utcnow()
        counters = {
            "memories_before": job.memories_before,
            "memories_after": job.memories_after,
            "clusters_found": job.clusters_found,
            "memories_merged": job.memories_merged,
            "memories_archived": job.memories_archived,
        }
    log.info("job.completed", duration_s=round(time.monotonic() - attempt.started, 3),
             skipped_invalid=result.skipped_invalid, conflicts=result.conflicts, **counters)
    return JobOutcome(str(attempt.job_id), "completed", counters=counters)


def close_unfinished(session: Session, job: ConsolidationJob, status: str, error: str, now: datetime) -> None:
    """End a job that did not complete. ``memories_after`` is what is active now, so the
    run's totals stay true when a job failed halfway or changed nothing."""
    job.status = status
    job.error_message = error
    job.completed_at = job.heartbeat_at = now
    if job.project_id is not None and session.get(Project, job.project_id) is not None:
        job.memories_after = consolidation.count_active(session, job.project_id)


def _finish(job_id: uuid.UUID, status: str, error: str) -> None:
    with session_scope() as session:
        job = session.get(ConsolidationJob, job_id)
        if job is not None and job.status not in FINISHED:
            close_unfinished(session, job, status, error, utcnow())


def fail(attempt: Attempt, error: str) -> JobOutcome:
    _finish(attempt.job_id, "failed", error)
    log.error("job.failed", attempts=attempt.number, error=error)
    return JobOutcome(str(attempt.job_id), "failed", error=error)


def skip(attempt: Attempt, reason: str) -> JobOutcome:
    _finish(attempt.job_id, "skipped", reason)
    log.warning("job.skipped", reason=reason)
    return JobOutcome(str(attempt.job_id), "skipped", error=reason)


def mark_retrying(job_id: uuid.UUID, error: str) -> None:
    with session_scope() as session:
        session.execute(
            update(ConsolidationJob)
            .where(ConsolidationJob.id == job_id, ConsolidationJob.status == "running")
            .values(status="retrying", error_message=error, heartbeat_at=utcnow())
        )

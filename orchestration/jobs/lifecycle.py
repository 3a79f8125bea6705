"""A job's life: pending -> running (-> retrying -> running)* -> completed | failed,
or skipped. :func:`run` is one attempt from start to end, as the
``consolidation.run_project`` task and ``orchestration consolidate`` use it.

An attempt with little to do costs three transactions: the start (job, project and
lock read together; job row; lock taken), the plan read, and the end (job row with
the active count; lock given back). Each batch of changes adds one, fenced on the
attempt's number: a newer attempt that took over makes the older one's writes fail
with :class:`Superseded`.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy import select, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.orm import Session

from orchestration.consolidation import applying, planning
from orchestration.consolidation.options import ConsolidationOptions, InvalidOptions, resolve_options
from orchestration.consolidation.projects import ProjectDisabled, ProjectGone, check_project
from orchestration.jobs import heartbeat
from orchestration.jobs.locks import Lease, ProjectBusy, free, holder_for, job_of
from orchestration.jobs.progress import ProgressRecorder
from orchestration.logs import get_logger
from orchestration.settings import Settings
from orchestration.store import counts
from orchestration.store.db import session_scope
from orchestration.store.models import ConsolidationJob, Project, ProjectLock
from orchestration.store.statuses import FINISHED_JOB_STATUSES, JobStatus, TriggerType
from orchestration.store.types import utcnow

log = get_logger(__name__)
Progress = applying.Progress


class JobNotFound(LookupError):
    pass


class AlreadyRunning(RuntimeError):
    """Another attempt of the job is alive (its lock's heartbeat is fresh): this
    delivery is a duplicate and must do nothing."""

    def __init__(self, job: ConsolidationJob, holder: str, beat: datetime):
        super().__init__(
            f"attempt {holder.partition('#')[2] or '?'} of job {job.id} is alive "
            f"(heartbeat {beat.isoformat()}); this delivery does nothing"
        )


class Superseded(RuntimeError):
    """A newer attempt of the job took over (this one's heartbeat had stopped): stop
    without writing anything more."""


class AttemptFailed(RuntimeError):
    """The attempt ended with an error (its cause); the job is still ``running``, for
    the caller to retry (:func:`mark_retrying`) or end (:func:`fail`)."""

    def __init__(self, attempt: int, error: str):
        super().__init__(error)
        self.attempt = attempt
        self.error = error


def lost_error(attempt: int, settings: Settings) -> str:
    """The error of a job whose last allowed attempt died with its worker process."""
    return (
        f"worker died during attempt {attempt} of {settings.max_retries + 1} "
        f"(ORCHESTRATION_MAX_RETRIES={settings.max_retries}); no attempts left. The process was killed "
        "from outside, most likely for memory (the OOM killer) if it happens every time: run this project "
        "alone on a worker with more memory (docs/reliability.md, 'A project that kills its worker')"
    )


def describe(exc: BaseException) -> str:
    """An error as one line for a job row and a log event."""
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:500]


@dataclass
class JobOutcome:
    """What a job ended as; small and JSON-friendly (it is the chord's result)."""

    job_id: str
    status: str
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"job_id": self.job_id, "status": self.status, "error": self.error}


@dataclass
class Attempt:
    """A started attempt: its project lock is taken."""

    job_id: uuid.UUID
    project_id: uuid.UUID
    number: int
    options: ConsolidationOptions
    lease: Lease
    started: float  # time.monotonic()


def create_job(
    session: Session,
    project_id: uuid.UUID,
    *,
    run_id: uuid.UUID | None,
    trigger_type: TriggerType,
    triggered_by: str,
    options: dict[str, Any] | None,
) -> ConsolidationJob:
    job = ConsolidationJob(
        project_id=project_id,
        run_id=run_id,
        status=JobStatus.PENDING,
        trigger_type=trigger_type,
        triggered_by=triggered_by,
        options=effective_options(options),
    )
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


def run(
    job_id: uuid.UUID,
    settings: Settings,
    *,
    celery_task_id: str | None = None,
    force: bool = False,
    progress: Progress | None = None,
    changed_by: str = "system",
) -> JobOutcome:
    """One attempt of the job, start to end. Raises :class:`AttemptFailed` if it failed
    after it started, and what :func:`begin_attempt` raises."""
    started = begin_attempt(job_id, settings, celery_task_id, force=force)
    if isinstance(started, JobOutcome):
        return started
    log.info("job.started", attempt=started.number)
    return consolidate(started, progress=progress, changed_by=changed_by)


def begin_attempt(
    job_id: uuid.UUID, settings: Settings, celery_task_id: str | None = None, force: bool = False
) -> Attempt | JobOutcome:
    """Start one more attempt of the job in one transaction: mark it running, check its
    project (it may be gone or disabled since the check), resolve its options, take
    the project lock for this attempt. Binds the job's run and project to the log
    context.

    Returns the job's outcome instead when it already finished (a redelivered message
    does nothing) or ends here: its project is gone or disabled, its options are
    invalid, or its last attempt died with its worker. Raises :class:`AlreadyRunning`
    if another attempt of it is alive, :class:`AttemptFailed` if another job holds
    the project (the attempt counts)."""
    now = utcnow()
    busy: ProjectBusy | None = None
    with session_scope() as session:
        # The project and its lock come with the job: one round trip, and the job row
        # is written once, by the lock statement's autoflush.
        row = session.execute(
            select(ConsolidationJob, Project, ProjectLock)
            .outerjoin(Project, Project.id == ConsolidationJob.project_id)
            .outerjoin(ProjectLock, ProjectLock.project_id == ConsolidationJob.project_id)
            .where(ConsolidationJob.id == job_id)
            .with_for_update(of=ConsolidationJob)
        ).first()
        if row is None:
            raise JobNotFound(f"job {job_id} does not exist")
        job, lock = row.ConsolidationJob, row.ProjectLock
        bind_job(job)
        if job.status in FINISHED_JOB_STATUSES:
            log.info("job.already_finished", status=job.status)
            return JobOutcome(str(job.id), job.status, job.error_message)
        if lock is not None and job_of(lock.holder) == str(job.id) and lock.heartbeat_at >= now - heartbeat.LOST_AFTER:
            raise AlreadyRunning(job, lock.holder, lock.heartbeat_at)
        if job.attempts >= settings.max_retries + 1:
            # Every start counts, and an attempt that ended normally never leaves the
            # job unfinished with no attempts left: the last one died with its worker.
            return _end_now(session, job, JobStatus.FAILED, lost_error(job.attempts, settings), now)
        first = job.started_at is None
        job.attempts += 1
        job.status = JobStatus.RUNNING
        job.started_at = job.started_at or now
        job.heartbeat_at = now
        job.error_message = None
        job.celery_task_id = celery_task_id or job.celery_task_id
        try:
            if job.project_id is None:
                raise ProjectGone(f"the project of job {job_id} was deleted")
            project = check_project(row.Project, job.project_id, force=force)
            if first:
                job.memories_before = counts.active_count_expr(job.project_id)
            options = resolve_options(project.consolidation_options)
        except (ProjectGone, ProjectDisabled) as exc:
            return _end_now(session, job, JobStatus.SKIPPED, str(exc), now)
        except InvalidOptions as exc:
            return _end_now(session, job, JobStatus.FAILED, str(exc), now)
        job.options = options.as_dict()
        lease = Lease(job.project_id, job.id, job.attempts)
        attempt = Attempt(job.id, job.project_id, job.attempts, options, lease, time.monotonic())
        try:
            attempt.lease.acquire(session, now)
        except ProjectBusy as exc:
            busy = exc  # the attempt still counts: commit it, then fail it
    if busy is not None:
        raise AttemptFailed(attempt.number, describe(busy)) from busy
    return attempt


def consolidate(attempt: Attempt, *, progress: Progress | None = None, changed_by: str = "system") -> JobOutcome:
    """Consolidate the attempt's project: plan, apply batch by batch, then record the
    job completed and give its lock back in one transaction. Any error but
    :class:`Superseded` becomes :class:`AttemptFailed`, with the lock given back."""
    report = progress or ProgressRecorder(attempt.job_id)
    try:
        with attempt.lease.held():
            report("load", 0.0)
            with session_scope() as session:
                planned = planning.plan(session, attempt.project_id, attempt.options, utcnow())
            report("similarity", applying.PLANNED)
            result = applying.apply(
                planned,
                attempt.options,
                attempt.job_id,
                changed_by=changed_by,
                in_batch=lambda session, batch: _add_counts(session, attempt, batch.counters()),
                progress=report,
            )
            with session_scope() as session:
                counters = _complete(session, attempt)
                attempt.lease.release(session)
    except Superseded as exc:
        log.warning("job.superseded", attempt=attempt.number, reason=str(exc))
        raise
    except Exception as exc:
        raise AttemptFailed(attempt.number, describe(exc)) from exc
    report("done", 1.0)
    log.info(
        "job.completed",
        duration_s=round(time.monotonic() - attempt.started, 3),
        skipped_invalid=result.skipped_invalid,
        conflicts=result.conflicts,
        **counters,
    )
    return JobOutcome(str(attempt.job_id), JobStatus.COMPLETED)


def _fenced(attempt: Attempt) -> Any:
    """``UPDATE`` of the attempt's job row that matches only while no newer attempt started."""
    return update(ConsolidationJob).where(
        ConsolidationJob.id == attempt.job_id, ConsolidationJob.attempts == attempt.number
    )


def _add_counts(session: Session, attempt: Attempt, increments: dict[str, int]) -> None:
    """Add a batch's counts to its job, in the batch's transaction (so they include what
    earlier partial attempts applied). Fenced: :class:`Superseded` rolls the batch back."""
    values = {name: getattr(ConsolidationJob, name) + amount for name, amount in increments.items()}
    updated = session.execute(_fenced(attempt).values(heartbeat_at=utcnow(), **values))
    if isinstance(updated, CursorResult) and updated.rowcount == 0:
        raise Superseded(f"job {attempt.job_id}: attempt {attempt.number} was superseded by a newer attempt")


def _complete(session: Session, attempt: Attempt) -> dict[str, int]:
    """Record the job completed (fenced); returns its counters."""
    now = utcnow()
    row = session.execute(
        _fenced(attempt)
        .values(
            status=JobStatus.COMPLETED,
            progress=1.0,
            memories_after=counts.active_count_expr(attempt.project_id),
            completed_at=now,
            heartbeat_at=now,
            error_message=None,
        )
        .returning(
            ConsolidationJob.memories_before,
            ConsolidationJob.memories_after,
            ConsolidationJob.clusters_found,
            ConsolidationJob.memories_merged,
            ConsolidationJob.memories_archived,
        )
    ).one_or_none()
    if row is None:
        raise Superseded(f"job {attempt.job_id}: attempt {attempt.number} was superseded")
    return dict(row._asdict())


def close_unfinished(session: Session, job: ConsolidationJob, status: JobStatus, error: str, now: datetime) -> None:
    """End a job that did not complete, freeing its last attempt's lock. ``memories_after``
    is what is active now, so the run's totals stay true when a job failed halfway or
    changed nothing."""
    job.status = status
    job.error_message = error
    job.completed_at = job.heartbeat_at = now
    if job.project_id is not None and session.get(Project, job.project_id) is not None:
        job.memories_after = counts.active_count_expr(job.project_id)
        free(session, job.project_id, holder_for(job.id, job.attempts))


def _end_now(session: Session, job: ConsolidationJob, status: JobStatus, error: str, now: datetime) -> JobOutcome:
    close_unfinished(session, job, status, error, now)
    outcome = JobOutcome(str(job.id), status, error)
    log_end(outcome, job.attempts)
    return outcome


def fail(job_id: uuid.UUID, attempts: int, error: str) -> JobOutcome:
    """End the job as failed (unless it finished meanwhile) and log ``job.failed``."""
    with session_scope() as session:
        job = session.get(ConsolidationJob, job_id, with_for_update=True)
        if job is not None and job.status not in FINISHED_JOB_STATUSES:
            close_unfinished(session, job, JobStatus.FAILED, error, utcnow())
    outcome = JobOutcome(str(job_id), JobStatus.FAILED, error)
    log_end(outcome, attempts)
    return outcome


def log_end(outcome: JobOutcome, attempts: int) -> None:
    if outcome.status == JobStatus.FAILED:
        log.error("job.failed", attempts=attempts, error=outcome.error)
    else:
        log.warning("job.skipped", reason=outcome.error)


def mark_retrying(job_id: uuid.UUID, error: str) -> bool:
    """The running attempt failed with a transient error: free its lock and wait for
    the retry. ``False`` if the job was not running."""
    with session_scope() as session:
        job = running_job(session, job_id)
        if job is None:
            return False
        set_retrying(session, job, error, utcnow())
        return True


def set_retrying(session: Session, job: ConsolidationJob, error: str, now: datetime) -> None:
    """The job's current attempt is over and another may start: free its lock."""
    if job.project_id is not None:
        free(session, job.project_id, holder_for(job.id, job.attempts))
    job.status, job.error_message, job.heartbeat_at = JobStatus.RETRYING, error, now


def running_job(session: Session, job_id: uuid.UUID) -> ConsolidationJob | None:
    """The job, locked, if it is running."""
    job = session.get(ConsolidationJob, job_id, with_for_update=True)
    return job if job is not None and job.status == JobStatus.RUNNING else None


def job_ids(job: ConsolidationJob) -> dict[str, str | None]:
    """The ids a job's log lines carry."""
    return {
        "run_id": str(job.run_id) if job.run_id else None,
        "job_id": str(job.id),
        "project_id": str(job.project_id) if job.project_id else None,
    }


def bind_job(job: ConsolidationJob) -> None:
    """Log lines from here on carry the job's run and project."""
    structlog.contextvars.bind_contextvars(**job_ids(job))

"""A job's life: pending -> running (-> retrying -> running)* -> completed | failed,
or skipped. Used alike by the ``consolidation.run_project`` task and by
``orchestration consolidate``; no Celery here.

A job costs three transactions of six statements in all when there is little to do:
the start (job and project read together, job row, project lock), the plan read, and
the finish (lock release, job row with the active count); each batch of changes adds
one.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from orchestration import consolidation, counts, heartbeat, locks
from orchestration.consolidation import ConsolidationResult, ProjectDisabled, ProjectGone
from orchestration.db import session_scope
from orchestration.dbtypes import utcnow
from orchestration.logs import get_logger
from orchestration.models import ConsolidationJob, Project, ProjectLock
from orchestration.options import ConsolidationOptions, InvalidOptions, resolve_options
from orchestration.settings import Settings

FINISHED = ("completed", "failed", "skipped")
PROGRESS_INTERVAL_S = 2.0
log = get_logger("orchestration.jobs")


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
        self.run_id, self.project_id = job.run_id, job.project_id


def lost_error(attempt: int, settings: Settings) -> str:
    """The error of a job whose last allowed attempt died with its worker process."""
    return (
        f"worker died during attempt {attempt} of {settings.max_retries + 1} "
        f"(ORCHESTRATION_MAX_RETRIES={settings.max_retries}); no attempts left. The process was killed "
        "from outside, most likely for memory (the OOM killer) if it happens every time: run this project "
        "alone on a worker with more memory (docs/reliability.md, 'A project that kills its worker')"
    )


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
    job_id: uuid.UUID
    project_id: uuid.UUID | None
    run_id: uuid.UUID | None
    number: int
    started: float
    options: ConsolidationOptions | None = None
    ended: JobOutcome | None = None  # set when the job ended at its start (skipped, bad options)
    busy: locks.ProjectBusy | None = None  # another job holds the project: retry later


def create_job(
    session: Session,
    project_id: uuid.UUID,
    *,
    run_id: uuid.UUID | None,
    trigger_type: str,
    triggered_by: str,
    options: dict[str, Any] | None,
) -> ConsolidationJob:
    job = ConsolidationJob(
        project_id=project_id,
        run_id=run_id,
        status="pending",
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


def begin_attempt(
    job_id: uuid.UUID, settings: Settings, celery_task_id: str | None = None, force: bool = False
) -> Attempt | None:
    """Start one more attempt of the job in one transaction: mark it running, check its
    project (it may be gone or disabled since the check), resolve its options, take
    the project lock for this attempt. ``None`` if the job already finished (a
    redelivered message does nothing); :class:`AlreadyRunning` if another attempt of it
    is alive. A job that has used all its attempts fails here instead of starting."""
    now = utcnow()
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
        job = row.ConsolidationJob
        if job.status in FINISHED:
            return None
        lock = row.ProjectLock
        if (
            lock is not None
            and locks.job_of(lock.holder) == str(job.id)
            and lock.heartbeat_at >= now - heartbeat.LOST_AFTER
        ):
            raise AlreadyRunning(job, lock.holder, lock.heartbeat_at)
        if job.attempts >= settings.max_retries + 1:
            # Every start counts, and an attempt that ended normally never leaves the
            # job unfinished with no attempts left: the last one died with its worker.
            error = lost_error(job.attempts, settings)
            close_unfinished(session, job, "failed", error, now)
            return Attempt(
                job.id,
                job.project_id,
                job.run_id,
                job.attempts,
                time.monotonic(),
                ended=JobOutcome(str(job.id), "failed", error),
            )
        first = job.started_at is None
        job.attempts += 1
        job.status = "running"
        job.started_at = job.started_at or now
        job.heartbeat_at = now
        job.error_message = None
        job.celery_task_id = celery_task_id or job.celery_task_id
        attempt = Attempt(job.id, job.project_id, job.run_id, job.attempts, time.monotonic())
        try:
            if job.project_id is None:
                raise ProjectGone(f"the project of job {job_id} was deleted")
            project = consolidation.usable_project(row.Project, job.project_id, force=force)
            if first:
                job.memories_before = counts.active_count(job.project_id)
            attempt.options = resolve_options(project.consolidation_options)
            job.options = attempt.options.as_dict()
            locks.acquire(session, job.project_id, locks.holder_for(job.id, job.attempts), now, heartbeat.LOST_AFTER)
        except (ProjectGone, ProjectDisabled) as exc:
            close_unfinished(session, job, "skipped", str(exc), now)
            attempt.ended = JobOutcome(str(job.id), "skipped", str(exc))
        except InvalidOptions as exc:
            close_unfinished(session, job, "failed", str(exc), now)
            attempt.ended = JobOutcome(str(job.id), "failed", str(exc))
        except locks.ProjectBusy as exc:
            attempt.busy = exc
    return attempt


class ProgressRecorder:
    """Progress callback: logs ``job.progress`` and writes the job row, throttled.
    Progress never moves backwards, even across attempts; 0 and 1 are not written
    (the start and the finish of the job set those)."""

    def __init__(self, job_id: uuid.UUID, interval: float = PROGRESS_INTERVAL_S):
        self.job_id = job_id
        self.interval = interval
        self.last_write = time.monotonic()
        self.last_value = -1.0

    def __call__(self, stage: str, fraction: float) -> None:
        now = time.monotonic()
        final = fraction >= 1.0
        if fraction <= self.last_value or (0.0 < fraction < 1.0 and now - self.last_write < self.interval):
            return
        self.last_value = fraction
        log.info("job.progress", progress=round(fraction, 3), stage=stage)
        if fraction > 0.0 and not final:
            self.last_write = now
            with session_scope() as session:
                session.execute(
                    update(ConsolidationJob)
                    .where(ConsolidationJob.id == self.job_id, ConsolidationJob.progress < fraction)
                    .values(progress=fraction, heartbeat_at=utcnow())
                )


def execute(
    attempt: Attempt, *, progress: Callable[[str, float], None] | None = None, changed_by: str = "system"
) -> JobOutcome:
    """Consolidate the job's project (its lock is held since :func:`begin_attempt`).
    Transient errors propagate, with the lock released, so the caller can retry."""
    if attempt.ended is not None:
        _log_end(attempt, attempt.ended)
        return attempt.ended
    if attempt.busy is not None:
        raise attempt.busy
    assert attempt.project_id is not None and attempt.options is not None
    project_id = attempt.project_id
    counters: dict[str, int] = {}

    def complete(session: Session, result: ConsolidationResult) -> None:
        # The merge/archive counters were added batch by batch, in the same transactions
        # as the changes, so they include what earlier partial attempts applied.
        row = session.execute(
            update(ConsolidationJob)
            .where(ConsolidationJob.id == attempt.job_id, ConsolidationJob.attempts == attempt.number)
            .values(
                status="completed",
                progress=1.0,
                memories_after=counts.active_count(project_id),
                completed_at=utcnow(),
                heartbeat_at=utcnow(),
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
            raise consolidation.Superseded(f"job {attempt.job_id}: attempt {attempt.number} was superseded")
        counters.update(row._asdict())
        result.memories_after = row.memories_after

    try:
        result = consolidation.consolidate_project(
            attempt.project_id,
            attempt.options,
            job_id=attempt.job_id,
            attempt=attempt.number,
            lock_held=True,
            on_finish=complete,
            progress=progress or ProgressRecorder(attempt.job_id),
            changed_by=changed_by,
        )
    except (ProjectGone, ProjectDisabled) as exc:
        return skip(attempt, str(exc))
    except consolidation.Superseded as exc:
        log.warning("job.superseded", attempt=attempt.number, reason=str(exc))
        raise
    log.info(
        "job.completed",
        duration_s=round(time.monotonic() - attempt.started, 3),
        skipped_invalid=result.skipped_invalid,
        conflicts=result.conflicts,
        **counters,
    )
    return JobOutcome(str(attempt.job_id), "completed")


def close_unfinished(session: Session, job: ConsolidationJob, status: str, error: str, now: datetime) -> None:
    """End a job that did not complete. ``memories_after`` is what is active now, so the
    run's totals stay true when a job failed halfway or changed nothing."""
    job.status = status
    job.error_message = error
    job.completed_at = job.heartbeat_at = now
    if job.project_id is not None and session.get(Project, job.project_id) is not None:
        job.memories_after = counts.active_count(job.project_id)
        locks.release(session, job.project_id, locks.holder_for(job.id, job.attempts))


def _end(attempt: Attempt, status: str, error: str) -> JobOutcome:
    with session_scope() as session:
        job = session.get(ConsolidationJob, attempt.job_id)
        if job is not None and job.status not in FINISHED:
            close_unfinished(session, job, status, error, utcnow())
    outcome = JobOutcome(str(attempt.job_id), status, error)
    _log_end(attempt, outcome)
    return outcome


def _log_end(attempt: Attempt, outcome: JobOutcome) -> None:
    if outcome.status == "failed":
        log.error("job.failed", attempts=attempt.number, error=outcome.error)
    else:
        log.warning("job.skipped", reason=outcome.error)


def fail(attempt: Attempt, error: str) -> JobOutcome:
    return _end(attempt, "failed", error)


def skip(attempt: Attempt, reason: str) -> JobOutcome:
    return _end(attempt, "skipped", reason)


def mark_retrying(job_id: uuid.UUID, error: str) -> bool:
    """The running attempt failed with a transient error: free its lock and wait for
    the retry. ``False`` if the job was not running."""
    with session_scope() as session:
        job = _running(session, job_id)
        if job is None:
            return False
        if job.project_id is not None:
            locks.release(session, job.project_id, locks.holder_for(job.id, job.attempts))
        job.status, job.error_message, job.heartbeat_at = "retrying", error, utcnow()
        return True


def record_lost(session: Session, job: ConsolidationJob, settings: Settings, now: datetime, error: str) -> str:
    """The running attempt of ``job`` died with its worker process: free its lock, then
    let the job run again (``retrying``) or, with no attempts left, fail it. Returns
    the new status. The caller holds the job row locked and logs."""
    if job.project_id is not None:
        locks.release(session, job.project_id, locks.holder_for(job.id, job.attempts))
    if job.attempts >= settings.max_retries + 1:
        close_unfinished(session, job, "failed", lost_error(job.attempts, settings), now)
    else:
        job.status, job.error_message, job.heartbeat_at = "retrying", error, now
    return job.status


def worker_lost(job_id: uuid.UUID, settings: Settings, reason: str) -> None:
    """Called by the worker's main process when the child running this job died
    (before the message is requeued): the next delivery starts at once instead of
    waiting for the dead attempt's heartbeat to go stale."""
    with session_scope() as session:
        job = _running(session, job_id)
        if job is None:
            return
        error = f"worker lost during attempt {job.attempts}: {reason}"[:500]
        status = record_lost(session, job, settings, utcnow(), error)
        ids, attempt, final_error = job_ids(job), job.attempts, job.error_message
    log_lost(ids, attempt, error, status, final_error)


def hard_time_limit(job_id: uuid.UUID, settings: Settings, reason: str) -> None:
    """Called by the worker's main process when it killed this job's child at the hard
    time limit (the soft limit did not stop it): the job fails now."""
    error = (
        f"{reason} (ORCHESTRATION_JOB_TIME_LIMIT={settings.job_time_limit} + 60 s); changes committed so far are kept"
    )
    with session_scope() as session:
        job = _running(session, job_id)
        if job is None:
            return
        close_unfinished(session, job, "failed", error, utcnow())
        ids, attempt = job_ids(job), job.attempts
    with structlog.contextvars.bound_contextvars(**ids):
        log.error("job.failed", attempts=attempt, error=error)


def _running(session: Session, job_id: uuid.UUID) -> ConsolidationJob | None:
    job = session.get(ConsolidationJob, job_id, with_for_update=True)
    return job if job is not None and job.status == "running" else None


def job_ids(job: ConsolidationJob) -> dict[str, str | None]:
    """The ids a job's log lines carry."""
    return {
        "run_id": str(job.run_id) if job.run_id else None,
        "job_id": str(job.id),
        "project_id": str(job.project_id) if job.project_id else None,
    }


def log_lost(ids: dict[str, str | None], attempt: int, error: str, status: str, final_error: str | None) -> None:
    """``job.worker_lost``, then ``job.failed`` if the job has no attempts left."""
    with structlog.contextvars.bound_contextvars(**ids):
        log.warning("job.worker_lost", attempt=attempt, error=error)
        if status == "failed":
            log.error("job.failed", attempts=attempt, error=final_error)

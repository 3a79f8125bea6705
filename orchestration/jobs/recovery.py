"""An attempt whose process died: its lock is freed, and the job runs again while it
has attempts left, or fails. The worker's main process reports its dead children
(:func:`worker_lost`, :func:`hard_time_limit`); the reaper finds the rest
(``orchestration.nightly.reaper``) through :func:`record_lost`."""

from __future__ import annotations

import uuid
from datetime import datetime

import structlog
from sqlalchemy.orm import Session

from orchestration.jobs import transitions
from orchestration.jobs.endings import end, running_job
from orchestration.jobs.outcomes import job_ids, lost_error
from orchestration.logs import get_logger
from orchestration.settings import Settings
from orchestration.store.db import session_scope
from orchestration.store.models import ConsolidationJob
from orchestration.store.statuses import JobStatus
from orchestration.store.types import utcnow

log = get_logger(__name__)


def record_lost(session: Session, job: ConsolidationJob, settings: Settings, now: datetime, error: str) -> JobStatus:
    """The running attempt of ``job`` died with its worker process: free its lock, then
    let the job run again (``retrying``) or, with no attempts left, fail it. Returns
    the new status. The caller holds the job row locked and logs."""
    if not transitions.attempts_left(job, settings):
        end(session, job, transitions.FAIL, lost_error(job.attempts, settings), now)
        return JobStatus.FAILED
    end(session, job, transitions.LOSE, error, now)
    return JobStatus.RETRYING


def worker_lost(job_id: uuid.UUID, settings: Settings, reason: str) -> None:
    """Called by the worker's main process when the child running this job died
    (before the message is requeued): the next delivery starts at once instead of
    waiting for the dead attempt's heartbeat to go stale."""
    with session_scope() as session:
        job = running_job(session, job_id)
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
        job = running_job(session, job_id)
        if job is None:
            return
        end(session, job, transitions.FAIL, error, utcnow())
        ids, attempt = job_ids(job), job.attempts
    with structlog.contextvars.bound_contextvars(**ids):
        log.error("job.failed", attempts=attempt, error=error)


def log_lost(ids: dict[str, str | None], attempt: int, error: str, status: str, final_error: str | None) -> None:
    """``job.worker_lost``, then ``job.failed`` if the job has no attempts left."""
    with structlog.contextvars.bound_contextvars(**ids):
        log.warning("job.worker_lost", attempt=attempt, error=error)
        if status == JobStatus.FAILED:
            log.error("job.failed", attempts=attempt, error=final_error)

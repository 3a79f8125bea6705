"""The end of an attempt that did not complete, or of the job: failed, sent on to a
retry, or given back after an outage. Each is a transition of
``orchestration.jobs.transitions`` at the job's current attempt."""

from __future__ import annotations

import uuid
from datetime import datetime

import structlog
from sqlalchemy.orm import Session

from orchestration.jobs import transitions
from orchestration.jobs.outcomes import JobOutcome, Superseded, job_ids, log_end
from orchestration.jobs.transitions import Refused
from orchestration.logs import get_logger
from orchestration.store import db
from orchestration.store.models import ConsolidationJob
from orchestration.store.statuses import FINISHED_JOB_STATUSES, JobStatus
from orchestration.store.types import utcnow

log = get_logger("orchestration.jobs.lifecycle")


def fail(job_id: uuid.UUID, attempt: int, error: str, *, fenced: bool = True) -> JobOutcome:
    """End the job as failed (unless it finished meanwhile) and log ``job.failed``.
    ``fenced``: ``attempt`` is the failing attempt, and if a newer one took the job over
    meanwhile, nothing changes and :class:`Superseded` is raised (the newer attempt
    reports the job). Not fenced: a start that failed before it was recorded."""
    with db.session_scope() as session:
        job = session.get(ConsolidationJob, job_id, with_for_update=True)
        if job is not None and job.status not in FINISHED_JOB_STATUSES:
            if fenced and job.attempts != attempt:
                raise Superseded(f"job {job_id}: attempt {attempt} was superseded by attempt {job.attempts}")
            end(session, job, transitions.FAIL, error, utcnow())
    outcome = JobOutcome(str(job_id), JobStatus.FAILED, error)
    log_end(outcome, attempt)
    return outcome


def end(session: Session, job: ConsolidationJob, transition: transitions.Transition, error: str, now: datetime) -> None:
    """Carry ``transition`` out on the job (held locked by the caller) at its current
    attempt, recording ``error``: how recovery, the reaper and a run's finalization
    end an attempt or a job."""
    transitions.apply(session, transition, job.id, job.attempts, now, {"error_message": error})


def mark_retrying(job_id: uuid.UUID, error: str, attempt: int) -> bool:
    """Running attempt ``attempt`` failed with a transient error: free its lock and wait
    for the retry. ``False`` if the job was not running, or a newer attempt runs it."""
    with db.session_scope() as session:
        job = running_job(session, job_id)
        if job is None or job.attempts != attempt:
            return False
        end(session, job, transitions.RETRY, error, utcnow())
        return True


def spare_attempt(job_id: uuid.UUID, attempt: int, failed_at: datetime) -> bool:
    """Give back attempt ``attempt``, which the database's outage cut short at
    ``failed_at``: it does not count against the job's attempts (they count failures of
    the job), its lock is freed, and the job waits for its next start as ``retrying``.
    Nothing happens unless that attempt is still the job's latest and nothing has beaten
    for it since it failed (a newer start or the reaper got there first). ``True`` if
    the attempt was given back."""
    quiet = ConsolidationJob.heartbeat_at.is_(None) | (ConsolidationJob.heartbeat_at <= failed_at)
    try:
        with db.session_scope() as session:
            transitions.apply(
                session,
                transitions.SPARE,
                job_id,
                attempt,
                utcnow(),
                unless=(quiet, "something beat for the job since the attempt failed"),
            )
            ids = job_ids(session.get_one(ConsolidationJob, job_id))
    except Refused:
        return False
    with structlog.contextvars.bound_contextvars(**ids):
        log.info("job.attempt_spared", attempt=attempt, reason="the database was unreachable")
    return True


def running_job(session: Session, job_id: uuid.UUID) -> ConsolidationJob | None:
    """The job, locked, if it is running."""
    job = session.get(ConsolidationJob, job_id, with_for_update=True)
    return job if job is not None and job.status == JobStatus.RUNNING else None

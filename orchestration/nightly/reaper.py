"""The reaper (``consolidation.reap_stale``, every minute): no job stays ``running``
after its worker died, and no run stays ``running`` past
``ORCHESTRATION_RUN_DEADLINE``.

A running job's process keeps its project lock's heartbeat fresh
(``orchestration.jobs.heartbeat``). A job whose heartbeat stopped for
:data:`heartbeat.LOST_AFTER` lost its worker: while it has attempts left it is set
``retrying`` and re-sent into its run's chord (the caller sends it after commit);
otherwise it fails. A ``pending`` job received by a worker that died before starting
it, and a ``retrying`` job whose retry did not start within the longest backoff (the
worker holding its delayed message died), are re-sent the same way. None of that is
judged in the first :data:`heartbeat.LOST_AFTER` after the database server started:
heartbeats stopped by its outage say nothing about the workers.

Pending jobs that no worker ever received are compared with what the broker's queue
holds (:func:`unreceived_jobs`): a broker that lost messages costs minutes, not the
night.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from orchestration.jobs import heartbeat, lifecycle, recovery, transitions
from orchestration.jobs.locks import holder_for
from orchestration.nightly import runs
from orchestration.settings import Settings
from orchestration.store.models import ConsolidationJob, ConsolidationRun, ProjectLock
from orchestration.store.statuses import UNFINISHED_JOB_STATUSES, JobStatus, RunStatus

# All of a run's jobs finished this long ago and its chord callback never came (the
# callback comes within seconds of the last job; a result backend that lost the
# chord's count never sends it).
CALLBACK_GRACE = timedelta(minutes=2)
# A job of a sent chord that no worker received this long after it was sent may have
# been lost by the broker (see :func:`unreceived_jobs`): a worker marks a received job
# within a fraction of a second.
QUEUE_GRACE = timedelta(seconds=20)
LOST_MESSAGES = runs.LOST_MESSAGES
# No heartbeat is judged this long after the database server started.
RESTART_GRACE = heartbeat.LOST_AFTER * 2


@dataclass
class LostJob:
    """A job whose worker died, as the reaper left it."""

    ids: dict[str, str | None]  # run_id, job_id, project_id
    attempt: int
    error: str
    status: JobStatus  # RETRYING: re-send it; FAILED: no attempts left (or a job started by hand)
    final_error: str | None
    group_index: int | None = None  # its place in its run's chord


@dataclass
class Reaped:
    lost: list[LostJob] = field(default_factory=list)
    runs: list[tuple[ConsolidationRun, str]] = field(default_factory=list)

    @property
    def resend(self) -> list[LostJob]:
        return [job for job in self.lost if job.status == JobStatus.RETRYING]


def server_uptime(session: Session, now: datetime) -> timedelta | None:
    """How long the database server has been up (PostgreSQL), ``None`` if unknown."""
    if session.get_bind().dialect.name != "postgresql":
        return None
    started = session.scalar(select(func.pg_postmaster_start_time()))
    return now - started if started is not None else None


def reap(session: Session, settings: Settings, now: datetime) -> Reaped:
    reaped = Reaped()
    deadline = now - timedelta(seconds=settings.run_deadline)
    overdue = session.scalars(
        select(ConsolidationRun.id).where(
            ConsolidationRun.status == RunStatus.RUNNING, ConsolidationRun.started_at < deadline
        )
    ).all()
    for run_id in overdue:
        _finalize(
            session,
            reaped,
            run_id,
            now,
            "deadline",
            f"run deadline of {settings.run_deadline}s passed before the job finished",
        )
    uptime = server_uptime(session, now)
    # Heartbeats stopped while the server was down say nothing about the workers: they
    # beat again within heartbeat.INTERVAL of its return, and a task waiting out the
    # outage looks again within a minute (worker.base.OUTAGE_BACKOFF_MAX).
    if uptime is None or uptime >= RESTART_GRACE:
        for job in lost_jobs(session, settings, now):
            _recover(session, reaped, job, settings, now)
    session.flush()
    for run_id in orphaned_runs(session, now):
        _finalize(session, reaped, run_id, now, "callback_missing", None)
    return reaped


def orphaned_runs(session: Session, now: datetime) -> list[uuid.UUID]:
    """Open runs whose jobs all ended and whose chord callback did not come: within
    :data:`CALLBACK_GRACE` of the last end it still may; a run whose messages the
    broker lost (noted by :func:`note_lost_messages`) has lost its chord's count with
    them, so it is closed as soon as its jobs have ended."""
    unfinished = select(ConsolidationJob.id).where(
        ConsolidationJob.run_id == ConsolidationRun.id, ConsolidationJob.status.in_(UNFINISHED_JOB_STATUSES)
    )
    last_end = (
        select(func.max(ConsolidationJob.completed_at))
        .where(ConsolidationJob.run_id == ConsolidationRun.id)
        .scalar_subquery()
    )
    candidates = session.execute(
        select(ConsolidationRun, last_end).where(ConsolidationRun.status == RunStatus.RUNNING, ~unfinished.exists())
    ).all()
    return [
        run.id
        for run, ended in candidates
        if (run.summary or {}).get(LOST_MESSAGES) or max(run.started_at, ended or run.started_at) < now - CALLBACK_GRACE
    ]


def note_lost_messages(session: Session, run_ids: set[uuid.UUID], now: datetime) -> None:
    """Record in these runs' summaries that the broker lost messages of theirs (their
    jobs were sent again): their chord's callback cannot be counted on any more."""
    for run in session.scalars(
        select(ConsolidationRun).where(ConsolidationRun.id.in_(list(run_ids))).with_for_update()
    ):
        run.summary = {**(run.summary or {}), LOST_MESSAGES: now.isoformat()}


def lost_jobs(session: Session, settings: Settings, now: datetime) -> list[ConsolidationJob]:
    """Unfinished jobs whose worker died, locked for update: running ones whose lock's
    heartbeat stopped (a job inside a batch holds its own row: it is skipped, it is
    alive), pending ones received by a worker that stopped beating for them (a job
    still in the queue has no heartbeat), and retrying ones past their longest backoff."""
    cutoff = now - heartbeat.LOST_AFTER
    retry_cutoff = cutoff - timedelta(seconds=settings.retry_backoff_max)
    candidates = session.scalars(
        select(ConsolidationJob)
        .where(
            (
                (ConsolidationJob.status.in_((JobStatus.RUNNING, JobStatus.PENDING)))
                & (ConsolidationJob.heartbeat_at < cutoff)
            )
            | ((ConsolidationJob.status == JobStatus.RETRYING) & (ConsolidationJob.heartbeat_at < retry_cutoff))
        )
        .with_for_update(skip_locked=True)
    ).all()
    if not candidates:
        return []
    beats = {
        lock.holder: lock.heartbeat_at
        for lock in session.scalars(
            select(ProjectLock).where(ProjectLock.project_id.in_({j.project_id for j in candidates if j.project_id}))
        )
    }

    def alive(job: ConsolidationJob) -> bool:
        beat = beats.get(holder_for(job.id, job.attempts))
        return job.status == JobStatus.RUNNING and beat is not None and beat >= cutoff

    return [job for job in candidates if not alive(job)]


def unreceived_jobs(session: Session, now: datetime) -> list[LostJob]:
    """Pending jobs of open runs whose chord was sent more than :data:`QUEUE_GRACE` ago
    and that no worker has received (no heartbeat): their messages are in the queue, or
    the broker lost them (a restart without persistence, a deleted queue). The caller
    compares their number with the queue's and re-sends them all if the queue holds
    fewer messages: a job still queued then runs twice, and its second run does nothing."""
    open_runs = {
        run.id: run
        for run in session.scalars(select(ConsolidationRun).where(ConsolidationRun.status == RunStatus.RUNNING))
        if runs.dispatched_before(run, now - QUEUE_GRACE)
    }
    if not open_runs:
        return []
    jobs = session.scalars(
        select(ConsolidationJob)
        .where(
            ConsolidationJob.run_id.in_(list(open_runs)),
            ConsolidationJob.status == JobStatus.PENDING,
            ConsolidationJob.heartbeat_at.is_(None),
        )
        .order_by(ConsolidationJob.created_at, ConsolidationJob.id)
    ).all()
    orders = {run_id: runs.chord_order(session, run_id) for run_id in {job.run_id for job in jobs if job.run_id}}
    return [
        LostJob(
            ids=lifecycle.job_ids(job),
            attempt=job.attempts,
            error="never received by a worker: the broker may have lost its message",
            status=JobStatus.PENDING,
            final_error=None,
            group_index=orders[job.run_id].index(job.id),
        )
        for job in jobs
        if job.run_id is not None
    ]


def _recover(session: Session, reaped: Reaped, job: ConsolidationJob, settings: Settings, now: datetime) -> None:
    if job.status == JobStatus.RETRYING:
        error = (
            f"the retry of attempt {job.attempts} did not start within {settings.retry_backoff_max}s "
            "of its backoff (the worker holding it died)"
        )
    elif job.status == JobStatus.PENDING:
        error = (
            f"worker lost before the job started: it received the job, then stopped (no heartbeat since "
            f"{_iso(job.heartbeat_at)})"
        )
    else:
        error = f"worker lost during attempt {job.attempts}: no heartbeat since {_iso(job.heartbeat_at)}"
    if job.run_id is None:  # started by hand (orchestration consolidate): nothing to re-send it
        lifecycle.end(session, job, transitions.FAIL, error, now)
    else:
        recovery.record_lost(session, job, settings, now, error)
    lost = LostJob(
        ids=lifecycle.job_ids(job),
        attempt=job.attempts,
        error=error,
        status=JobStatus(job.status),
        final_error=job.error_message,
    )
    if lost.status == JobStatus.RETRYING:
        assert job.run_id is not None
        lost.group_index = runs.chord_order(session, job.run_id).index(job.id)
    reaped.lost.append(lost)


def _iso(moment: datetime | None) -> str:
    return moment.isoformat() if moment else "never"


def _finalize(
    session: Session, reaped: Reaped, run_id: uuid.UUID, now: datetime, reason: str, error: str | None
) -> None:
    run = runs.finalize(session, run_id, now, unfinished_error=error)
    if run is not None:
        reaped.runs.append((run, reason))

"""A job's life: pending -> running (-> retrying -> running)* -> completed | failed,
or skipped. :func:`run` is one attempt from start to end, as the
``consolidation.run_project`` task and ``orchestration consolidate`` use it.

An attempt with nothing to apply costs three round trips on PostgreSQL: the start
(job row, attempt counted, lock taken: one statement, ``statements.START``), the plan
read, and the end (job row with the active count, lock given back:
``statements.FINISH``). The portable path (SQLite, and PostgreSQL when a start finds
anything unusual) does the same in transactions of several statements. Each batch of
changes adds one transaction, fenced on the attempt's number: a newer attempt that
took over makes the older one's writes fail with :class:`Superseded`.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import insert, select, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.orm import Session

from orchestration.consolidation import applying, planning
from orchestration.consolidation.options import ConsolidationOptions, InvalidOptions, resolve_options
from orchestration.consolidation.projects import ProjectDisabled, ProjectGone, check_project
from orchestration.consolidation.result import ConsolidationResult
from orchestration.jobs import heartbeat, statements
from orchestration.jobs.locks import Lease, ProjectBusy, free, holder_for, job_of
from orchestration.jobs.progress import ProgressRecorder
from orchestration.logs import get_logger
from orchestration.settings import Settings
from orchestration.store import counts, db
from orchestration.store.models import ConsolidationJob, Project, ProjectLock, table_of
from orchestration.store.statuses import FINISHED_JOB_STATUSES, JobStatus, TriggerType
from orchestration.store.types import utcnow

log = get_logger(__name__)
Progress = applying.Progress


class JobNotFound(LookupError):
    pass


class AlreadyRunning(RuntimeError):
    """Another attempt of the job is alive (its lock's heartbeat is fresh): this
    delivery is a duplicate and must not start it. ``task_id`` is the Celery task that
    started the live attempt, when known."""

    def __init__(self, job_id: uuid.UUID, holder: str, beat: datetime, task_id: str | None = None):
        super().__init__(
            f"attempt {holder.partition('#')[2] or '?'} of job {job_id} is alive "
            f"(heartbeat {beat.isoformat()}); this delivery does not start it"
        )
        self.task_id = task_id


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


_JOBS, _PROJECTS, _LOCKS = table_of(ConsolidationJob), table_of(Project), table_of(ProjectLock)
# A job with its project's state and lock, the job row locked against a concurrent start.
_START = (
    select(
        _JOBS.c.id,
        _JOBS.c.run_id,
        _JOBS.c.project_id,
        _JOBS.c.status,
        _JOBS.c.attempts,
        _JOBS.c.started_at,
        _JOBS.c.error_message,
        _JOBS.c.celery_task_id,
        _PROJECTS.c.id.is_not(None).label("project_exists"),
        _PROJECTS.c.name.label("project_name"),
        _PROJECTS.c.consolidation_enabled,
        _PROJECTS.c.consolidation_options,
        _LOCKS.c.holder,
        _LOCKS.c.heartbeat_at.label("lock_beat"),
    )
    .select_from(
        _JOBS.outerjoin(_PROJECTS, _PROJECTS.c.id == _JOBS.c.project_id).outerjoin(
            _LOCKS, _LOCKS.c.project_id == _JOBS.c.project_id
        )
    )
    .with_for_update(of=_JOBS)
)


def create_job(
    session: Session,
    project_id: uuid.UUID,
    *,
    run_id: uuid.UUID | None,
    trigger_type: TriggerType,
    triggered_by: str,
    options: dict[str, Any] | None,
) -> ConsolidationJob:
    """One pending job (a manual one, or a test's)."""
    job = ConsolidationJob(**_new_job(project_id, run_id, trigger_type, triggered_by, options))
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
) -> list[uuid.UUID]:
    """A run's pending jobs, one per ``(project_id, options)``, in one bulk insert. Their
    ``created_at`` grows by a microsecond each, so that they read back in this order."""
    rows = [
        {**_new_job(project_id, run_id, trigger_type, "system", options), "created_at": now + timedelta(microseconds=i)}
        for i, (project_id, options) in enumerate(projects)
    ]
    if rows:
        session.execute(insert(_JOBS), rows)
    return [row["id"] for row in rows]


def _new_job(
    project_id: uuid.UUID,
    run_id: uuid.UUID | None,
    trigger_type: TriggerType,
    triggered_by: str,
    options: dict[str, Any] | None,
) -> dict[str, Any]:
    return {
        "id": uuid.uuid4(),
        "project_id": project_id,
        "run_id": run_id,
        "status": JobStatus.PENDING,
        "trigger_type": trigger_type,
        "triggered_by": triggered_by,
        "options": effective_options(options),
    }


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
    the project (the attempt counts).

    On PostgreSQL the common case is one statement (``statements.START``); anything
    unusual takes the portable path, which decides under the job row's lock."""
    if db.is_postgresql():
        started = _start_in_one_statement(job_id, settings, celery_task_id, force)
        if started is not None:
            return started
    return _start(job_id, settings, celery_task_id, force)


def _start_in_one_statement(
    job_id: uuid.UUID, settings: Settings, celery_task_id: str | None, force: bool
) -> Attempt | JobOutcome | None:
    now = utcnow()
    with db.statement_scope() as connection:
        row = statements.start(
            connection, job_id, now, max_attempts=settings.max_retries + 1, celery_task_id=celery_task_id, force=force
        )
    if row is None:
        raise JobNotFound(f"job {job_id} does not exist")
    if row.number is None:
        return None
    bind_job(row)
    try:
        options = resolve_options(row.consolidation_options)
    except InvalidOptions as exc:
        return fail(row.id, row.number, str(exc))  # started before its options were read: ends now
    if options.as_dict() != row.options:  # the project's options changed since the job was created
        with db.session_scope() as session:
            session.execute(update(_JOBS).where(_JOBS.c.id == row.id).values(options=options.as_dict()))
    lease = Lease(row.project_id, row.id, row.number)
    return Attempt(row.id, row.project_id, row.number, options, lease, time.monotonic())


def _start(job_id: uuid.UUID, settings: Settings, celery_task_id: str | None, force: bool) -> Attempt | JobOutcome:
    """The portable start: one transaction that reads the job under lock and decides."""
    now = utcnow()
    busy: ProjectBusy | None = None
    with db.session_scope() as session:
        # The project and its lock come with the job, as plain rows: one round trip and
        # no ORM work on the hot path (every job of every night starts here).
        row = session.execute(_START.where(_JOBS.c.id == job_id)).first()
        if row is None:
            raise JobNotFound(f"job {job_id} does not exist")
        bind_job(row)
        if row.status in FINISHED_JOB_STATUSES:
            log.info("job.already_finished", status=row.status)
            return JobOutcome(str(row.id), row.status, row.error_message)
        if row.holder is not None and job_of(row.holder) == str(row.id) and row.lock_beat >= now - heartbeat.LOST_AFTER:
            raise AlreadyRunning(row.id, row.holder, row.lock_beat, row.celery_task_id)
        if row.attempts >= settings.max_retries + 1:
            # Every start counts, and an attempt that ended normally never leaves the
            # job unfinished with no attempts left: the last one died with its worker.
            return _end_now(session, row.id, JobStatus.FAILED, lost_error(row.attempts, settings), now, count=False)
        try:
            if row.project_id is None:
                raise ProjectGone(f"the project of job {job_id} was deleted")
            check_project(row if row.project_exists else None, row.project_id, force=force)
            options = resolve_options(row.consolidation_options)
        except (ProjectGone, ProjectDisabled) as exc:
            return _end_now(session, row.id, JobStatus.SKIPPED, str(exc), now)
        except InvalidOptions as exc:
            return _end_now(session, row.id, JobStatus.FAILED, str(exc), now)
        number = row.attempts + 1
        session.execute(
            update(_JOBS)
            .where(_JOBS.c.id == row.id)
            .values(
                attempts=number,
                status=JobStatus.RUNNING,
                started_at=row.started_at or now,
                heartbeat_at=now,
                error_message=None,
                celery_task_id=celery_task_id or row.celery_task_id,
                worker=heartbeat.worker_name(),
                options=options.as_dict(),
                **({"memories_before": counts.active_count_expr(row.project_id)} if row.started_at is None else {}),
            )
        )
        attempt = Attempt(row.id, row.project_id, number, options, Lease(row.project_id, row.id, number), 0.0)
        try:
            attempt.lease.acquire(session, now)
        except ProjectBusy as exc:
            if job_of(exc.holder) == str(row.id):
                # This job's live attempt committed its start after this statement's
                # snapshot was taken: a duplicate delivery after all (rolled back).
                raise AlreadyRunning(row.id, exc.holder, now) from None
            busy = exc  # another job holds the project: the attempt still counts, then fails
    if busy is not None:
        raise AttemptFailed(attempt.number, describe(busy)) from busy
    attempt.started = time.monotonic()
    return attempt


def consolidate(attempt: Attempt, *, progress: Progress | None = None, changed_by: str = "system") -> JobOutcome:
    """Consolidate the attempt's project: plan, apply batch by batch (when there is
    anything to apply), then record the job completed and give its lock back in one
    transaction. Any error but :class:`Superseded` becomes :class:`AttemptFailed`,
    with the lock given back."""
    report = progress or ProgressRecorder(attempt.job_id)
    try:
        with attempt.lease.held():
            with db.statement_scope() as connection:
                planned = planning.plan(connection, attempt.project_id, attempt.options, utcnow())
            if planned.is_empty:
                result = ConsolidationResult.of(planned, dry_run=False)
            else:
                report("similarity", applying.PLANNED)
                result = applying.apply(
                    planned,
                    attempt.options,
                    attempt.job_id,
                    changed_by=changed_by,
                    in_batch=lambda session, batch: _add_counts(session, attempt, batch.counters()),
                    progress=report,
                )
            counters = _finish(attempt, result)
    except Superseded as exc:
        log.warning("job.superseded", attempt=attempt.number, reason=str(exc))
        raise
    except Exception as exc:
        raise AttemptFailed(attempt.number, describe(exc)) from exc
    log.info(
        "job.completed",
        duration_s=round(time.monotonic() - attempt.started, 3),
        skipped_invalid=result.skipped_invalid,
        conflicts=result.conflicts,
        pairs_kept_apart=result.pairs_kept_apart,
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


def _finish(attempt: Attempt, result: ConsolidationResult) -> dict[str, int]:
    """Record the job completed (fenced) with what it left alone, and give its lock back,
    in one transaction (one statement on PostgreSQL); returns its counters."""
    left_alone = {name: getattr(result, name) for name in LEFT_ALONE}
    if db.is_postgresql():
        with db.statement_scope() as connection:
            row = statements.finish(
                connection,
                attempt.job_id,
                attempt.number,
                attempt.project_id,
                attempt.lease.holder,
                utcnow(),
                left_alone,
            )
    else:
        with db.session_scope() as session:
            row = _complete(session, attempt, left_alone)
            attempt.lease.release(session)  # a no-op if a newer attempt took the lock over
    if row is None:
        raise Superseded(f"job {attempt.job_id}: attempt {attempt.number} was superseded")
    return dict(row._asdict())


def _complete(session: Session, attempt: Attempt, left_alone: dict[str, int]) -> Any:
    """Record the job completed (fenced); its counters, or ``None`` if superseded."""
    now = utcnow()
    return session.execute(
        _fenced(attempt)
        .values(
            **left_alone,
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


def _end_now(
    session: Session, job_id: uuid.UUID, status: JobStatus, error: str, now: datetime, count: bool = True
) -> JobOutcome:
    """A job that ends at its start; the start counts as an attempt unless ``count`` is false."""
    job = session.get_one(ConsolidationJob, job_id)
    if count:
        if job.started_at is None and job.project_id is not None:
            job.memories_before = counts.active_count_expr(job.project_id)
        job.attempts += 1
        job.started_at = job.started_at or now
        job.worker = heartbeat.worker_name()
    close_unfinished(session, job, status, error, now)
    outcome = JobOutcome(str(job.id), status, error)
    log_end(outcome, job.attempts)
    return outcome


def fail(job_id: uuid.UUID, attempts: int, error: str) -> JobOutcome:
    """End the job as failed (unless it finished meanwhile) and log ``job.failed``."""
    with db.session_scope() as session:
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
    with db.session_scope() as session:
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


def spare_attempt(job_id: uuid.UUID, attempt: int, failed_at: datetime) -> bool:
    """Give back attempt ``attempt``, which the database's outage cut short at
    ``failed_at``: it does not count against the job's attempts (they count failures of
    the job), its lock is freed, and the job waits for its next start as ``retrying``.
    Nothing happens unless that attempt is still the job's latest and nothing has beaten
    for it since it failed (a newer start or the reaper got there first). ``True`` if
    the attempt was given back."""
    with db.session_scope() as session:
        job = session.get(ConsolidationJob, job_id, with_for_update=True)
        if (
            job is None
            or job.attempts != attempt
            or job.status not in (JobStatus.RUNNING, JobStatus.RETRYING)
            or (job.heartbeat_at is not None and job.heartbeat_at > failed_at)
        ):
            return False
        if job.project_id is not None:
            free(session, job.project_id, holder_for(job.id, attempt))
        job.attempts, job.status, job.heartbeat_at = attempt - 1, JobStatus.RETRYING, utcnow()
        ids = job_ids(job)
    with structlog.contextvars.bound_contextvars(**ids):
        log.info("job.attempt_spared", attempt=attempt, reason="the database was unreachable")
    return True


def running_job(session: Session, job_id: uuid.UUID) -> ConsolidationJob | None:
    """The job, locked, if it is running."""
    job = session.get(ConsolidationJob, job_id, with_for_update=True)
    return job if job is not None and job.status == JobStatus.RUNNING else None


# What a completed job left alone, kept on its row (and in ``job.completed``).
LEFT_ALONE = ("skipped_invalid", "conflicts", "pairs_kept_apart")


def job_ids(job: Any) -> dict[str, str | None]:
    """The ids a job's log lines carry (``job``: its row, ORM object or plain row)."""
    return {
        "run_id": str(job.run_id) if job.run_id else None,
        "job_id": str(job.id),
        "project_id": str(job.project_id) if job.project_id else None,
    }


def bind_job(job: Any) -> None:
    """Log lines from here on carry the job's run and project (and the project's name,
    when ``job`` has it: a start's row)."""
    name = getattr(job, "project_name", None)
    structlog.contextvars.bind_contextvars(**job_ids(job), **({"project_name": name} if name is not None else {}))

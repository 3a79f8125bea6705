"""A job attempt's start: the job row marked running with its attempt counted, its
project checked, its options resolved and its project lock taken, in one transaction
(one statement on PostgreSQL, ``statements.START``). A start may end the job at once
instead: its project is gone or disabled, its options are invalid, or its last
attempt died with its worker."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from orchestration.consolidation.options import ConsolidationOptions, InvalidOptions, resolve_options
from orchestration.consolidation.projects import ProjectDisabled, ProjectGone, check_project
from orchestration.jobs import heartbeat, statements, transitions
from orchestration.jobs.endings import fail
from orchestration.jobs.locks import Lease, ProjectBusy, job_of
from orchestration.jobs.outcomes import (
    AlreadyRunning,
    AttemptFailed,
    JobNotFound,
    JobOutcome,
    bind_job,
    describe,
    log_end,
    lost_error,
)
from orchestration.jobs.transitions import attempts_left
from orchestration.logs import get_logger
from orchestration.settings import Settings
from orchestration.store import db
from orchestration.store.models import ConsolidationJob, Project, ProjectLock, table_of
from orchestration.store.statuses import FINISHED_JOB_STATUSES, PassMode
from orchestration.store.types import utcnow

log = get_logger("orchestration.jobs.lifecycle")


@dataclass
class Attempt:
    """A started attempt: its project lock is taken."""

    job_id: uuid.UUID
    project_id: uuid.UUID
    number: int
    options: ConsolidationOptions
    lease: Lease
    started: float  # time.monotonic()
    full: bool = False  # a full pass was asked for when the job was created (--full)


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
        _JOBS.c.mode,
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
    if statements.one_statement():
        started = _start_in_one_statement(job_id, settings, celery_task_id, force)
        if started is not None:
            return started
    return start_portable(job_id, settings, celery_task_id, force)


def _start_in_one_statement(
    job_id: uuid.UUID, settings: Settings, celery_task_id: str | None, force: bool
) -> Attempt | JobOutcome | None:
    now = utcnow()
    with db.statement_scope() as connection:
        row = statements.start(
            connection, job_id, now, max_attempts=attempts_left(0, settings), celery_task_id=celery_task_id, force=force
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
    return Attempt(row.id, row.project_id, row.number, options, lease, time.monotonic(), row.mode == PassMode.FULL)


def start_portable(
    job_id: uuid.UUID, settings: Settings, celery_task_id: str | None, force: bool
) -> Attempt | JobOutcome:
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
        if not attempts_left(row, settings):
            # Every start counts, and an attempt that ended normally never leaves the
            # job unfinished with no attempts left: the last one died with its worker.
            return _end_now(session, row, transitions.FAIL, lost_error(row.attempts, settings), now, count=False)
        try:
            if row.project_id is None:
                raise ProjectGone(f"the project of job {job_id} was deleted")
            check_project(row if row.project_exists else None, row.project_id, force=force)
            options = resolve_options(row.consolidation_options)
        except (ProjectGone, ProjectDisabled) as exc:
            return _end_now(session, row, transitions.SKIP, str(exc), now)
        except InvalidOptions as exc:
            return _end_now(session, row, transitions.FAIL, str(exc), now)
        number = row.attempts + 1
        values = {"celery_task_id": celery_task_id or row.celery_task_id, "options": options.as_dict()}
        transitions.apply(session, transitions.starting(row.status), row.id, row.attempts, now, values)
        lease = Lease(row.project_id, row.id, number)
        attempt = Attempt(row.id, row.project_id, number, options, lease, 0.0, row.mode == PassMode.FULL)
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


def _end_now(
    session: Session, row: Any, transition: transitions.Transition, error: str, now: datetime, count: bool = True
) -> JobOutcome:
    """A job that ends at its start (``row``: the start's read of it); the start counts
    as an attempt unless ``count`` is false."""
    attempt = row.attempts
    if count:
        transitions.apply(session, transitions.starting(row.status), row.id, attempt, now)
        attempt += 1
    transitions.apply(session, transition, row.id, attempt, now, {"error_message": error})
    outcome = JobOutcome(str(row.id), str(transition.target), error)
    log_end(outcome, attempt)
    return outcome

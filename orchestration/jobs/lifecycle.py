"""One attempt of a job, from its start to its end, as the ``consolidation.run_project``
task and ``orchestration consolidate`` run it (:func:`run`). Every change of the job's
status goes through ``orchestration.jobs.transitions``.

An attempt with nothing to apply costs three round trips on PostgreSQL: the start
(``statements.START``: job row, attempt counted, lock taken), the plan read, and the
end (``statements.FINISH``: job completed, lock given back). The portable path
(SQLite, and PostgreSQL when a start finds anything unusual) does the same in
transactions of several statements. Each batch of changes adds one transaction,
fenced on the attempt's number: a newer attempt that took over, or an end the job
was given meanwhile (the reaper, its run's finalization), makes the older attempt's
writes fail with :class:`Superseded`.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from sqlalchemy import update
from sqlalchemy.engine import CursorResult
from sqlalchemy.orm import Session

from orchestration.consolidation import applying, passes, planning
from orchestration.consolidation.result import ConsolidationResult
from orchestration.jobs import statements, transitions
from orchestration.jobs.creation import create_job, create_jobs, effective_options
from orchestration.jobs.endings import end, fail, mark_retrying, running_job, spare_attempt
from orchestration.jobs.outcomes import (
    AlreadyRunning,
    AttemptFailed,
    JobNotFound,
    JobOutcome,
    Superseded,
    describe,
    job_ids,
)
from orchestration.jobs.progress import ProgressRecorder
from orchestration.jobs.starts import Attempt, begin_attempt
from orchestration.jobs.transitions import Refused
from orchestration.logs import get_logger
from orchestration.settings import Settings
from orchestration.store import db
from orchestration.store.models import ConsolidationJob
from orchestration.store.statuses import JobStatus
from orchestration.store.types import utcnow

__all__ = [
    "AlreadyRunning",
    "Attempt",
    "AttemptFailed",
    "JobNotFound",
    "JobOutcome",
    "Superseded",
    "begin_attempt",
    "consolidate",
    "create_job",
    "create_jobs",
    "describe",
    "effective_options",
    "end",
    "fail",
    "job_ids",
    "mark_retrying",
    "run",
    "running_job",
    "spare_attempt",
]

log = get_logger(__name__)
Progress = applying.Progress


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


def consolidate(attempt: Attempt, *, progress: Progress | None = None, changed_by: str = "system") -> JobOutcome:
    """Consolidate the attempt's project: plan, apply batch by batch (when there is
    anything to apply), then record the job completed and give its lock back in one
    transaction. Any error but :class:`Superseded` becomes :class:`AttemptFailed`,
    with the lock given back."""
    report = progress or ProgressRecorder(attempt.job_id)
    try:
        with attempt.lease.held():
            with db.statement_scope() as connection:
                pass_ = passes.choose(connection, attempt.project_id, attempt.options, utcnow(), full=attempt.full)
                planned = planning.plan(connection, attempt.project_id, attempt.options, utcnow(), pass_)
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
            counters = _finish(attempt, result, planned.recorded(result.conflicts))
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
        mode=result.mode,
        memories_new=result.memories_new,
        full_reason=result.full_reason,
        **counters,
    )
    return JobOutcome(str(attempt.job_id), JobStatus.COMPLETED)


def _add_counts(session: Session, attempt: Attempt, increments: dict[str, int]) -> None:
    """Add a batch's counts to its job, in the batch's transaction (so they include what
    earlier partial attempts applied). Fenced on the attempt, still running:
    :class:`Superseded` rolls the batch back."""
    values = {name: getattr(ConsolidationJob, name) + amount for name, amount in increments.items()}
    updated = session.execute(
        update(ConsolidationJob)
        .where(
            ConsolidationJob.id == attempt.job_id,
            ConsolidationJob.attempts == attempt.number,
            ConsolidationJob.status == JobStatus.RUNNING,
        )
        .values(heartbeat_at=utcnow(), **values)
    )
    if isinstance(updated, CursorResult) and updated.rowcount == 0:
        raise Superseded(f"job {attempt.job_id}: attempt {attempt.number} was superseded or ended")


def _finish(attempt: Attempt, result: ConsolidationResult, recorded: dict[str, Any]) -> dict[str, int]:
    """Record the job completed (fenced) with what it left alone and what its pass
    recorded for the next one (``Plan.recorded``), and give its lock back, in one
    transaction (one statement on PostgreSQL); returns its counters."""
    left_alone = {name: getattr(result, name) for name in LEFT_ALONE}
    if statements.one_statement():
        with db.statement_scope() as connection:
            row = statements.finish(
                connection,
                attempt.job_id,
                attempt.number,
                attempt.project_id,
                attempt.lease.holder,
                utcnow(),
                {**left_alone, **RECORDED_NONE, **recorded},
            )
        if row is None:
            raise Superseded(f"job {attempt.job_id}: attempt {attempt.number} was superseded or ended")
        return dict(row._asdict())
    try:
        with db.session_scope() as session:
            row = transitions.apply(
                session,
                transitions.COMPLETE,
                attempt.job_id,
                attempt.number,
                utcnow(),
                {**left_alone, **recorded, "progress": 1.0, "error_message": None},
                returning=COUNTERS,
            )
    except Refused as exc:
        raise Superseded(str(exc)) from None
    return {column.key: getattr(row, column.key) for column in COUNTERS}


# What a completed job left alone, kept on its row (and in ``job.completed``).
LEFT_ALONE = ("skipped_invalid", "conflicts", "pairs_kept_apart")
# A pass that recorded nothing (``Plan.recorded``) leaves these empty.
RECORDED_NONE = dict.fromkeys(("mode", "memories_new", "full_reason", "watermark", "signature", "irregular_ids"))
# What a completed job's row returns to ``job.completed``.
COUNTERS = (
    ConsolidationJob.memories_before,
    ConsolidationJob.memories_after,
    ConsolidationJob.clusters_found,
    ConsolidationJob.memories_merged,
    ConsolidationJob.memories_archived,
)

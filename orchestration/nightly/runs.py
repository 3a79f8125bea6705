"""Runs: claiming a night's run, creating its jobs, and writing its summary.

A scheduled run is claimed with an ``INSERT ... ON CONFLICT DO NOTHING`` on the
unique ``scheduled_for``: whichever beat tick, restarted beat or redelivered message
comes first owns the slot, every other one sees that it lost and starts nothing.
The summary is always computed from the job rows, never from chord results alone,
so finalizing twice (or from the reaper) gives the same answer.

A retry (``runs retry``) is :func:`start_run` with ``projects`` and ``retry_of``: it
runs just those projects (enabled ones, whatever their threshold: the operator named
them), which ``orchestration.nightly.retries`` chose, and links the two runs.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from orchestration.jobs import transitions
from orchestration.jobs.creation import create_jobs
from orchestration.jobs.endings import end
from orchestration.nightly.eligibility import check_projects
from orchestration.nightly.retries import link_retry
from orchestration.store.db import session_scope
from orchestration.store.documents import row_dict
from orchestration.store.models import ConsolidationJob, ConsolidationRun, Project, table_of
from orchestration.store.statuses import UNFINISHED_JOB_STATUSES, JobStatus, RunStatus, TriggerType
from orchestration.store.types import utcnow

COUNTERS = ("memories_before", "memories_after", "memories_merged", "memories_archived")
# What a run's summary notes at its start and keeps when it is finalized.
# The note of a run whose messages the broker lost (their jobs were sent again).
LOST_MESSAGES = "messages_lost_at"
KEPT_NOTES = ("schedule_mismatch", "retry_of", "retried_by", LOST_MESSAGES)


@dataclass
class StartedRun:
    run_id: uuid.UUID
    trigger_type: TriggerType
    job_ids: list[uuid.UUID] = field(default_factory=list)
    checked: int = 0
    eligible: int = 0
    skipped: int = 0


def claim_run(
    session: Session, trigger_type: TriggerType, slot: datetime | None, now: datetime, run_id: uuid.UUID | None = None
) -> uuid.UUID | None:
    """Insert the run row; ``None`` when a scheduled run already owns ``slot``."""
    run_id = run_id or uuid.uuid4()
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    stmt = (
        insert(table_of(ConsolidationRun))
        .values(id=run_id, trigger_type=trigger_type, scheduled_for=slot, status=RunStatus.RUNNING, started_at=now)
        .on_conflict_do_nothing()
        .returning(table_of(ConsolidationRun).c.id)
    )
    return session.execute(stmt).scalar_one_or_none()


def start_run(
    session: Session,
    trigger_type: TriggerType,
    slot: datetime | None,
    default_threshold: int,
    now: datetime | None = None,
    run_id: uuid.UUID | None = None,
    notes: dict[str, Any] | None = None,
    projects: Sequence[uuid.UUID] | None = None,
    retry_of: uuid.UUID | None = None,
    full: bool = False,
) -> StartedRun | None:
    """Claim the run, pick the eligible projects and create one pending job for each,
    largest project first: the chord is sent in that order, so the longest jobs start
    first and the night's tail is short. The caller commits before dispatching the jobs.

    ``projects`` restricts the run to those projects, each enabled one whatever its
    threshold (a retry); ``retry_of`` links the run and the run it retries. ``full``:
    every job makes a full pass (``run-now --full``)."""
    now = now or utcnow()
    claimed = claim_run(session, trigger_type, slot, now, run_id)
    if claimed is None:
        return None
    eligibility = check_projects(session, default_threshold, only=projects)
    started = StartedRun(
        claimed,
        trigger_type,
        checked=eligibility.checked,
        eligible=len(eligibility.eligible),
        skipped=eligibility.skipped,
    )
    started.job_ids = create_jobs(
        session, eligibility.eligible, run_id=claimed, trigger_type=trigger_type, now=now, full=full
    )
    run = session.get_one(ConsolidationRun, claimed)
    run.projects_checked = started.checked
    run.projects_eligible = started.eligible
    run.projects_skipped = started.skipped
    run.jobs_total = len(started.job_ids)
    if notes:
        run.summary = {**(run.summary or {}), **notes}
    if retry_of is not None:
        link_retry(session, retry_of, run)
    return started


@dataclass
class Claim:
    """What a ``run_scheduled`` message found: it ``started`` a run; it is the
    redelivery of a claim whose process died before sending the chord
    (``redispatched``); or the slot's run exists already (``duplicate``)."""

    status: str
    run_id: uuid.UUID | None
    dispatch: list[uuid.UUID] | None = None  # the jobs to send in the run's chord
    started: StartedRun | None = None

    def as_dict(self) -> dict[str, Any]:
        document: dict[str, Any] = {"status": self.status, "run_id": str(self.run_id) if self.run_id else None}
        if self.started is not None:
            document["jobs"] = len(self.started.job_ids)
        return document


def claim(
    session: Session,
    trigger_type: TriggerType,
    slot: datetime | None,
    default_threshold: int,
    now: datetime,
    run_id: uuid.UUID | None = None,
    notes: dict[str, Any] | None = None,
    projects: Sequence[uuid.UUID] | None = None,
    retry_of: uuid.UUID | None = None,
    full: bool = False,
) -> Claim:
    """Start the run of ``slot`` (or a manual run), or say why this message starts none.
    ``notes`` go into the new run's summary (they are kept when it is finalized);
    ``projects`` and ``retry_of`` make it a retry (:func:`start_run`)."""
    started = start_run(
        session,
        trigger_type,
        slot,
        default_threshold,
        now,
        run_id=run_id,
        notes=notes,
        projects=projects,
        retry_of=retry_of,
        full=full,
    )
    if started is not None:
        return Claim("started", started.run_id, started.job_ids, started)
    existing = existing_run_for_slot(session, slot) if slot else None
    if existing is None:
        return Claim("duplicate", run_id)
    orphaned = undispatched_jobs(session, existing, now)
    return Claim("duplicate" if orphaned is None else "redispatched", existing.id, orphaned)


def existing_run_for_slot(session: Session, slot: datetime) -> ConsolidationRun | None:
    return session.scalar(select(ConsolidationRun).where(ConsolidationRun.scheduled_for == slot))


# A claimed run whose chord was not sent this long after its start was orphaned by a
# crash between the commit and the dispatch (a live claimer sends it within seconds).
DISPATCH_GRACE = timedelta(minutes=5)


def mark_dispatched(session: Session, run_id: uuid.UUID, now: datetime) -> None:
    # Locked: the chord may already be finalizing the run and writing its summary.
    run = session.get(ConsolidationRun, run_id, with_for_update=True)
    if run is not None and run.status == RunStatus.RUNNING:
        run.dispatched_at = now


def dispatched_before(run: ConsolidationRun, moment: datetime) -> bool:
    """Whether the run's chord was sent before ``moment``."""
    return run.dispatched_at is not None and run.dispatched_at < moment


def undispatched_jobs(session: Session, run: ConsolidationRun, now: datetime) -> list[uuid.UUID] | None:
    """The pending jobs of a run whose chord was never sent, or ``None`` if it was (or
    may still be) sent."""
    if run.status != RunStatus.RUNNING or run.dispatched_at is not None or now - run.started_at < DISPATCH_GRACE:
        return None
    return list(
        session.scalars(
            select(ConsolidationJob.id)
            .where(ConsolidationJob.run_id == run.id, ConsolidationJob.status == JobStatus.PENDING)
            .order_by(ConsolidationJob.created_at, ConsolidationJob.id)
        )
    )


def chord_order(session: Session, run_id: uuid.UUID) -> list[uuid.UUID]:
    """A run's jobs in the order of its chord's header: the order they were created in,
    largest project first (see :func:`start_run`). A job re-sent into the chord takes
    its own place again."""
    return list(
        session.scalars(
            select(ConsolidationJob.id)
            .where(ConsolidationJob.run_id == run_id)
            .order_by(ConsolidationJob.created_at, ConsolidationJob.id)
        )
    )


def run_status(statuses: list[str]) -> RunStatus:
    """A run's status from its jobs' statuses: failed if all failed, partial if some did."""
    failed = statuses.count(JobStatus.FAILED)
    if statuses and failed == len(statuses):
        return RunStatus.FAILED
    return RunStatus.PARTIAL if failed else RunStatus.COMPLETED


def waiting_for_jobs(session: Session, run_id: uuid.UUID, now: datetime, deadline_s: int) -> bool:
    """True while the run is open, younger than its deadline, and has unfinished jobs."""
    run = session.get(ConsolidationRun, run_id)
    if run is None or run.status != RunStatus.RUNNING or now - run.started_at > timedelta(seconds=deadline_s):
        return False
    return (
        session.scalar(
            select(func.count())
            .select_from(ConsolidationJob)
            .where(ConsolidationJob.run_id == run_id, ConsolidationJob.status.in_(UNFINISHED_JOB_STATUSES))
        )
        or 0
    ) > 0


def mark_failed(
    session: Session, run_id: uuid.UUID, error: str, now: datetime | None = None
) -> ConsolidationRun | None:
    """Last resort when the summary cannot be computed: close the run as ``failed``."""
    run = session.get(ConsolidationRun, run_id, with_for_update=True)
    if run is None or run.status != RunStatus.RUNNING:
        return None
    run.status, run.error_message, run.finished_at = RunStatus.FAILED, error, now or utcnow()
    return run


def finalize(
    session: Session,
    run_id: uuid.UUID,
    now: datetime | None = None,
    unfinished_error: str | None = None,
    callback_error: str | None = None,
) -> ConsolidationRun | None:
    """Write the summary from the job rows and close the run. Returns the run if this
    call finished it, ``None`` if it was already finished (idempotent).

    Jobs still unfinished are failed with ``unfinished_error`` (the reaper's case).
    ``callback_error`` (the chord reported an error) is kept in the summary; the status
    still comes from the jobs, which are the truth.
    """
    now = now or utcnow()
    run = session.get(ConsolidationRun, run_id, with_for_update=True)
    if run is None or run.status != RunStatus.RUNNING:
        return None
    # The jobs locked: a start or an end committing now waits for the summary, rather
    # than making the fail below find its job changed.
    rows = session.execute(
        select(ConsolidationJob, Project.name)
        .outerjoin(Project, Project.id == ConsolidationJob.project_id)
        .where(ConsolidationJob.run_id == run_id)
        .order_by(ConsolidationJob.created_at, ConsolidationJob.id)
        .with_for_update(of=ConsolidationJob)
    ).all()
    for job, _ in rows:
        if job.status in UNFINISHED_JOB_STATUSES:
            error = unfinished_error or f"job was still {job.status} when the run was finalized"
            end(session, job, transitions.FAIL, error, now)
    statuses = [job.status for job, _ in rows]
    run.jobs_total = len(rows)
    run.jobs_completed = statuses.count(JobStatus.COMPLETED)
    run.jobs_failed = statuses.count(JobStatus.FAILED)
    for name in COUNTERS:
        setattr(run, name, sum(getattr(job, name) for job, _ in rows))
    run.status = run_status(statuses)
    run.error_message = f"{run.jobs_failed} of {run.jobs_total} jobs failed" if run.jobs_failed else None
    run.finished_at = now
    kept = {key: value for key, value in (run.summary or {}).items() if key in KEPT_NOTES}
    run.summary = {
        **kept,
        "duration_s": round((now - run.started_at).total_seconds(), 3),
        "jobs_skipped": statuses.count(JobStatus.SKIPPED),
        "clusters_found": sum(job.clusters_found for job, _ in rows),
        "failed_jobs": [_job_line(job, name) for job, name in rows if job.status == JobStatus.FAILED],
        "skipped_jobs": [_job_line(job, name) for job, name in rows if job.status == JobStatus.SKIPPED],
    }
    if callback_error:
        run.summary["callback_error"] = callback_error
    return run


def _job_line(job: ConsolidationJob, project_name: str | None) -> dict[str, Any]:
    return {
        "job_id": str(job.id),
        "project_id": str(job.project_id) if job.project_id else None,
        "project_name": project_name,
        "attempts": job.attempts,
        "error": job.error_message,
    }


def summary_document(run: ConsolidationRun) -> dict[str, Any]:
    """The run summary as notified and printed: the run's columns."""
    return row_dict(run)


def finished_fields(run: ConsolidationRun) -> dict[str, Any]:
    """Fields of the ``run.finished`` event."""
    return {
        "status": run.status,
        "trigger_type": run.trigger_type,
        "scheduled_for": run.scheduled_for.isoformat() if run.scheduled_for else None,
        "projects_checked": run.projects_checked,
        "projects_eligible": run.projects_eligible,
        "projects_skipped": run.projects_skipped,
        "jobs_total": run.jobs_total,
        "jobs_completed": run.jobs_completed,
        "jobs_failed": run.jobs_failed,
        "memories_before": run.memories_before,
        "memories_after": run.memories_after,
        "memories_merged": run.memories_merged,
        "memories_archived": run.memories_archived,
        "duration_s": (run.summary or {}).get("duration_s"),
        "error": run.error_message,
    }


def wait_for_finish(
    find: Callable[[Session], ConsolidationRun | None], timeout: float, interval: float = 0.2
) -> ConsolidationRun | None:
    """Poll until ``find(session)`` returns a run that is no longer running; ``None`` on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with session_scope() as session:
            run = find(session)
        if run is not None and run.status != RunStatus.RUNNING:
            return run
        time.sleep(interval)
    return None

"""The reaper: no job stays ``running`` after its worker vanished, and no run stays
``running`` past ``ORCHESTRATION_RUN_DEADLINE``."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from orchestration import jobs, runs
from orchestration.models import UNFINISHED_JOB_STATUSES, ConsolidationJob, ConsolidationRun
from orchestration.settings import Settings

# A running job writes its heartbeat at least every batch; allow this much on top of
# its hard time limit before calling its worker lost.
HEARTBEAT_MARGIN = timedelta(minutes=5)


@dataclass
class Reaped:
    jobs: list[ConsolidationJob] = field(default_factory=list)
    runs: list[tuple[ConsolidationRun, str]] = field(default_factory=list)


def reap(session: Session, settings: Settings, now: datetime) -> Reaped:
    reaped = Reaped()
    running_cutoff = now - timedelta(seconds=settings.job_hard_limit) - HEARTBEAT_MARGIN
    # A retrying job legitimately sits still for up to the longest backoff.
    retrying_cutoff = running_cutoff - timedelta(seconds=settings.retry_backoff_max)
    lost = session.scalars(
        select(ConsolidationJob).where(
            ((ConsolidationJob.status == "running") & (ConsolidationJob.heartbeat_at < running_cutoff))
            | ((ConsolidationJob.status == "retrying") & (ConsolidationJob.heartbeat_at < retrying_cutoff))
        )
    ).all()
    for job in lost:
        jobs.close_unfinished(session, job, "failed",
                              f"worker lost: no heartbeat since {job.heartbeat_at.isoformat()}", now)
        reaped.jobs.append(job)
    session.flush()
    deadline = now - timedelta(seconds=settings.run_deadline)
    overdue = session.scalars(
        select(ConsolidationRun.id).where(ConsolidationRun.status == "running", ConsolidationRun.started_at < deadline)
    ).all()
    for run_id in overdue:
        _finalize(session, reaped, run_id, now, "deadline",
                  f"run deadline of {settings.run_deadline}s passed before the job finished")
    # Every job finished a while ago but the chord callback never closed the run.
    unfinished = select(ConsolidationJob.id).where(
        ConsolidationJob.run_id == ConsolidationRun.id, ConsolidationJob.status.in_(UNFINISHED_JOB_STATUSES)
    )
    recent = select(ConsolidationJob.id).where(
        ConsolidationJob.run_id == ConsolidationRun.id, ConsolidationJob.completed_at >= now - HEARTBEAT_MARGIN
    )
    orphaned = session.scalars(
        select(ConsolidationRun.id).where(
            ConsolidationRun.status == "running",
            ConsolidationRun.started_at < now - HEARTBEAT_MARGIN,
            ~unfinished.exists(),
            ~recent.exists(),
        )
    ).all()
    for run_id in orphaned:
        _finalize(session, reaped, run_id, now, "callback_missing", None)
    return reaped


def _finalize(session: Session, reaped: Reaped, run_id: uuid.UUID, now: datetime, reason: str,
              error: str | None) -> None:
    run = runs.finalize(session, run_id, now, unfinished_error=error)
    if run is not None:
        reaped.runs.append((run, reason))

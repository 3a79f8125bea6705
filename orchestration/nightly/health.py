"""The dead-man check behind ``orchestration health``.

Exit codes: 0 the latest scheduled run completed within ``max_age``; 1 it was partial
or failed; 2 there is none, it is too old, it is still running past the deadline, it
is stuck (:func:`stuck_after`), beat and the workers disagree on the schedule, or the
beat missed the latest slot that should have run by now. A run for a slot later than
now (claimed by hand before its time) never counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from orchestration.nightly.schedule import previous_slot
from orchestration.settings import Settings
from orchestration.store.models import ConsolidationJob, ConsolidationRun
from orchestration.store.statuses import RunStatus, TriggerType

# How long after a slot its run may take to appear before the slot counts as missed.
SLOT_GRACE = timedelta(minutes=30)


@dataclass
class Health:
    code: int
    message: str
    run: ConsolidationRun | None = None
    expected_slot: datetime | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "status": {0: "ok", 1: "degraded", 2: "critical"}[self.code],
            "message": self.message,
            "run_id": str(self.run.id) if self.run else None,
            "run_status": self.run.status if self.run else None,
            "scheduled_for": self.run.scheduled_for.isoformat() if self.run and self.run.scheduled_for else None,
            "finished_at": self.run.finished_at.isoformat() if self.run and self.run.finished_at else None,
            "expected_slot": self.expected_slot.isoformat() if self.expected_slot else None,
        }


def stuck_after(settings: Settings) -> timedelta:
    """How long an open run may go without any sign of progress before it is stuck: no
    job started, beat, wrote a batch or ended. A job waiting for its retry beats from the
    worker that holds it, and a queued job's run shows progress as other jobs end, so
    silence this long means no worker is working on the run: 15 minutes, or the longest
    retry backoff plus five minutes if that is longer."""
    return max(timedelta(minutes=15), timedelta(seconds=settings.retry_backoff_max) + timedelta(minutes=5))


def last_progress(session: Session, run: ConsolidationRun) -> datetime:
    """The latest sign of progress of the run: its start, or a job's start, heartbeat or end."""
    jobs = ConsolidationJob
    moments = session.execute(
        select(func.max(jobs.started_at), func.max(jobs.heartbeat_at), func.max(jobs.completed_at)).where(
            jobs.run_id == run.id
        )
    ).one()
    return max([run.started_at, *(moment for moment in moments if moment is not None)])


def check_health(session: Session, settings: Settings, now: datetime, max_age: timedelta) -> Health:
    run = session.scalar(
        select(ConsolidationRun)
        .where(ConsolidationRun.trigger_type == TriggerType.SCHEDULED, ConsolidationRun.scheduled_for <= now)
        .order_by(ConsolidationRun.scheduled_for.desc())
        .limit(1)
    )
    expected = previous_slot(settings.crontab, now - SLOT_GRACE, settings.tz)
    if run is None:
        return Health(2, "no scheduled run has ever been recorded", None, expected)
    slot = run.scheduled_for
    assert slot is not None  # a scheduled run always has its slot
    if slot < expected:
        return Health(
            2,
            f"missed slot {expected.isoformat()}: no run since {slot.isoformat()} (is beat running?)",
            run,
            expected,
        )
    mismatch = run.summary.get("schedule_mismatch") if isinstance(run.summary, dict) else None
    if mismatch:
        return Health(
            2,
            f"beat's schedule ({mismatch['beat']}) differs from the workers' ({mismatch['worker']}): give both "
            "the same ORCHESTRATION_SCHEDULE and ORCHESTRATION_TIMEZONE",
            run,
            expected,
        )
    if run.status == RunStatus.RUNNING:
        if now - run.started_at > timedelta(seconds=settings.run_deadline):
            return Health(2, f"run {run.id} still running past the deadline of {settings.run_deadline}s", run, expected)
        if now - slot > max_age:
            return Health(2, f"run {run.id} still running and older than {max_age}", run, expected)
        silent = now - last_progress(session, run)
        if silent > stuck_after(settings):
            return Health(
                2,
                f"run {run.id} is stuck: no job progress or heartbeat for {_minutes(silent)} min "
                "(are the workers running and reaching the database and the broker?)",
                run,
                expected,
            )
        return Health(0, f"run {run.id} for {slot.isoformat()} is running", run, expected)
    if now - (run.finished_at or run.started_at) > max_age:
        return Health(2, f"latest scheduled run {run.id} finished more than {max_age} ago", run, expected)
    if run.status == RunStatus.COMPLETED:
        return Health(0, f"run {run.id} for {slot.isoformat()} completed", run, expected)
    return Health(1, f"run {run.id} for {slot.isoformat()} {run.status}: {run.error_message}", run, expected)


def _minutes(span: timedelta) -> int:
    return int(span.total_seconds() // 60)

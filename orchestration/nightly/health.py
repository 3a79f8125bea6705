"""The dead-man check behind ``orchestration health``.

Exit codes: 0 the latest scheduled run completed within ``max_age``; 1 it was partial
or failed; 2 there is none, it is too old, it is still running past the deadline, or
the beat missed the latest slot that should have run by now.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from orchestration.nightly.schedule import previous_slot
from orchestration.settings import Settings
from orchestration.store.models import ConsolidationRun
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


def check_health(session: Session, settings: Settings, now: datetime, max_age: timedelta) -> Health:
    run = session.scalar(
        select(ConsolidationRun)
        .where(ConsolidationRun.trigger_type == TriggerType.SCHEDULED)
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
    if run.status == RunStatus.RUNNING:
        if now - run.started_at > timedelta(seconds=settings.run_deadline):
            return Health(2, f"run {run.id} still running past the deadline of {settings.run_deadline}s", run, expected)
        if now - slot > max_age:
            return Health(2, f"run {run.id} still running and older than {max_age}", run, expected)
        return Health(0, f"run {run.id} for {slot.isoformat()} is running", run, expected)
    if now - (run.finished_at or run.started_at) > max_age:
        return Health(2, f"latest scheduled run {run.id} finished more than {max_age} ago", run, expected)
    if run.status == RunStatus.COMPLETED:
        return Health(0, f"run {run.id} for {slot.isoformat()} completed", run, expected)
    return Health(1, f"run {run.id} for {slot.isoformat()} {run.status}: {run.error_message}", run, expected)

"""``orchestration health`` without the command line: what it pages for."""

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import update

from orchestration.demo.seed import seed
from orchestration.nightly import health, runs
from orchestration.settings import load_settings
from orchestration.store import db
from orchestration.store.models import ConsolidationJob
from orchestration.store.statuses import TriggerType

SETTINGS = load_settings({})
SLOT = datetime(2026, 11, 27, 2, tzinfo=UTC)
MAX_AGE = timedelta(hours=26)


def _start(slot=SLOT, notes=None):
    with db.session_scope() as session:
        seed(session, 3, 40, seed=3, dim=8)
        return runs.start_run(session, TriggerType.SCHEDULED, slot, 10, slot + timedelta(seconds=1), notes=notes)


def _check(now):
    with db.session_scope() as session:
        return health.check_health(session, SETTINGS, now, MAX_AGE)


def test_a_running_run_with_recent_progress_is_ok_and_a_silent_one_is_stuck(database):
    started = _start()
    bound = health.stuck_after(SETTINGS)
    assert _check(SLOT + bound - timedelta(minutes=1)).code == 0
    stuck = _check(SLOT + bound + timedelta(minutes=1))
    assert stuck.code == 2 and "is stuck: no job progress or heartbeat for" in stuck.message
    with db.session_scope() as session:  # a job beats: the run moves again
        session.execute(
            update(ConsolidationJob)
            .where(ConsolidationJob.id == started.job_ids[0])
            .values(heartbeat_at=SLOT + bound + timedelta(seconds=30))
        )
    assert _check(SLOT + bound + timedelta(minutes=1)).code == 0


def test_the_stuck_bound_outlasts_the_longest_retry_backoff():
    """A job waiting out its longest backoff is not taken for a stuck run."""
    for backoff in (60, 600, 3600):
        settings = load_settings({"ORCHESTRATION_RETRY_BACKOFF_MAX": str(backoff)})
        assert health.stuck_after(settings) > timedelta(seconds=backoff)


def test_a_run_for_a_future_slot_never_satisfies_health(database):
    """Claimed by hand before its time, it would otherwise hide the nights before it."""
    started = _start(slot=SLOT)
    with db.session_scope() as session:
        runs.finalize(session, started.run_id, SLOT + timedelta(minutes=5))
        runs.start_run(session, TriggerType.SCHEDULED, SLOT + timedelta(days=2), 10, SLOT + timedelta(minutes=6))
    result = _check(SLOT + timedelta(days=1, hours=1))  # the night of SLOT + 1 day was missed
    assert result.code == 2 and "missed slot" in result.message
    assert result.run is not None and result.run.scheduled_for == SLOT


@pytest.mark.parametrize("status_after", ["running", "completed"])
def test_beat_and_workers_on_different_schedules_fail_health(database, status_after):
    mismatch = {"schedule_mismatch": {"beat": "0 3 * * * UTC", "worker": "0 2 * * * UTC"}}
    started = _start(notes=mismatch)
    if status_after == "completed":
        with db.session_scope() as session:
            run = runs.finalize(session, started.run_id, SLOT + timedelta(minutes=5))
            assert run is not None and run.summary["schedule_mismatch"] == mismatch["schedule_mismatch"]
    result = _check(SLOT + timedelta(minutes=10))
    assert result.code == 2 and "beat's schedule (0 3 * * * UTC) differs from the workers' (0 2 * * * UTC)" in (
        result.message
    )

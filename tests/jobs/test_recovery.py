"""An attempt whose process died, as the worker's main process reports it."""

import pytest
from sqlalchemy import update

from orchestration.jobs import lifecycle, recovery
from orchestration.store import db
from orchestration.store.models import ConsolidationJob, ProjectLock
from support import job_row as job
from support import lock_holders


@pytest.fixture
def database_url(three_ways: str) -> str:
    return three_ways


def test_a_dead_child_frees_the_lock_and_the_job_runs_again(attempt, settings):
    recovery.worker_lost(attempt.job_id, settings, "Worker exited prematurely: signal 9 (SIGKILL)")
    row = job(attempt.job_id)
    assert row.status == "retrying" and lock_holders() == []
    assert row.error_message == "worker lost during attempt 1: Worker exited prematurely: signal 9 (SIGKILL)"
    again = lifecycle.begin_attempt(attempt.job_id, settings)  # the requeued message starts at once
    assert isinstance(again, lifecycle.Attempt) and again.number == 2
    assert lock_holders() == [f"{attempt.job_id}#2"]
    assert lifecycle.consolidate(again).status == "completed"


def test_a_job_whose_last_attempt_died_fails_saying_what_to_do(attempt, settings):
    with db.session_scope() as session:
        session.execute(update(ConsolidationJob).where(ConsolidationJob.id == attempt.job_id).values(attempts=4))
        session.execute(update(ProjectLock).values(holder=f"{attempt.job_id}#4"))
    recovery.worker_lost(attempt.job_id, settings, "Worker exited prematurely: signal 9 (SIGKILL)")
    row = job(attempt.job_id)
    assert row.status == "failed" and row.completed_at is not None and lock_holders() == []
    assert row.error_message.startswith("worker died during attempt 4 of 4 (ORCHESTRATION_MAX_RETRIES=3)")
    assert "more memory" in row.error_message and "docs/reliability.md" in row.error_message
    # The requeued message does nothing: the job has finished.
    outcome = lifecycle.begin_attempt(attempt.job_id, settings)
    assert outcome == lifecycle.JobOutcome(str(attempt.job_id), "failed", row.error_message)


def test_a_hard_time_limit_fails_the_job_at_once(attempt, settings):
    recovery.hard_time_limit(attempt.job_id, settings, "killed at the hard time limit of 1860s")
    row = job(attempt.job_id)
    assert row.status == "failed" and lock_holders() == []
    assert row.error_message.startswith("killed at the hard time limit of 1860s (ORCHESTRATION_JOB_TIME_LIMIT=1800")


def test_a_finished_job_ignores_a_late_report_of_its_worker(attempt, settings):
    assert lifecycle.consolidate(attempt).status == "completed"
    recovery.worker_lost(attempt.job_id, settings, "late")
    recovery.hard_time_limit(attempt.job_id, settings, "late")
    assert job(attempt.job_id).status == "completed"


def test_record_lost_retries_while_attempts_are_left(attempt, settings):
    with db.session_scope() as session:
        row = session.get_one(ConsolidationJob, attempt.job_id)
        assert recovery.record_lost(session, row, settings, row.started_at, "lost") == "retrying"
    assert lock_holders() == [] and job(attempt.job_id).error_message == "lost"

"""A job's attempts without Celery: a dead attempt recorded by the worker's main
process, the fence that stops an attempt superseded by a newer one, the hard limit."""

import uuid

import pytest
from sqlalchemy import select, update

from orchestration import consolidation, db, heartbeat, jobs, runs
from orchestration.dbtypes import utcnow
from orchestration.models import ConsolidationJob, ProjectLock
from orchestration.seed import seed
from orchestration.settings import load_settings
from support import fingerprint

SETTINGS = load_settings({})  # the production defaults: ORCHESTRATION_MAX_RETRIES=3


def _started_job(memories: int = 60) -> jobs.Attempt:
    with db.session_scope() as session:
        seed(session, 3, memories, seed=5, dim=16)
        started = runs.start_run(session, "manual", None, 10)
    attempt = jobs.begin_attempt(started.job_ids[0], SETTINGS)
    assert attempt is not None and attempt.ended is None
    return attempt


def _job(job_id: uuid.UUID) -> ConsolidationJob:
    with db.session_scope() as session:
        return session.get(ConsolidationJob, job_id)


def _locks() -> list[str]:
    with db.session_scope() as session:
        return list(session.scalars(select(ProjectLock.holder)))


def test_a_dead_child_frees_the_lock_and_the_job_runs_again(database):
    attempt = _started_job()
    jobs.worker_lost(attempt.job_id, SETTINGS, "Worker exited prematurely: signal 9 (SIGKILL)")
    job = _job(attempt.job_id)
    assert job.status == "retrying" and _locks() == []
    assert job.error_message == "worker lost during attempt 1: Worker exited prematurely: signal 9 (SIGKILL)"
    again = jobs.begin_attempt(attempt.job_id, SETTINGS)  # the requeued message starts at once
    assert again.number == 2 and again.ended is None and again.busy is None
    assert jobs.execute(again).status == "completed"


def test_a_job_whose_last_attempt_died_fails_saying_what_to_do(database):
    attempt = _started_job()
    with db.session_scope() as session:
        session.execute(update(ConsolidationJob).where(ConsolidationJob.id == attempt.job_id).values(attempts=4))
        session.execute(update(ProjectLock).values(holder=f"{attempt.job_id}#4"))
    jobs.worker_lost(attempt.job_id, SETTINGS, "Worker exited prematurely: signal 9 (SIGKILL)")
    job = _job(attempt.job_id)
    assert job.status == "failed" and job.completed_at is not None and _locks() == []
    assert job.error_message.startswith("worker died during attempt 4 of 4 (ORCHESTRATION_MAX_RETRIES=3)")
    assert "more memory" in job.error_message and "docs/reliability.md" in job.error_message
    assert jobs.begin_attempt(attempt.job_id, SETTINGS) is None  # the requeued message does nothing


def test_a_superseded_attempt_stops_before_writing(database, monkeypatch):
    monkeypatch.setattr(consolidation, "MERGE_BATCH", 1)
    old = _started_job()
    before = fingerprint()
    # The old attempt's process froze; its heartbeat went stale and a new attempt took over.
    with db.session_scope() as session:
        session.execute(update(ProjectLock).values(heartbeat_at=utcnow() - heartbeat.LOST_AFTER * 2))
    new = jobs.begin_attempt(old.job_id, SETTINGS)
    assert new.number == 2 and new.busy is None
    with pytest.raises(consolidation.Superseded, match="attempt 1 was superseded"):
        jobs.execute(old)  # thaws, and is fenced at its first write
    assert fingerprint() == before and _locks() == [f"{old.job_id}#2"]
    assert jobs.execute(new).status == "completed"
    job = _job(old.job_id)
    assert job.status == "completed" and job.attempts == 2 and job.clusters_found > 0


def test_a_hard_time_limit_fails_the_job_at_once(database):
    attempt = _started_job()
    jobs.hard_time_limit(attempt.job_id, SETTINGS, "killed at the hard time limit of 1860s")
    job = _job(attempt.job_id)
    assert job.status == "failed" and _locks() == []
    assert job.error_message.startswith("killed at the hard time limit of 1860s (ORCHESTRATION_JOB_TIME_LIMIT=1800")


def test_a_finished_job_ignores_a_late_report_of_its_worker(database):
    attempt = _started_job()
    assert jobs.execute(attempt).status == "completed"
    jobs.worker_lost(attempt.job_id, SETTINGS, "late")
    jobs.hard_time_limit(attempt.job_id, SETTINGS, "late")
    assert _job(attempt.job_id).status == "completed"

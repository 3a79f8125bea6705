"""An unreachable database is waited out, not counted as a failure (a real in-process
worker; the outage is injected where a statement would meet it)."""

import uuid
from datetime import timedelta

import psycopg
import pytest
from sqlalchemy.exc import OperationalError

from orchestration.consolidation import planning
from orchestration.demo.seed import seed
from orchestration.jobs import lifecycle
from orchestration.nightly import runs
from orchestration.settings import get_settings
from orchestration.store import db
from orchestration.store.models import ConsolidationJob
from orchestration.worker import base
from orchestration.worker.tasks import run_scheduled
from support import failing_first, jobs_by_project, run_for_slot

SLOT = "2026-11-27T02:00:00+00:00"


def unreachable_error() -> OperationalError:
    """What SQLAlchemy raises when PostgreSQL refuses the connection."""
    return OperationalError("SELECT 1", {}, psycopg.OperationalError("connection failed: Connection refused"))


def failing(real, times: int, when=lambda *args: True):
    """``real``, raising the outage's error on its first ``times`` calls that match ``when``."""
    return failing_first(real, times, unreachable_error, when)


@pytest.fixture
def quick_outages(monkeypatch):
    """Look again at once (the backoff's schedule is tested on its own below)."""
    monkeypatch.setattr(base, "outage_countdown", lambda retries: 0.05)


def _seed(projects=3):
    with db.session_scope() as session:
        return seed(session, projects, 60, seed=7, dim=32)


def _finished_run():
    return run_for_slot(SLOT)


_jobs = jobs_by_project


def test_the_database_is_recognised_as_unreachable():
    assert db.unreachable(unreachable_error())
    assert db.unreachable(RuntimeError("wrapped")) is False
    shutting_down = psycopg.errors.AdminShutdown("terminating connection due to administrator command")
    assert db.unreachable(OperationalError("SELECT 1", {}, shutting_down))
    # A server that answered with an error about the statement is not an outage.
    assert not db.unreachable(OperationalError("SELECT 1", {}, psycopg.errors.LockNotAvailable("lock timeout")))
    assert not db.unreachable(OperationalError("SELECT 1", {}, Exception("database is locked")))  # SQLite


def test_starts_that_meet_an_outage_are_waited_out_without_using_attempts(
    celery_worker, sqlite_database, settings_env, monkeypatch, quick_outages, captured_logs
):
    """More failed starts than ORCHESTRATION_MAX_RETRIES allows: none of them counts."""
    settings_env(max_retries="1")
    manifests = _seed()
    target = uuid.UUID(manifests[0].id)
    jobs_of_target: set[uuid.UUID] = set()
    monkeypatch.setattr(
        lifecycle, "begin_attempt", failing(lifecycle.begin_attempt, 5, lambda job_id, *_: job_id in jobs_of_target)
    )
    real_create = lifecycle.create_jobs

    def remember(session, projects, **kwargs):
        ids = real_create(session, projects, **kwargs)
        jobs_of_target.update(
            job_id for job_id, (project_id, _) in zip(ids, projects, strict=True) if project_id == target
        )
        return ids

    monkeypatch.setattr(runs, "create_jobs", remember)
    run_scheduled.apply_async(kwargs={"slot": SLOT})
    run = _finished_run()
    job = _jobs(run.id)[target]
    assert run.status == "completed" and job.status == "completed"
    assert job.attempts == 1 and job.error_message is None
    events = captured_logs()
    waits = [e for e in events if e["event"] == "database.unreachable"]
    assert len(waits) == 5 and all(e["job_id"] == str(job.id) and "Connection refused" in e["error"] for e in waits)
    assert not [e for e in events if e["event"] in ("job.retrying", "job.failed")]


def test_an_attempt_cut_short_by_an_outage_is_given_back(
    celery_worker, sqlite_database, settings_env, monkeypatch, quick_outages, captured_logs
):
    """The database goes away while the job plans: the attempt does not count and its
    retry takes the lock and the same attempt number again."""
    settings_env(max_retries="1")
    manifests = _seed()
    target = uuid.UUID(manifests[0].id)
    monkeypatch.setattr(
        planning, "plan", failing(planning.plan, 3, lambda _executor, project_id, *_: project_id == target)
    )
    run_scheduled.apply_async(kwargs={"slot": SLOT})
    run = _finished_run()
    job = _jobs(run.id)[target]
    assert run.status == "completed" and job.status == "completed" and job.attempts == 1
    assert job.memories_merged == sum(len(group) for group in manifests[0].groups)
    spared = [e for e in captured_logs() if e["event"] == "job.attempt_spared"]
    assert [e["attempt"] for e in spared] == [1, 1, 1] and all(e["job_id"] == str(job.id) for e in spared)


def test_a_spared_attempt_is_only_the_one_that_failed(sqlite_database):
    """A retry that comes after a newer attempt started (or beat) gives nothing back."""
    manifests = _seed(projects=1)
    with db.session_scope() as session:
        job = lifecycle.create_job(
            session, uuid.UUID(manifests[0].id), run_id=None, trigger_type="manual", triggered_by="t", options=None
        )
        job_id = job.id
    started = lifecycle.begin_attempt(job_id, get_settings())
    assert isinstance(started, lifecycle.Attempt) and started.number == 1
    with db.session_scope() as session:
        beat = session.get(ConsolidationJob, job_id).heartbeat_at
    assert not lifecycle.spare_attempt(job_id, 1, beat - timedelta(seconds=1))  # it beat after that failure
    assert not lifecycle.spare_attempt(job_id, 2, beat)  # not its attempt
    assert lifecycle.spare_attempt(job_id, 1, beat)
    with db.session_scope() as session:
        job = session.get(ConsolidationJob, job_id)
        assert (job.status, job.attempts) == ("retrying", 0)
    assert not lifecycle.spare_attempt(job_id, 1, beat)  # once


def test_a_night_whose_claim_meets_an_outage_is_claimed_when_the_database_returns(
    celery_worker, sqlite_database, monkeypatch, quick_outages, captured_logs
):
    _seed()
    monkeypatch.setattr(runs, "claim", failing(runs.claim, 3))
    run_scheduled.apply_async(kwargs={"slot": SLOT})
    run = _finished_run()
    assert run.status == "completed" and run.jobs_completed == run.jobs_total > 0
    assert len([e for e in captured_logs() if e["event"] == "database.unreachable"]) == 3


def test_the_callback_waits_out_an_outage_longer_than_its_retries(
    celery_worker, sqlite_database, settings_env, monkeypatch, quick_outages, captured_logs
):
    settings_env(max_retries="1")  # finalize_run's own retry bound for other errors
    _seed()
    monkeypatch.setattr(runs, "waiting_for_jobs", failing(runs.waiting_for_jobs, 4))
    run_scheduled.apply_async(kwargs={"slot": SLOT})
    run = _finished_run()
    assert run.status == "completed"
    waits = [e for e in captured_logs() if e["event"] == "database.unreachable"]
    assert len(waits) == 4 and all(e["task"] == "consolidation.finalize_run" for e in waits)


@pytest.mark.parametrize("retries", [0, 1, 3, 10, 40])
def test_the_outage_backoff_stays_between_one_second_and_a_minute(retries):
    countdowns = [base.outage_countdown(retries) for _ in range(200)]
    assert all(1 <= c <= base.OUTAGE_BACKOFF_MAX for c in countdowns)
    if retries >= 4:
        assert max(countdowns) > base.OUTAGE_BACKOFF_MAX / 2  # it grows to the cap, jittered


def test_bad_data_fails_the_job_at_once_naming_it(
    celery_worker, sqlite_database, settings_env, monkeypatch, captured_logs
):
    """A DataError is deterministic: no retry, the job fails on its first attempt."""
    from orchestration.consolidation.errors import DataError

    settings_env(retry_backoff_max="1")
    manifests = _seed()
    target = uuid.UUID(manifests[0].id)
    error = DataError("memory 1f0c field tags: expected a list of strings, got a string 'deploy'")
    bad = failing_first(planning.plan, 10, lambda: error, lambda _executor, project_id, *_: project_id == target)
    monkeypatch.setattr(planning, "plan", bad)
    run_scheduled.apply_async(kwargs={"slot": SLOT})
    run = _finished_run()
    job = _jobs(run.id)[target]
    assert run.jobs_failed == 1 and job.status == "failed" and job.attempts == 1
    assert job.error_message.startswith("bad data, not retried: memory 1f0c field tags")
    assert not [e for e in captured_logs() if e["event"] == "job.retrying"]

"""The reaper without Celery: which jobs lost their worker, and what it does with them."""

import uuid
from datetime import timedelta

from sqlalchemy import update

from orchestration.demo.seed import seed
from orchestration.jobs import heartbeat, lifecycle
from orchestration.nightly import reaper, runs
from orchestration.settings import load_settings
from orchestration.store import db
from orchestration.store.models import ConsolidationJob, ProjectLock
from orchestration.store.statuses import TriggerType
from orchestration.store.types import utcnow

SETTINGS = load_settings({})
STALE = heartbeat.LOST_AFTER + timedelta(seconds=1)


def _run_with_attempts(projects: int = 5) -> runs.StartedRun:
    with db.session_scope() as session:
        seed(session, projects, 40, seed=9, dim=8)
        started = runs.start_run(session, TriggerType.MANUAL, None, 10)
        assert started is not None
    for job_id in started.job_ids:
        lifecycle.begin_attempt(job_id, SETTINGS)
    return started


def _age(job_id: uuid.UUID, job_beat: timedelta, lock_beat: timedelta | None = None) -> None:
    now = utcnow()
    with db.session_scope() as session:
        session.execute(
            update(ConsolidationJob).where(ConsolidationJob.id == job_id).values(heartbeat_at=now - job_beat)
        )
        if lock_beat is not None:
            session.execute(
                update(ProjectLock)
                .where(ProjectLock.holder.startswith(str(job_id)))
                .values(heartbeat_at=now - lock_beat)
            )


def _reap() -> reaper.Reaped:
    with db.session_scope() as session:
        return reaper.reap(session, SETTINGS, utcnow())


def test_a_job_whose_heartbeat_stopped_is_set_to_run_again_in_its_chord_place(database):
    started = _run_with_attempts()
    dead, alive = started.job_ids[0], started.job_ids[1]
    _age(dead, STALE, STALE)
    _age(alive, STALE * 3)  # a long batch holds its row, but its process still beats its lock
    reaped = _reap()
    assert [lost.ids["job_id"] for lost in reaped.resend] == [str(dead)]
    (lost,) = reaped.lost
    assert lost.attempt == 1 and lost.error.startswith("worker lost during attempt 1: no heartbeat since")
    assert lost.group_index == started.job_ids.index(dead)
    with db.session_scope() as session:
        assert session.get(ConsolidationJob, dead).status == "retrying"
        assert session.get(ConsolidationJob, alive).status == "running"
    assert _reap().lost == []  # it waits for its re-sent start now


def test_a_retry_that_never_started_is_sent_again(database):
    started = _run_with_attempts(projects=3)
    job_id = started.job_ids[0]
    lifecycle.mark_retrying(job_id, "OperationalError: server closed the connection", 1)
    _age(job_id, timedelta(seconds=SETTINGS.retry_backoff_max) + STALE / 2)
    assert _reap().lost == []  # still inside its longest backoff
    _age(job_id, timedelta(seconds=SETTINGS.retry_backoff_max) + STALE)
    (lost,) = _reap().resend
    assert lost.ids["job_id"] == str(job_id) and "did not start within 600s" in lost.error


def test_a_lost_job_without_attempts_left_or_run_fails(database):
    started = _run_with_attempts(projects=5)
    last, by_hand = started.job_ids[:2]
    with db.session_scope() as session:
        session.execute(update(ConsolidationJob).where(ConsolidationJob.id == last).values(attempts=4))
        session.execute(update(ProjectLock).where(ProjectLock.holder.startswith(str(last))).values(holder=f"{last}#4"))
        session.execute(update(ConsolidationJob).where(ConsolidationJob.id == by_hand).values(run_id=None))
    _age(last, STALE, STALE)
    _age(by_hand, STALE, STALE)
    reaped = _reap()
    assert reaped.resend == [] and {lost.status for lost in reaped.lost} == {"failed"}
    with db.session_scope() as session:
        assert session.get(ConsolidationJob, last).error_message.startswith("worker died during attempt 4 of 4")
        assert session.get(ConsolidationJob, by_hand).error_message.startswith("worker lost during attempt 1")


def test_no_job_is_judged_lost_while_the_database_server_has_just_started(database, monkeypatch):
    """Heartbeats stopped by the server's own outage say nothing about the workers."""
    started = _run_with_attempts()
    _age(started.job_ids[0], STALE, STALE)
    monkeypatch.setattr(reaper, "server_uptime", lambda session, now: reaper.RESTART_GRACE - timedelta(seconds=1))
    assert _reap().lost == []
    monkeypatch.setattr(reaper, "server_uptime", lambda session, now: reaper.RESTART_GRACE)
    assert [lost.ids["job_id"] for lost in _reap().lost] == [str(started.job_ids[0])]


def test_the_server_uptime_is_known_on_postgresql_only(database):
    with db.session_scope() as session:
        uptime = reaper.server_uptime(session, utcnow())
    if database.startswith("sqlite"):
        assert uptime is None
    else:
        assert uptime is not None and uptime > timedelta(0)


def test_jobs_of_a_sent_chord_that_no_worker_received_are_listed_in_their_places(database):
    with db.session_scope() as session:
        seed(session, 4, 40, seed=9, dim=8)
        started = runs.start_run(session, "manual", None, 10)
    received = started.job_ids[1]
    _age(received, timedelta(seconds=5))  # a worker holds its message
    now = utcnow()
    with db.session_scope() as session:
        assert reaper.unreceived_jobs(session, now) == []  # the chord was not sent yet
        runs.mark_dispatched(session, started.run_id, now - reaper.QUEUE_GRACE / 2)
    with db.session_scope() as session:
        assert reaper.unreceived_jobs(session, now) == []  # sent a moment ago: still arriving
        runs.mark_dispatched(session, started.run_id, now - reaper.QUEUE_GRACE * 2)
    with db.session_scope() as session:
        unreceived = reaper.unreceived_jobs(session, now)
    assert [job.ids["job_id"] for job in unreceived] == [str(j) for j in started.job_ids if j != received]
    assert [job.group_index for job in unreceived] == [i for i, j in enumerate(started.job_ids) if j != received]


def test_the_stuck_bound_of_a_restart_outlasts_a_heartbeat_and_the_longest_outage_wait():
    """A worker beats within heartbeat.INTERVAL of the server's return and a task waiting
    out the outage looks again within worker.base.OUTAGE_BACKOFF_MAX: both before the
    reaper judges any heartbeat."""
    from orchestration.worker.base import OUTAGE_BACKOFF_MAX

    assert heartbeat.LOST_AFTER + timedelta(seconds=OUTAGE_BACKOFF_MAX) <= reaper.RESTART_GRACE


def test_a_run_whose_messages_were_lost_is_closed_as_soon_as_its_jobs_end(database):
    with db.session_scope() as session:
        seed(session, 3, 40, seed=9, dim=8)
        started = runs.start_run(session, "manual", None, 10)
    for job_id in started.job_ids:
        lifecycle.begin_attempt(job_id, SETTINGS)
        lifecycle.fail(job_id, 1, "boom")
    now = utcnow()
    with db.session_scope() as session:
        assert reaper.orphaned_runs(session, now) == []  # the callback may still come
        reaper.note_lost_messages(session, {started.run_id}, now)
    with db.session_scope() as session:
        assert reaper.orphaned_runs(session, now) == [started.run_id]
        assert reaper.orphaned_runs(session, now + reaper.CALLBACK_GRACE) == [started.run_id]

"""The heartbeat thread: a working job's lock stays fresh whatever the job is doing,
and a beat never waits for a batch that holds the job row."""

import threading
import time
import uuid
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from orchestration.demo.seed import seed
from orchestration.jobs import heartbeat
from orchestration.jobs.locks import Lease, ProjectBusy
from orchestration.store import db
from orchestration.store.models import ConsolidationJob, ProjectLock
from orchestration.store.types import utcnow


def _running_job_with_lock() -> tuple[uuid.UUID, str]:
    with db.session_scope() as session:
        (manifest,) = seed(session, 1, 20, seed=1, dim=8)
        project_id = uuid.UUID(manifest.id)
        job = ConsolidationJob(
            project_id=project_id,
            trigger_type="manual",
            triggered_by="test",
            status="running",
            attempts=1,
            heartbeat_at=utcnow() - timedelta(minutes=5),
        )
        session.add(job)
        session.flush()
        lease = Lease(project_id, job.id, 1)
        lease.acquire(session, utcnow() - timedelta(minutes=5))
        holder = lease.holder
    return job.id, holder


def _beats(job_id: uuid.UUID, holder: str):
    with db.session_scope() as session:
        lock = session.scalar(select(ProjectLock.heartbeat_at).where(ProjectLock.holder == holder))
        job = session.get(ConsolidationJob, job_id)
        assert job is not None
        return lock, job.heartbeat_at


def test_a_beating_holder_stays_fresh_and_stops_when_done(database, fast_heartbeat):
    job_id, holder = _running_job_with_lock()
    started = utcnow()
    with heartbeat.beating(holder, job_id):
        deadline = time.monotonic() + 10
        while min(_beats(job_id, holder)) < started:
            assert time.monotonic() < deadline, "no heartbeat written"
            time.sleep(0.05)
    time.sleep(0.2)  # a beat that had already begun may still land
    after = _beats(job_id, holder)
    time.sleep(0.3)
    assert _beats(job_id, holder) == after  # no more beats once the block is left


def test_a_beat_never_waits_for_a_batch_holding_the_job_row(pg_database):
    job_id, holder = _running_job_with_lock()
    batch = db.get_engine().connect()
    transaction = batch.begin()
    batch.execute(update(ConsolidationJob).where(ConsolidationJob.id == job_id).values(progress=0.5))
    try:
        done = threading.Event()
        worker = threading.Thread(target=lambda: (heartbeat.beat({holder: job_id}), done.set()))
        worker.start()
        assert done.wait(10), "the beat waited for the batch's row lock"
    finally:
        transaction.rollback()
        batch.close()
    lock_beat, job_beat = _beats(job_id, holder)
    assert lock_beat > utcnow() - timedelta(seconds=10)  # the lock was refreshed
    assert job_beat < utcnow() - timedelta(minutes=4)  # the locked job row was skipped, not waited for


@pytest.mark.parametrize("minutes_ago, taken", [(0, False), (2, True)])
def test_a_lock_is_taken_over_only_when_its_heartbeat_stopped(database, minutes_ago, taken):
    job_id, holder = _running_job_with_lock()
    with db.session_scope() as session:
        session.execute(update(ProjectLock).values(heartbeat_at=utcnow() - timedelta(minutes=minutes_ago)))
        project_id = session.get(ConsolidationJob, job_id).project_id
    try:
        with db.session_scope() as session:
            Lease(project_id, job_id, 2).acquire(session, utcnow())
        outcome = True
    except ProjectBusy as exc:
        assert f"job {job_id} is consolidating it" in str(exc)
        outcome = False
    assert outcome is taken


def test_a_received_job_is_beaten_for_only_while_its_message_is_held(database, fast_heartbeat):
    """Once the worker no longer holds the message (the task ended, or a lost broker
    connection dropped it), the row's heartbeat stops and the reaper can see the job lost."""
    job_id, _ = _running_job_with_lock()
    with db.session_scope() as session:
        session.execute(update(ConsolidationJob).where(ConsolidationJob.id == job_id).values(status="pending"))
    held = threading.Event()
    held.set()
    started = utcnow()
    heartbeat.received(job_id, held.is_set)

    def beat_of_row():
        with db.session_scope() as session:
            return session.get(ConsolidationJob, job_id).heartbeat_at

    deadline = time.monotonic() + 10
    while beat_of_row() < started:
        assert time.monotonic() < deadline, "the received job was not beaten for"
        time.sleep(0.05)
    held.clear()  # the worker dropped the message
    time.sleep(0.3)
    after = beat_of_row()
    time.sleep(0.3)
    assert beat_of_row() == after

"""The project lock and the lease that owns a live attempt's lock."""

import time
import uuid
from datetime import timedelta

import pytest
from sqlalchemy import update

from orchestration.jobs import heartbeat
from orchestration.jobs.locks import Lease, ProjectBusy, free, holder_for, job_of
from orchestration.store import db
from orchestration.store.models import ProjectLock
from orchestration.store.types import utcnow
from support import job_row, lock_holders


def test_holder_names_the_attempt():
    job_id = uuid.uuid4()
    assert holder_for(job_id, 3) == f"{job_id}#3"
    assert job_of(holder_for(job_id, 3)) == str(job_id)


def _lease(job_ids, attempt=1) -> Lease:
    project_id = job_row(job_ids[0]).project_id
    assert project_id is not None
    return Lease(project_id, job_ids[0], attempt)


def test_a_lock_is_taken_once_until_it_goes_stale(job_ids):
    first, second = _lease(job_ids, 1), _lease(job_ids, 2)
    with db.session_scope() as session:
        first.acquire(session, utcnow())
    with pytest.raises(ProjectBusy, match=f"busy: job {job_ids[0]} is consolidating it"), db.session_scope() as session:
        second.acquire(session, utcnow())
    later = utcnow() + heartbeat.LOST_AFTER + timedelta(seconds=1)
    with db.session_scope() as session:
        second.acquire(session, later)  # the first holder stopped beating: taken over
    assert lock_holders() == [second.holder]
    with db.session_scope() as session:
        first.release(session)  # a superseded holder gives back nothing
    assert lock_holders() == [second.holder]
    with db.session_scope() as session:
        second.release(session)
    assert lock_holders() == []


def test_held_beats_and_gives_the_lock_back_when_the_work_fails(job_ids, fast_heartbeat):
    lease = _lease(job_ids)
    old = utcnow() - timedelta(seconds=30)
    with db.session_scope() as session:
        lease.acquire(session, old)
    with pytest.raises(RuntimeError, match="boom"), lease.held():
        deadline = time.monotonic() + 15  # the thread may be in a wait begun before the patch
        while _beat(lease) <= old:
            assert time.monotonic() < deadline, "no heartbeat written"
            time.sleep(0.05)
        raise RuntimeError("boom")
    assert lock_holders() == []


def _beat(lease: Lease):
    with db.session_scope() as session:
        return session.get_one(ProjectLock, lease.project_id).heartbeat_at


def test_held_keeps_the_lock_when_the_work_succeeds(job_ids):
    lease = _lease(job_ids)
    with db.session_scope() as session:
        lease.acquire(session, utcnow())
    with lease.held():
        pass
    assert lock_holders() == [lease.holder]  # the caller releases it in its last transaction


def test_free_deletes_only_the_named_holders_lock(job_ids):
    lease = _lease(job_ids)
    with db.session_scope() as session:
        lease.acquire(session, utcnow())
        free(session, lease.project_id, "someone-else#1")
    assert lock_holders() == [lease.holder]
    with db.session_scope() as session:
        session.execute(update(ProjectLock).values(holder=holder_for(job_ids[0], 7)))
        free(session, lease.project_id, holder_for(job_ids[0], 7))
    assert lock_holders() == []

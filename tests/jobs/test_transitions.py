"""The job's state machine, table-driven: every transition tried from every status on
both databases. Allowed ones do what the table in ``docs/reliability.md`` says; the
others are refused, naming the transition and the job's status, and change nothing."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from sqlalchemy import insert, update

from orchestration.jobs import statements, transitions
from orchestration.jobs.locks import holder_for
from orchestration.settings import load_settings
from orchestration.store import db
from orchestration.store.models import ConsolidationJob, ProjectLock
from orchestration.store.statuses import FINISHED_JOB_STATUSES, JobStatus
from orchestration.store.types import utcnow
from support import job_row, lock_holders

# The contract (docs/reliability.md, "A job's life"): name -> from-states, to-state,
# what it adds to the attempts.
MACHINE = {
    "start": ({"pending", "retrying"}, "running", 1),
    "take over": ({"running"}, "running", 1),
    "complete": ({"running"}, "completed", 0),
    "retry": ({"running"}, "retrying", 0),
    "lose": ({"pending", "running", "retrying"}, "retrying", 0),
    "spare": ({"running", "retrying"}, "retrying", -1),
    "fail": ({"pending", "running", "retrying"}, "failed", 0),
    "skip": ({"running"}, "skipped", 0),
    "roll back": ({"completed", "failed", "skipped"}, None, 0),
}
ATTEMPT = 2


def test_the_declared_machine_is_the_documented_one():
    declared = {t.name: ({s.value for s in t.sources}, t.target, t.counts) for t in transitions.TRANSITIONS}
    assert declared == MACHINE


@pytest.fixture
def placed(job_ids):
    """Place the first job in a status at attempt :data:`ATTEMPT`, holding its project's
    lock for that attempt."""

    def place(status: JobStatus):
        job_id = job_ids[0]
        now = utcnow()
        with db.session_scope() as session:
            session.execute(
                update(ConsolidationJob)
                .where(ConsolidationJob.id == job_id)
                .values(
                    status=status, attempts=ATTEMPT, heartbeat_at=now - timedelta(minutes=1), error_message="before"
                )
            )
            project_id = session.get_one(ConsolidationJob, job_id).project_id
            session.execute(
                insert(ProjectLock).values(
                    project_id=project_id, holder=holder_for(job_id, ATTEMPT), acquired_at=now, heartbeat_at=now
                )
            )
        return job_id

    return place


@pytest.mark.parametrize("status", list(JobStatus))
@pytest.mark.parametrize("transition", transitions.TRANSITIONS, ids=lambda t: t.name.replace(" ", "_"))
def test_every_transition_from_every_status(placed, transition, status):
    job_id = placed(status)
    now = utcnow()
    sources, target, counts = MACHINE[transition.name]
    if status in sources:
        with db.session_scope() as session:
            row = transitions.apply(session, transition, job_id, ATTEMPT, now, {"error_message": "after"})
        assert row.attempts == ATTEMPT + counts
        job = job_row(job_id)
        assert (job.status, job.attempts, job.error_message) == (target or status, ATTEMPT + counts, "after")
        # Every transition out of running ends the attempt: its lock is freed with it.
        assert lock_holders() == ([] if target not in ("running", None) else [holder_for(job_id, ATTEMPT)])
        if target is None:  # roll back: a mark on a finished job
            assert job.heartbeat_at is not None and job.heartbeat_at < now and job.completed_at is None
        elif target in FINISHED_JOB_STATUSES:
            assert job.heartbeat_at is None and job.completed_at == now and job.memories_after == 60
        else:
            assert job.heartbeat_at == now and job.completed_at is None
        if target == "running":
            assert job.started_at == now and job.memories_before == 60 and job.worker
    else:
        with pytest.raises(transitions.Refused) as refused, db.session_scope() as session:
            transitions.apply(session, transition, job_id, ATTEMPT, now, {"error_message": "after"})
        assert refused.value.status == status and refused.value.transition is transition
        assert str(refused.value).startswith(f"{transition.name} of job {job_id} refused: the job is {status};")
        job = job_row(job_id)
        assert (job.status, job.attempts, job.error_message) == (status, ATTEMPT, "before")
        assert lock_holders() == [holder_for(job_id, ATTEMPT)]


@pytest.mark.parametrize("transition", transitions.TRANSITIONS, ids=lambda t: t.name.replace(" ", "_"))
def test_a_transition_fenced_on_an_older_attempt_is_refused(placed, transition):
    """A late write of attempt 1, after attempt 2 took the job over, changes nothing."""
    status = sorted(transition.sources)[0]
    job_id = placed(status)
    late = "the job is at attempt 2, not 1: another attempt took it over"
    with pytest.raises(transitions.Refused, match=late), db.session_scope() as session:
        transitions.apply(session, transition, job_id, ATTEMPT - 1, utcnow())
    job = job_row(job_id)
    assert (job.status, job.attempts) == (status, ATTEMPT) and lock_holders() == [holder_for(job_id, ATTEMPT)]


def test_a_transition_of_a_job_that_does_not_exist_is_refused(database):
    import uuid

    with pytest.raises(transitions.Refused, match="the job does not exist"), db.session_scope() as session:
        transitions.apply(session, transitions.FAIL, uuid.uuid4(), 0, utcnow())


def test_a_condition_that_does_not_hold_is_named(placed):
    job_id = placed(JobStatus.RUNNING)
    never = ConsolidationJob.heartbeat_at.is_(None)
    with pytest.raises(transitions.Refused, match="refused: it beat meanwhile"), db.session_scope() as session:
        transitions.apply(session, transitions.SPARE, job_id, ATTEMPT, utcnow(), unless=(never, "it beat meanwhile"))
    assert job_row(job_id).attempts == ATTEMPT


def test_a_job_is_rolled_back_once(placed):
    from orchestration.jobs.rollback import ONCE

    job_id = placed(JobStatus.COMPLETED)
    marks = {"rolled_back_at": utcnow(), "rolled_back_by": "alice"}
    with db.session_scope() as session:
        transitions.apply(session, transitions.ROLL_BACK, job_id, ATTEMPT, utcnow(), marks, unless=ONCE)
    with pytest.raises(transitions.Refused, match="refused: it was rolled back already"), db.session_scope() as session:
        transitions.apply(session, transitions.ROLL_BACK, job_id, ATTEMPT, utcnow(), marks, unless=ONCE)
    assert job_row(job_id).rolled_back_by == "alice"


@pytest.mark.parametrize(("max_retries", "attempts", "left"), [(3, 0, 4), (3, 3, 1), (3, 4, 0), (0, 1, 0), (3, 9, 0)])
def test_attempts_left_counts_every_start_against_max_retries_plus_one(max_retries, attempts, left):
    """README: a job gets ORCHESTRATION_MAX_RETRIES retries after its first attempt."""
    settings = load_settings({"ORCHESTRATION_MAX_RETRIES": str(max_retries)})
    assert transitions.attempts_left(attempts, settings) == left
    assert transitions.attempts_left(ConsolidationJob(attempts=attempts), settings) == left


def test_the_one_statement_paths_use_the_declared_statuses():
    """PostgreSQL's one-statement start and finish are written from the declarations:
    every status they name is a JobStatus, and their lists are the transitions' own."""
    start, finish = statements.START.text, statements.FINISH.text
    for sql in (start, finish):
        literals = set(re.findall(r"'([a-z_]+)'", sql))
        assert literals and literals <= {s.value for s in JobStatus}
    started_from = set(re.findall(r"job\.status IN \(([^)]*)\)", start)[0].replace("'", "").split(", "))
    assert started_from == MACHINE["start"][0] | MACHINE["take over"][0]
    assert "status = 'running'" in start
    finished_from = set(re.findall(r"job\.status IN \(([^)]*)\)", finish)[0].replace("'", "").split(", "))
    assert finished_from == MACHINE["complete"][0] and "status = 'completed'" in finish
    assert "heartbeat_at = NULL" in finish

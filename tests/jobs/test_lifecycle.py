"""A job's attempts without Celery: how an attempt starts or ends at its start, the
fence that stops an attempt superseded by a newer one, and what the end records."""

import uuid
from datetime import timedelta

import pytest
import structlog
from sqlalchemy import func, select, text, update

from orchestration.consolidation import applying
from orchestration.jobs import heartbeat, lifecycle, starts
from orchestration.store import db
from orchestration.store.models import Project, ProjectLock, TaskMemory
from orchestration.store.types import utcnow
from support import failing_call, fingerprint, job_row, lock_holders, wait_until


@pytest.fixture
def database_url(three_ways: str) -> str:
    return three_ways


def test_an_attempt_starts_running_with_its_lock_and_options(attempt, settings):
    row = job_row(attempt.job_id)
    assert (row.status, row.attempts, row.progress) == ("running", 1, 0.0)
    assert row.started_at is not None and row.heartbeat_at is not None and row.memories_before == 60
    assert row.options == attempt.options.as_dict()
    assert lock_holders() == [f"{attempt.job_id}#1"]


def test_a_run_completes_the_job_and_gives_the_lock_back(job_ids, settings):
    outcome = lifecycle.run(job_ids[0], settings)
    assert outcome == lifecycle.JobOutcome(str(job_ids[0]), "completed")
    row = job_row(job_ids[0])
    assert (row.status, row.progress, row.error_message) == ("completed", 1.0, None)
    assert row.memories_after == row.memories_before - row.memories_merged + row.clusters_found - row.memories_archived
    assert row.clusters_found > 0 and lock_holders() == []


def test_a_finished_job_is_not_started_again(job_ids, settings):
    lifecycle.run(job_ids[0], settings)
    again = lifecycle.begin_attempt(job_ids[0], settings)
    assert again == lifecycle.JobOutcome(str(job_ids[0]), "completed")
    assert job_row(job_ids[0]).attempts == 1


def test_a_second_delivery_while_the_attempt_is_alive_does_nothing(attempt, settings):
    with pytest.raises(lifecycle.AlreadyRunning, match="attempt 1 of job .* is alive") as raised:
        lifecycle.begin_attempt(attempt.job_id, settings)
    assert raised.value.task_id is None  # started by hand, not by a Celery task
    assert job_row(attempt.job_id).attempts == 1 and lock_holders() == [f"{attempt.job_id}#1"]


def test_a_second_delivery_learns_which_task_runs_the_job(job_ids, settings):
    lifecycle.begin_attempt(job_ids[0], settings, celery_task_id="the-first-delivery")
    with pytest.raises(lifecycle.AlreadyRunning) as raised:
        lifecycle.begin_attempt(job_ids[0], settings, celery_task_id="another-delivery")
    assert raised.value.task_id == "the-first-delivery"


@pytest.mark.parametrize(
    ("change", "status", "error"),
    [
        ({"consolidation_enabled": False}, "skipped", "has consolidation disabled"),
        ({"consolidation_options": {"similarity_threshold": 2}}, "failed", "similarity_threshold"),
    ],
)
def test_a_job_ends_at_its_start_when_its_project_cannot_run(job_ids, settings, change, status, error):
    row = job_row(job_ids[0])
    with db.session_scope() as session:
        session.execute(update(Project).where(Project.id == row.project_id).values(**change))
    outcome = lifecycle.begin_attempt(job_ids[0], settings)
    assert isinstance(outcome, lifecycle.JobOutcome) and outcome.status == status and error in outcome.error
    row = job_row(job_ids[0])
    assert row.status == status and error in row.error_message and row.completed_at is not None
    assert lock_holders() == []


def test_another_jobs_lock_fails_the_attempt_which_still_counts(job_ids, settings):
    project_id = job_row(job_ids[0]).project_id
    with db.session_scope() as session:
        session.add(ProjectLock(project_id=project_id, holder="other-job#1"))
    with pytest.raises(lifecycle.AttemptFailed, match="ProjectBusy: project .* is busy: job other-job") as failed:
        lifecycle.begin_attempt(job_ids[0], settings)
    assert failed.value.attempt == 1 and job_row(job_ids[0]).attempts == 1
    # The other job's lock goes stale: this job takes it over.
    with db.session_scope() as session:
        session.execute(update(ProjectLock).values(heartbeat_at=utcnow() - heartbeat.LOST_AFTER - timedelta(seconds=1)))
    assert lifecycle.run(job_ids[0], settings).status == "completed"
    assert job_row(job_ids[0]).attempts == 2 and lock_holders() == []


def test_a_failing_attempt_gives_its_lock_back_and_leaves_the_job_running(attempt, monkeypatch):
    def broken(*args, **kwargs):
        raise ConnectionError("database went away")

    monkeypatch.setattr(applying, "merge_batch", broken)
    with pytest.raises(lifecycle.AttemptFailed, match="ConnectionError: database went away") as failed:
        lifecycle.consolidate(attempt)
    assert failed.value.attempt == 1 and isinstance(failed.value.__cause__, ConnectionError)
    assert job_row(attempt.job_id).status == "running" and lock_holders() == []
    assert lifecycle.mark_retrying(attempt.job_id, str(failed.value), 1)
    assert job_row(attempt.job_id).status == "retrying"
    assert lifecycle.fail(attempt.job_id, 1, "gave up").status == "failed"
    row = job_row(attempt.job_id)
    assert (row.status, row.error_message) == ("failed", "gave up")


def test_a_superseded_attempt_stops_before_writing(attempt, settings, monkeypatch):
    monkeypatch.setattr(applying, "MERGE_BATCH", 1)
    before = fingerprint()
    # The old attempt's process froze; its heartbeat went stale and a new attempt took over.
    with db.session_scope() as session:
        session.execute(update(ProjectLock).values(heartbeat_at=utcnow() - heartbeat.LOST_AFTER * 2))
    new = lifecycle.begin_attempt(attempt.job_id, settings)
    assert isinstance(new, lifecycle.Attempt) and new.number == 2
    with pytest.raises(lifecycle.Superseded, match="attempt 1 was superseded"):
        lifecycle.consolidate(attempt)  # thaws, and is fenced at its first write
    assert fingerprint() == before and lock_holders() == [f"{attempt.job_id}#2"]
    assert lifecycle.consolidate(new).status == "completed"
    row = job_row(attempt.job_id)
    assert row.status == "completed" and row.attempts == 2 and row.clusters_found > 0


def test_an_attempt_whose_job_was_failed_meanwhile_does_not_complete_it(attempt, settings, monkeypatch):
    """The reaper or the run's finalization failed the job while its attempt still ran
    (a frozen process that thawed): the attempt's first write and its end are refused,
    so the job stays failed and nothing of the attempt lands."""
    monkeypatch.setattr(applying, "MERGE_BATCH", 1)
    before = fingerprint()
    assert lifecycle.fail(attempt.job_id, 1, "its run was finalized").status == "failed"
    with pytest.raises(lifecycle.Superseded, match="superseded or ended"):
        lifecycle.consolidate(attempt)
    row = job_row(attempt.job_id)
    assert (row.status, row.error_message) == ("failed", "its run was finalized") and fingerprint() == before


def test_a_superseded_attempt_neither_fails_nor_retries_the_job(attempt, settings):
    """Attempt 1 froze and attempt 2 took over; attempt 1 then failing (its time limit)
    changes nothing: the newer attempt runs the job and reports it."""
    with db.session_scope() as session:
        session.execute(update(ProjectLock).values(heartbeat_at=utcnow() - heartbeat.LOST_AFTER * 2))
    new = lifecycle.begin_attempt(attempt.job_id, settings)
    assert isinstance(new, lifecycle.Attempt) and new.number == 2
    with pytest.raises(lifecycle.Superseded, match="attempt 1 was superseded by attempt 2"):
        lifecycle.fail(attempt.job_id, 1, "exceeded the soft time limit")
    assert not lifecycle.mark_retrying(attempt.job_id, "transient", 1)
    row = job_row(attempt.job_id)
    assert (row.status, row.attempts) == ("running", 2) and lock_holders() == [f"{attempt.job_id}#2"]


def test_counters_of_a_partial_attempt_are_kept_by_the_next(attempt, settings, monkeypatch):
    monkeypatch.setattr(applying, "MERGE_BATCH", 1)
    real = applying.merge_batch
    monkeypatch.setattr(applying, "merge_batch", failing_call(real, 2, ConnectionError("killed")))
    with pytest.raises(lifecycle.AttemptFailed):
        lifecycle.consolidate(attempt)
    assert job_row(attempt.job_id).clusters_found == 1
    monkeypatch.setattr(applying, "merge_batch", real)
    assert lifecycle.run(attempt.job_id, settings).status == "completed"
    row = job_row(attempt.job_id)
    with db.session_scope() as session:
        created = session.scalar(
            select(func.count()).where(
                TaskMemory.project_id == row.project_id, TaskMemory.consolidated_from.is_not(None)
            )
        )
    assert row.clusters_found == created and row.attempts == 2


@pytest.mark.parametrize("second_path", ["portable", "public"])
def test_a_duplicate_start_racing_the_live_start_stands_down(job_ids, settings, monkeypatch, second_path):
    """Two deliveries of one job start at once. The second waits for the first's start
    to commit; its own read may predate that commit (PostgreSQL), but the lock it then
    fails to take is the live attempt's: it stands down without counting an attempt.
    The second goes the portable way, or the public one (one statement on PostgreSQL)."""
    import threading

    from orchestration.jobs.locks import Lease

    acquired, release = threading.Event(), threading.Event()
    real_acquire = Lease.acquire

    def acquire_then_wait(self, session, now):
        real_acquire(self, session, now)
        if threading.current_thread().name == "first":
            acquired.set()
            assert release.wait(30)  # the first start's transaction stays open

    monkeypatch.setattr(Lease, "acquire", acquire_then_wait)
    outcome: dict = {}
    first = threading.Thread(
        target=lambda: outcome.update(first=starts.start_portable(job_ids[0], settings, None, False)), name="first"
    )
    first.start()
    assert acquired.wait(30)

    def second_start():
        try:
            if second_path == "portable":
                starts.start_portable(job_ids[0], settings, None, False)
            else:
                lifecycle.begin_attempt(job_ids[0], settings)
        except lifecycle.AlreadyRunning as exc:
            outcome["second"] = exc

    second = threading.Thread(target=second_start, name="second")
    second.start()
    if db.is_postgresql():  # the second start is waiting for the first's row lock
        wait_until(_someone_waits_for_a_lock, 30, "the second start waiting")
    release.set()
    first.join(30)
    second.join(30)
    assert isinstance(outcome["first"], lifecycle.Attempt) and outcome["first"].number == 1
    assert isinstance(outcome.get("second"), lifecycle.AlreadyRunning)
    assert job_row(job_ids[0]).attempts == 1 and lock_holders() == [f"{job_ids[0]}#1"]


def _someone_waits_for_a_lock() -> bool:
    with db.session_scope() as session:
        waiting: int = session.execute(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"
            )
        ).scalar_one()
    return waiting > 0


def test_a_completed_job_keeps_what_it_left_alone_and_its_lines_name_the_project(database, monkeypatch):
    """skipped_invalid, conflicts and pairs_kept_apart are on the job row, as in
    job.completed; the job's log lines carry its project's name."""
    import io
    import json

    from orchestration.demo.seed import seed
    from orchestration.logs import configure_logging
    from orchestration.settings import get_settings
    from orchestration.store.models import ConsolidationJob

    with db.session_scope() as session:
        (manifest,) = seed(session, 1, 60, seed=5, dim=16)
        job_id = lifecycle.create_job(
            session, uuid.UUID(manifest.id), run_id=None, trigger_type="manual", triggered_by="t", options=None
        ).id
    real_apply = applying.apply

    def leaving_some_alone(*args, **kwargs):
        result = real_apply(*args, **kwargs)
        result.skipped_invalid, result.conflicts, result.pairs_kept_apart = 3, 2, 1
        return result

    monkeypatch.setattr(applying, "apply", leaving_some_alone)
    stream = io.StringIO()
    configure_logging(get_settings(), stream=stream)
    try:
        assert lifecycle.run(job_id, get_settings()).status == "completed"
    finally:
        configure_logging(get_settings())
        structlog.contextvars.clear_contextvars()
    with db.session_scope() as session:
        job = session.get(ConsolidationJob, job_id)
        assert (job.skipped_invalid, job.conflicts, job.pairs_kept_apart) == (3, 2, 1)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    started, completed = (next(e for e in lines if e["event"] == name) for name in ("job.started", "job.completed"))
    assert started["project_name"] == completed["project_name"] == manifest.name
    assert (completed["skipped_invalid"], completed["conflicts"], completed["pairs_kept_apart"]) == (3, 2, 1)
    assert (completed["mode"], completed["memories_new"], completed["full_reason"]) == (
        "full",
        60,
        "no earlier completed pass",
    )


def test_a_completed_job_records_its_pass_and_the_next_one_starts_from_it(job_ids, settings):
    """The first job of a project makes a full pass and records its watermark and
    signature; the next job of the project is incremental from that watermark; a job
    created with --full makes a full pass whatever was recorded."""
    from orchestration.consolidation.passes import REQUESTED
    from orchestration.store.statuses import TriggerType

    assert lifecycle.run(job_ids[0], settings).status == "completed"
    first = job_row(job_ids[0])
    assert (first.mode, first.memories_new, first.full_reason) == ("full", 60, "no earlier completed pass")
    assert first.watermark is not None and first.signature.endswith(":64")
    with db.session_scope() as session:
        again, full = (
            lifecycle.create_job(
                session,
                first.project_id,
                run_id=None,
                trigger_type=TriggerType.MANUAL,
                triggered_by="t",
                options=None,
                full=wanted,
            ).id
            for wanted in (False, True)
        )
    assert lifecycle.run(again, settings).status == "completed"
    second = job_row(again)
    assert (second.mode, second.memories_new, second.full_reason) == ("incremental", first.clusters_found, None)
    assert second.watermark >= first.watermark and second.signature == first.signature
    assert lifecycle.run(full, settings).status == "completed"
    assert (job_row(full).mode, job_row(full).full_reason) == ("full", REQUESTED)

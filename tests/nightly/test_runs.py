"""A night's run without Celery: claiming a slot, creating its jobs, the summary."""

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, update

from orchestration.demo.seed import seed
from orchestration.nightly import retries, runs
from orchestration.store import db
from orchestration.store.counts import count_active
from orchestration.store.models import ConsolidationJob, ConsolidationRun, Project
from orchestration.store.statuses import TriggerType

SLOT = datetime(2026, 11, 27, 2, tzinfo=UTC)
NOW = SLOT + timedelta(seconds=5)


@pytest.fixture
def manifests(database):
    with db.session_scope() as session:
        return seed(session, 4, 40, seed=4, dim=8)


def _claim(now=NOW, slot=SLOT):
    with db.session_scope() as session:
        return runs.claim(session, TriggerType.SCHEDULED, slot, 10, now)


def test_the_first_claim_of_a_slot_starts_it_with_one_job_per_eligible_project(manifests):
    claim = _claim()
    assert claim.status == "started" and claim.started is not None
    eligible = {m.id for m in manifests if m.kind == "eligible"}
    with db.session_scope() as session:
        run = session.get_one(ConsolidationRun, claim.run_id)
        jobs = session.scalars(select(ConsolidationJob).where(ConsolidationJob.run_id == run.id)).all()
    assert {str(j.project_id) for j in jobs} == eligible and set(claim.dispatch) == {j.id for j in jobs}
    assert all(j.status == "pending" and j.trigger_type == "scheduled" for j in jobs)
    assert (run.status, run.scheduled_for, run.jobs_total) == ("running", SLOT, len(eligible))
    assert (run.projects_checked, run.projects_eligible) == (claim.started.checked, len(eligible))
    assert claim.as_dict() == {"status": "started", "run_id": str(run.id), "jobs": len(eligible)}


def test_a_second_claim_of_the_slot_is_a_duplicate_until_the_chord_is_overdue(manifests):
    first = _claim()
    assert _claim().as_dict() == {"status": "duplicate", "run_id": str(first.run_id)}
    with db.session_scope() as session:  # the chord was sent: never again
        runs.mark_dispatched(session, first.run_id, NOW)
    late = NOW + runs.DISPATCH_GRACE + timedelta(seconds=1)
    assert _claim(now=late).status == "duplicate"


def test_a_claim_whose_chord_was_never_sent_is_redispatched_by_the_redelivery(manifests):
    first = _claim()
    assert _claim(now=NOW + runs.DISPATCH_GRACE - timedelta(seconds=1)).status == "duplicate"  # may still be sent
    again = _claim(now=NOW + runs.DISPATCH_GRACE + timedelta(seconds=1))
    assert again.status == "redispatched" and again.run_id == first.run_id
    assert sorted(again.dispatch) == sorted(first.dispatch)


def test_jobs_are_created_and_sent_largest_project_first(manifests):
    with db.session_scope() as session:
        for size in (12, 30, 20):
            seed(session, 1, size, seed=50 + size, dim=8)
        session.execute(update(Project).values(consolidation_threshold=1))
    claim = _claim()
    with db.session_scope() as session:
        order = runs.chord_order(session, claim.run_id)
        sizes = [count_active(session, session.get_one(ConsolidationJob, job_id).project_id) for job_id in order]
    assert order == claim.dispatch and len(order) > 2
    assert sizes == sorted(sizes, reverse=True) and sizes[-3:] == [30, 20, 12]


@pytest.mark.parametrize(
    ("statuses", "expected"),
    [
        ([], "completed"),
        (["completed", "skipped"], "completed"),
        (["completed", "failed"], "partial"),
        (["failed", "failed"], "failed"),
    ],
)
def test_run_status_from_job_statuses(statuses, expected):
    assert runs.run_status(statuses) == expected


def test_finalize_sums_the_jobs_fails_the_unfinished_and_is_idempotent(manifests):
    claim = _claim()
    done, unfinished = claim.dispatch[0], claim.dispatch[1]
    with db.session_scope() as session:
        session.execute(
            update(ConsolidationJob)
            .where(ConsolidationJob.id == done)
            .values(status="completed", memories_before=40, memories_after=30, memories_merged=12, clusters_found=2)
        )
    with db.session_scope() as session:
        assert runs.waiting_for_jobs(session, claim.run_id, NOW, 3600)
        run = runs.finalize(session, claim.run_id, NOW + timedelta(seconds=7), unfinished_error="deadline passed")
        assert run is not None
        fields = runs.finished_fields(run)
    assert fields["status"] == "partial" and fields["duration_s"] == 7.0
    assert (fields["jobs_completed"], fields["jobs_failed"], fields["memories_merged"]) == (
        1,
        len(claim.dispatch) - 1,
        12,
    )
    with db.session_scope() as session:
        run = session.get_one(ConsolidationRun, claim.run_id)
        failed = session.get_one(ConsolidationJob, unfinished)
        assert runs.finalize(session, claim.run_id) is None  # already finished
        assert not runs.waiting_for_jobs(session, claim.run_id, NOW, 3600)
    assert failed.status == "failed" and failed.error_message == "deadline passed"
    assert run.summary["clusters_found"] == 2
    assert {j["job_id"] for j in run.summary["failed_jobs"]} == {str(j) for j in claim.dispatch[1:]}


def test_mark_failed_closes_only_an_open_run(manifests):
    claim = _claim()
    with db.session_scope() as session:
        run = runs.mark_failed(session, claim.run_id, "summary could not be written", NOW)
        assert run is not None and (run.status, run.error_message) == ("failed", "summary could not be written")
    with db.session_scope() as session:
        assert runs.mark_failed(session, claim.run_id, "again") is None


# --- retries (runs retry) --------------------------------------------------------


def _kinds(manifests) -> dict[str, uuid.UUID]:
    return {m.kind: uuid.UUID(m.id) for m in manifests}


def _retry(projects, retry_of, now=NOW + timedelta(minutes=1)):
    with db.session_scope() as session:
        return runs.claim(session, TriggerType.MANUAL, None, 10, now, projects=projects, retry_of=retry_of)


def _finished(claim, statuses: dict[uuid.UUID, str]):
    """Give the run's jobs (by project) these statuses, then finalize it."""
    with db.session_scope() as session:
        for project_id, status in statuses.items():
            session.execute(
                update(ConsolidationJob)
                .where(ConsolidationJob.run_id == claim.run_id, ConsolidationJob.project_id == project_id)
                .values(status=status)
            )
    with db.session_scope() as session:
        assert runs.finalize(session, claim.run_id, NOW + timedelta(seconds=9)) is not None


def test_a_retry_runs_the_named_enabled_projects_whatever_their_threshold_and_links_both_runs(manifests):
    kinds = _kinds(manifests)
    original = _claim()
    _finished(original, {})
    named = [kinds["under_threshold"], kinds["disabled"], uuid.uuid4()]  # below threshold, disabled, gone
    retry = _retry(named, original.run_id)
    assert retry.status == "started" and retry.started is not None
    with db.session_scope() as session:
        run = session.get_one(ConsolidationRun, retry.run_id)
        jobs = session.scalars(select(ConsolidationJob).where(ConsolidationJob.run_id == run.id)).all()
        first = session.get_one(ConsolidationRun, original.run_id)
    assert [j.project_id for j in jobs] == [kinds["under_threshold"]] and retry.dispatch == [jobs[0].id]
    assert (run.trigger_type, run.projects_checked, run.projects_eligible, run.projects_skipped, run.jobs_total) == (
        "manual",
        2,
        1,
        1,
        1,
    )
    assert run.summary["retry_of"] == str(original.run_id)
    assert first.summary["retried_by"] == [str(retry.run_id)]
    assert first.summary["jobs_skipped"] == 0  # the rest of the original's summary is kept

    again = _retry([kinds["under_threshold"]], original.run_id)
    with db.session_scope() as session:
        runs.mark_dispatched(session, again.run_id, NOW)
        assert runs.finalize(session, again.run_id) is not None
    with db.session_scope() as session:
        first = session.get_one(ConsolidationRun, original.run_id)
        second = session.get_one(ConsolidationRun, again.run_id)
    assert first.summary["retried_by"] == [str(retry.run_id), str(again.run_id)]
    assert second.summary["retry_of"] == str(original.run_id)  # kept when the retry is finalized


def test_a_redelivered_retry_message_links_once(manifests):
    kinds = _kinds(manifests)
    original = _claim()
    _finished(original, {})
    run_id = uuid.uuid4()
    claims = []
    for _delivery in range(2):
        with db.session_scope() as session:
            claims.append(
                runs.claim(
                    session,
                    TriggerType.MANUAL,
                    None,
                    10,
                    NOW,
                    run_id=run_id,
                    projects=[kinds["eligible"]],
                    retry_of=original.run_id,
                ).status
            )
    assert claims == ["started", "duplicate"]
    with db.session_scope() as session:
        assert session.get_one(ConsolidationRun, original.run_id).summary["retried_by"] == [str(run_id)]


def test_retry_projects_are_the_failed_jobs_projects_of_a_finished_run(manifests):
    kinds = _kinds(manifests)
    with db.session_scope() as session:
        session.execute(update(Project).values(consolidation_threshold=1))  # every enabled project runs
    claim = _claim()
    with db.session_scope() as session, pytest.raises(retries.RetryRefused, match="is still running"):
        retries.retry_projects(session, claim.run_id)
    with db.session_scope() as session:
        eligible = [
            j.project_id
            for j in session.scalars(select(ConsolidationJob).where(ConsolidationJob.run_id == claim.run_id))
        ]
    assert len(eligible) == 3 and kinds["under_threshold"] in eligible
    failed, skipped, completed = eligible
    _finished(claim, {failed: "failed", skipped: "skipped", completed: "completed"})
    with db.session_scope() as session:
        assert retries.retry_projects(session, claim.run_id) == [failed]


def test_retry_is_refused_without_failed_jobs_or_their_projects(manifests):
    claim = _claim()
    _finished(claim, dict.fromkeys([uuid.UUID(m.id) for m in manifests], "completed"))
    with db.session_scope() as session, pytest.raises(retries.RetryRefused, match=r"\(completed\) had no failed jobs"):
        retries.retry_projects(session, claim.run_id)
    with db.session_scope() as session, pytest.raises(retries.RetryRefused, match="does not exist"):
        retries.retry_projects(session, uuid.uuid4())
    with db.session_scope() as session:
        job = session.scalars(select(ConsolidationJob).where(ConsolidationJob.run_id == claim.run_id)).first()
        job.status = "failed"
        session.delete(session.get_one(Project, job.project_id))
    with db.session_scope() as session, pytest.raises(retries.RetryRefused, match="were deleted"):
        retries.retry_projects(session, claim.run_id)


def test_retry_message_parses_projects_and_refuses_bad_ones():
    ids = [uuid.uuid4(), uuid.uuid4()]
    assert retries.retry_message(TriggerType.MANUAL, [str(i) for i in ids], uuid.uuid4()) == ids
    assert retries.retry_message(TriggerType.MANUAL, None, None) is None
    assert retries.retry_message(TriggerType.SCHEDULED, None, None) is None
    for bad in ("abc", [], [1], ["not-a-uuid"], {"a": 1}, [str(ids[0]), None]):
        with pytest.raises(ValueError, match="projects"):
            retries.retry_message(TriggerType.MANUAL, bad, None)
    with pytest.raises(ValueError, match="manual run only"):
        retries.retry_message(TriggerType.SCHEDULED, [str(ids[0])], None)
    with pytest.raises(ValueError, match="manual run only"):
        retries.retry_message(TriggerType.SCHEDULED, None, ids[0])

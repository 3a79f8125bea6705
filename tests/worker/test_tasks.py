"""The nightly run with a real Celery worker in this process (threads pool, in-memory
transport, cache+memory result backend with chord support)."""

import json
import threading
import uuid
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer

from sqlalchemy import func, select, update
from sqlalchemy.exc import OperationalError

from orchestration.consolidation import planning
from orchestration.demo.seed import seed
from orchestration.jobs import progress as job_progress
from orchestration.settings import get_settings
from orchestration.store import db
from orchestration.store.models import ConsolidationChange, ConsolidationJob, ConsolidationRun, TaskMemory
from orchestration.store.types import utcnow
from orchestration.worker.tasks import finalize_run, reap_stale, run_project, run_scheduled
from support import jobs_by_project, run_for_slot, wait_for_run, wait_until

SLOT = "2026-11-27T02:00:00+00:00"


def _seed(projects=5, memories=60, **kw):
    with db.session_scope() as session:
        return seed(session, projects, memories, seed=7, dim=32, **kw)


def _run_for_slot(slot=SLOT):
    return run_for_slot(slot)


_jobs = jobs_by_project


def test_full_chord_on_seeded_data(celery_worker, database, captured_logs, monkeypatch):
    monkeypatch.setattr(job_progress, "INTERVAL_S", 0)  # every step of progress, not one per 2 s
    manifests = _seed()
    run_scheduled.apply_async(kwargs={"slot": SLOT})
    run = _run_for_slot()
    eligible = [m for m in manifests if m.kind == "eligible"]
    assert run.status == "completed" and run.trigger_type == "scheduled"
    assert (run.projects_checked, run.projects_eligible, run.projects_skipped) == (5, 3, 1)
    assert (run.jobs_total, run.jobs_completed, run.jobs_failed) == (3, 3, 0)
    jobs = _jobs(run.id)
    assert {str(p) for p in jobs} == {m.id for m in eligible}
    for manifest in eligible:
        job = jobs[uuid.UUID(manifest.id)]
        assert job.status == "completed" and job.attempts == 1 and job.progress == 1.0
        assert job.clusters_found == len(manifest.groups)
        assert job.memories_merged == sum(len(g) for g in manifest.groups)
        assert job.memories_archived == len(manifest.stale)
        assert job.memories_before == manifest.memories
        assert job.memories_after == manifest.memories - job.memories_merged + job.clusters_found - len(manifest.stale)
    assert run.memories_merged == sum(j.memories_merged for j in jobs.values())
    assert run.memories_archived == sum(j.memories_archived for j in jobs.values())
    assert run.memories_before == sum(j.memories_before for j in jobs.values())
    assert run.memories_after == sum(j.memories_after for j in jobs.values())
    assert run.summary["failed_jobs"] == [] and run.summary["duration_s"] >= 0

    events = captured_logs()
    names = [e["event"] for e in events]
    for name in ("run.started", "run.eligible", "job.started", "job.progress", "job.completed", "run.finished"):
        assert name in names, name
    for event in events:
        assert event["timestamp"].endswith("Z") and "level" in event
        if event["event"].startswith("job."):
            assert event["run_id"] == str(run.id)
            assert uuid.UUID(event["job_id"]) in {j.id for j in jobs.values()}
            assert uuid.UUID(event["project_id"]) in jobs
            assert event["task_id"]
    # Celery's own lines go through the same JSON renderer and carry the task's ids.
    celery_lines = [e for e in events if e.get("logger", "").startswith("celery") and "job_id" in e]
    assert celery_lines and all(e["run_id"] == str(run.id) for e in celery_lines)
    finished = next(e for e in events if e["event"] == "run.finished")
    assert finished["status"] == "completed" and finished["memories_merged"] == run.memories_merged
    # Between job.started and job.completed, progress moves forward only, through named stages.
    stages = ["similarity", "merge", "archive"]
    for job in jobs.values():
        lines = [e for e in events if e.get("job_id") == str(job.id)]
        names = [e["event"] for e in lines if e["event"].startswith("job.")]
        steps = [(e["progress"], e["stage"]) for e in lines if e["event"] == "job.progress"]
        assert names[0] == "job.started" and names[-1] == "job.completed" and len(steps) >= 3
        assert steps[0] == (0.4, "similarity") and all(0 < p < 1 for p, _ in steps)
        assert [p for p, _ in steps] == sorted({p for p, _ in steps})
        assert [stages.index(s) for _, s in steps] == sorted(stages.index(s) for _, s in steps)


def test_zero_eligible_projects_completes_at_once(celery_worker, sqlite_database):
    _seed(projects=2)
    from orchestration.store.models import Project

    with db.session_scope() as session:
        session.execute(update(Project).values(consolidation_threshold=10_000))
    run_scheduled.apply_async(kwargs={"slot": SLOT})
    run = _run_for_slot()
    assert run.status == "completed"
    assert (run.projects_checked, run.projects_eligible, run.jobs_total) == (2, 0, 0)


def test_duplicate_run_scheduled_for_one_slot_starts_one_run(celery_worker, sqlite_database, captured_logs):
    _seed(projects=3)
    results = [run_scheduled.apply_async(kwargs={"slot": SLOT}) for _ in range(3)]
    outcomes = sorted(r.get(timeout=30)["status"] for r in results)
    run = _run_for_slot()
    assert outcomes == ["duplicate", "duplicate", "started"]
    with db.session_scope() as session:
        assert session.scalar(select(func.count()).select_from(ConsolidationRun)) == 1
        assert session.scalar(select(func.count()).select_from(ConsolidationJob)) == run.jobs_total
    skipped = [e for e in captured_logs() if e["event"] == "run.duplicate_skipped"]
    assert len(skipped) == 2 and all(e["run_id"] == str(run.id) for e in skipped)


def test_transient_failures_retry_then_succeed(
    celery_worker, sqlite_database, settings_env, monkeypatch, captured_logs
):
    settings_env(retry_backoff_max="1", max_retries="3")
    manifests = _seed(projects=3)
    target = uuid.UUID(manifests[0].id)
    real = planning.plan
    calls = {"n": 0}

    def flaky(session, project_id, *args, **kwargs):
        if project_id == target and calls["n"] < 2:
            calls["n"] += 1
            raise OperationalError("SELECT 1", {}, Exception("server closed the connection unexpectedly"))
        return real(session, project_id, *args, **kwargs)

    monkeypatch.setattr(planning, "plan", flaky)
    run_scheduled.apply_async(kwargs={"slot": SLOT})
    run = _run_for_slot()
    job = _jobs(run.id)[target]
    assert run.status == "completed"
    assert job.status == "completed" and job.attempts == 3 and job.error_message is None
    assert job.memories_merged == sum(len(g) for g in manifests[0].groups)
    retrying = [e for e in captured_logs() if e["event"] == "job.retrying"]
    assert [e["attempt"] for e in retrying] == [1, 2]
    assert all(0 <= e["countdown"] <= 1 and "server closed" in e["error"] for e in retrying)
    assert all(e["job_id"] == str(job.id) and e["run_id"] == str(run.id) for e in retrying)


def test_retries_are_capped_then_the_job_fails_and_the_run_is_partial(
    celery_worker, sqlite_database, settings_env, monkeypatch, captured_logs
):
    settings_env(retry_backoff_max="1", max_retries="2")
    manifests = _seed(projects=4)
    target = uuid.UUID(manifests[0].id)
    real = planning.plan

    def always_broken(session, project_id, *args, **kwargs):
        if project_id == target:
            raise RuntimeError("embedding index corrupt")
        return real(session, project_id, *args, **kwargs)

    monkeypatch.setattr(planning, "plan", always_broken)
    run_scheduled.apply_async(kwargs={"slot": SLOT})
    run = _run_for_slot()
    jobs = _jobs(run.id)
    assert run.status == "partial" and run.jobs_failed == 1 and run.jobs_completed == 1
    assert jobs[target].status == "failed" and jobs[target].attempts == 3
    assert "embedding index corrupt" in jobs[target].error_message
    assert run.summary["failed_jobs"][0]["job_id"] == str(jobs[target].id)
    assert "embedding index corrupt" in run.summary["failed_jobs"][0]["error"]
    failed = [e for e in captured_logs() if e["event"] == "job.failed"]
    assert len(failed) == 1 and failed[0]["attempts"] == 3 and failed[0]["run_id"] == str(run.id)


def test_malformed_options_fail_at_once_without_retry(celery_worker, sqlite_database, settings_env):
    settings_env(retry_backoff_max="1")
    manifests = _seed(projects=3, failing=True)
    failing = next(m for m in manifests if m.kind == "failing")
    run_scheduled.apply_async(kwargs={"slot": SLOT})
    run = _run_for_slot()
    job = _jobs(run.id)[uuid.UUID(failing.id)]
    assert run.status == "partial"
    assert job.status == "failed" and job.attempts == 1
    assert "consolidation_options.similarity_threshold" in job.error_message
    assert "similarity_threshold" in run.summary["failed_jobs"][0]["error"]


def test_all_jobs_failing_fails_the_run(celery_worker, sqlite_database, settings_env):
    settings_env(retry_backoff_max="1")
    _seed(projects=1, failing=True)  # one eligible + one failing
    from orchestration.store.models import Project

    with db.session_scope() as session:
        session.execute(update(Project).values(consolidation_options={"merge": "yes"}))
    run_scheduled.apply_async(kwargs={"slot": SLOT})
    run = _run_for_slot()
    assert run.status == "failed" and run.jobs_failed == run.jobs_total == 2


def test_project_deleted_after_the_check_is_skipped(celery_worker, sqlite_database):
    manifests = _seed(projects=4)
    from orchestration.nightly import runs
    from orchestration.store.models import Project

    with db.session_scope() as session:
        started = runs.start_run(session, "manual", None, 1000)
    with db.session_scope() as session:
        session.delete(session.get(Project, uuid.UUID(manifests[0].id)))
    from celery import chord

    chord(run_project.s(str(j)) for j in started.job_ids)(finalize_run.s(str(started.run_id)))
    run = wait_for_run(lambda s: s.get(ConsolidationRun, started.run_id))
    with db.session_scope() as session:
        statuses = sorted(j.status for j in session.scalars(select(ConsolidationJob)))
    assert statuses == ["completed", "skipped"]
    assert run.status == "completed" and run.summary["jobs_skipped"] == 1


def test_a_claim_that_died_before_sending_its_chord_is_redispatched(celery_worker, sqlite_database, captured_logs):
    from orchestration.nightly import runs
    from orchestration.nightly.schedule import parse_slot

    manifests = _seed(projects=4)
    slot = parse_slot(SLOT)
    with db.session_scope() as session:  # claimed and committed; the process died before the chord
        started = runs.start_run(session, "scheduled", slot, 1000, now=utcnow() - timedelta(minutes=10))
    assert run_scheduled.apply_async(kwargs={"slot": SLOT}).get(timeout=30)["status"] == "redispatched"
    run = _run_for_slot()
    assert run.id == started.run_id and run.status == "completed"
    assert run.jobs_completed == sum(m.kind == "eligible" for m in manifests)
    assert [e["jobs"] for e in captured_logs() if e["event"] == "run.redispatched"] == [2]
    # A claim that is merely in progress (inside the grace period) is not dispatched twice.
    with db.session_scope() as session:
        fresh = runs.start_run(session, "scheduled", parse_slot("2026-11-28T02:00:00Z"), 1000)
    assert run_scheduled.apply_async(kwargs={"slot": "2026-11-28T02:00:00Z"}).get(timeout=30)["status"] == "duplicate"
    with db.session_scope() as session:
        assert session.get(ConsolidationRun, fresh.run_id).status == "running"


def test_redelivered_run_project_never_double_applies(celery_worker, database):
    manifests = _seed(projects=3)
    run_scheduled.apply_async(kwargs={"slot": SLOT})
    run = _run_for_slot()
    job = _jobs(run.id)[uuid.UUID(manifests[0].id)]

    def snapshot():
        with db.session_scope() as session:
            return (
                session.scalar(select(func.count()).select_from(TaskMemory)),
                session.scalar(select(func.count()).select_from(ConsolidationChange)),
            )

    before = snapshot()
    # Redelivery of a finished job: a no-op.
    assert run_project.apply_async(args=[str(job.id)]).get(timeout=30)["status"] == "completed"
    assert snapshot() == before
    # Worker died after its last commit but before marking the job completed.
    with db.session_scope() as session:
        session.execute(update(ConsolidationJob).where(ConsolidationJob.id == job.id).values(status="running"))
    assert run_project.apply_async(args=[str(job.id)]).get(timeout=30)["status"] == "completed"
    assert snapshot() == before
    again = _jobs(run.id)[job.project_id]
    assert again.attempts == 2 and again.memories_merged == job.memories_merged


def test_finalize_is_idempotent(celery_worker, sqlite_database, captured_logs):
    _seed(projects=3)
    run_scheduled.apply_async(kwargs={"slot": SLOT})
    run = _run_for_slot()
    assert finalize_run.apply_async(args=[[], str(run.id)]).get(timeout=30)["status"] == "already_finished"
    with db.session_scope() as session:
        again = session.get(ConsolidationRun, run.id)
    assert (again.finished_at, again.status, again.summary) == (run.finished_at, run.status, run.summary)
    assert [e["event"] for e in captured_logs()].count("run.finished") == 1


def test_reaper_finalizes_a_run_past_its_deadline(celery_worker, sqlite_database, captured_logs):
    _seed(projects=3)
    from orchestration.nightly import runs

    long_ago = utcnow() - timedelta(days=1)
    with db.session_scope() as session:
        started = runs.start_run(session, "scheduled", long_ago.replace(second=0, microsecond=0), 1000, now=long_ago)
        session.execute(update(ConsolidationJob).values(status="running", heartbeat_at=long_ago, attempts=1))
    assert reap_stale.apply_async().get(timeout=30) == {"lost": 0, "resent": 0, "runs": 1}
    with db.session_scope() as session:
        run = session.get(ConsolidationRun, started.run_id)
        job = session.scalar(select(ConsolidationJob))
    assert job.status == "failed" and job.error_message.startswith("run deadline of 21600s passed")
    assert run.status == "failed" and run.finished_at is not None
    reaped = [e for e in captured_logs() if e["event"] == "run.reaped"]
    assert reaped and reaped[0]["run_id"] == str(run.id) and reaped[0]["reason"] == "deadline"
    assert reap_stale.apply_async().get(timeout=30) == {"lost": 0, "resent": 0, "runs": 0}


def _vanish_once(monkeypatch, project_id):
    """The first attempt of ``project_id``'s job dies with its process: no chord part,
    no lock release, no heartbeat any more (dated back past heartbeat.LOST_AFTER)."""
    from celery.exceptions import Ignore

    from orchestration.jobs import lifecycle
    from orchestration.jobs.heartbeat import LOST_AFTER
    from orchestration.store.models import ProjectLock

    real, calls = lifecycle.consolidate, {"n": 0}

    def consolidate(attempt, **kwargs):
        if attempt.project_id == project_id and calls["n"] == 0:
            calls["n"] += 1
            dead = utcnow() - LOST_AFTER - timedelta(seconds=1)
            with db.session_scope() as session:
                session.execute(update(ProjectLock).values(heartbeat_at=dead))
                session.execute(
                    update(ConsolidationJob).where(ConsolidationJob.id == attempt.job_id).values(heartbeat_at=dead)
                )
            raise Ignore()
        return real(attempt, **kwargs)

    monkeypatch.setattr(lifecycle, "consolidate", consolidate)
    return calls


def test_a_job_whose_worker_died_is_resent_into_its_chord(celery_worker, database, monkeypatch, captured_logs):
    manifests = _seed(projects=4)
    target = uuid.UUID(next(m.id for m in manifests if m.kind == "eligible"))
    calls = _vanish_once(monkeypatch, target)
    run_scheduled.apply_async(kwargs={"slot": SLOT}).get(timeout=30)
    job_id = next(j.id for j in _jobs_of_slot().values() if j.project_id == target)

    def job_state():
        with db.session_scope() as session:
            job = session.get(ConsolidationJob, job_id)
            return job.status, job.attempts

    wait_until(lambda: calls["n"] == 1 and job_state() == ("running", 1))
    assert _open_run().status == "running"  # the chord waits for the dead attempt's part
    assert reap_stale.apply_async().get(timeout=30) == {"lost": 1, "resent": 1, "runs": 0}
    run = _run_for_slot()
    job = _jobs(run.id)[target]
    assert run.status == "completed" and run.jobs_completed == 2
    assert "callback_error" not in run.summary  # the re-sent part completed the chord itself
    assert job.status == "completed" and job.attempts == 2 and job.celery_task_id == str(job.id)
    assert job.memories_merged == sum(len(g) for g in next(m for m in manifests if m.id == str(target)).groups)
    events = captured_logs()
    lost = [e for e in events if e["event"] == "job.worker_lost"]
    assert len(lost) == 1 and lost[0]["attempt"] == 1 and lost[0]["job_id"] == str(job.id)
    assert lost[0]["run_id"] == str(run.id) and "no heartbeat since" in lost[0]["error"]
    assert [e["event"] for e in events].count("run.finished") == 1


def test_a_duplicate_delivery_while_the_job_is_alive_does_nothing(celery_worker, sqlite_database, captured_logs):
    from orchestration.jobs import lifecycle
    from orchestration.nightly import runs

    _seed(projects=3)
    with db.session_scope() as session:
        started = runs.start_run(session, "manual", None, 1000)
    job_id = started.job_ids[0]
    live = lifecycle.begin_attempt(job_id, get_settings())  # a live attempt holds the lock
    run_project.apply_async(args=[str(job_id)])
    wait_until(lambda: any(e["event"] == "job.already_running" for e in captured_logs()))
    with db.session_scope() as session:
        job = session.get(ConsolidationJob, job_id)
    assert (job.status, job.attempts) == ("running", 1)
    duplicate = next(e for e in captured_logs() if e["event"] == "job.already_running")
    assert duplicate["run_id"] == str(started.run_id) and "attempt 1" in duplicate["reason"]
    assert lifecycle.consolidate(live).status == "completed"  # the live attempt finishes undisturbed


def test_a_chord_completes_when_a_message_sent_by_hand_runs_one_of_its_jobs(
    celery_worker, sqlite_database, captured_logs, monkeypatch
):
    from celery import chord

    from orchestration.jobs import lifecycle
    from orchestration.nightly import runs
    from orchestration.worker import base

    monkeypatch.setattr(base, "RECHECK_S", 0.5)  # 15 s in production: the fault suite runs with it
    _seed(projects=3)
    with db.session_scope() as session:
        started = runs.start_run(session, "manual", None, 1000)
    job_id = started.job_ids[0]
    # Another message (sent by hand, outside the chord) started the job first.
    live = lifecycle.begin_attempt(job_id, get_settings(), celery_task_id=str(uuid.uuid4()))
    chord(run_project.s(str(j)) for j in started.job_ids)(finalize_run.s(str(started.run_id)))
    wait_until(
        lambda: sum(e.get("recheck_in_s") is not None for e in captured_logs()) >= 2,
        what="the chord's delivery looking again",
    )
    with db.session_scope() as session:
        assert session.get(ConsolidationRun, started.run_id).status == "running"  # waiting for that job
    assert lifecycle.consolidate(live).status == "completed"
    run = wait_for_run(lambda s: s.get(ConsolidationRun, started.run_id))
    assert run.status == "completed" and run.jobs_completed == len(started.job_ids)
    with db.session_scope() as session:
        assert session.get(ConsolidationJob, job_id).attempts == 1  # looked, never started again


def test_a_job_with_no_attempts_left_fails_at_its_start(celery_worker, sqlite_database, settings_env):
    from orchestration.nightly import runs

    settings_env(max_retries="2")
    _seed(projects=3)
    with db.session_scope() as session:
        started = runs.start_run(session, "manual", None, 1000)
        session.execute(update(ConsolidationJob).values(status="retrying", attempts=3))
    result = run_project.apply_async(args=[str(started.job_ids[0])]).get(timeout=30)
    assert result["status"] == "failed"
    assert result["error"].startswith("worker died during attempt 3 of 3 (ORCHESTRATION_MAX_RETRIES=2)")
    with db.session_scope() as session:
        assert session.get(ConsolidationJob, started.job_ids[0]).attempts == 3


def _open_run():
    from orchestration.nightly.schedule import parse_slot

    with db.session_scope() as session:
        return session.scalar(select(ConsolidationRun).where(ConsolidationRun.scheduled_for == parse_slot(SLOT)))


def _jobs_of_slot():
    return _jobs(_open_run().id)


class _Receiver(BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Receiver.received.append((self.headers["Content-Type"], json.loads(body)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_the_summary_is_posted_to_the_notify_url(celery_worker, sqlite_database, settings_env):
    server = HTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Receiver.received = []
    try:
        settings_env(notify_url=f"http://127.0.0.1:{server.server_port}/hook", notify_allow_private="true")
        _seed(projects=3)
        run_scheduled.apply_async(kwargs={"slot": SLOT})
        run = _run_for_slot()
        wait_until(lambda: _Receiver.received)  # consolidation.notify, a task of its own
    finally:
        server.shutdown()
        server.server_close()
    assert len(_Receiver.received) == 1
    content_type, body = _Receiver.received[0]
    assert content_type == "application/json"
    assert body["id"] == str(run.id) and body["status"] == "completed"
    assert body["memories_merged"] == run.memories_merged


def test_an_unreachable_notify_url_is_logged_and_the_run_still_completes(
    celery_worker, sqlite_database, settings_env, captured_logs
):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once we leave: nothing listens there
    settings_env(notify_url=f"http://user:secret@127.0.0.1:{port}/hook", notify_allow_private="true")
    _seed(projects=3)
    run_scheduled.apply_async(kwargs={"slot": SLOT})
    run = _run_for_slot()
    # The notification retries once after a short pause, then gives up.
    wait_until(lambda: any(e["event"] == "notify.failed" for e in captured_logs()))
    assert run.status == "completed"
    failed = [e for e in captured_logs() if e["event"] == "notify.failed"]
    assert len(failed) == 1 and failed[0]["run_id"] == str(run.id)
    assert "secret" not in json.dumps(failed[0])


def test_a_webhook_that_never_answers_holds_up_neither_the_callback_nor_the_reaper(
    celery_worker, sqlite_database, settings_env, captured_logs
):
    """The endpoint accepts the connection and never answers: the run is closed and
    announced at once; the POST runs in consolidation.notify and ends at its deadline."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    try:
        settings_env(notify_url=f"http://127.0.0.1:{listener.getsockname()[1]}/hook", notify_allow_private="true")
        _seed(projects=3)
        run_scheduled.apply_async(kwargs={"slot": SLOT})
        run = _run_for_slot()
        assert run.status == "completed"
        assert reap_stale.apply_async().get(timeout=30)["runs"] == 0  # the reaper answers meanwhile
        events = [e["event"] for e in captured_logs()]
        assert "run.finished" in events and "notify.failed" not in events  # the POST is still waiting
    finally:
        listener.close()  # the POST's wait ends (its deadline is tested in tests/nightly/test_notify.py)
    wait_until(lambda: any(e["event"] == "notify.failed" for e in captured_logs()), timeout=60)
    (failed,) = [e for e in captured_logs() if e["event"] == "notify.failed"]
    assert failed["task"] == "consolidation.notify" and failed["run_id"] == str(run.id)


def test_a_broken_callback_is_retried_from_the_job_rows(celery_worker, sqlite_database, monkeypatch, captured_logs):
    from orchestration.nightly import runs

    real = runs.finalize
    calls = {"n": 0}

    def broken_once(session, run_id, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise ValueError("summary could not be written")
        return real(session, run_id, *args, **kwargs)

    monkeypatch.setattr(runs, "finalize", broken_once)
    _seed(projects=3)
    run_scheduled.apply_async(kwargs={"slot": SLOT})
    run = _run_for_slot()
    assert run.status == "completed"  # the jobs completed: the rows say so
    assert run.summary["callback_error"] == "run callback failed: ValueError: summary could not be written"
    finished = [e for e in captured_logs() if e["event"] == "run.finished"]
    assert len(finished) == 1 and finished[0]["status"] == "completed"


def test_a_callback_that_can_never_run_marks_the_run_failed(celery_worker, sqlite_database, monkeypatch):
    from orchestration.nightly import runs

    def always_broken(*args, **kwargs):
        raise ValueError("summary could not be written")

    monkeypatch.setattr(runs, "finalize", always_broken)
    _seed(projects=3)
    run_scheduled.apply_async(kwargs={"slot": SLOT})
    run = _run_for_slot()
    assert run.status == "failed"
    assert run.error_message.startswith(
        "run callback failed: ValueError: summary could not be written; finalizing again failed"
    )


def test_the_callback_waits_for_a_job_that_is_still_running(celery_worker, sqlite_database, monkeypatch):
    from orchestration.worker import tasks

    monkeypatch.setattr(tasks, "FINALIZE_WAIT_S", 0.2)
    _seed(projects=3)
    from orchestration.nightly import runs

    with db.session_scope() as session:
        started = runs.start_run(session, "manual", None, 1000)
        session.execute(update(ConsolidationJob).values(status="running", heartbeat_at=utcnow()))
    result = finalize_run.apply_async(args=[[], str(started.run_id)])
    wait_until(lambda: result.state == "RETRY")  # the callback is waiting: the job is still running
    with db.session_scope() as session:
        assert session.get(ConsolidationRun, started.run_id).status == "running"
        session.execute(update(ConsolidationJob).values(status="completed"))
    assert result.get(timeout=30)["status"] == "completed"


def test_a_failed_job_reports_what_is_active_now(celery_worker, sqlite_database, settings_env):
    settings_env(retry_backoff_max="1")
    manifests = _seed(projects=3, failing=True)
    run_scheduled.apply_async(kwargs={"slot": SLOT})
    run = _run_for_slot()
    failing = _jobs(run.id)[uuid.UUID(next(m.id for m in manifests if m.kind == "failing"))]
    assert failing.status == "failed" and failing.memories_after == failing.memories_before > 0
    assert (
        run.memories_before - run.memories_after
        == run.memories_merged - sum(j.clusters_found for j in _jobs(run.id).values()) + run.memories_archived
    )


def test_jobs_whose_messages_the_broker_lost_are_sent_again(celery_worker, database, captured_logs):
    """The chord was sent, then the broker forgot its messages (a restart without
    persistence): the reaper sees fewer queued messages than unreceived jobs and sends
    them again; the run completes, closed by the reaper once its callback cannot come."""
    from orchestration.nightly import reaper, runs

    _seed(projects=4)
    with db.session_scope() as session:
        started = runs.start_run(session, "manual", None, 10)
        runs.mark_dispatched(session, started.run_id, utcnow() - reaper.QUEUE_GRACE * 2)  # ... and lost
    assert reap_stale.apply_async().get(timeout=30)["resent"] == len(started.job_ids) == 2
    resent = [e for e in captured_logs() if e["event"] == "job.resent"]
    assert sorted(e["job_id"] for e in resent) == sorted(str(j) for j in started.job_ids)
    assert all(e["queued"] == 0 and e["run_id"] == str(started.run_id) for e in resent)

    def finished():
        with db.session_scope() as session:
            jobs = session.scalars(select(ConsolidationJob).where(ConsolidationJob.run_id == started.run_id)).all()
            return all(job.status == "completed" and job.attempts == 1 for job in jobs)

    wait_until(finished)
    # Received and done: nothing to send again; the chord's count was lost with the
    # messages, so the reaper closes the run now instead of waiting for its callback.
    assert reap_stale.apply_async().get(timeout=30)["resent"] == 0
    with db.session_scope() as session:
        run = session.get(ConsolidationRun, started.run_id)
        assert run.status == "completed" and run.jobs_completed == 2
        assert run.summary[reaper.LOST_MESSAGES]


def test_a_slot_in_the_future_is_refused_by_the_task(celery_worker, sqlite_database, captured_logs):
    future = (utcnow() + timedelta(days=1)).replace(hour=2, minute=0, second=0, microsecond=0)
    result = run_scheduled.apply_async(kwargs={"slot": future.isoformat()}).get(timeout=30)
    assert result["status"] == "rejected" and "future" in result["error"]
    with db.session_scope() as session:
        assert session.scalar(select(func.count()).select_from(ConsolidationRun)) == 0
    (rejected,) = [e for e in captured_logs() if e["event"] == "task.rejected"]
    assert rejected["task"] == "consolidation.run_scheduled"


def test_a_worker_on_another_schedule_than_beat_says_so_and_runs_beats_night(
    celery_worker, sqlite_database, settings_env, captured_logs
):
    """Beat fires at 03:30 (its schedule travels in the message); this worker was given
    02:00: the night still runs, for beat's slot, and the mismatch is an error event."""
    from orchestration.celery_app import beat_schedule
    from orchestration.nightly.health import check_health
    from orchestration.settings import load_settings

    beat_settings = load_settings({"ORCHESTRATION_SCHEDULE": "30 3 * * *"})
    entry = beat_schedule(beat_settings)["consolidation-nightly"]
    _seed(projects=3)
    run_scheduled.apply_async(kwargs=entry["kwargs"]).get(timeout=30)
    with db.session_scope() as session:
        run = session.scalar(select(ConsolidationRun))
    assert (run.scheduled_for.hour, run.scheduled_for.minute) == (3, 30)
    (mismatch,) = [e for e in captured_logs() if e["event"] == "schedule.mismatch"]
    assert mismatch["level"] == "error" and mismatch["beat_schedule"] == "30 3 * * *"
    assert mismatch["worker_schedule"] == "0 2 * * *"
    run = wait_for_run(lambda s: s.get(ConsolidationRun, run.id))
    with db.session_scope() as session:
        result = check_health(session, beat_settings, run.finished_at, timedelta(hours=26))
    assert result.code == 2 and "differs from the workers'" in result.message

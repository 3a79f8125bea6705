"""docs/events.md against what a real run emits, in both directions."""

import contextlib
import io
import json
import re
import socket
import time
import uuid
from datetime import timedelta
from pathlib import Path
from unittest.mock import patch

import structlog
from sqlalchemy import select, update

from orchestration.cli import web
from orchestration.consolidation import planning
from orchestration.demo.seed import seed
from orchestration.jobs import progress as job_progress
from orchestration.logs import configure_logging
from orchestration.nightly import runs
from orchestration.nightly.schedule import parse_slot
from orchestration.settings import get_settings
from orchestration.store import db
from orchestration.store.models import ConsolidationChange, ConsolidationJob, ConsolidationRun, Project
from orchestration.store.statuses import TriggerType
from orchestration.store.types import utcnow
from orchestration.worker.tasks import prune_audit, reap_stale, run_project, run_scheduled
from support import wait_for_run, wait_until

CATALOGUE = Path(__file__).resolve().parent.parent / "docs" / "events.md"
COMMON = {"event", "level", "logger", "timestamp", "task_id", "task", "run_id", "job_id", "project_id", "project_name"}
SLOT = "2026-11-27T02:00:00+00:00"


def catalogue() -> dict[str, dict]:
    events = {}
    for line in CATALOGUE.read_text().splitlines():
        match = re.match(r"\| `([a-z_.]+)` \| (\w+) \| (.*?) \| .* \|$", line)
        if match:
            events[match[1]] = {"level": match[2], "fields": set(re.findall(r"`(\w+)`", match[3]))}
    return events


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _crash_recovery_events(project_id) -> None:
    """job.worker_lost, job.already_running, job.superseded, worker.record_failed and
    broker.consumer_timeout, each as its code path writes it."""
    from types import SimpleNamespace
    from unittest.mock import patch

    from sqlalchemy.exc import OperationalError

    from orchestration.celery_app import warn_consumer_timeout
    from orchestration.jobs import heartbeat, lifecycle, recovery
    from orchestration.jobs.locks import Lease
    from orchestration.store.models import ProjectLock
    from orchestration.worker.requests import JobRequest

    settings = get_settings()
    with db.session_scope() as session:
        started = runs.start_run(session, TriggerType.MANUAL, None, 1)
        assert started is not None
    job_id = next(j for j in started.job_ids if _job(j).project_id == project_id)
    live = lifecycle.begin_attempt(job_id, settings)
    assert isinstance(live, lifecycle.Attempt)
    run_project.apply_async(args=[str(job_id)])  # a duplicate delivery while the attempt is alive
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and _job(job_id).attempts == 1 and not _duplicate_seen():
        time.sleep(0.05)
    with db.session_scope() as session:  # the live attempt froze; a new one takes over
        session.execute(update(ProjectLock).values(heartbeat_at=utcnow() - heartbeat.LOST_AFTER * 2))
    newer = lifecycle.begin_attempt(job_id, settings)
    with (
        structlog.contextvars.bound_contextvars(**lifecycle.job_ids(_job(job_id))),
        contextlib.suppress(lifecycle.Superseded),
    ):
        lifecycle.consolidate(live)
    recovery.worker_lost(job_id, settings, "Worker exited prematurely: signal 9 (SIGKILL)")
    assert newer is not None and _job(job_id).status == "failed"  # ORCHESTRATION_MAX_RETRIES=1 here: 2 of 2 died

    def unreachable(*_):
        raise OSError("database unreachable")

    def unreachable_db():
        raise OperationalError("DELETE FROM project_locks", {}, Exception("connection refused"))

    # A stand-in request: _record only asks it for _job_id().
    JobRequest._record(SimpleNamespace(_job_id=lambda: job_id), unreachable, "worker lost")  # type: ignore[arg-type]
    # An attempt fails while the database is down: its lock cannot be given back.
    lease = Lease(project_id, job_id, 9)
    with (
        patch.object(lease, "release", lambda _: unreachable_db()),
        contextlib.suppress(RuntimeError),
        lease.held(),
    ):
        raise RuntimeError("the attempt failed")
    # A project disabled after the run's check: its job is skipped at its start.
    other = next(j for j in started.job_ids if j != job_id)
    with db.session_scope() as session:
        session.execute(update(Project).where(Project.id == _job(other).project_id).values(consolidation_enabled=False))
    assert run_project.apply_async(args=[str(other)]).get(timeout=30)["status"] == "skipped"
    warn_consumer_timeout("3.10.8", settings)


def _outage_and_schedule_events() -> None:
    """database.unreachable and job.attempt_spared (an outage cuts an attempt short),
    job.resent (the broker lost a sent chord's messages), schedule.mismatch (beat and
    the worker on different schedules)."""
    import psycopg
    from sqlalchemy.exc import OperationalError

    from orchestration.nightly import reaper
    from orchestration.worker import base

    with db.session_scope() as session:
        started = runs.start_run(session, TriggerType.MANUAL, None, 10)
        assert started is not None
        runs.mark_dispatched(session, started.run_id, utcnow() - reaper.QUEUE_GRACE * 2)  # and lost by the broker
    real, calls = planning.plan, {"n": 0}

    def outage_once(executor, project_id, *args, **kwargs):
        if calls["n"] == 0:
            calls["n"] += 1
            raise OperationalError("SELECT 1", {}, psycopg.OperationalError("connection failed: Connection refused"))
        return real(executor, project_id, *args, **kwargs)

    with (
        patch.object(planning, "plan", outage_once),
        patch.object(base, "outage_countdown", lambda retries: 0.05),
    ):
        assert reap_stale.apply_async().get(timeout=60)["resent"] == len(started.job_ids)
        wait_until(lambda: not _unfinished(started.run_id), 60, "the re-sent jobs finished")
    beat_slot = parse_slot("2026-11-25T03:30:00+00:00")
    run_scheduled.apply_async(kwargs={"slot": beat_slot.isoformat(), "schedule": "30 3 * * *"}).get(timeout=30)
    wait_for_run(lambda s: s.scalar(select(ConsolidationRun).where(ConsolidationRun.scheduled_for == beat_slot)))


def _unfinished(run_id) -> bool:
    with db.session_scope() as session:
        return bool(
            session.scalar(
                select(ConsolidationJob.id).where(
                    ConsolidationJob.run_id == run_id, ConsolidationJob.status.in_(("pending", "running", "retrying"))
                )
            )
        )


def _job(job_id):
    with db.session_scope() as session:
        return session.get(ConsolidationJob, job_id)


def _duplicate_seen() -> bool:
    return any('"job.already_running"' in line for line in _STREAM[0].getvalue().splitlines())


_STREAM: list = [None]


def test_the_catalogue_matches_what_a_run_emits(celery_worker, sqlite_database, settings_env, monkeypatch):
    settings_env(
        retry_backoff_max="1",
        max_retries="1",
        notify_url=f"http://127.0.0.1:{_closed_port()}/",
        notify_allow_private="true",
    )
    monkeypatch.setattr(job_progress, "INTERVAL_S", 0)  # the jobs here are shorter than 2 s
    stream = _STREAM[0] = io.StringIO()
    configure_logging(get_settings(), stream=stream)
    try:
        with db.session_scope() as session:
            manifests = seed(session, 5, 40, seed=2, dim=16, failing=True)
        flaky = uuid.UUID(manifests[0].id)
        real = planning.plan
        calls = {"n": 0}

        def faults(session, project_id, *args, **kwargs):
            if project_id == flaky and calls["n"] == 0:
                calls["n"] += 1
                raise ConnectionError("database restarting")
            return real(session, project_id, *args, **kwargs)

        monkeypatch.setattr(planning, "plan", faults)
        run_scheduled.apply_async(kwargs={"slot": SLOT}).get(timeout=30)
        run_scheduled.apply_async(kwargs={"slot": SLOT}).get(timeout=30)
        run = wait_for_run(
            lambda s: s.scalar(select(ConsolidationRun).where(ConsolidationRun.scheduled_for == parse_slot(SLOT)))
        )
        with db.session_scope() as session:
            job_id = session.scalar(select(ConsolidationJob.id).where(ConsolidationJob.project_id == flaky))
        run_project.apply_async(args=[str(job_id)]).get(timeout=30)
        run_project.apply_async(args=["not-a-uuid"]).get(timeout=30)
        # A run whose claimer died after committing its jobs: the redelivered claim sends its chord.
        orphan_slot = parse_slot("2026-11-26T02:00:00+00:00")
        with db.session_scope() as session:
            runs.start_run(session, "scheduled", orphan_slot, 10, now=utcnow() - timedelta(minutes=10))
        run_scheduled.apply_async(kwargs={"slot": orphan_slot.isoformat()}).get(timeout=30)
        wait_for_run(lambda s: s.scalar(select(ConsolidationRun).where(ConsolidationRun.scheduled_for == orphan_slot)))
        # A run whose worker vanished long ago, for the reaper.
        long_ago = utcnow() - timedelta(days=2)
        with db.session_scope() as session:
            stale = runs.start_run(session, "manual", None, 10, now=long_ago)
            session.execute(
                update(ConsolidationJob)
                .where(ConsolidationJob.run_id == stale.run_id)
                .values(status="running", heartbeat_at=long_ago)
            )
        reap_stale.apply_async().get(timeout=60)
        _outage_and_schedule_events()
        _crash_recovery_events(flaky)
        web.announce(get_settings(), "0.0.0.0", 8800)  # what `orchestration web --host 0.0.0.0` says first
        with db.session_scope() as session:
            session.execute(update(ConsolidationChange).values(changed_at=long_ago - timedelta(days=100)))
        prune_audit.apply_async().get(timeout=30)
    finally:
        configure_logging(get_settings())
    assert run.status == "partial"

    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    ours = [e for e in lines if e["logger"].startswith("orchestration")]
    documented = catalogue()
    emitted: dict[str, set] = {}
    for event in ours:
        name = event["event"]
        assert name in documented, f"{name} is emitted but not in docs/events.md"
        assert event["level"] == documented[name]["level"], name
        emitted.setdefault(name, set()).update(set(event) - COMMON)
        assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z$", event["timestamp"])
        if name.startswith(("job.", "run.")) and name != "run.duplicate_skipped":
            assert event.get("run_id"), event
    assert set(documented) == set(emitted), "documented but never emitted: " + str(set(documented) - set(emitted))
    for name, info in documented.items():
        assert emitted[name] == info["fields"], f"{name}: emitted {emitted[name]}, documented {info['fields']}"

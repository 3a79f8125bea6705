"""The nightly run end to end on the production stack: a ``celery -A
orchestration.celery_app worker`` subprocess (prefork) against real PostgreSQL, with
Redis or RabbitMQ as the broker (Redis as the result backend), started through the
broker exactly as beat and ``run-now`` do."""

import json
import os
import re
import signal
import subprocess
import sys
import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest
from celery import Celery
from sqlalchemy import select

from orchestration.demo.seed import seed
from orchestration.store import db
from orchestration.store.models import ConsolidationJob, ConsolidationRun
from support import celery_worker_command, wait_for_run, wait_until

pytestmark = pytest.mark.integration
SLOT = "2026-11-27T02:00:00+00:00"


@pytest.fixture(params=["redis", "rabbitmq"])
def stack(request, pg_database, redis_url, tmp_path):
    """Environment for processes that talk to this test's PostgreSQL database, Redis DB
    and (for the rabbitmq case) RabbitMQ virtual host."""
    broker = redis_url if request.param == "redis" else request.getfixturevalue("amqp_url")
    env = {
        **os.environ,
        "ORCHESTRATION_DATABASE_URL": pg_database,
        "ORCHESTRATION_BROKER_URL": broker,
        "ORCHESTRATION_RESULT_BACKEND": redis_url,
        "ORCHESTRATION_RETRY_BACKOFF_MAX": "1",
        "ORCHESTRATION_LOG_FORMAT": "json",
    }
    yield env


ROOT = Path(__file__).resolve().parent.parent


@contextmanager
def worker_process(env, log: Path, app: str = "orchestration.celery_app"):
    """``celery -A <app> worker`` (prefork, 2 processes) as a subprocess."""
    with log.open("w") as out:
        process = subprocess.Popen(
            celery_worker_command(app, "--loglevel", "INFO"),
            env={**env, "PYTHONPATH": str(ROOT)},
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield log
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def worker(stack, tmp_path):
    with worker_process(stack, tmp_path / "worker.log") as log:
        yield log


def _client(env) -> Celery:
    client = Celery(
        "client",
        broker=env["ORCHESTRATION_BROKER_URL"],
        backend=env["ORCHESTRATION_RESULT_BACKEND"],
        set_as_current=False,
    )
    client.conf.update(task_serializer="json", accept_content=["json"], result_serializer="json")
    return client


def test_full_chord_with_a_worker_subprocess(stack, worker):
    with db.session_scope() as session:
        manifests = seed(session, 5, 60, seed=9, dim=32, failing=True)
    client = _client(stack)
    client.send_task("consolidation.run_scheduled", kwargs={"slot": SLOT})
    client.send_task("consolidation.run_scheduled", kwargs={"slot": SLOT})  # a second beat: no second run
    slot = SLOT.replace("+00:00", "")
    from orchestration.nightly.schedule import parse_slot

    run = wait_for_run(
        lambda s: s.scalar(select(ConsolidationRun).where(ConsolidationRun.scheduled_for == parse_slot(slot))),
        timeout=120,
    )
    with db.session_scope() as session:
        jobs = {str(j.project_id): j for j in session.scalars(select(ConsolidationJob))}
        runs = session.scalars(select(ConsolidationRun)).all()
    assert len(runs) == 1
    assert run.status == "partial" and (run.jobs_total, run.jobs_completed, run.jobs_failed) == (4, 3, 1)
    for manifest in manifests:
        if manifest.kind == "eligible":
            job = jobs[manifest.id]
            assert job.status == "completed"
            assert job.clusters_found == len(manifest.groups)
            assert job.memories_merged == sum(len(g) for g in manifest.groups)
            assert job.memories_archived == len(manifest.stale)
        elif manifest.kind == "failing":
            assert jobs[manifest.id].status == "failed" and jobs[manifest.id].attempts == 1
    events = [json.loads(line) for line in Path(worker).read_text().splitlines() if line.startswith("{")]
    names = [e["event"] for e in events]
    assert names.count("run.finished") == 1 and names.count("run.duplicate_skipped") == 1
    assert all(e["run_id"] == str(run.id) for e in events if e["event"].startswith("job."))


def test_run_now_wait_through_redis(stack, worker):
    with db.session_scope() as session:
        seed(session, 3, 40, seed=4, dim=16)
    done = subprocess.run(
        [sys.executable, "-m", "orchestration.cli", "run-now", "--wait", "--timeout", "120"],
        env=stack,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "manual  status: COMPLETED" in done.stdout
    with db.session_scope() as session:
        run = session.scalar(select(ConsolidationRun))
    assert run.trigger_type == "manual" and run.jobs_completed == 1
    assert uuid.UUID(str(run.id))


def test_a_job_past_its_soft_time_limit_fails_cleanly(stack, tmp_path):
    env = {**stack, "ORCHESTRATION_JOB_TIME_LIMIT": "2", "FAULT_SLEEP_S": "30"}
    with db.session_scope() as session:
        seed(session, 1, 40, seed=4, dim=16)
    with worker_process(env, tmp_path / "worker.log", app="tests.fault_worker") as log:
        _client(env).send_task("consolidation.run_scheduled", kwargs={"slot": SLOT})
        from orchestration.nightly.schedule import parse_slot

        run = wait_for_run(
            lambda s: s.scalar(select(ConsolidationRun).where(ConsolidationRun.scheduled_for == parse_slot(SLOT))),
            timeout=60,
        )
    with db.session_scope() as session:
        job = session.scalar(select(ConsolidationJob))
    assert job.status == "failed" and job.attempts == 1
    assert job.error_message.startswith("exceeded the soft time limit of 2s (ORCHESTRATION_JOB_TIME_LIMIT)")
    assert run.status == "failed" and run.jobs_failed == 1
    events = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    assert any(e["event"] == "job.failed" and "soft time limit" in e["error"] for e in events)


def test_the_worker_sends_celery_task_events(stack, worker):
    """`celery events` and Flower see the run's tasks with readable names and id-only arguments."""
    import threading

    with db.session_scope() as session:
        seed(session, 3, 40, seed=4, dim=16)
    client = _client(stack)
    received: list[dict] = []
    with client.connection() as conn:
        receiver = client.events.Receiver(conn, handlers={"*": received.append})
        thread = threading.Thread(target=lambda: receiver.capture(limit=None, timeout=None, wakeup=True), daemon=True)
        thread.start()
        import time

        # The receiver's queue must exist before the run's events are published: the
        # worker's own heartbeat events (every 2 s) arriving prove it does.
        wait_until(lambda: len(received) > 0, 30, "the first worker event")
        client.send_task("consolidation.run_scheduled", kwargs={"slot": SLOT})
        from orchestration.nightly.schedule import parse_slot

        wait_for_run(
            lambda s: s.scalar(select(ConsolidationRun).where(ConsolidationRun.scheduled_for == parse_slot(SLOT))),
            timeout=120,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(
            e.get("name") == "consolidation.finalize_run" for e in received if e["type"] == "task-received"
        ):
            time.sleep(0.2)
        receiver.should_stop = True
    names = {e.get("name") for e in received if e["type"] == "task-received"}
    assert {"consolidation.run_scheduled", "consolidation.run_project", "consolidation.finalize_run"} <= names
    project_events = [e for e in received if e["type"] == "task-received" and e["name"] == "consolidation.run_project"]
    assert all(re.fullmatch(r"\('[0-9a-f-]{36}',\)", e["args"]) for e in project_events)
    assert any(e["type"] == "task-succeeded" for e in received)


@pytest.mark.parametrize("stack", ["redis"], indirect=True)
def test_worker_processes_share_the_cpus_between_their_blas_thread_pools(stack, tmp_path):
    from orchestration.celery_app import blas_threads

    with worker_process(stack, tmp_path / "worker.log", app="tests.fault_worker"):
        pools = _client(stack).send_task("tests.blas_threads").get(timeout=60)
    assert pools and set(pools) == {blas_threads(2)}  # the suite's workers run 2 processes

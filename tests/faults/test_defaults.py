"""Crash recovery with the production defaults (no shortened visibility timeout or
heartbeat), on Redis and on RabbitMQ: what an operator gets when the OOM killer,
``docker kill`` or a node drain takes a worker mid-job. Beat runs as in production,
so the reaper checks every minute. docs/reliability.md gives the measured costs."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from kombu import Connection

from support import difference, fingerprint

# pytest imports this folder's test modules by file name (the folder on sys.path); mypy,
# with tests/ as its base, knows them as faults.*.
if TYPE_CHECKING:
    from faults.test_faults import clean_reference, finished_run, jobs_of, now_slot, plant, start_run, wait_dead
else:
    from test_faults import clean_reference, finished_run, jobs_of, now_slot, plant, start_run, wait_dead

# The target: within 5 minutes of a worker's death its job runs again and the run completes.
RECOVERY_TARGET_S = 300


def production_env(database_url: str, broker_url: str, backend_url: str, tmp_path: Path, **faults: str) -> dict:
    """The defaults of every ORCHESTRATION_* setting but the addresses; only the
    injected fault differs from production."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("ORCHESTRATION_", "FAULT_"))}
    return {
        **clean,
        "ORCHESTRATION_DATABASE_URL": database_url,
        "ORCHESTRATION_BROKER_URL": broker_url,
        "ORCHESTRATION_RESULT_BACKEND": backend_url,
        "ORCHESTRATION_LOG_FORMAT": "json",
        "FAULT_MARKER": str(tmp_path / "fault-marker"),
        **faults,
    }


@pytest.fixture(params=["redis", "rabbitmq"])
def broker(request, redis_server) -> str:
    """The broker URL; the result backend is always the test's Redis."""
    return redis_server.url if request.param == "redis" else request.getfixturevalue("amqp_url")


def restore_unacked(redis_url: str) -> int:
    """What Redis does once the visibility timeout (an hour) has passed: put the dead
    worker's unacknowledged messages back in the queue. Returns how many."""
    with Connection(redis_url, transport_options={"visibility_timeout": 0}) as conn:
        channel = conn.default_channel
        with channel.conn_or_acquire() as client:
            count = client.zcard(channel.unacked_index_key)
        channel.qos.restore_visible(num=1000)
    return count


@pytest.mark.slow
def test_killed_worker_recovers_within_minutes(
    broker, redis_server, pg_database, second_pg_url, workers, beats, tmp_path, report
):
    expected = clean_reference(second_pg_url)
    plant()
    # Killed a second into the first job (each batch first sleeps half a second).
    env = production_env(
        pg_database,
        broker,
        redis_server.url,
        tmp_path,
        FAULT_KILL_AT="between_batches",
        FAULT_MERGE_BATCH="2",
        FAULT_BATCH_SLEEP_S="0.5",
    )
    beats.start(env)  # as in compose.yaml: the reaper runs every minute
    first = workers.start(env)
    slot = now_slot()
    start_run(broker, slot)
    wait_dead(first)  # the whole worker, SIGKILLed between two batches of a job
    killed = time.monotonic()
    workers.start(env)
    run = finished_run(slot, timeout=RECOVERY_TARGET_S)
    recovered_s = time.monotonic() - killed
    jobs = jobs_of(run.id)
    events = workers.events()
    lost = [e for e in events if e["event"] == "job.worker_lost"]
    assert run.status == "completed" and all(j.status == "completed" for j in jobs)
    assert recovered_s < RECOVERY_TARGET_S
    # Attempt 0: a job the dead worker had received but not started yet.
    assert lost and all(e["attempt"] in (0, 1) and "no heartbeat since" in e["error"] for e in lost)
    assert all(j.attempts <= 2 for j in jobs)
    assert difference(expected, fingerprint()) == (0, 0)
    late = ""
    if broker.startswith("redis"):
        # An hour later Redis redelivers the dead worker's messages: they find their jobs finished.
        assert restore_unacked(broker) >= 1
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(e["event"] == "job.already_finished" for e in workers.events()):
            time.sleep(0.2)
        again = finished_run(slot, timeout=5)
        assert any(e["event"] == "job.already_finished" for e in workers.events())
        assert (again.status, again.finished_at, again.summary) == (run.status, run.finished_at, run.summary)
        assert [j.attempts for j in jobs_of(run.id)] == [j.attempts for j in jobs]
        assert difference(expected, fingerprint()) == (0, 0)
        late = "; the hour-late redelivery found the jobs finished"
    name = "redis" if broker.startswith("redis") else "rabbitmq"
    report(
        f"defaults[{name}] killed worker: {len(lost)} job(s) lost and re-sent, run {run.status} "
        f"{recovered_s:.0f}s after the kill, 0 lost, 0 doubled{late}"
    )


def test_a_project_that_kills_its_worker_every_time(broker, redis_server, pg_database, workers, tmp_path, report):
    manifests = plant()
    crashing = next(m.id for m in manifests if m.kind == "eligible")
    env = production_env(pg_database, broker, redis_server.url, tmp_path, FAULT_CRASH_PROJECT=crashing)
    workers.start(env)
    slot = now_slot()
    started = time.monotonic()
    start_run(broker, slot)
    run = finished_run(slot, timeout=RECOVERY_TARGET_S)
    took = time.monotonic() - started
    jobs = {str(j.project_id): j for j in jobs_of(run.id)}
    lost = [e for e in workers.events() if e["event"] == "job.worker_lost"]
    assert run.status == "partial"
    assert jobs[crashing].status == "failed" and jobs[crashing].attempts == 4  # ORCHESTRATION_MAX_RETRIES=3, + 1
    assert "worker died during attempt 4 of 4" in jobs[crashing].error_message
    assert all(j.status == "completed" for p, j in jobs.items() if p != crashing)
    assert [e["attempt"] for e in lost] == [1, 2, 3, 4]
    assert all(e["job_id"] == str(jobs[crashing].id) and e["run_id"] == str(run.id) for e in lost)
    name = "redis" if broker.startswith("redis") else "rabbitmq"
    report(
        f"defaults[{name}] project that kills its worker: {len(lost)} attempts died, job failed, "
        f"others completed, run {run.status} in {took:.0f}s"
    )

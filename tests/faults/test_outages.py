"""Outages of PostgreSQL and Redis in the middle of a run, with the production defaults
(no shortened backoff, heartbeat, visibility timeout or grace period; beat runs as in
production, so the reaper checks every minute). Issue 22: an outage costs its duration
plus minutes, not the night. Only the work is slowed (injected sleeps), so that the
outage meets a run in progress."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING

import pytest
from sqlalchemy import select

from orchestration.consolidation.options import resolve_options
from orchestration.store import db
from orchestration.store.models import ConsolidationJob, ConsolidationRun
from support import consolidate, difference, fingerprint, wait_until

# pytest imports this folder's test modules by file name (the folder on sys.path); mypy,
# with tests/ as its base, knows them as faults.*.
if TYPE_CHECKING:
    from faults.test_defaults import RECOVERY_TARGET_S, production_env
    from faults.test_faults import finished_run, jobs_of, now_slot, plant, start_run
else:
    from test_defaults import RECOVERY_TARGET_S, production_env
    from test_faults import finished_run, jobs_of, now_slot, plant, start_run

pytestmark = pytest.mark.slow


def reference(url: str, **seeded) -> list[tuple]:
    """The end state of one uninterrupted consolidation of the same seeded data
    (``plant(**seeded)``), on the database at ``url``."""
    previous = db.current_url()
    db.use_database(url)
    try:
        manifests = plant(**seeded)
        for manifest in (m for m in manifests if m.kind == "eligible"):
            consolidate(uuid.UUID(manifest.id), resolve_options(None))
        return fingerprint()
    finally:
        db.use_database(previous)


def run_jobs(slot) -> Sequence[ConsolidationJob]:
    """The jobs of the run of ``slot`` (none before it is claimed)."""
    with db.session_scope() as session:
        return session.scalars(
            select(ConsolidationJob)
            .join(ConsolidationRun, ConsolidationRun.id == ConsolidationJob.run_id)
            .where(ConsolidationRun.scheduled_for == slot)
        ).all()


def count(events: list[dict], name: str) -> int:
    return sum(e["event"] == name for e in events)


@pytest.fixture
def own_database(pg_cluster):
    """This process (the test) uses the database of the test's own PostgreSQL server."""
    db.use_database(pg_cluster.url)
    try:
        yield pg_cluster
    finally:
        db.use_database(None)


@pytest.mark.parametrize("outage_s", [30, 240, 600], ids=["30s", "4min", "10min"])
def test_postgres_down_mid_run(outage_s, second_pg_url, own_database, redis_server, workers, beats, tmp_path, report):
    cluster = own_database
    expected = reference(second_pg_url)  # on the shared server
    plant()
    # Two jobs of ~4 merge batches each, every batch first sleeping 3 s.
    env = production_env(
        cluster.url, redis_server.url, redis_server.url, tmp_path, FAULT_MERGE_BATCH="2", FAULT_BATCH_SLEEP_S="3"
    )
    beats.start(env)
    workers.start(env)
    slot = now_slot()
    start_run(redis_server.url, slot)

    def mid_job() -> bool:  # both jobs running, each with a batch committed and more to come
        jobs = run_jobs(slot)
        return len(jobs) == 2 and all(j.status == "running" and j.clusters_found > 0 for j in jobs)

    wait_until(mid_job, 120, "both jobs between two batches")
    cut_short = {str(j.id) for j in run_jobs(slot) if j.status == "running"}
    db.dispose()  # this process's connections die with the server
    cluster.stop()  # fast shutdown: transactions rolled back, every client disconnected
    time.sleep(outage_s)
    cluster.start()
    back = time.monotonic()
    run = finished_run(slot, timeout=2 * RECOVERY_TARGET_S)
    recovered_s = time.monotonic() - back
    jobs = jobs_of(run.id)
    events = workers.events()
    unreachable = [e for e in events if e["event"] == "database.unreachable"]
    spared = Counter(e["job_id"] for e in events if e["event"] == "job.attempt_spared")
    assert run.status == "completed" and all(j.status == "completed" for j in jobs)
    # The outage used up none of the jobs' attempts: each cut-short attempt was given back once.
    assert [j.attempts for j in jobs] == [1, 1]
    assert set(spared) == cut_short and set(spared.values()) == {1}
    assert unreachable and max(e["countdown"] for e in unreachable) <= 60
    # Waited out, not retried as a failure, nor taken for a dead worker.
    assert count(events, "job.retrying") == count(events, "job.failed") == count(events, "job.worker_lost") == 0
    assert difference(expected, fingerprint()) == (0, 0)
    assert recovered_s < RECOVERY_TARGET_S
    closed_by = next((e["reason"] for e in events if e["event"] == "run.reaped"), "the chord")
    report(
        f"outage[postgres {outage_s}s]: run {run.status} {recovered_s:.0f}s after PostgreSQL's return "
        f"(closed by {closed_by}); {len(unreachable)} database.unreachable, {sum(spared.values())} attempts "
        "spared, attempts 1 each, 0 lost, 0 doubled"
    )


def test_redis_restarted_empty_mid_run(pg_database, second_pg_url, redis_server, workers, beats, tmp_path, report):
    seeded = {"projects": 8}  # six eligible projects for the worker's two processes
    expected = reference(second_pg_url, **seeded)
    plant(**seeded)
    env = production_env(pg_database, redis_server.url, redis_server.url, tmp_path, FAULT_SLEEP_S="10")
    beats.start(env)
    workers.start(env)
    slot = now_slot()
    start_run(redis_server.url, slot)
    wait_until(lambda: sum(j.status == "running" for j in run_jobs(slot)) == 2, 120, "two jobs running")
    queued = [j for j in run_jobs(slot) if j.status == "pending" and j.heartbeat_at is None]
    assert len(queued) >= 2, "some jobs must still be queued when Redis restarts"
    # Broker and result backend come back with no data: queued messages, unacknowledged
    # ones and the chord's counters are gone.
    redis_server.restart(empty=True)
    back = time.monotonic()
    run = finished_run(slot, timeout=2 * RECOVERY_TARGET_S)
    recovered_s = time.monotonic() - back
    jobs = jobs_of(run.id)
    events = workers.events()
    resent = {e["job_id"] for e in events if e["event"] in ("job.resent", "job.worker_lost")}
    reaped = [e["reason"] for e in events if e["event"] == "run.reaped"]
    assert run.status == "completed" and all(j.status == "completed" for j in jobs)
    assert {str(j.id) for j in queued} <= resent
    assert count(events, "run.finished") >= 1 and (not reaped or reaped == ["callback_missing"])
    assert difference(expected, fingerprint()) == (0, 0)
    assert recovered_s < RECOVERY_TARGET_S
    closed_by = f"run.reaped {reaped[0]}" if reaped else "the chord"
    report(
        f"outage[redis restarted empty]: {len(queued)} queued jobs lost, {count(events, 'job.resent')} job.resent + "
        f"{count(events, 'job.worker_lost')} job.worker_lost, run {run.status} {recovered_s:.0f}s after Redis's "
        f"return (closed by {closed_by}), 0 lost, 0 doubled"
    )

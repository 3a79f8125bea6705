"""Benchmark: the cost of the nightly run itself, against a bare Celery chord.

N eligible projects whose jobs do minimal work (merge and archive off), real Redis
and PostgreSQL, one ``celery -A orchestration.celery_app worker`` subprocess with 2
prefork processes. For each N, in the same run on the same broker and worker:

- *nightly*: wall time from sending ``consolidation.run_scheduled`` to the run row
  being finished;
- *bare*: a Celery chord of N ``celery.accumulate`` tasks (a built-in no-op) with a
  no-op callback, from sending to the callback's result.

Prints both, their ratio, the per-job overhead, and the database round trips of one
job (counted in-process on the same code path the task runs).

    python bench/orchestration.py                 # N = 100, 1000
    python bench/orchestration.py --sizes 100,1000,5000

Servers: ORCHESTRATION_TEST_DATABASE_URL (admin URL) and ORCHESTRATION_TEST_REDIS_URL.
A scratch database and an empty Redis database number are used and cleaned up.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# This file is named orchestration.py: the package must win the import.
sys.path.insert(0, str(ROOT))

from _common import scratch_pg_database, scratch_redis_db  # noqa: E402

MINIMAL = {"merge": False, "archive": False}


def _seed(size: int) -> None:
    from sqlalchemy import delete, insert

    from orchestration.store import db
    from orchestration.store.models import ConsolidationJob, ConsolidationRun, Project, TaskMemory

    with db.session_scope() as session:
        session.execute(delete(ConsolidationJob))
        session.execute(delete(ConsolidationRun))
        session.execute(delete(TaskMemory))
        session.execute(delete(Project))
        ids = [uuid.uuid4() for _ in range(size)]
        session.execute(
            insert(Project),
            [
                {"id": pid, "name": f"bench-{i}", "consolidation_threshold": 1, "consolidation_options": MINIMAL}
                for i, pid in enumerate(ids)
            ],
        )
        session.execute(
            insert(TaskMemory),
            [
                {
                    "project_id": pid,
                    "memory_type": "learning",
                    "content": f"memory {k} of {pid}",
                    "tags": [],
                    "file_links": [],
                }
                for pid in ids
                for k in range(2)
            ],
        )


def _nightly(client, size: int) -> float:
    from sqlalchemy import select

    from orchestration.nightly import runs
    from orchestration.nightly.schedule import parse_slot
    from orchestration.store.models import ConsolidationRun

    slot = parse_slot(f"2026-01-01T02:{size % 60:02d}:00")
    with __import__("orchestration.store.db", fromlist=["session_scope"]).session_scope() as session:
        session.query(ConsolidationRun).filter(ConsolidationRun.scheduled_for == slot).delete()
    started = time.perf_counter()
    client.send_task("consolidation.run_scheduled", kwargs={"slot": slot.isoformat()})
    run = runs.wait_for_finish(
        lambda s: s.scalar(select(ConsolidationRun).where(ConsolidationRun.scheduled_for == slot)), 3600, 0.05
    )
    elapsed = time.perf_counter() - started
    assert run is not None and run.status == "completed" and run.jobs_completed == size, run and run.status
    return elapsed


def _bare(client, size: int) -> float:
    from celery import chord

    accumulate = client.signature("celery.accumulate")
    started = time.perf_counter()
    result = chord(accumulate.clone(args=(i,)) for i in range(size))(accumulate.clone())
    result.get(timeout=3600)
    return time.perf_counter() - started


def _round_trips_per_job() -> tuple[float, float]:
    """Statements and transactions of one job, counted on the task's code path. Each
    transaction adds two round trips (psycopg sends BEGIN and COMMIT on their own)."""
    from sqlalchemy import event, select

    from orchestration.jobs import lifecycle
    from orchestration.settings import get_settings
    from orchestration.store import db
    from orchestration.store.models import ConsolidationJob, Project
    from orchestration.store.statuses import TriggerType

    with db.session_scope() as session:
        projects = session.scalars(select(Project.id).limit(5)).all()
        created = [
            lifecycle.create_job(
                session, p, run_id=None, trigger_type=TriggerType.MANUAL, triggered_by="bench", options=MINIMAL
            ).id
            for p in projects
        ]
    count = {"before_cursor_execute": 0, "begin": 0}

    def counter(name):
        def count_one(*_):
            count[name] += 1

        return count_one

    engine = db.get_engine()
    listeners = [(name, counter(name)) for name in count]
    for name, listener in listeners:
        event.listen(engine, name, listener)
    try:
        for job_id in created:
            lifecycle.run(job_id, get_settings())
    finally:
        for name, listener in listeners:
            event.remove(engine, name, listener)
    with db.session_scope() as session:
        session.query(ConsolidationJob).filter(ConsolidationJob.id.in_(created)).delete()
    return count["before_cursor_execute"] / len(created), count["begin"] / len(created)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100,1000")
    args = parser.parse_args()
    from celery import Celery

    from orchestration.store import db, migrate

    url, drop = scratch_pg_database()
    broker, redis_client = scratch_redis_db()
    env = {
        **os.environ,
        "ORCHESTRATION_DATABASE_URL": url,
        "ORCHESTRATION_BROKER_URL": broker,
        "ORCHESTRATION_RESULT_BACKEND": broker,
        "ORCHESTRATION_LOG_LEVEL": "WARNING",
    }
    worker = None
    try:
        migrate.upgrade(url)
        db.use_database(url)
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "orchestration.celery_app",
                "worker",
                "--pool",
                "prefork",
                "--concurrency",
                "2",
                "--loglevel",
                "WARNING",
                "--without-mingle",
                "--without-gossip",
            ],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        client = Celery("bench", broker=broker, backend=broker, set_as_current=False)
        client.conf.update(task_serializer="json", accept_content=["json"], result_serializer="json")
        client.signature("celery.accumulate").apply_async(args=(0,)).get(timeout=60)  # worker is up
        print(f"{'N':>6}  {'nightly':>9}  {'bare chord':>10}  {'ratio':>6}  {'overhead/job':>12}", flush=True)
        for size in [int(s) for s in args.sizes.split(",")]:
            _seed(size)
            bare = _bare(client, size)
            nightly = _nightly(client, size)
            overhead_ms = (nightly - bare) / size * 1000
            print(
                f"{size:>6}  {nightly:8.2f}s  {bare:9.2f}s  {nightly / bare:6.2f}  {overhead_ms:9.1f} ms"
                f"   ratio {nightly / bare:.2f} at N={size}",
                flush=True,
            )
        statements, transactions = _round_trips_per_job()
        print(
            f"database round trips per job: {statements + 2 * transactions:.0f} "
            f"({statements:.0f} statements in {transactions:.0f} transactions)"
        )
    finally:
        if worker is not None:
            os.killpg(worker.pid, signal.SIGTERM)
            worker.wait(timeout=60)
        redis_client.flushdb()
        db.dispose()
        drop()


if __name__ == "__main__":
    main()

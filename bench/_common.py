"""Helpers shared by the benchmarks: scratch PostgreSQL databases and Redis numbers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

MINIMAL = {"merge": False, "archive": False}  # a job that plans, finds nothing to do, and completes
ADMIN_URL = os.environ.get("ORCHESTRATION_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("ORCHESTRATION_TEST_REDIS_URL", "redis://127.0.0.1:6379")


def _admin():
    from sqlalchemy import create_engine

    from orchestration.store.db import normalize_url

    return create_engine(normalize_url(ADMIN_URL), isolation_level="AUTOCOMMIT")


def create_database(name: str, template: str | None = None) -> str:
    """Create database ``name`` (a copy of ``template`` if given); returns its URL."""
    from sqlalchemy import text
    from sqlalchemy.engine import make_url

    from orchestration.store.db import normalize_url

    admin = _admin()
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else "")))
    admin.dispose()
    return make_url(normalize_url(ADMIN_URL)).set(database=name).render_as_string(hide_password=False)


def drop_database(name: str) -> None:
    from sqlalchemy import text

    admin = _admin()
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def scratch_pg_database() -> tuple[str, Callable[[], None]]:
    """Create an empty database; returns its URL and a function that drops it."""
    name = f"orch_bench_{uuid.uuid4().hex[:10]}"
    return create_database(name), lambda: drop_database(name)


def seed_project(url: str, size: int) -> Any:
    """Migrate the database at ``url`` and seed one project of ``size`` memories
    (384-dimension embeddings, about 10% in duplicate groups, 10% stale); its manifest."""
    from orchestration.demo.seed import seed
    from orchestration.store import db, migrate

    migrate.upgrade(url)
    db.use_database(url)
    with db.session_scope() as session:
        (manifest,) = seed(session, 1, size, seed=1, dim=384)
    return manifest


def run_step(script: str, *args: str) -> dict[str, Any]:
    """Run one step of a benchmark script in a fresh process (so that its peak memory is
    its own), logging at WARNING; the JSON document on its last line."""
    done = subprocess.run(
        [sys.executable, script, *args],
        capture_output=True,
        text=True,
        env={**os.environ, "ORCHESTRATION_LOG_LEVEL": "WARNING"},
    )
    if done.returncode != 0:
        raise SystemExit(f"benchmark step {args[0]} failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def scratch_redis_db():
    """An empty Redis database number: its URL and a client (flush it when done)."""
    import redis

    for number in range(15, 1, -1):
        client = redis.Redis.from_url(f"{REDIS_URL}/{number}")
        if client.dbsize() == 0:
            return f"{REDIS_URL}/{number}", client
    raise SystemExit("no empty Redis database number to benchmark in")


def seed_minimal(size: int) -> None:
    """Replace every project with ``size`` eligible projects whose jobs do minimal work."""
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


ROOT = Path(__file__).resolve().parent.parent
WORKER_OPTIONS = ("--pool", "prefork", "--without-mingle", "--without-gossip")


def client(broker: str):
    """A Celery client of its own (JSON), to send tasks by name and read results."""
    from celery import Celery

    app = Celery("bench", broker=broker, backend=broker, set_as_current=False)
    app.conf.update(task_serializer="json", accept_content=["json"], result_serializer="json")
    return app


def _die_with_parent() -> None:
    """Linux: the worker gets SIGTERM when this benchmark dies, even if it is killed (a
    timeout), instead of living on and taking the next run's messages."""
    import ctypes

    ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@contextmanager
def worker(app: str, env: dict[str, str], *options: str, concurrency: int = 2) -> Iterator[None]:
    """``celery -A <app> worker`` (prefork), output discarded, answering before the block
    starts (so start-up is not timed) and stopped after it."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            app,
            "worker",
            *WORKER_OPTIONS,
            "--concurrency",
            str(concurrency),
            *options,
        ],  # fmt: skip
        env={**env, "PYTHONPATH": os.pathsep.join([str(ROOT / "bench"), str(ROOT)])},
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=_die_with_parent,
    )
    try:
        probe = ("plain.noop", (0,)) if app == "plain_app" else ("consolidation.prune_audit", ())
        client(env["BENCH_BROKER"]).send_task(probe[0], args=probe[1]).get(timeout=120)
        yield
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=120)


def nightly(broker: str, slot: str, timeout: float = 7200):
    """Send ``run_scheduled`` for ``slot`` and wait for its run to finish (completed);
    returns the wall time and the run row."""
    from sqlalchemy import select

    from orchestration.nightly import runs
    from orchestration.nightly.schedule import parse_slot
    from orchestration.store.models import ConsolidationRun

    slot_at = parse_slot(slot)
    started = time.time()
    # A made-up slot, off the schedule: a backfill.
    client(broker).send_task("consolidation.run_scheduled", kwargs={"slot": slot, "backfill": True})
    # The run ends when its row says so (the worker's clock is this machine's clock),
    # so the row is polled sparingly: polling it often would load the CPUs it measures.
    run = runs.wait_for_finish(
        lambda s: s.scalar(select(ConsolidationRun).where(ConsolidationRun.scheduled_for == slot_at)), timeout, 0.5
    )
    assert run is not None and run.status == "completed", run and run.status
    assert run.finished_at is not None
    return run.finished_at.timestamp() - started, run


def worker_env(url: str, broker: str) -> dict[str, str]:
    """The environment of a worker on ``url`` and ``broker`` (plain app included)."""
    return {
        **os.environ,
        "ORCHESTRATION_DATABASE_URL": url,
        "ORCHESTRATION_BROKER_URL": broker,
        "ORCHESTRATION_RESULT_BACKEND": broker,
        "PLAIN_BROKER": broker,
        "BENCH_BROKER": broker,
    }

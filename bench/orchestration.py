"""Benchmark: the cost of the nightly run itself, against a plain Celery chord.

N eligible projects whose jobs do minimal work (merge and archive off), real Redis
and PostgreSQL, a worker subprocess with 2 prefork processes. For each N, side by
side on the same broker, alternating the order, medians of ``--repeat`` runs:

- *plain*: a chord of N no-op tasks with a no-op callback on a minimal Celery app of
  its own (``bench/plain_app.py``: JSON, late acks, prefetch 1), its worker without
  task events and at WARNING; the baseline;
- *plain + events*: the same worker with task events on (``-E``), as this project
  ships (Flower and ``celery events`` need them);
- *plain + INFO*: the same worker logging at INFO (Celery's two lines per task);
- *nightly*: ``consolidation.run_scheduled`` to the run row being finished, on
  ``celery -A orchestration.celery_app worker`` with the production defaults (task
  events on, INFO, JSON logs);
- *nightly, no events*: the same with task events off (``bench/nightly_without_events.py``),
  to compare like with like: the nightly run's own cost beyond the plain chord;
- *nightly, portable*: the production app with a job's one-statement start and end
  turned off (``bench/nightly_portable.py``): what the PostgreSQL fast path saves.

Prints each figure, the ratio nightly / plain (and a line containing ``ratio``), the
like-for-like ratios (nightly / plain + events, nightly without events / plain), the
ratio nightly / nightly portable, the per-job overhead, and the database round trips of
one job on either path (counted in-process on the same code path the task runs).
Worker output goes to /dev/null for every variant.

    python bench/orchestration.py                 # N = 100, 1000
    python bench/orchestration.py --sizes 1000,10000 --repeat 3

Servers: ORCHESTRATION_TEST_DATABASE_URL (admin URL) and ORCHESTRATION_TEST_REDIS_URL.
A scratch database and an empty Redis database number are used and cleaned up.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

ROOT = Path(__file__).resolve().parent.parent
# This file is named orchestration.py: the package must win the import.
sys.path.insert(0, str(ROOT))

# Run as a script, bench/ is on sys.path; mypy (from the repository root) knows it as the package bench.
if TYPE_CHECKING:
    from bench._common import (
        MINIMAL,
        client,
        nightly,
        scratch_pg_database,
        scratch_redis_db,
        seed_minimal,
        worker,
        worker_env,
    )
else:
    from _common import (
        MINIMAL,
        client,
        nightly,
        scratch_pg_database,
        scratch_redis_db,
        seed_minimal,
        worker,
        worker_env,
    )


def _nightly(size: int) -> float:
    from sqlalchemy import delete

    from orchestration.store import db
    from orchestration.store.models import ConsolidationJob, ConsolidationRun

    with db.session_scope() as session:
        session.execute(delete(ConsolidationJob))
        session.execute(delete(ConsolidationRun))
    elapsed, run = nightly(os.environ["BENCH_BROKER"], f"2026-01-01T02:{size % 60:02d}:00+00:00")
    assert run.jobs_completed == size
    return elapsed


def _plain(size: int) -> float:
    from celery import chord

    plain = client(os.environ["BENCH_BROKER"])
    noop, collect = plain.signature("plain.noop"), plain.signature("plain.collect")
    header = [noop.clone(args=(i,)) for i in range(size)]  # a list, as run_scheduled sends it
    started = time.perf_counter()
    result = chord(header)(collect.clone())
    assert result.get(timeout=3600) == size
    return time.perf_counter() - started


# name: (app, extra worker options, how to time one run of size N)
VARIANTS = {
    "plain": ("plain_app", ["--loglevel", "WARNING"], _plain),
    "plain + events": ("plain_app", ["--loglevel", "WARNING", "-E"], _plain),
    "plain + INFO": ("plain_app", ["--loglevel", "INFO"], _plain),
    "nightly": ("orchestration.celery_app", [], _nightly),
    "nightly, no events": ("nightly_without_events", [], _nightly),
    "nightly, portable": ("nightly_portable", [], _nightly),
}


def _round_trips_per_job(fast_path: bool = True) -> tuple[float, float]:
    """Statements and transactions of one job, counted on the task's code path: with the
    one-statement start and end, or (``fast_path=False``) on the portable path, as
    ``bench/nightly_portable.py`` runs it. Each transaction adds two round trips
    (psycopg sends BEGIN and COMMIT on their own)."""
    from sqlalchemy import event, select

    from orchestration.jobs import lifecycle, statements
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
        def count_one(connection, *_):
            # An autocommit connection sends no BEGIN or COMMIT: no round trips of its own.
            if name != "begin" or not connection.connection.driver_connection.autocommit:
                count[name] += 1

        return count_one

    listeners = [(engine, name, counter(name)) for engine in db.engines() for name in count]
    for engine, name, listener in listeners:
        event.listen(engine, name, listener)
    one_statement = statements.one_statement
    if not fast_path:
        statements.one_statement = lambda: False
    try:
        for job_id in created:
            lifecycle.run(job_id, get_settings())
    finally:
        statements.one_statement = one_statement
        for engine, name, listener in listeners:
            event.remove(engine, name, listener)
    with db.session_scope() as session:
        session.query(ConsolidationJob).filter(ConsolidationJob.id.in_(created)).delete()
    return count["before_cursor_execute"] / len(created), count["begin"] / len(created)


def measure(sizes: list[int], repeat: int, env: dict[str, str]) -> dict[int, dict[str, list[float]]]:
    figures: dict[int, dict[str, list[float]]] = {}
    for size in sizes:
        seed_minimal(size)
        figures[size] = {name: [] for name in VARIANTS}
        for round_ in range(repeat):
            order = list(VARIANTS) if round_ % 2 == 0 else list(reversed(VARIANTS))
            for name in order:
                app, options, timed = VARIANTS[name]
                with worker(app, env, *options):
                    figures[size][name].append(timed(size))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100,1000")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    from orchestration.store import db, migrate

    url, drop = scratch_pg_database()
    broker, redis_client = scratch_redis_db()
    env = worker_env(url, broker)
    os.environ["BENCH_BROKER"] = broker
    try:
        migrate.upgrade(url)
        db.use_database(url)
        figures = measure([int(s) for s in args.sizes.split(",")], args.repeat, env)
        names = list(VARIANTS)
        print(f"medians of {args.repeat}, seconds from sending to the chord's (run's) end")
        print(f"{'N':>6}  " + "  ".join(f"{n:>18}" for n in names) + f"  {'ratio':>6}  {'overhead/job':>12}")
        for size, by_name in figures.items():
            median = {n: statistics.median(v) for n, v in by_name.items()}
            ratio = median["nightly"] / median["plain"]
            overhead_ms = (median["nightly"] - median["plain"]) / size * 1000
            print(
                f"{size:>6}  "
                + "  ".join(f"{median[n]:17.2f}s" for n in names)
                + f"  {ratio:6.2f}  {overhead_ms:9.2f} ms"
                f"   ratio {ratio:.2f} at N={size} (nightly / plain)",
                flush=True,
            )
            print(
                f"        like for like: nightly / plain + events "
                f"{median['nightly'] / median['plain + events']:.2f}, "
                f"nightly without events / plain {median['nightly, no events'] / median['plain']:.2f}"
            )
            fast_path_ratio = median["nightly"] / median["nightly, portable"]
            print(f"        fast path: nightly / nightly portable {fast_path_ratio:.2f}")
            print("        all runs: " + "; ".join(f"{n} " + ", ".join(f"{v:.2f}" for v in by_name[n]) for n in names))
        for fast_path, path in ((True, ""), (False, ", portable path")):
            statements, transactions = _round_trips_per_job(fast_path)
            print(
                f"database round trips per job{path}: {statements + 2 * transactions:.0f} "
                f"({statements:.0f} statements in {transactions:.0f} transactions)"
            )
    finally:
        redis_client.flushdb()
        db.dispose()
        drop()


if __name__ == "__main__":
    main()

"""Benchmark: a realistic night, consolidated several ways on the same data.

``--projects`` projects with sizes drawn log-normally between ``--min`` and ``--max``
memories (384-dimension embeddings, duplicates and stale memories planted as in
``bench/consolidation.py``), seeded once into a template PostgreSQL database; each
measurement runs on a fresh copy of it:

- *in-process*: one process runs every job of a manual run one after another
  (``jobs.lifecycle.run``, the code a worker runs, without Celery), BLAS pinned to one
  thread: the work itself, on one core;
- *1-process worker*: the nightly run (``consolidation.run_scheduled``) on
  ``celery -A orchestration.celery_app worker --concurrency 1``: what the chord and
  the worker add to the same work;
- *2-process worker*: the same with ``--concurrency 2``, the production defaults
  (one BLAS thread per process on this 2-CPU machine, largest projects first);
- *2-process, BLAS unpinned*: the same, but each process keeps OpenBLAS's default of
  one thread per CPU (``bench/night_unpinned.py``), as before that default existed;
- *in-process, portable* and *2-process worker, portable*: the in-process run and the
  2-process worker with a job's one-statement start and end turned off
  (``jobs.statements.one_statement``; the worker runs ``bench/nightly_portable.py``):
  what the PostgreSQL fast path saves on a realistic night.

Prints each wall time and the speedup of each worker over the in-process run (a line
containing ``speedup``), and the ratio fast path / portable path of each pair, medians
of ``--repeat`` rounds that alternate the order of the variants (one run varies by
about 10% on a shared machine). PostgreSQL shares the machine's CPUs with the workers.

    python bench/night.py --repeat 3                        # 40 projects, 1,000-20,000 memories
    python bench/night.py --projects 12 --max 6000          # make bench

Servers: ORCHESTRATION_TEST_DATABASE_URL (admin URL) and ORCHESTRATION_TEST_REDIS_URL.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# Run as a script, bench/ is on sys.path; mypy (from the repository root) knows it as the package bench.
if TYPE_CHECKING:
    from bench._common import create_database, drop_database, nightly, scratch_redis_db, worker, worker_env
else:
    from _common import create_database, drop_database, nightly, scratch_redis_db, worker, worker_env

SLOT = "2026-01-02T02:00:00+00:00"


def sizes(projects: int, low: int, high: int, seed: int) -> list[int]:
    """Log-normal sizes: the median at the geometric middle of the range, two standard
    deviations to either end, clipped to it."""
    rng = np.random.default_rng(seed)
    middle, spread = (math.log(low) + math.log(high)) / 2, (math.log(high) - math.log(low)) / 4
    return [int(min(high, max(low, math.exp(x)))) for x in rng.normal(middle, spread, projects)]


def _seed(url: str, project_sizes: list[int]) -> None:
    from orchestration.demo.seed import seed
    from orchestration.store import db, migrate

    migrate.upgrade(url)
    db.use_database(url)
    for number, size in enumerate(project_sizes):
        with db.session_scope() as session:
            seed(session, 1, size, seed=1000 + number, dim=384)
    db.dispose()


def _in_process(url: str, portable: bool = False) -> None:
    """Child: every job of a manual run, one after another (BLAS pinned by the parent);
    ``portable``: with the one-statement start and end turned off."""
    from orchestration.jobs import lifecycle, statements
    from orchestration.nightly import runs
    from orchestration.settings import get_settings
    from orchestration.store import db
    from orchestration.store.statuses import TriggerType

    if portable:
        statements.one_statement = lambda: False
    db.use_database(url)
    started_at = time.perf_counter()
    with db.session_scope() as session:
        started = runs.start_run(session, TriggerType.MANUAL, None, get_settings().default_threshold)
    assert started is not None
    for job_id in started.job_ids:
        assert lifecycle.run(job_id, get_settings()).status == "completed"
    print(json.dumps({"wall": time.perf_counter() - started_at, "jobs": len(started.job_ids)}))


def in_process(url: str, portable: bool = False) -> float:
    done = subprocess.run(
        [sys.executable, __file__, "_in_process", url, *(["--portable"] if portable else [])],
        capture_output=True,
        text=True,
        env={**os.environ, "OPENBLAS_NUM_THREADS": "1", "ORCHESTRATION_LOG_LEVEL": "WARNING"},
    )
    if done.returncode != 0:
        raise SystemExit(f"in-process run failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])["wall"]


def nightly_on(url: str, broker: str, app: str, concurrency: int) -> float:
    from orchestration.store import db

    db.use_database(url)
    try:
        with worker(app, worker_env(url, broker), concurrency=concurrency):
            return nightly(broker, SLOT, 3600)[0]
    finally:
        db.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--projects", type=int, default=40)
    parser.add_argument("--min", type=int, default=1000)
    parser.add_argument("--max", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    project_sizes = sizes(args.projects, args.min, args.max, args.seed)
    print(
        f"{args.projects} projects, {sum(project_sizes):,} memories (sizes {min(project_sizes):,} to "
        f"{max(project_sizes):,}, median {int(np.median(project_sizes)):,}), 384 dimensions",
        flush=True,
    )
    template = f"orch_night_{uuid.uuid4().hex[:8]}"
    broker, redis_client = scratch_redis_db()
    variants = {
        "in-process": lambda url: in_process(url),
        "1-process worker": lambda url: nightly_on(url, broker, "orchestration.celery_app", 1),
        "2-process worker": lambda url: nightly_on(url, broker, "orchestration.celery_app", 2),
        "2-process, BLAS unpinned": lambda url: nightly_on(url, broker, "night_unpinned", 2),
        "in-process, portable": lambda url: in_process(url, portable=True),
        "2-process worker, portable": lambda url: nightly_on(url, broker, "nightly_portable", 2),
    }
    runs: dict[str, list[float]] = {name: [] for name in variants}
    try:
        started = time.perf_counter()
        _seed(create_database(template), project_sizes)
        print(f"seeded in {time.perf_counter() - started:.0f}s", flush=True)
        for round_ in range(args.repeat):
            for name in list(variants) if round_ % 2 == 0 else list(reversed(variants)):
                copy = f"{template}_copy"
                try:
                    runs[name].append(variants[name](create_database(copy, template)))
                finally:
                    drop_database(copy)
                redis_client.flushdb()
                print(f"{name:<26} {runs[name][-1]:7.2f}s", flush=True)
    finally:
        drop_database(template)
        redis_client.flushdb()
    walls = {name: statistics.median(values) for name, values in runs.items()}
    if args.repeat > 1:
        for name, values in runs.items():
            print(f"{name:<26} median {walls[name]:7.2f}s of " + ", ".join(f"{v:.2f}" for v in values))
    base = walls["in-process"]
    print(f"1-process worker / in-process: {walls['1-process worker'] / base:.2f}")
    for name in ("2-process worker", "2-process, BLAS unpinned"):
        print(f"speedup of the {name} over in-process: {base / walls[name]:.2f}")
    for name in ("in-process", "2-process worker"):
        print(f"{name}, fast path / portable path: {walls[name] / walls[f'{name}, portable']:.2f}")


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "_in_process":
        _in_process(sys.argv[2], portable="--portable" in sys.argv[3:])
    else:
        main()

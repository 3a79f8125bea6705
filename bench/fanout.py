"""Benchmark: one night's fan-out at scale, up to 20,000 eligible projects.

For each N, on a fresh PostgreSQL database with N eligible projects whose jobs do
minimal work, and a real Redis broker:

- *start*: what ``consolidation.run_scheduled`` does before the jobs run, timed in a
  process of its own, step by step: the claim with the eligibility check and the
  creation of N job rows (one transaction), then the chord dispatch (N messages);
  and that process's peak memory above its baseline after the imports;
- *callback input*: the size of the chord's results, the list the callback receives;
- *run*: the whole run with minimal jobs on a 2-process worker, from sending
  ``run_scheduled`` to the finished run row.

Prints per-N figures and, per project, how each grows from the smallest N to the
largest (1.0 is linear).

    python bench/fanout.py                          # N = 1000, 5000, 20000
    python bench/fanout.py --sizes 1000,5000 --no-run

Servers: ORCHESTRATION_TEST_DATABASE_URL (admin URL) and ORCHESTRATION_TEST_REDIS_URL.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# Run as a script, bench/ is on sys.path; mypy (from the repository root) knows it as the package bench.
if TYPE_CHECKING:
    from bench._common import (
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
        client,
        nightly,
        scratch_pg_database,
        scratch_redis_db,
        seed_minimal,
        worker,
        worker_env,
    )

SLOT = "2026-01-03T02:00:00+00:00"


def _memory_mb(field: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak since the last reset) of this process, in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # Linux: VmHWM starts again from VmRSS


def _start(url: str) -> None:
    """Child: claim, eligibility, N job rows, then the chord dispatch, timed and measured."""
    from orchestration.nightly import runs
    from orchestration.nightly.schedule import parse_slot
    from orchestration.settings import get_settings
    from orchestration.store import db
    from orchestration.store.statuses import TriggerType
    from orchestration.store.types import utcnow
    from orchestration.worker import tasks

    db.use_database(url)
    with db.session_scope() as session:  # connect and warm up outside the timed part
        session.connection()
    tasks.app.connection_for_write().ensure_connection()
    _reset_peak()
    baseline = _memory_mb("VmRSS")
    started = time.perf_counter()
    with db.session_scope() as session:
        claim = runs.claim(session, TriggerType.SCHEDULED, parse_slot(SLOT), get_settings().default_threshold, utcnow())
    claimed = time.perf_counter()
    assert claim.run_id is not None and claim.dispatch is not None
    tasks._dispatch(claim.run_id, claim.dispatch)
    dispatched = time.perf_counter()
    print(
        json.dumps(
            {
                "jobs": len(claim.dispatch),
                "claim_s": claimed - started,
                "dispatch_s": dispatched - claimed,
                "peak_mb": _memory_mb("VmHWM") - baseline,
            }
        )
    )


def start(url: str, broker: str) -> dict:
    done = subprocess.run(
        [sys.executable, __file__, "_start", url],
        capture_output=True,
        text=True,
        env={**worker_env(url, broker), "ORCHESTRATION_LOG_LEVEL": "WARNING"},
    )
    if done.returncode != 0:
        raise SystemExit(f"start failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(url: str, broker: str, size: int) -> tuple[float, int]:
    """The whole run on a 2-process worker; returns its wall time and the callback's input size."""
    from sqlalchemy import delete, select

    from orchestration.store import db
    from orchestration.store.models import ConsolidationJob, ConsolidationRun

    db.use_database(url)
    with db.session_scope() as session:  # the start's run (its chord was flushed with Redis)
        session.execute(delete(ConsolidationJob))
        session.execute(delete(ConsolidationRun))
    try:
        with worker("orchestration.celery_app", worker_env(url, broker)):
            elapsed, finished = nightly(broker, SLOT)
            assert finished.jobs_completed == size
            with db.session_scope() as session:
                job_ids = session.scalars(select(ConsolidationJob.id)).all()
            # What the callback received: every job's result, as the chord collected them.
            results = [client(broker).AsyncResult(str(job_id)).result for job_id in job_ids]
        return elapsed, len(json.dumps(results))
    finally:
        db.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,5000,20000")
    parser.add_argument("--no-run", action="store_true", help="Only the start, not the whole run.")
    args = parser.parse_args()
    from orchestration.store import db, migrate

    rows = []
    print(f"{'N':>6}  {'claim+jobs':>10}  {'dispatch':>9}  {'peak MB':>7}  {'callback in':>11}  {'run':>8}", flush=True)
    for size in [int(s) for s in args.sizes.split(",")]:
        url, drop = scratch_pg_database()
        broker, redis_client = scratch_redis_db()
        try:
            migrate.upgrade(url)
            db.use_database(url)
            seed_minimal(size)
            db.dispose()
            row = {"size": size, **start(url, broker)}
            redis_client.flushdb()
            if not args.no_run:
                row["run_s"], row["callback_bytes"] = run(url, broker, size)
            rows.append(row)
            print(
                f"{size:>6}  {row['claim_s']:9.2f}s  {row['dispatch_s']:8.2f}s  {row['peak_mb']:7.1f}  "
                + (f"{row['callback_bytes'] / 1e6:9.2f}MB  {row['run_s']:7.1f}s" if "run_s" in row else ""),
                flush=True,
            )
        finally:
            redis_client.flushdb()
            db.dispose()
            drop()
    first, last = rows[0], rows[-1]
    growth = last["size"] / first["size"]
    for key in ("claim_s", "dispatch_s", "run_s"):
        if key in first:
            per_project = last[key] / first[key] / growth
            print(f"{key[:-2]} per project grows {per_project:.2f}x from N={first['size']} to N={last['size']}")


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "_start":
        _start(sys.argv[2])
    else:
        main()

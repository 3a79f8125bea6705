"""Benchmark: consolidating one project of N active memories (384-dimension
embeddings, about 10% in duplicate groups, 10% stale) on SQLite and PostgreSQL.

Each measurement seeds a fresh database in one subprocess and consolidates it in
another, so the peak memory (max RSS) is that of the consolidation alone (it
includes the interpreter, NumPy and SQLAlchemy, about 100 MB).

    python bench/consolidation.py                       # 1,000 and 10,000 on both
    python bench/consolidation.py --sizes 1000,10000,100000
    python bench/consolidation.py --databases sqlite

PostgreSQL comes from ORCHESTRATION_TEST_DATABASE_URL (an admin URL; default
postgresql://postgres@127.0.0.1:5432/postgres); a scratch database is created and
dropped for each measurement.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# Run as a script, bench/ is on sys.path; mypy (from the repository root) knows it as the package bench.
if TYPE_CHECKING:
    from bench._common import run_step, scratch_pg_database, seed_project
else:
    from _common import run_step, scratch_pg_database, seed_project


def _seed(url: str, size: int) -> None:
    manifest = seed_project(url, size)
    print(json.dumps({"project_id": manifest.id, "groups": len(manifest.groups), "stale": len(manifest.stale)}))


def _consolidate(url: str, project_id: str) -> None:
    from orchestration.consolidation import applying, planning
    from orchestration.consolidation.options import resolve_options
    from orchestration.store import db
    from orchestration.store.counts import count_active
    from orchestration.store.models import ConsolidationJob
    from orchestration.store.types import utcnow

    db.use_database(url)
    pid = uuid.UUID(project_id)
    with db.session_scope() as session:
        job = ConsolidationJob(project_id=pid, trigger_type="manual", triggered_by="bench", status="running")
        session.add(job)
    options = resolve_options(None)
    started = time.perf_counter()
    # What a job does between taking its lock and recording its end.
    with db.session_scope() as session:
        planned = planning.plan(session, pid, options, utcnow())
    result = applying.apply(planned, options, job.id)
    with db.session_scope() as session:
        result.memories_after = count_active(session, pid)
    wall = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"wall": wall, "peak_mb": peak_mb, "timings": result.timings, **result.counters()}))


def _child(*args: str) -> dict:
    return run_step(__file__, *args)


def measure(database: str, size: int, workdir: Path) -> dict:
    if database == "sqlite":
        url, drop = f"sqlite:///{workdir / f'bench-{size}.db'}", (lambda: None)
    else:
        url, drop = scratch_pg_database()
    try:
        seeded = _child("_seed", url, str(size))
        return {"database": database, "size": size, **seeded, **_child("_consolidate", url, seeded["project_id"])}
    finally:
        drop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument("--databases", default="sqlite,postgresql")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in [int(s) for s in args.sizes.split(",")]:
            for database in args.databases.split(","):
                rows.append(measure(database, size, Path(tmp)))
                r = rows[-1]
                t = r["timings"]
                print(
                    f"{database:<10} {size:>7} memories  wall {r['wall']:6.2f}s  load {t['load']:5.2f}s  "
                    f"similarity {t['similarity']:5.2f}s  writes {t.get('write', 0):5.2f}s  "
                    f"commit {t.get('commit', 0):5.2f}s  peak {r['peak_mb']:6.0f} MB  "
                    f"clusters {r['clusters_found']} (planted {r['groups']})  archived {r['memories_archived']} "
                    f"(planted {r['stale']})",
                    flush=True,
                )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_seed":
        _seed(sys.argv[2], int(sys.argv[3]))
    elif len(sys.argv) > 1 and sys.argv[1] == "_consolidate":
        _consolidate(sys.argv[2], sys.argv[3])
    else:
        main()

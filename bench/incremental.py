"""Benchmark: the nightly pass of a project of N memories after 1% of it is new,
incremental against full, side by side in one run (docs/benchmarks.md).

A project of N memories (384-dimension embeddings, about 10% in duplicate groups, 10%
stale: ``bench/consolidation.py``'s data) is consolidated by jobs as the nightly run
makes them (``jobs.lifecycle.run``): a full pass, then incremental ones until one
finds nothing new. Then:

- *nothing new*: the incremental pass of the converged project;
- 1% new memories are added, a third of them near-duplicates of active memories, the
  rest new directions;
- *incremental* and *full*: the next pass both ways, ``--repeat`` times in alternating
  order. Each pass plans only (the plan is what differs; applying it is the same
  work both ways), in a fresh process, so that its peak memory (max RSS) is its own;
  then again in that process (*warm*: as in a worker's process that has run a job
  before). Both plans must agree (same clusters and archive list): the script says so.

    python bench/incremental.py --sizes 100000,300000          # PostgreSQL
    python bench/incremental.py --sizes 1000000 --repeat 1
    python bench/incremental.py --sizes 2000 --databases sqlite  # make test-bench

PostgreSQL comes from ORCHESTRATION_TEST_DATABASE_URL (an admin URL; default
postgresql://postgres@127.0.0.1:5432/postgres); a scratch database is created and
dropped for each size.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import statistics
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

NEW_SHARE = 0.01
DUPLICATE_SHARE = 1 / 3


def _seed(url: str, size: int) -> None:
    project_id = seed_project(url, size).id
    _analyze(url)
    print(json.dumps({"project_id": project_id}))


def _analyze(url: str) -> None:
    """PostgreSQL: statistics as autovacuum keeps them after a large write (this
    machine's server runs without autovacuum; without statistics the planner reads a
    whole project to find its new memories)."""
    from sqlalchemy import text

    from orchestration.store import db

    db.use_database(url)
    if db.is_postgresql():
        with db.statement_scope() as connection:
            connection.execute(text("ANALYZE task_memories"))


def _converge(url: str, project_id: str) -> None:
    """Jobs as the nightly run makes them, until a pass finds nothing new."""
    from orchestration.jobs import lifecycle
    from orchestration.settings import get_settings
    from orchestration.store import db
    from orchestration.store.models import ConsolidationJob
    from orchestration.store.statuses import TriggerType

    db.use_database(url)
    passes = []
    for _ in range(5):
        with db.session_scope() as session:
            job_id = lifecycle.create_job(
                session,
                uuid.UUID(project_id),
                run_id=None,
                trigger_type=TriggerType.MANUAL,
                triggered_by="bench",
                options=None,
            ).id
        started = time.perf_counter()
        assert lifecycle.run(job_id, get_settings()).status == "completed"
        with db.session_scope() as session:
            job = session.get_one(ConsolidationJob, job_id)
            passes.append({"mode": job.mode, "new": job.memories_new, "wall": time.perf_counter() - started})
            if job.mode == "incremental" and job.memories_new == 0:
                break
    print(json.dumps({"converge": passes}))


def _add(url: str, project_id: str, count: int) -> None:
    """``count`` new memories: a third near-duplicates of active memories, the rest new."""
    import numpy as np
    from sqlalchemy import func, select

    from orchestration.consolidation.embeddings import from_bytes, to_bytes
    from orchestration.consolidation.memories import active_filter
    from orchestration.store import db
    from orchestration.store.models import TaskMemory

    db.use_database(url)
    rng = np.random.default_rng(7)
    pid = uuid.UUID(project_id)
    duplicates = int(count * DUPLICATE_SHARE)
    with db.session_scope() as session:
        picked = session.execute(
            select(TaskMemory.embedding, TaskMemory.memory_type, TaskMemory.content)
            .where(TaskMemory.project_id == pid, active_filter(), TaskMemory.embedding.is_not(None))
            .order_by(func.random())
            .limit(duplicates)
        ).all()
        memories = []
        for embedding, memory_type, content in picked:
            assert embedding is not None
            vector = from_bytes(embedding) + rng.normal(scale=0.01, size=384).astype(np.float32)
            memories.append((vector, memory_type, content))
        for _ in range(count - len(memories)):
            memories.append((rng.normal(size=384).astype(np.float32), "learning", "a new note"))
        session.add_all(
            TaskMemory(
                project_id=pid,
                memory_type=memory_type,
                content=content,
                embedding=to_bytes(vector / np.linalg.norm(vector)),
                reused_count=5,
            )
            for vector, memory_type, content in memories
        )
    _analyze(url)
    print(json.dumps({"added": len(memories), "duplicates": len(picked)}))


def _plan(url: str, project_id: str, mode: str) -> None:
    """One pass's plan, as a job makes it: the mode chosen (or a full one), then planned;
    then the same pass again in the same process (*warm*: as in a worker's process that
    has run a job before, with its connection pooled and its caches filled)."""
    import gc

    from orchestration.consolidation import passes, planning
    from orchestration.consolidation.options import resolve_options
    from orchestration.store import db
    from orchestration.store.types import utcnow

    db.use_database(url)
    pid = uuid.UUID(project_id)
    options = resolve_options(None)
    runs = []
    for _ in range(2):
        started = time.perf_counter()
        with db.statement_scope() as connection:
            pass_ = passes.choose(connection, pid, options, utcnow(), full=mode == "full")
            planned = planning.plan(connection, pid, options, utcnow(), pass_)
        wall = time.perf_counter() - started
        assert planned.mode == mode, (planned.mode, mode, pass_.reason)
        outcome = [
            sorted((str(c.representative), sorted(str(m) for m, _ in c.members)) for c in planned.clusters),
            sorted(str(m) for m in planned.archive),
        ]
        runs.append(
            {
                "wall": wall,
                "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # the first pass's: cold
                "new": planned.memories_new,
                "clusters": len(planned.clusters),
                "archive": len(planned.archive),
                "timings": planned.timings,
                "outcome": hashlib.sha256(json.dumps(outcome).encode()).hexdigest(),
            }
        )
        del planned
        gc.collect()
    cold, warm = runs
    assert warm["outcome"] == cold["outcome"]
    print(json.dumps({**cold, "warm": warm["wall"], "warm_timings": warm["timings"]}))


def _child(*args: str) -> dict:
    return run_step(__file__, *args)


def measure(database: str, size: int, repeat: int, workdir: Path) -> None:
    if database == "sqlite":
        url, drop = f"sqlite:///{workdir / f'incremental-{size}.db'}", (lambda: None)
    else:
        url, drop = scratch_pg_database()
    try:
        project = _child("_seed", url, str(size))["project_id"]
        converged = _child("_converge", url, project)["converge"]
        quiet = _child("_plan", url, project, "incremental")
        added = _child("_add", url, project, str(max(1, int(size * NEW_SHARE))))
        runs: dict[str, list[dict]] = {"incremental": [], "full": []}
        for round_ in range(repeat):
            for mode in ("incremental", "full") if round_ % 2 == 0 else ("full", "incremental"):
                runs[mode].append(_child("_plan", url, project, mode))
        same = {r["outcome"] for rs in runs.values() for r in rs}
        wall = {mode: statistics.median(r["wall"] for r in rs) for mode, rs in runs.items()}
        warm = {mode: statistics.median(r["warm"] for r in rs) for mode, rs in runs.items()}
        peak = {mode: max(r["peak_mb"] for r in rs) for mode, rs in runs.items()}
        steps = ", ".join(f"{p['mode']} {p['wall']:.1f}s" for p in converged)
        print(f"{database:<10} {size:>9,} memories  converged in {len(converged)} passes ({steps})", flush=True)
        print(f"  nothing new: incremental {quiet['wall']:.3f}s, peak {quiet['peak_mb']:.0f} MB")
        print(
            f"  {added['added']:,} new ({added['duplicates']:,} near-duplicates): "
            f"incremental {wall['incremental']:.2f}s (peak {peak['incremental']:.0f} MB, "
            f"{runs['incremental'][0]['new']:,} new), full {wall['full']:.2f}s (peak {peak['full']:.0f} MB); "
            f"full / incremental {wall['full'] / wall['incremental']:.1f}x; "
            f"plans {'agree' if len(same) == 1 else 'DIFFER'} ({runs['full'][0]['clusters']} clusters, "
            f"{runs['full'][0]['archive']} to archive)",
            flush=True,
        )
        print(
            f"  warm (the same pass again in its process): incremental {warm['incremental']:.2f}s, "
            f"full {warm['full']:.2f}s; full / incremental {warm['full'] / warm['incremental']:.1f}x"
        )
        for name, key in (("all rounds", "wall"), ("all rounds, warm", "warm")):
            print(
                f"  {name}: "
                + "; ".join(f"{mode} " + ", ".join(f"{r[key]:.2f}" for r in rs) for mode, rs in runs.items())
            )
        split = {
            mode: {step: statistics.median(r["timings"].get(step, 0.0) for r in rs) for step in ("load", "similarity")}
            for mode, rs in runs.items()
        }
        print(
            "  medians: "
            + "; ".join(f"{m} load {t['load']:.2f}s, similarity {t['similarity']:.2f}s" for m, t in split.items())
        )
    finally:
        drop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100000,300000")
    parser.add_argument("--databases", default="postgresql")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for size in [int(s) for s in args.sizes.split(",")]:
            for database in args.databases.split(","):
                measure(database, size, args.repeat, Path(tmp))


if __name__ == "__main__":
    step = sys.argv[1] if len(sys.argv) > 1 else None
    if step == "_seed":
        _seed(sys.argv[2], int(sys.argv[3]))
    elif step == "_converge":
        _converge(sys.argv[2], sys.argv[3])
    elif step == "_add":
        _add(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    elif step == "_plan":
        _plan(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        main()

"""Benchmark: the eligibility query against the ticket's literal GROUP BY ... HAVING.

Builds (in a scratch PostgreSQL database, with SQL so it takes seconds) P projects
and M memories with a realistic skew: 5 huge projects hold half the memories, the
rest is spread over the others; about 20% of memories are duplicates or archived;
5% of projects are disabled. Then times, on the same data and connection, the query
``orchestration.eligibility`` runs and the ticket's literal query, and prints the
``EXPLAIN ANALYZE`` of both.

    python bench/eligibility.py                          # 10,000 projects, 1,000,000 memories
    python bench/eligibility.py --projects 1000 --memories 100000
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import scratch_pg_database  # noqa: E402

LITERAL = """
SELECT m.project_id, COUNT(*) AS count
FROM task_memories m JOIN projects p ON p.id = m.project_id
WHERE m.is_duplicate = false AND m.is_archived = false AND p.consolidation_enabled
GROUP BY m.project_id, p.consolidation_threshold
HAVING COUNT(*) > COALESCE(p.consolidation_threshold, :default_threshold)
"""
HUGE = 5


def build(conn, projects: int, memories: int) -> None:
    from sqlalchemy import text

    conn.execute(text(
        "INSERT INTO projects (id, name, consolidation_enabled, consolidation_threshold, created_at) "
        "SELECT gen_random_uuid(), 'p' || g, g % 20 <> 0, CASE WHEN g % 3 = 0 THEN NULL ELSE 40 END, now() "
        "FROM generate_series(1, :n) g"), {"n": projects})
    # Half the memories in the 5 huge projects, half spread over all the others.
    conn.execute(text(
        """
        WITH numbered AS (SELECT id, row_number() OVER (ORDER BY id) AS k FROM projects)
        INSERT INTO task_memories (id, project_id, memory_type, content, tags, file_links, learned_at,
                                   is_duplicate, is_archived)
        SELECT gen_random_uuid(), numbered.id, 'learning', 'm', '[]', '[]', now(), g % 10 = 1, g % 10 = 2
        FROM generate_series(1, :m) g
        JOIN numbered ON numbered.k = CASE WHEN g % 2 = 0 THEN 1 + (g / 2) % :huge
                                          ELSE 1 + :huge + g % (:p - :huge) END
        """), {"m": memories, "p": projects, "huge": HUGE})


def timed(conn, sql, params, repeat: int) -> tuple[float, int]:
    runs, rows = [], 0
    for _ in range(repeat):
        started = time.perf_counter()
        rows = len(conn.execute(sql, params).all())
        runs.append(time.perf_counter() - started)
    return statistics.median(runs), rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--projects", type=int, default=10_000)
    parser.add_argument("--memories", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--serial", action="store_true",
                        help="SET max_parallel_workers_per_gather = 0 (one core per query, for comparison)")
    args = parser.parse_args()
    from sqlalchemy import create_engine, text

    from orchestration import migrate
    from orchestration.db import normalize_url
    from orchestration.eligibility import eligible_query

    url, drop = scratch_pg_database()
    options = {"options": "-c max_parallel_workers_per_gather=0"} if args.serial else {}
    engine = create_engine(normalize_url(url), connect_args=options)
    try:
        migrate.upgrade(url)
        started = time.perf_counter()
        with engine.begin() as conn:
            build(conn, args.projects, args.memories)
        with engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql("VACUUM ANALYZE")
        print(f"built {args.projects:,} projects and {args.memories:,} memories in "
              f"{time.perf_counter() - started:.1f}s", flush=True)
        ours = eligible_query(1000)
        literal = text(LITERAL)
        params = {"default_threshold": 1000}
        with engine.connect() as conn:
            ours_s, ours_rows = timed(conn, ours, {}, args.repeat)
            literal_s, literal_rows = timed(conn, literal, params, args.repeat)
            compiled = ours.compile(conn, compile_kwargs={"literal_binds": True})
            plans = {
                "orchestration.eligibility": conn.exec_driver_sql(f"EXPLAIN ANALYZE {compiled}").scalars().all(),
                "ticket's literal query": conn.execute(text("EXPLAIN ANALYZE " + LITERAL), params).scalars().all(),
            }
        # The literal query again on the schema a plain implementation would have:
        # without the partial index on active memories.
        with engine.begin() as conn:
            conn.exec_driver_sql("DROP INDEX ix_task_memories_active_project")
        with engine.connect() as conn:
            plain_s, plain_rows = timed(conn, literal, params, args.repeat)
            plans["ticket's literal query, no partial index"] = conn.execute(
                text("EXPLAIN ANALYZE " + LITERAL), params).scalars().all()
        assert ours_rows == literal_rows == plain_rows, (ours_rows, literal_rows, plain_rows)
        print(f"orchestration.eligibility: {ours_s * 1000:7.1f} ms (median of {args.repeat}, {ours_rows:,} eligible)")
        print(f"ticket's literal query:    {literal_s * 1000:7.1f} ms (median of {args.repeat}, "
              f"{literal_rows:,} eligible)")
        print(f"literal query, no partial index: {plain_s * 1000:7.1f} ms (median of {args.repeat})")
        print(f"speed-up ratio {literal_s / ours_s:.1f}x over the literal query on the same schema, "
              f"{plain_s / ours_s:.1f}x over it without the partial index")
        for name, plan in plans.items():
            print(f"\nEXPLAIN ANALYZE, {name}:")
            print("\n".join("  " + line for line in plan))
    finally:
        engine.dispose()
        drop()


if __name__ == "__main__":
    main()

"""Benchmark: the eligibility query against the ticket's literal GROUP BY ... HAVING,
and what keeping the counts costs the writers.

Builds (in a scratch PostgreSQL database, with SQL so it takes seconds) P projects
and M memories with a realistic skew: 5 huge projects hold half the memories, the
rest is spread over the others; about 20% of memories are duplicates or archived;
5% of projects are disabled. Then, on the same data and connection:

1. times the nightly check as ``run_scheduled`` makes it (fold the count deltas that
   agents' writes left since the last check into ``project_memory_counts``, select,
   commit), its query alone, counting through the partial index of active memories
   (this project's query before the kept counts), and the ticket's literal query,
   with and without the partial index, and prints the ``EXPLAIN ANALYZE`` of each;
2. times writes with the count triggers and with them disabled, alternating rounds:
   one-row inserts each in its own transaction (an agent saving a memory), the same
   from 4 connections at once into one project, one-row
   archive updates (consolidation's ``executemany``), and one bulk ``INSERT``.

    python bench/eligibility.py                          # 10,000 projects, 1,000,000 memories
    python bench/eligibility.py --projects 1000 --memories 100000
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# Run as a script, bench/ is on sys.path; mypy (from the repository root) knows it as the package bench.
if TYPE_CHECKING:
    from bench._common import scratch_pg_database
else:
    from _common import scratch_pg_database

LITERAL = """
SELECT m.project_id, COUNT(*) AS count
FROM task_memories m JOIN projects p ON p.id = m.project_id
WHERE m.is_duplicate = false AND m.is_archived = false AND p.consolidation_enabled
GROUP BY m.project_id, p.consolidation_threshold
HAVING COUNT(*) > COALESCE(p.consolidation_threshold, :default_threshold)
"""
# This project's eligibility query before the kept counts: count the active index
# entries per project first, join the counts to the projects after.
PARTIAL_INDEX_COUNT = """
SELECT p.id, p.consolidation_options
FROM projects p JOIN (SELECT project_id, count(*) AS active FROM task_memories
                      WHERE NOT is_duplicate AND NOT is_archived GROUP BY project_id) a ON a.project_id = p.id
WHERE p.consolidation_enabled AND a.active > COALESCE(p.consolidation_threshold, :default_threshold)
"""
HUGE = 5
WRITERS = 4
INSERT_ONE = """
INSERT INTO task_memories (id, project_id, memory_type, content, tags, file_links, learned_at)
VALUES (gen_random_uuid(), :p, 'learning', 'agent memory', '[]', '[]', now())
"""
ARCHIVE_ONE = "UPDATE task_memories SET is_archived = true, version = version + 1 WHERE id = :id"
BULK = """
INSERT INTO task_memories (id, project_id, memory_type, content, tags, file_links, learned_at)
SELECT gen_random_uuid(), :p, 'learning', 'bulk', '[]', '[]', now() FROM generate_series(1, :n)
"""


def build(conn, projects: int, memories: int) -> None:
    from sqlalchemy import text

    conn.execute(
        text(
            "INSERT INTO projects (id, name, consolidation_enabled, consolidation_threshold, created_at) "
            "SELECT gen_random_uuid(), 'p' || g, g % 20 <> 0, CASE WHEN g % 3 = 0 THEN NULL ELSE 40 END, now() "
            "FROM generate_series(1, :n) g"
        ),
        {"n": projects},
    )
    # Half the memories in the 5 huge projects, half spread over all the others.
    conn.execute(
        text(
            """
        WITH numbered AS (SELECT id, row_number() OVER (ORDER BY id) AS k FROM projects)
        INSERT INTO task_memories (id, project_id, memory_type, content, tags, file_links, learned_at,
                                   is_duplicate, is_archived)
        SELECT gen_random_uuid(), numbered.id, 'learning', 'm', '[]', '[]', now(), g % 10 = 1, g % 10 = 2
        FROM generate_series(1, :m) g
        JOIN numbered ON numbered.k = CASE WHEN g % 2 = 0 THEN 1 + (g / 2) % :huge
                                          ELSE 1 + :huge + g % (:p - :huge) END
        """
        ),
        {"m": memories, "p": projects, "huge": HUGE},
    )


def timed(conn, sql, params, repeat: int) -> tuple[float, int]:
    runs, rows = [], 0
    for _ in range(repeat):
        started = time.perf_counter()
        rows = len(conn.execute(sql, params).all())
        runs.append(time.perf_counter() - started)
    return statistics.median(runs), rows


def timed_check(engine, repeat: int, pending: int) -> dict[str, tuple[float, int]]:
    """The nightly check as ``run_scheduled`` makes it, each time after ``pending``
    agent inserts (untimed) left that many deltas: medians of the fold, of the rest of
    the check (the selects), of the commit (shared with the run's claim in
    ``run_scheduled``), and of the three together."""
    from sqlalchemy import text
    from sqlalchemy.orm import Session

    from orchestration.nightly.eligibility import check_projects
    from orchestration.store import counts

    with engine.connect() as conn:
        projects = conn.execute(text("SELECT id FROM projects")).scalars().all()
    parts: dict[str, list[float]] = {"fold": [], "select": [], "commit": [], "total": []}
    rows = 0
    autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
    for number in range(repeat):
        with autocommit.connect() as conn:
            for i in range(pending):
                conn.execute(text(INSERT_ONE), {"p": projects[(number * pending + i * 7919) % len(projects)]})
        with Session(engine) as session:
            started = time.perf_counter()
            counts.fold(session)
            folded = time.perf_counter()
            rows = len(check_projects(session, 1000).eligible)  # its own fold finds nothing left
            selected = time.perf_counter()
            session.commit()
            ended = time.perf_counter()
        for part, seconds in (
            ("fold", folded - started),
            ("select", selected - folded),
            ("commit", ended - selected),
            ("total", ended - started),
        ):
            parts[part].append(seconds)
    return {part: (statistics.median(values), rows) for part, values in parts.items()}


def concurrent_inserts(engine, project_id, total: int, writers: int = WRITERS) -> float:
    """Wall time of ``writers`` connections inserting ``total`` one-row memories into
    one project at once (each insert its own transaction): the hot-counter case."""
    from sqlalchemy import text

    barrier = threading.Barrier(writers + 1)

    def write() -> None:
        with engine.connect() as conn:
            barrier.wait()
            for _ in range(total // writers):
                conn.execute(text(INSERT_ONE), {"p": project_id})

    threads = [threading.Thread(target=write) for _ in range(writers)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started


def write_costs(engine, rounds: int, per_round: int, bulk: int) -> dict[str, tuple[float, float]]:
    """Seconds per write kind, (with triggers, without), alternating rounds on the same data."""
    from sqlalchemy import text

    with engine.connect() as conn:
        projects = conn.execute(text("SELECT id FROM projects ORDER BY id LIMIT 200")).scalars().all()
        targets = (
            conn.execute(
                text("SELECT id FROM task_memories WHERE NOT is_duplicate AND NOT is_archived LIMIT :n"),
                {"n": 2 * rounds * per_round},
            )
            .scalars()
            .all()
        )
    totals = {kind: [0.0, 0.0] for kind in ("insert", "concurrent", "archive", "bulk")}
    autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
    for number in range(2 * rounds):
        triggers = number % 2 == 0
        with autocommit.connect() as conn:
            conn.exec_driver_sql(f"ALTER TABLE task_memories {'ENABLE' if triggers else 'DISABLE'} TRIGGER USER")
            started = time.perf_counter()
            for i in range(per_round):
                conn.execute(text(INSERT_ONE), {"p": projects[i % len(projects)]})
            totals["insert"][not triggers] += time.perf_counter() - started
            totals["concurrent"][not triggers] += concurrent_inserts(autocommit, projects[0], per_round)
            started = time.perf_counter()
            for memory_id in targets[number * per_round : (number + 1) * per_round]:
                conn.execute(text(ARCHIVE_ONE), {"id": memory_id})
            totals["archive"][not triggers] += time.perf_counter() - started
            started = time.perf_counter()
            conn.execute(text(BULK), {"p": projects[number % len(projects)], "n": bulk})
            totals["bulk"][not triggers] += time.perf_counter() - started
    with autocommit.connect() as conn:
        conn.exec_driver_sql("ALTER TABLE task_memories ENABLE TRIGGER USER")
    return {kind: (with_, without) for kind, (with_, without) in totals.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--projects", type=int, default=10_000)
    parser.add_argument("--memories", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument(
        "--pending", type=int, default=1000, help="one-row inserts (so, deltas) before each timed nightly check"
    )
    parser.add_argument("--writes", type=int, default=500, help="one-row writes of each kind per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds with triggers (as many without)")
    parser.add_argument("--bulk", type=int, default=20_000, help="rows of the bulk INSERT per round")
    parser.add_argument(
        "--serial",
        action="store_true",
        help="SET max_parallel_workers_per_gather = 0 (one core per query, for comparison)",
    )
    args = parser.parse_args()
    from sqlalchemy import TextClause, create_engine, text

    from orchestration.nightly.eligibility import eligible_query
    from orchestration.store import migrate
    from orchestration.store.db import normalize_url

    url, drop = scratch_pg_database()
    options = {"options": "-c max_parallel_workers_per_gather=0"} if args.serial else {}
    engine = create_engine(normalize_url(url), connect_args=options)
    try:
        migrate.upgrade(url)
        started = time.perf_counter()
        with engine.begin() as conn:
            build(conn, args.projects, args.memories)
        timed_check(engine, 1, 0)  # the first fold: the build's deltas
        with engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql("VACUUM ANALYZE")
        print(
            f"built {args.projects:,} projects and {args.memories:,} memories in {time.perf_counter() - started:.1f}s",
            flush=True,
        )
        params = {"default_threshold": 1000}
        check = f"nightly check, {args.pending:,} deltas to fold"
        parts = timed_check(engine, args.repeat, args.pending)
        timings = {check: parts.pop("total")}
        queries = {
            "eligibility query (deltas folded)": eligible_query(1000),
            "count through the partial index": text(PARTIAL_INDEX_COUNT),
            "ticket's literal query": text(LITERAL),
        }
        plans: dict[str, Sequence[str]] = {}
        with engine.connect() as conn:
            for name, query in queries.items():
                timings[name] = timed(conn, query, params, args.repeat)
                sql = (
                    query.text
                    if isinstance(query, TextClause)
                    else str(query.compile(conn, compile_kwargs={"literal_binds": True}))
                )
                plans[name] = conn.execute(text("EXPLAIN ANALYZE " + sql), params).scalars().all()
        # The literal query again on the schema a plain implementation would have:
        # without the partial index on active memories.
        with engine.begin() as conn:
            conn.exec_driver_sql("DROP INDEX ix_task_memories_active_project")
        name = "literal query, no partial index"
        with engine.connect() as conn:
            timings[name] = timed(conn, text(LITERAL), params, args.repeat)
            plans[name] = conn.execute(text("EXPLAIN ANALYZE " + LITERAL), params).scalars().all()
        with engine.begin() as conn:
            conn.exec_driver_sql(
                "CREATE INDEX ix_task_memories_active_project ON task_memories (project_id) "
                "WHERE NOT is_duplicate AND NOT is_archived"
            )
        eligible = {rows for _, rows in timings.values()}
        assert len(eligible) == 1, timings
        ours, query_only, literal, plain, partial = (
            timings[name][0]
            for name in (
                check,
                "eligibility query (deltas folded)",
                "ticket's literal query",
                "literal query, no partial index",
                "count through the partial index",
            )
        )
        for name, (seconds, rows) in timings.items():
            print(f"{name + ':':42} {seconds * 1000:7.1f} ms (median of {args.repeat}, {rows:,} eligible)")
            if name == check:
                print(
                    "    of which "
                    + ", ".join(f"{part} {seconds * 1000:.1f} ms" for part, (seconds, _) in parts.items())
                )
        print(
            f"speed-up ratio {literal / ours:.1f}x (nightly check) and {literal / query_only:.1f}x (query alone) "
            f"over the literal query on the same schema; {plain / ours:.1f}x and {plain / query_only:.1f}x over it "
            f"without the partial index; {partial / ours:.1f}x and {partial / query_only:.1f}x over counting "
            "through the partial index"
        )
        for name, plan in plans.items():
            print(f"\nEXPLAIN ANALYZE, {name}:")
            print("\n".join("  " + line for line in plan))

        costs = write_costs(engine, args.rounds, args.writes, args.bulk)
        n = args.rounds * args.writes
        print(f"\nwrites with the count triggers vs without ({args.rounds} alternating rounds each):")
        for kind, label, count in (
            ("insert", "one-row INSERT + commit", n),
            ("concurrent", f"same, {WRITERS} writers, 1 project", n),
            ("archive", "one-row archive UPDATE", n),
            ("bulk", f"INSERT of {args.bulk:,} rows", args.rounds),
        ):
            with_, without = costs[kind]
            print(
                f"  {label:26} {with_ / count * 1000:8.3f} ms vs {without / count * 1000:8.3f} ms "
                f"per statement, ratio {with_ / without:.2f}"
            )
    finally:
        engine.dispose()
        drop()


if __name__ == "__main__":
    main()

"""Benchmark: the dashboard's heaviest answers over a big database, through its ASGI app.

Builds a database with bulk inserts (under a minute, not a thousand real nights):

- P projects (5% disabled, a third on the default threshold, 10% with option
  overrides) with their kept active counts, and on PostgreSQL 0.2 unfolded count
  deltas per project (agents' writes since the last nightly fold);
- R runs: one a night back from the latest slot of the default schedule, and about
  5% more by hand the next morning (a retry of the night's failed projects when it
  was partial), each finalized as ``finalize`` leaves it: counters and the summary
  with its failed and skipped jobs: mostly completed, about 10% partial, 3% failed
  (the database was down: every job failed);
- the newest scheduled run has J jobs, the older ones about H each. Jobs are as the
  nightly run leaves them: created largest project first, run one after the other on
  8 worker processes (``host:pid`` on two hosts), 1-3 attempts (a retried job's first
  attempt began earlier), 1.5% failed with multi-line errors, 2% skipped (no worker,
  a third of them of a project deleted since).

Then the app (``create_app(Settings())`` on read-only engines, as ``orchestration
web`` serves it) answers HTTP requests through Starlette's TestClient: each endpoint
once to warm up (its SQL statements counted), then ``--repeat`` times, timed; the
median and the p95 (nearest rank: of 7, the slowest) and the response size, against
the issue's goals (PASS when the median is under the goal):

- ``GET /runs/{run}`` and ``GET /api/runs/{run}``, the run of J jobs: 1 s;
- ``GET /runs`` (the newest 30 of R runs), ``GET /runs?limit=1000`` and
  ``GET /api/runs?limit=1000``: 200 ms;
- ``GET /metrics`` with P projects: 100 ms. A run of J jobs needs J projects (a job
  per project and run), so when J > P the run pages are timed with J projects, and
  ``/metrics`` with J (no goal), then with P in a copy of the database without the
  projects only that run used.

``--profile`` then profiles one request of the endpoint slowest against its goal (or
of the one named, e.g. ``--profile /runs/{run}``) with cProfile, the app's threadpool
work run on the event loop's thread so that one profile sees the whole request.

    python bench/web.py                              # PostgreSQL: J 20,000, R 1,000, P 10,000
    python bench/web.py --database sqlite --profile
    python bench/web.py --jobs 200 --runs 20 --projects 100 --history-jobs 5 --repeat 2

Server: ORCHESTRATION_TEST_DATABASE_URL (admin URL); scratch databases are created
and dropped. SQLite: files in a temporary folder.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import heapq
import io
import math
import os
import pstats
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

ROOT = Path(__file__).resolve().parent.parent
# bench/orchestration.py is on the path too: the package must win the import.
sys.path.insert(0, str(ROOT))

# Run as a script, bench/ is on sys.path; mypy (from the repository root) knows it as the package bench.
if TYPE_CHECKING:
    from bench._common import create_database, drop_database, scratch_pg_database
else:
    from _common import create_database, drop_database, scratch_pg_database

WORKERS = tuple(
    f"{host}:{pid}"
    for host, pids in (("orch-worker-1", (2187, 2188, 2190, 2193)), ("orch-worker-2", (1874, 1876, 1877, 1881)))
    for pid in pids
)
SEED = 20261130
FAILED_SHARE, SKIPPED_SHARE, GONE_SHARE = 0.015, 0.02, 1 / 3
MANUAL_SHARE = 0.05
# Pending count deltas (agents' writes since the last nightly fold), PostgreSQL only.
DELTAS_PER_PROJECT = 0.2
TEAMS = ("payments", "search", "identity", "billing", "mobile", "infra", "data", "ml", "growth", "support")
PARTS = ("api", "worker", "gateway", "web", "etl", "indexer", "auth", "notifier", "scheduler", "ledger", "sync")
ERRORS = (
    "OperationalError: (psycopg.errors.SerializationFailure) could not serialize access due to concurrent update\n"
    'CONTEXT:  SQL statement "UPDATE task_memories SET is_duplicate = true WHERE id = ANY(%(ids)s)"\n'
    "HINT:  the project was written to heavily while it was consolidated; it is retried next night",
    "Traceback (most recent call last):\n"
    '  File "/app/orchestration/consolidation/planning.py", line 212, in plan\n'
    "    matrix = embeddings.matrix(rows, dim)\n"
    '  File "/app/orchestration/consolidation/embeddings.py", line 88, in matrix\n'
    "    raise InvalidEmbedding(memory_id, len(blob) // 4, dim)\n"
    "InvalidEmbedding: memory 3f2a9c1e: embedding has 383 dimensions, expected <384>",
    "worker died during attempt 3 of 3 (ORCHESTRATION_MAX_RETRIES=2); no attempts left. The process was killed\n"
    "from outside, most likely for memory (the OOM killer) if it happens every time: run this project alone\n"
    "on a worker with more memory (docs/reliability.md, 'A project that kills its worker')",
    "similarity_threshold: must be a number from 0 to 1, got '0,85'\n"
    '(project options: {"similarity_threshold": "0,85"})',
)
RUN_DOWN = (
    'OperationalError: (psycopg.OperationalError) connection failed: connection to server at "10.0.3.12",\n'
    "port 5432 failed: server closed the connection unexpectedly\n"
    "\tThis probably means the server terminated abnormally before or while processing the request."
)


# --- the data ------------------------------------------------------------------------


@dataclass
class Plan:
    """What to build: sizes, and the random source everything is drawn from."""

    jobs: int
    runs: int
    projects: int
    history_jobs: int
    rng: random.Random = field(default_factory=lambda: random.Random(SEED))

    def uuid(self) -> uuid.UUID:
        return uuid.UUID(int=self.rng.getrandbits(128), version=4)


@dataclass
class Seeded:
    """A project as built: its id, name, active memories and option overrides."""

    id: uuid.UUID
    name: str
    active: int
    options: dict[str, Any] | None


@dataclass
class Built:
    run_id: uuid.UUID  # the run of ``jobs`` jobs
    projects: int
    kept_projects: int  # the projects that stay for /metrics
    runs: int
    jobs: int
    jobs_of_run: int
    seconds: float
    extra: list[uuid.UUID] = field(default_factory=list)  # the projects beyond ``kept_projects``


def _options(overrides: dict[str, Any] | None) -> dict[str, Any] | None:
    from orchestration.jobs.lifecycle import effective_options

    return effective_options(overrides)


def _outcomes(plan: Plan, count: int, failed_share: float, skipped_share: float) -> list[str]:
    """Statuses of a run's jobs: failed and skipped ones at those shares, the rest completed."""
    statuses = []
    for _ in range(count):
        draw = plan.rng.random()
        statuses.append(
            "failed" if draw < failed_share else "skipped" if draw < failed_share + skipped_share else "completed"
        )
    return statuses


def _run_jobs(
    plan: Plan,
    run_id: uuid.UUID,
    trigger: str,
    started: datetime,
    projects: list[Seeded | None],
    statuses: list[str],
    finish_by: datetime,
    error: str | None = None,
) -> tuple[list[dict[str, Any]], datetime]:
    """One finished run's job rows, as the night leaves them: created largest project
    first, one microsecond apart; each worker process takes the next job when it is
    free; a retried job's first attempt started earlier (backoff), on another process.
    ``None`` in ``projects`` is a project deleted since (its job skipped). Times are
    squeezed to end by ``finish_by``. Returns the rows and when the last job ended."""
    rng = plan.rng
    sizes = [project.active if project is not None else 0 for project in projects]
    order = sorted(range(len(projects)), key=lambda i: -sizes[i])
    free = [(0.0, lane) for lane in range(len(WORKERS))]
    timed: list[tuple[int, str, float, float, int, int | None]] = []  # (i, status, start, end, attempts, lane)
    for i in order:
        free_at, lane = heapq.heappop(free)
        begin = free_at + rng.uniform(0.004, 0.02)
        status = statuses[i]
        project = projects[i]
        worker: int | None = None
        if status == "skipped":
            end, attempts = begin + 0.003, 1
        else:
            size = project.active if project else 100
            end = begin + (0.08 + size / 5000) * rng.lognormvariate(0, 0.5)
            draw = rng.random()
            attempts = (3 if draw < 0.8 else 1) if status == "failed" else 1 if draw < 0.9 else 2 if draw < 0.98 else 3
            worker = lane
            if attempts > 1:  # its first attempt started earlier: the failed attempts and their backoff
                begin = max(min(begin, 0.5), begin - sum(rng.uniform(20, 120) for _ in range(attempts - 1)))
        heapq.heappush(free, (end, lane))
        timed.append((i, status, begin, end, attempts, worker))
    natural = max(end for _, _, _, end, _, _ in timed) if timed else 0.0
    room = (finish_by - started).total_seconds()
    squeeze = min(1.0, room / natural) if natural > 0 else 1.0
    options_of: dict[int, dict[str, Any] | None] = {}
    rows = []
    for position, (i, status, begin, end, attempts, ran_on) in enumerate(timed):
        project = projects[i]
        size = project.active if project else rng.randint(50, 900)
        opened, closed = started + timedelta(seconds=begin * squeeze), started + timedelta(seconds=end * squeeze)
        merged = archived = clusters = 0
        if status == "completed":
            merged = int(size * rng.uniform(0, 0.08))
            archived = int(size * rng.uniform(0, 0.05))
            clusters = math.ceil(merged / rng.uniform(2, 3.5)) if merged else 0
        key = id(project.options) if project else 0
        if key not in options_of:
            options_of[key] = _options(project.options if project else None)
        job_id, message = plan.uuid(), None
        if status == "failed":
            message = error or ERRORS[rng.randrange(len(ERRORS))]
        elif status == "skipped":
            message = (
                f"ProjectGone: the project of job {job_id} was deleted"
                if project is None
                else f"ProjectDisabled: project {project.id} has consolidation disabled"
            )
        rolled_back = status == "completed" and rng.random() < 0.001
        rows.append(
            {
                "id": job_id,
                "run_id": run_id,
                "project_id": project.id if project else None,
                "status": status,
                "trigger_type": trigger,
                "triggered_by": "system",
                "options": options_of[key],
                "attempts": attempts,
                "progress": 1.0 if status == "completed" else round(rng.random(), 2) if status == "failed" else 0.0,
                "memories_before": size,
                "memories_after": size - merged - archived + clusters,
                "clusters_found": clusters,
                "memories_merged": merged,
                "memories_archived": archived,
                "skipped_invalid": rng.choice((0, 0, 0, 0, 1, 2)) if status == "completed" else 0,
                "conflicts": rng.choice((0, 0, 0, 0, 0, 0, 0, 1)) if status == "completed" else 0,
                "pairs_kept_apart": rng.randint(0, 6) if status == "completed" else 0,
                "started_at": opened,
                "completed_at": closed,
                "heartbeat_at": closed,
                "error_message": message,
                "celery_task_id": str(plan.uuid()),
                "worker": None if ran_on is None else WORKERS[ran_on],
                "created_at": started + timedelta(microseconds=position),
                "rolled_back_at": closed + timedelta(hours=9) if rolled_back else None,
                "rolled_back_by": "ops@example.com" if rolled_back else None,
            }
        )
    ended = started + timedelta(seconds=natural * squeeze)
    return rows, ended


def _run_row(
    run_id: uuid.UUID,
    trigger: str,
    slot: datetime | None,
    started: datetime,
    finished: datetime,
    jobs: list[dict[str, Any]],
    names: dict[uuid.UUID, str],
    checked: int,
    notes: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The run row ``finalize`` leaves: counters and summary computed from the jobs."""
    from orchestration.nightly.runs import COUNTERS, run_status

    statuses = [job["status"] for job in jobs]
    failed = statuses.count("failed")

    def line(job: dict[str, Any]) -> dict[str, Any]:
        project = job["project_id"]
        return {
            "job_id": str(job["id"]),
            "project_id": str(project) if project else None,
            "project_name": names.get(project) if project else None,
            "attempts": job["attempts"],
            "error": job["error_message"],
        }

    return {
        "id": run_id,
        "trigger_type": trigger,
        "scheduled_for": slot,
        "status": str(run_status(statuses)),
        "projects_checked": checked,
        "projects_eligible": len(jobs),
        "projects_skipped": checked // 20,
        "jobs_total": len(jobs),
        "jobs_completed": statuses.count("completed"),
        "jobs_failed": failed,
        **{name: sum(job[name] for job in jobs) for name in COUNTERS},
        "started_at": started,
        "finished_at": finished,
        "error_message": f"{failed} of {len(jobs)} jobs failed" if failed else None,
        "summary": {
            **(notes or {}),
            "duration_s": round((finished - started).total_seconds(), 3),
            "jobs_skipped": statuses.count("skipped"),
            "clusters_found": sum(job["clusters_found"] for job in jobs),
            "failed_jobs": [line(job) for job in jobs if job["status"] == "failed"],
            "skipped_jobs": [line(job) for job in jobs if job["status"] == "skipped"],
        },
    }


def _projects(plan: Plan, count: int) -> list[Seeded]:
    rng = plan.rng
    projects = []
    for number in range(count):
        name = f"{rng.choice(TEAMS)}/{rng.choice(PARTS)}-{number:05d}"
        options = None if rng.random() < 0.9 else {"similarity_threshold": rng.choice((0.85, 0.88, 0.92))}
        projects.append(Seeded(plan.uuid(), name, int(rng.lognormvariate(6.0, 1.3)), options))
    return projects


def build(engine: Any, plan: Plan) -> Built:
    """Fill the migrated, empty database behind ``engine``."""
    from sqlalchemy import delete, insert

    from orchestration.nightly.health import SLOT_GRACE
    from orchestration.nightly.schedule import previous_slot
    from orchestration.settings import Settings
    from orchestration.store.models import (
        ConsolidationJob,
        ConsolidationRun,
        Project,
        ProjectMemoryCount,
        ProjectMemoryCountDelta,
        table_of,
    )
    from orchestration.store.types import utcnow

    began = time.perf_counter()
    rng = plan.rng
    settings = Settings()
    now = utcnow()
    gone = round(plan.jobs * SKIPPED_SHARE * GONE_SHARE)
    total = max(plan.projects, plan.jobs - gone)
    projects = _projects(plan, total)
    names = {p.id: p.name for p in projects}
    kept = projects[: plan.projects]
    jobs_table, runs_table = table_of(ConsolidationJob), table_of(ConsolidationRun)
    with engine.begin() as conn:
        conn.execute(
            insert(table_of(Project)),
            [
                {
                    "id": p.id,
                    "name": p.name,
                    "consolidation_enabled": rng.random() >= 0.05,
                    "consolidation_threshold": None if rng.random() < 1 / 3 else rng.choice((200, 500, 2000, 5000)),
                    "consolidation_options": p.options,
                    "created_at": now - timedelta(days=rng.uniform(1, 1500)),
                }
                for p in projects
            ],
        )
        # The trigger gave every project a count of 0: replace them with the real ones.
        conn.execute(delete(table_of(ProjectMemoryCount)))
        conn.execute(
            insert(table_of(ProjectMemoryCount)), [{"project_id": p.id, "active_count": p.active} for p in projects]
        )
        if conn.dialect.name == "postgresql":
            own = random.Random(SEED + 1)  # the rest is drawn alike on both databases
            conn.execute(
                insert(table_of(ProjectMemoryCountDelta)),
                [
                    {"project_id": own.choice(kept).id, "delta": own.choice((1, 1, 1, 2, 5, -1))}
                    for _ in range(max(1, int(len(kept) * DELTAS_PER_PROJECT)))
                ],
            )

    # The newest scheduled run: the run of ``jobs`` jobs, finished before now.
    slot = previous_slot(settings.crontab, now - SLOT_GRACE, settings.tz)
    run_id = plan.uuid()
    chosen: list[Seeded | None] = list(projects if total > plan.projects else rng.sample(projects, plan.jobs - gone))
    rng.shuffle(chosen)
    chosen = chosen[: plan.jobs - gone] + [None] * gone
    statuses = _outcomes(plan, len(chosen) - gone, FAILED_SHARE, SKIPPED_SHARE - gone / plan.jobs) + ["skipped"] * gone
    started = slot + timedelta(seconds=1.2)
    finish_by = max(started + timedelta(seconds=60), min(started + timedelta(hours=5), now - timedelta(minutes=2)))
    job_rows, ended = _run_jobs(plan, run_id, "scheduled", started, chosen, statuses, finish_by)
    run_rows = [_run_row(run_id, "scheduled", slot, started, ended + timedelta(seconds=0.8), job_rows, names, total)]
    big = len(job_rows)
    counts = {"runs": 0, "jobs": 0}

    def flush(jobs: list[dict[str, Any]]) -> None:
        """Insert the runs not inserted yet, then ``jobs`` (theirs), and forget them."""
        with engine.begin() as conn:
            if len(run_rows) > counts["runs"]:
                conn.execute(insert(runs_table), run_rows[counts["runs"] :])
            if jobs:
                conn.execute(insert(jobs_table), jobs)
        counts["runs"], counts["jobs"] = len(run_rows), counts["jobs"] + len(jobs)
        jobs.clear()

    flush(job_rows)

    # The older runs, a night each, and now and then a run by hand on the next morning.
    pending: list[dict[str, Any]] = []
    while len(run_rows) < plan.runs:
        slot = previous_slot(settings.crontab, slot - timedelta(seconds=1), settings.tz)
        draw = rng.random()
        down = draw < 0.03
        failed_share = 1.0 if down else 0.0 if draw < 0.88 else rng.uniform(0.005, 0.03)
        count = max(1, int(plan.history_jobs * rng.uniform(0.5, 1.5)) // (10 if down else 1))
        night = rng.sample(kept, min(count, len(kept)))
        statuses = _outcomes(plan, len(night), failed_share, 0.0 if down else 0.01)
        run_id = plan.uuid()
        started = slot + timedelta(seconds=rng.uniform(0.5, 3))
        rows, ended = _run_jobs(
            plan,
            run_id,
            "scheduled",
            started,
            list(night),
            statuses,
            started + timedelta(hours=5),
            RUN_DOWN if down else None,
        )
        night_row = _run_row(run_id, "scheduled", slot, started, ended + timedelta(seconds=0.5), rows, names, len(kept))
        pending.extend(rows)
        run_rows.append(night_row)
        if len(run_rows) < plan.runs and rng.random() < MANUAL_SHARE:
            manual_id = plan.uuid()
            if night_row["status"] == "partial":  # a retry of the night's failed projects
                failed = {job["project_id"] for job in rows if job["status"] == "failed"}
                picked = [p for p in night if p.id in failed]
                notes = {"retry_of": str(run_id)}
                night_row["summary"]["retried_by"] = [str(manual_id)]
            else:
                picked, notes = rng.sample(kept, min(len(kept), rng.randint(1, 8))), {}
            started = slot + timedelta(hours=8, minutes=rng.uniform(0, 120))
            statuses = _outcomes(plan, len(picked), 0.1, 0.0)
            rows, ended = _run_jobs(
                plan, manual_id, "manual", started, list(picked), statuses, started + timedelta(hours=1)
            )
            pending.extend(rows)
            run_rows.append(
                _run_row(
                    manual_id, "manual", None, started, ended + timedelta(seconds=0.3), rows, names, len(picked), notes
                )
            )
        if len(pending) >= 5000:
            flush(pending)
    flush(pending)
    extra = [p.id for p in projects[plan.projects :]]
    return Built(
        run_rows[0]["id"], total, plan.projects, len(run_rows), counts["jobs"], big, time.perf_counter() - began, extra
    )


def trim(engine: Any, built: Built) -> None:
    """Delete the projects only the big run used (its jobs keep their rows with no
    project, as any deleted project's do): ``kept_projects`` are left."""
    from sqlalchemy import delete

    from orchestration.store.db import chunks
    from orchestration.store.models import Project

    with engine.begin() as conn:
        for part in chunks(built.extra):
            conn.execute(delete(Project).where(Project.id.in_(part)))


def settle(engine: Any) -> None:
    """PostgreSQL: ``VACUUM ANALYZE``, the state autovacuum leaves a database in."""
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM ANALYZE")


# --- the requests --------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    path: str  # "{run}" stands for the big run's id
    what: str
    goal_s: float | None

    def url(self, run_id: uuid.UUID) -> str:
        return self.path.replace("{run}", str(run_id))


def endpoints(built: Built) -> list[Endpoint]:
    jobs, runs = f"{built.jobs_of_run:,} jobs", f"{built.runs:,} runs"
    return [
        Endpoint("/runs/{run}", f"run page, {jobs}", 1.0),
        Endpoint("/api/runs/{run}", f"run JSON, {jobs}", 1.0),
        Endpoint("/runs", f"runs page, {runs}, {min(built.runs, 30):,} shown", 0.2),
        Endpoint("/runs?limit=1000", f"runs page, {runs}, {min(built.runs, 1000):,} shown", 0.2),
        Endpoint("/api/runs?limit=1000", f"runs JSON, {runs}, {min(built.runs, 1000):,} listed", 0.2),
    ]


@dataclass
class Figures:
    endpoint: Endpoint
    samples: list[float]
    size: int
    statements: int

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def p95(self) -> float:
        """Nearest rank: with 7 samples, the slowest."""
        ordered = sorted(self.samples)
        return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]

    def verdict(self) -> str:
        goal = self.endpoint.goal_s
        if goal is None:
            return "-"
        if self.median >= goal:
            return "MISS"
        return "PASS" if self.p95 < goal else "PASS (p95 over)"


@contextlib.contextmanager
def counting_statements() -> Iterator[list[int]]:
    """The SQL statements the app sends meanwhile (``[count]``), on every engine;
    SQLite's ``BEGIN`` not counted (PostgreSQL's is not a statement of its own here)."""
    from sqlalchemy import event

    from orchestration.store import db

    count = [0]

    def one(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if not statement.lstrip().upper().startswith("BEGIN"):
            count[0] += 1

    engines = db.engines()
    for engine in engines:
        event.listen(engine, "before_cursor_execute", one)
    try:
        yield count
    finally:
        for engine in engines:
            event.remove(engine, "before_cursor_execute", one)


def measure(client: Any, endpoint: Endpoint, run_id: uuid.UUID, repeat: int) -> Figures:
    """One warm-up request (its statements counted), then ``repeat`` timed ones."""
    url = endpoint.url(run_id)
    with counting_statements() as statements:
        response = client.get(url)
    if response.status_code != 200:
        raise SystemExit(f"GET {url} answered {response.status_code}: {response.text[:2000]}")
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        response = client.get(url)
        samples.append(time.perf_counter() - started)
        assert response.status_code == 200, (url, response.status_code)
    return Figures(endpoint, samples, len(response.content), statements[0])


def _size(size: int) -> str:
    return f"{size / 1e6:.2f} MB" if size >= 1e6 else f"{size / 1e3:.1f} kB" if size >= 1e3 else f"{size} B"


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def report(figures: list[Figures]) -> None:
    header = f"{'endpoint':<24} {'what':<38} {'median':>10} {'p95':>10} {'size':>9} {'SQL':>4} {'goal':>7}  verdict"
    print(header)
    print("-" * len(header))
    for f in figures:
        goal = f.endpoint.goal_s
        goal_text = "-" if goal is None else f"{goal:g} s" if goal >= 1 else f"{goal * 1000:g} ms"
        print(
            f"{'GET ' + f.endpoint.path:<24} {f.endpoint.what:<38} {_ms(f.median):>10} {_ms(f.p95):>10} "
            f"{_size(f.size):>9} {f.statements:>4} {goal_text:>7}  {f.verdict()}"
        )
    verdicts = [f.verdict() for f in figures if f.endpoint.goal_s is not None]
    missed = sum(v == "MISS" for v in verdicts)
    print(f"goals: {len(verdicts) - missed} of {len(verdicts)} met (median under the goal); {missed} missed")


# --- profile -------------------------------------------------------------------------


@contextlib.contextmanager
def _inline_threadpool() -> Iterator[None]:
    """Sync endpoints (and /metrics' rendering) run on the event loop's thread instead
    of a worker thread, so one cProfile sees the whole request. Only for the profile:
    the timed requests run as served."""
    import starlette.routing

    import orchestration.web.app as web_app

    async def inline(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return func(*args, **kwargs)

    saved = starlette.routing.run_in_threadpool, web_app.run_in_threadpool
    starlette.routing.run_in_threadpool = web_app.run_in_threadpool = inline
    try:
        yield
    finally:
        starlette.routing.run_in_threadpool, web_app.run_in_threadpool = saved


def profile(url: str, top: int) -> None:
    """cProfile of one request to ``url`` (after a warm-up), through the whole app."""
    import httpx2

    from orchestration.settings import Settings
    from orchestration.web.app import create_app

    profiler = cProfile.Profile()

    async def requests() -> int:
        app = create_app(Settings())
        async with httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://bench") as client:
            await client.get(url)
            profiler.enable()
            response = await client.get(url)
            profiler.disable()
        return response.status_code

    with _inline_threadpool():
        status = asyncio.run(requests())
    assert status == 200, (url, status)
    # By cumulative time, this project's code only (its templates included): where the
    # request's time goes; by own time, everything: what the time is spent doing.
    for order, title, restrictions in (
        ("cumulative", "cumulative time, orchestration's functions and templates", ("/orchestration/", top)),
        ("tottime", "own time, all functions", (top,)),
    ):
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats(order).print_stats(*restrictions)
        print(f"\nprofile of GET {url} (one request, cProfile), by {title}:")
        print(out.getvalue().strip())


# --- main ----------------------------------------------------------------------------


def _server(engine: Any) -> str:
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            return "PostgreSQL " + conn.exec_driver_sql("SHOW server_version").scalar_one().split()[0]
    import sqlite3

    return f"SQLite {sqlite3.sqlite_version}"


def copy_database(url: str, workdir: Path) -> tuple[str, Callable[[], None]]:
    """A copy of the database at ``url`` (no connection to it may be open); its URL
    and a function that drops it."""
    from sqlalchemy.engine import make_url

    from orchestration.store.db import sqlite_path

    source = sqlite_path(url)
    if source is not None:
        import sqlite3

        target = workdir / f"{source.stem}-copy.db"
        with contextlib.closing(sqlite3.connect(source)) as a, contextlib.closing(sqlite3.connect(target)) as b:
            a.backup(b)
        return f"sqlite:///{target}", lambda: target.unlink(missing_ok=True)
    name = f"orch_bench_{uuid.uuid4().hex[:10]}"
    return create_database(name, template=make_url(url).database), lambda: drop_database(name)


def run(database: str, args: argparse.Namespace, workdir: Path) -> list[Figures]:
    """Build, time every endpoint, print the table; ``--profile`` then profiles one."""
    from starlette.testclient import TestClient

    from orchestration.settings import Settings
    from orchestration.store import db, migrate
    from orchestration.web.app import create_app

    if database == "sqlite":
        url, drop = f"sqlite:///{workdir / 'web.db'}", (lambda: None)
    else:
        url, drop = scratch_pg_database()
    drops = [drop]
    try:
        migrate.upgrade(url)
        engine = db.build_engine(url)
        try:
            built = build(engine, Plan(args.jobs, args.runs, args.projects, args.history_jobs))
            settle(engine)
            server = _server(engine)
        finally:
            engine.dispose()
        print(
            f"\n{server}: {built.projects:,} projects, {built.runs:,} runs, {built.jobs:,} jobs "
            f"(the newest run {built.jobs_of_run:,}), built in {built.seconds:.1f} s; "
            f"median and p95 of {args.repeat} requests after a warm-up",
            flush=True,
        )
        db.set_read_only(True)  # as `orchestration web` serves
        figures: list[tuple[Figures, str]] = []  # and the database each was timed on
        load_before = os.getloadavg()[0]

        def timed(at: str, *chosen: Endpoint) -> None:
            db.use_database(at)
            with TestClient(create_app(Settings())) as client:
                for endpoint in chosen:
                    figures.append((measure(client, endpoint, built.run_id, args.repeat), at))
            db.use_database(None)

        metrics = f"metrics, {args.projects:,} projects"
        if built.extra:
            # The big run needed more projects than /metrics is timed with: a copy of
            # the database without the projects only that run used, for the scrape.
            timed(url, *endpoints(built), Endpoint("/metrics", f"metrics, {built.projects:,} projects", None))
            metrics_url, drop_copy = copy_database(url, workdir)
            drops.append(drop_copy)
            engine = db.build_engine(metrics_url)
            try:
                trim(engine, built)
                settle(engine)
            finally:
                engine.dispose()
            timed(metrics_url, Endpoint("/metrics", metrics, 0.1))
        else:
            timed(url, *endpoints(built), Endpoint("/metrics", metrics, 0.1))
        report([f for f, _ in figures])
        # The machine's other work shows in the figures: say how busy it was.
        print(f"load average (1 min): {load_before:.2f} before the requests, {os.getloadavg()[0]:.2f} after")
        if args.profile:
            if args.profile == "slowest":
                graded = [(f, at) for f, at in figures if f.endpoint.goal_s]
                chosen, at = max(graded, key=lambda pair: pair[0].median / (pair[0].endpoint.goal_s or 1))
            else:
                named = [(f, at) for f, at in figures if f.endpoint.path == args.profile]
                if not named:
                    paths = ", ".join(dict.fromkeys(f.endpoint.path for f, _ in figures))
                    raise SystemExit(f"--profile {args.profile}: give one of {paths}")
                chosen, at = named[-1]
            db.use_database(at)
            profile(chosen.endpoint.url(built.run_id), args.profile_top)
        return [f for f, _ in figures]
    finally:
        db.use_database(None)
        db.set_read_only(False)
        for drop_one in reversed(drops):
            drop_one()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database", default="postgresql", help="postgresql, sqlite, or both: postgresql,sqlite")
    parser.add_argument("--jobs", type=int, default=20_000, help="jobs of the run whose pages are timed")
    parser.add_argument("--runs", type=int, default=1_000)
    parser.add_argument("--projects", type=int, default=10_000, help="projects when /metrics is timed")
    parser.add_argument("--history-jobs", type=int, default=200, help="jobs of each older run, on average")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument(
        "--profile",
        nargs="?",
        const="slowest",
        help="profile one request of the slowest endpoint (against its goal), or of the one named: --profile /runs",
    )
    parser.add_argument("--profile-top", type=int, default=25, help="functions the profile lists")
    args = parser.parse_args()
    databases = [d.strip() for d in args.database.split(",")]
    if not set(databases) <= {"postgresql", "sqlite"} or args.jobs < 1 or args.runs < 1 or args.projects < 1:
        parser.error("--database takes postgresql and/or sqlite; sizes are at least 1")
    with tempfile.TemporaryDirectory() as tmp:
        for database in databases:
            run(database, args, Path(tmp))


if __name__ == "__main__":
    main()

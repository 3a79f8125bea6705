"""``GET /metrics``: the runs, jobs and projects as Prometheus metrics (docs/metrics.md).

:func:`render_metrics` reads one :class:`Snapshot` from the database and renders it
with a :class:`SnapshotCollector` registered in a registry of its own (never the
global default one), in the Prometheus text format.

The reads are a handful of aggregate queries, whatever the number of projects, runs
and jobs, none of which reads every job row: runs grouped by trigger and status (one
pass over the runs table, a row a night), which also sums the job counts that
finalizing wrote into each finished run; the jobs those counts do not cover, from their
rows: the open runs', any run closed without a summary, and those started by hand
(all through the ``(run_id, project_id)`` unique index); the latest run of each
trigger (``ix_consolidation_runs_started_at``); the project counts in one joined
aggregate; and :func:`check_health`'s one or two. Nothing is written: no fold of the
count deltas (they are added as ``projects list`` does), and on PostgreSQL the
transaction is declared ``READ ONLY`` (and ``REPEATABLE READ``, so every query sees
the same moment), which a read-only database role allows.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from sqlalchemy import ColumnElement, and_, func, literal, null, or_, select, text, union_all
from sqlalchemy.orm import Session

from orchestration.nightly.health import check_health
from orchestration.settings import Settings
from orchestration.store import counts, db
from orchestration.store.models import ConsolidationJob, ConsolidationRun, Project, ProjectMemoryCount
from orchestration.store.statuses import (
    FINISHED_JOB_STATUSES,
    UNFINISHED_JOB_STATUSES,
    JobStatus,
    RunStatus,
    TriggerType,
)
from orchestration.store.types import utcnow

PREFIX = "orchestration_"
# The dead man's switch: the max age `orchestration health` uses by default.
HEALTH_MAX_AGE = timedelta(hours=26)
TRIGGERS = tuple(TriggerType)
RUN_STATUSES = tuple(RunStatus)
# A run's status is final once it left `running`, a job's once it is one of these:
# counts of final statuses only ever grow, so they are counters; the rest are gauges.
FINISHED_RUN_STATUSES = tuple(s for s in RunStatus if s != RunStatus.RUNNING)
JOB_STATUSES = tuple(JobStatus)


@dataclass(frozen=True)
class LatestRun:
    """The newest run (by ``started_at``) of one trigger. For a run still running, the
    job counts and memory counters come from its job rows (its row holds them only
    once it is finalized), as ``runs show`` does."""

    status: str
    started_at: datetime
    finished_at: datetime | None
    memories_merged: int
    memories_archived: int
    jobs_total: int
    jobs_completed: int
    jobs_failed: int


@dataclass
class Snapshot:
    """Everything the metrics say, read in one transaction at ``now``."""

    now: datetime
    run_deadline_s: int
    health_code: int
    latest: dict[str, LatestRun] = field(default_factory=dict)
    # (trigger, status) -> runs with that final status
    runs_finished: dict[tuple[str, str], int] = field(default_factory=dict)
    open_runs: dict[str, int] = field(default_factory=dict)
    oldest_open_started: dict[str, datetime] = field(default_factory=dict)
    # (trigger, job status) -> jobs of that trigger's open runs
    open_run_jobs: dict[tuple[str, str], int] = field(default_factory=dict)
    last_completed_scheduled: datetime | None = None
    jobs_by_status: dict[str, int] = field(default_factory=dict)
    projects: int = 0
    projects_enabled: int = 0
    projects_eligible: int = 0


def _seconds(span: timedelta) -> float:
    """A span in seconds, never negative (another host's clock may run a little ahead)."""
    return max(0.0, span.total_seconds())


def _finalized_skipped() -> ColumnElement[int]:
    """The skipped jobs :func:`~orchestration.nightly.runs.finalize` wrote into the run's
    summary; NULL while the run is open, and for a run closed without a summary
    (``mark_failed``, the last resort), whose job counters on the row are not exact."""
    return ConsolidationRun.summary["jobs_skipped"].as_integer()


def _runs_by_trigger_and_status(session: Session, snapshot: Snapshot) -> None:
    """Runs by trigger and status, with the jobs of every finalized run by status: a
    finalized run's row counts its jobs exactly, and their statuses never change after
    (finalizing fails the unfinished ones; a late delivery finds its job finished)."""
    run, skipped = ConsolidationRun, _finalized_skipped()
    finalized = and_(run.status != RunStatus.RUNNING, skipped.is_not(None))
    rows = session.execute(
        select(
            run.trigger_type,
            run.status,
            func.count(),
            func.max(run.finished_at),
            func.min(run.started_at),
            func.sum(run.jobs_completed).filter(finalized),
            func.sum(run.jobs_failed).filter(finalized),
            func.sum(skipped).filter(finalized),
        ).group_by(run.trigger_type, run.status)
    ).all()
    for trigger, status, number, last_finished, first_started, completed, failed, skipped_jobs in rows:
        if status == RunStatus.RUNNING:
            snapshot.open_runs[trigger] = number
            snapshot.oldest_open_started[trigger] = first_started
        else:
            snapshot.runs_finished[(trigger, status)] = number
        if trigger == TriggerType.SCHEDULED and status == RunStatus.COMPLETED:
            snapshot.last_completed_scheduled = last_finished
        for job_status, jobs in (
            (JobStatus.COMPLETED, completed),
            (JobStatus.FAILED, failed),
            (JobStatus.SKIPPED, skipped_jobs),
        ):
            snapshot.jobs_by_status[job_status] = snapshot.jobs_by_status.get(job_status, 0) + int(jobs or 0)


# Per open run: job status -> (jobs, memories merged, memories archived).
OpenRunJobs = dict[object, dict[str, tuple[int, int, int]]]


def _unfinalized_jobs(session: Session, snapshot: Snapshot) -> OpenRunJobs:
    """The jobs the run rows do not count, by status, from their rows: those of the open
    runs (also summed per trigger), of runs closed without a summary, and those started
    by hand (no run). Through the ``(run_id, project_id)`` index, never the whole table."""
    job, run = ConsolidationJob, ConsolidationRun
    uncounted = or_(run.status == RunStatus.RUNNING, _finalized_skipped().is_(None))
    of_runs = (
        select(
            run.trigger_type,
            run.status.label("run_status"),
            job.run_id,
            job.status,
            func.count().label("jobs"),
            func.coalesce(func.sum(job.memories_merged), 0).label("merged"),
            func.coalesce(func.sum(job.memories_archived), 0).label("archived"),
        )
        .join(run, run.id == job.run_id)
        # The runs, not the jobs, narrowed first: else SQLite's planner walks every job.
        .where(job.run_id.in_(select(run.id).where(uncounted).correlate(None)), uncounted)
        .group_by(run.trigger_type, run.status, job.run_id, job.status)
    )
    by_hand = (
        select(null(), null(), null(), job.status, func.count(), literal(0), literal(0))
        .where(job.run_id.is_(None))
        .group_by(job.status)
    )
    per_run: OpenRunJobs = {}
    rows: list[Any] = list(session.execute(union_all(of_runs, by_hand)))
    for trigger, run_status, run_id, status, number, merged, archived in rows:
        snapshot.jobs_by_status[status] = snapshot.jobs_by_status.get(status, 0) + number
        if run_status == RunStatus.RUNNING:
            key = (trigger, status)
            snapshot.open_run_jobs[key] = snapshot.open_run_jobs.get(key, 0) + number
            per_run.setdefault(run_id, {})[status] = (number, int(merged), int(archived))
    return per_run


def _latest_runs(session: Session, snapshot: Snapshot, open_jobs: OpenRunJobs) -> None:
    run = ConsolidationRun
    columns = (
        run.id,
        run.trigger_type,
        run.status,
        run.started_at,
        run.finished_at,
        run.memories_merged,
        run.memories_archived,
        run.jobs_total,
        run.jobs_completed,
        run.jobs_failed,
    )
    newest = [
        select(*columns).where(run.trigger_type == trigger).order_by(run.started_at.desc(), run.id.desc()).limit(1)
        for trigger in TRIGGERS
    ]
    # Each branch in a subquery of its own: SQLite takes no LIMIT in a UNION's members.
    rows = session.execute(union_all(*(select(branch.subquery()) for branch in newest))).all()
    for row in rows:
        merged, archived = row.memories_merged, row.memories_archived
        total, completed, failed = row.jobs_total, row.jobs_completed, row.jobs_failed
        if row.status == RunStatus.RUNNING:
            by_status = open_jobs.get(row.id, {})
            total = sum(n for n, _, _ in by_status.values())
            completed = by_status.get(JobStatus.COMPLETED, (0, 0, 0))[0]
            failed = by_status.get(JobStatus.FAILED, (0, 0, 0))[0]
            merged = sum(m for _, m, _ in by_status.values())
            archived = sum(a for _, _, a in by_status.values())
        snapshot.latest[row.trigger_type] = LatestRun(
            status=row.status,
            started_at=row.started_at,
            finished_at=row.finished_at,
            memories_merged=merged,
            memories_archived=archived,
            jobs_total=total,
            jobs_completed=completed,
            jobs_failed=failed,
        )


def _projects(session: Session, snapshot: Snapshot, default_threshold: int) -> None:
    """Projects, enabled ones, and those the nightly check would pick now: active count
    (kept count plus unfolded deltas, as ``projects list`` reads it) above the
    project's threshold or the default. One aggregate, no row per project."""
    project, kept, pending = Project, ProjectMemoryCount, counts.pending_deltas()
    active = func.coalesce(kept.active_count, 0) + func.coalesce(pending.c.delta, 0)
    threshold = func.coalesce(project.consolidation_threshold, default_threshold)
    enabled = project.consolidation_enabled.is_(True)
    total, on, eligible = session.execute(
        select(func.count(), func.count().filter(enabled), func.count().filter(and_(enabled, active > threshold)))
        .select_from(project)
        .outerjoin(kept, kept.project_id == project.id)
        .outerjoin(pending, pending.c.project_id == project.id)
    ).one()
    snapshot.projects, snapshot.projects_enabled, snapshot.projects_eligible = total, on, eligible


def read_snapshot(session: Session, settings: Settings, now: datetime) -> Snapshot:
    """Read what the metrics say from the database. On PostgreSQL this must be the
    first thing the session's transaction does (it sets the transaction's mode)."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    if session.get_bind().dialect.name == "postgresql":
        # Guard and consistency: a write would fail, and every query sees one snapshot.
        session.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"))
    snapshot = Snapshot(now=now, run_deadline_s=settings.run_deadline, health_code=2)
    _runs_by_trigger_and_status(session, snapshot)
    open_jobs = _unfinalized_jobs(session, snapshot)
    _latest_runs(session, snapshot, open_jobs)
    _projects(session, snapshot, settings.default_threshold)
    snapshot.health_code = check_health(session, settings, now, HEALTH_MAX_AGE).code
    return snapshot


class SnapshotCollector:
    """A Prometheus collector yielding the metric families of one :class:`Snapshot`."""

    def __init__(self, snapshot: Snapshot):
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        yield from self._latest_runs()
        yield from self._dead_mans_switch()
        yield from self._open_runs()
        yield from self._counters()
        yield from self._projects()

    def _latest_runs(self) -> Iterator[Metric]:
        s = self.snapshot
        status = _gauge(
            "latest_run_status",
            "Status of the latest run (by start time) of each trigger: 1 for its status, 0 for the others.",
            ["trigger", "status"],
        )
        started = _gauge("latest_run_start_time_seconds", "Start of the latest run, Unix time.", ["trigger"])
        duration = _gauge(
            "latest_run_duration_seconds",
            "Duration of the latest run: finished minus started, or now minus started while it runs.",
            ["trigger"],
        )
        merged = _gauge(
            "latest_run_memories_merged", "Memories merged (marked duplicate) by the latest run.", ["trigger"]
        )
        archived = _gauge("latest_run_memories_archived", "Memories archived by the latest run.", ["trigger"])
        jobs = _gauge("latest_run_jobs", "Jobs of the latest run.", ["trigger"])
        completed = _gauge("latest_run_jobs_completed", "Completed jobs of the latest run.", ["trigger"])
        failed = _gauge("latest_run_jobs_failed", "Failed jobs of the latest run.", ["trigger"])
        for trigger in TRIGGERS:
            run = s.latest.get(trigger)
            if run is None:
                continue
            for value in RUN_STATUSES:
                status.add_metric([trigger, value], 1.0 if run.status == value else 0.0)
            started.add_metric([trigger], run.started_at.timestamp())
            duration.add_metric([trigger], _seconds((run.finished_at or s.now) - run.started_at))
            merged.add_metric([trigger], run.memories_merged)
            archived.add_metric([trigger], run.memories_archived)
            jobs.add_metric([trigger], run.jobs_total)
            completed.add_metric([trigger], run.jobs_completed)
            failed.add_metric([trigger], run.jobs_failed)
        yield from (status, started, duration, merged, archived, jobs, completed, failed)

    def _dead_mans_switch(self) -> Iterator[Metric]:
        s = self.snapshot
        last = s.last_completed_scheduled
        stamp = _gauge(
            "scheduled_run_last_completed_timestamp_seconds",
            "When the last completed scheduled run finished, Unix time; absent if none ever did.",
        )
        age = _gauge(
            "scheduled_run_last_completed_age_seconds",
            "Seconds since the last completed scheduled run finished; +Inf if none ever did.",
        )
        if last is not None:
            stamp.add_metric([], last.timestamp())
        age.add_metric([], float("inf") if last is None else _seconds(s.now - last))
        health = _gauge(
            "health_status",
            "Verdict of `orchestration health` (max age 26 h): 0 ok, 1 partial or failed, 2 critical.",
        )
        health.add_metric([], s.health_code)
        yield from (stamp, age, health)

    def _open_runs(self) -> Iterator[Metric]:
        s = self.snapshot
        runs = _gauge("open_runs", "Runs still running.", ["trigger"])
        jobs = _gauge("open_run_jobs", "Jobs of the runs still running, by job status.", ["trigger", "status"])
        age = _gauge(
            "open_run_age_seconds",
            "Seconds since the oldest run still running started; absent while none runs.",
            ["trigger"],
        )
        for trigger in TRIGGERS:
            runs.add_metric([trigger], s.open_runs.get(trigger, 0))
            for status in JOB_STATUSES:
                jobs.add_metric([trigger, status], s.open_run_jobs.get((trigger, status), 0))
            if trigger in s.oldest_open_started:
                age.add_metric([trigger], _seconds(s.now - s.oldest_open_started[trigger]))
        deadline = _gauge(
            "run_deadline_seconds",
            "ORCHESTRATION_RUN_DEADLINE: a run still running this long after its start is finalized by the reaper.",
        )
        deadline.add_metric([], s.run_deadline_s)
        yield from (runs, jobs, age, deadline)

    def _counters(self) -> Iterator[Metric]:
        s = self.snapshot
        runs = CounterMetricFamily(
            PREFIX + "runs_finished",
            "Finished runs by trigger and final status (completed, partial, failed).",
            labels=["trigger", "status"],
        )
        for trigger in TRIGGERS:
            for run_status in FINISHED_RUN_STATUSES:
                runs.add_metric([trigger, run_status], s.runs_finished.get((trigger, run_status), 0))
        jobs = CounterMetricFamily(
            PREFIX + "jobs_finished",
            "Finished jobs by final status (completed, failed, skipped), of runs and by hand.",
            labels=["status"],
        )
        for status in FINISHED_JOB_STATUSES:
            jobs.add_metric([status], s.jobs_by_status.get(status, 0))
        unfinished = _gauge(
            "jobs_unfinished", "Jobs not finished yet (pending, running, retrying), of runs and by hand.", ["status"]
        )
        for job_status in UNFINISHED_JOB_STATUSES:
            unfinished.add_metric([job_status], s.jobs_by_status.get(job_status, 0))
        yield from (runs, jobs, unfinished)

    def _projects(self) -> Iterator[Metric]:
        s = self.snapshot
        for name, documentation, value in (
            ("projects", "Projects.", s.projects),
            ("projects_enabled", "Projects with consolidation enabled.", s.projects_enabled),
            (
                "projects_eligible",
                "Enabled projects with more active memories than their threshold (or the default) now.",
                s.projects_eligible,
            ),
        ):
            gauge = _gauge(name, documentation)
            gauge.add_metric([], value)
            yield gauge


def _gauge(name: str, documentation: str, labels: list[str] | None = None) -> GaugeMetricFamily:
    return GaugeMetricFamily(PREFIX + name, documentation, labels=labels or [])


def render_metrics(settings: Settings, now: datetime | None = None) -> bytes:
    """The Prometheus text exposition of the database's runs, jobs and projects at
    ``now`` (default: the current time; timezone-aware). Reads only."""
    now = now or utcnow()
    with db.session_scope() as session:
        snapshot = read_snapshot(session, settings, now)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(snapshot))
    return generate_latest(registry)

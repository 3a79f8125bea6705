"""``/metrics``: what render_metrics says about runs, jobs and projects, read back with
Prometheus' own parser, on SQLite and PostgreSQL; and docs/metrics.md kept in step."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import prometheus_client
import yaml
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select, update

from orchestration.demo.seed import seed
from orchestration.nightly import runs as nightly_runs
from orchestration.settings import load_settings
from orchestration.store import db
from orchestration.store.models import (
    ConsolidationJob,
    ConsolidationRun,
    Project,
    ProjectMemoryCount,
    ProjectMemoryCountDelta,
)
from orchestration.store.statuses import JobStatus, RunStatus, TriggerType
from orchestration.web.metrics import render_metrics
from support import manual_job

SETTINGS = load_settings({"ORCHESTRATION_DEFAULT_THRESHOLD": "5", "ORCHESTRATION_RUN_DEADLINE": "1800"})
NOW = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
TONIGHT = datetime(2026, 12, 1, 2, 0, tzinfo=UTC)  # the schedule's (0 2 * * *) latest slot before NOW
DOCS = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"
P = "orchestration_"


class Scrape:
    """One render_metrics output, parsed: sample values by name and labels."""

    def __init__(self, settings=SETTINGS, now=NOW):
        self.text = render_metrics(settings, now=now).decode()
        self.types: dict[str, str] = {}
        self.samples: dict[tuple[str, frozenset], float] = {}
        for family in text_string_to_metric_families(self.text):
            self.types[family.name] = family.type
            for sample in family.samples:
                key = (sample.name, frozenset(sample.labels.items()))
                assert key not in self.samples, f"duplicate series {key}"
                self.samples[key] = sample.value

    def __call__(self, name: str, **labels: str) -> float:
        return self.samples[(P + name, frozenset(labels.items()))]

    def has(self, name: str, **labels: str) -> bool:
        return (P + name, frozenset(labels.items())) in self.samples

    def names(self) -> set[str]:
        return {name for name, _ in self.samples}

    def series(self, name: str) -> dict[frozenset, float]:
        return {labels: value for (n, labels), value in self.samples.items() if n == P + name}


def _run(session, trigger, status, started, finished=None, slot=None, skipped=0, **counters) -> ConsolidationRun:
    """A run row; a finished one as finalizing leaves it, with its skipped jobs in its summary."""
    run = ConsolidationRun(
        trigger_type=trigger,
        scheduled_for=slot,
        status=status,
        started_at=started,
        finished_at=finished,
        summary=None if status == RunStatus.RUNNING else {"duration_s": 1.0, "jobs_skipped": skipped},
        **counters,
    )
    session.add(run)
    session.flush()
    return run


def _jobs(session, run, status, number=1, **counters) -> None:
    for _ in range(number):
        session.add(
            ConsolidationJob(
                run_id=None if run is None else run.id,
                project_id=None,
                status=status,
                trigger_type=TriggerType.MANUAL if run is None else run.trigger_type,
                **counters,
            )
        )
    session.flush()


def _project(session, name, active, threshold=None, enabled=True, pending=()) -> None:
    project = Project(name=name, consolidation_threshold=threshold, consolidation_enabled=enabled)
    session.add(project)
    session.flush()
    # The insert trigger made its count row; set what the memory triggers would keep.
    session.merge(ProjectMemoryCount(project_id=project.id, active_count=active))
    session.add_all(ProjectMemoryCountDelta(project_id=project.id, delta=delta) for delta in pending)
    session.flush()


def _history() -> dict[str, ConsolidationRun]:
    """A completed scheduled run yesterday, a partial one tonight, an older failed one;
    a completed manual run this morning and a manual run still running since 09:00 with
    jobs in every status; and a job started by hand. Inserted newest first, so that
    only the start times say which run is the latest."""
    with db.session_scope() as session:
        runs = {
            "tonight": _run(
                session,
                TriggerType.SCHEDULED,
                RunStatus.PARTIAL,
                TONIGHT + timedelta(seconds=3),
                TONIGHT + timedelta(minutes=30, seconds=3),
                slot=TONIGHT,
                memories_merged=7,
                memories_archived=2,
                jobs_total=4,
                jobs_completed=3,
                jobs_failed=1,
            ),
            "running": _run(session, TriggerType.MANUAL, RunStatus.RUNNING, NOW - timedelta(hours=1)),
            # Started before the running one, finished after it started: still not the latest.
            "manual": _run(
                session,
                TriggerType.MANUAL,
                RunStatus.COMPLETED,
                NOW - timedelta(hours=2),
                NOW - timedelta(minutes=30),
                memories_merged=100,
                memories_archived=50,
            ),
            "yesterday": _run(
                session,
                TriggerType.SCHEDULED,
                RunStatus.COMPLETED,
                TONIGHT - timedelta(days=1) + timedelta(seconds=5),
                TONIGHT - timedelta(days=1) + timedelta(minutes=20, seconds=5),
                slot=TONIGHT - timedelta(days=1),
                memories_merged=10,
                memories_archived=5,
                jobs_total=3,
                jobs_completed=3,
            ),
            "failed": _run(
                session,
                TriggerType.SCHEDULED,
                RunStatus.FAILED,
                TONIGHT - timedelta(days=3),
                TONIGHT - timedelta(days=3) + timedelta(minutes=5),
                slot=TONIGHT - timedelta(days=3),
            ),
        }
        _jobs(session, runs["yesterday"], JobStatus.COMPLETED, 3)
        _jobs(session, runs["tonight"], JobStatus.COMPLETED, 3)
        _jobs(session, runs["tonight"], JobStatus.FAILED)
        running = runs["running"]  # its row's counters stay 0 until it is finalized
        _jobs(session, running, JobStatus.PENDING, 2)
        _jobs(session, running, JobStatus.RUNNING, memories_merged=1)
        _jobs(session, running, JobStatus.RETRYING)
        _jobs(session, running, JobStatus.COMPLETED, 3, memories_merged=4, memories_archived=1)
        _jobs(session, running, JobStatus.FAILED)
        _jobs(session, running, JobStatus.SKIPPED)
        _jobs(session, None, JobStatus.COMPLETED)  # `orchestration consolidate`, outside any run
    return runs


def test_an_empty_database_has_no_latest_runs_and_trips_the_dead_mans_switch(database):
    scrape = Scrape()
    assert scrape.types[P + "runs_finished"] == "counter" and scrape.types[P + "latest_run_status"] == "gauge"
    for name in ("latest_run_status", "latest_run_start_time_seconds", "latest_run_duration_seconds"):
        assert scrape.series(name) == {}
    # Never completed: no timestamp to show, and an age no threshold is above.
    assert not scrape.series("scheduled_run_last_completed_timestamp_seconds")
    assert math.isinf(scrape("scheduled_run_last_completed_age_seconds"))
    assert scrape("health_status") == 2
    assert scrape("run_deadline_seconds") == 1800
    assert scrape.series("open_run_age_seconds") == {}
    for trigger in TriggerType:
        assert scrape("open_runs", trigger=trigger) == 0
        for status in JobStatus:
            assert scrape("open_run_jobs", trigger=trigger, status=status) == 0
        for status in (RunStatus.COMPLETED, RunStatus.PARTIAL, RunStatus.FAILED):
            assert scrape("runs_finished_total", trigger=trigger, status=status) == 0
    assert set(scrape.series("jobs_finished_total").values()) == {0}
    assert set(scrape.series("jobs_unfinished").values()) == {0}
    assert (scrape("projects"), scrape("projects_enabled"), scrape("projects_eligible")) == (0, 0, 0)


def test_latest_runs_dead_mans_switch_open_run_and_counters(database):
    runs = _history()
    scrape = Scrape()

    # The latest run of each trigger by start time, its status as a set of 0/1 series.
    assert scrape.series("latest_run_status") == {
        frozenset({"trigger": trigger, "status": status}.items()): float(status == current)
        for trigger, current in ((TriggerType.SCHEDULED, RunStatus.PARTIAL), (TriggerType.MANUAL, RunStatus.RUNNING))
        for status in RunStatus
    }
    assert scrape("latest_run_start_time_seconds", trigger="scheduled") == runs["tonight"].started_at.timestamp()
    assert scrape("latest_run_start_time_seconds", trigger="manual") == (NOW - timedelta(hours=1)).timestamp()
    assert scrape("latest_run_duration_seconds", trigger="scheduled") == 30 * 60
    assert scrape("latest_run_duration_seconds", trigger="manual") == 3600  # still running: until now
    assert scrape("latest_run_memories_merged", trigger="scheduled") == 7
    assert scrape("latest_run_memories_archived", trigger="scheduled") == 2
    assert [scrape(f"latest_run_jobs{s}", trigger="scheduled") for s in ("", "_completed", "_failed")] == [4, 3, 1]
    # The open run's counts come from its job rows, not its (still zero) row.
    assert scrape("latest_run_memories_merged", trigger="manual") == 3 * 4 + 1
    assert scrape("latest_run_memories_archived", trigger="manual") == 3
    assert [scrape(f"latest_run_jobs{s}", trigger="manual") for s in ("", "_completed", "_failed")] == [9, 3, 1]

    # Dead man's switch: last night was partial, so the last completed one is yesterday's.
    finished = runs["yesterday"].finished_at
    assert finished is not None
    assert scrape("scheduled_run_last_completed_timestamp_seconds") == finished.timestamp()
    assert scrape("scheduled_run_last_completed_age_seconds") == (NOW - finished).total_seconds()
    assert scrape("health_status") == 1  # the latest scheduled run is partial

    assert scrape("open_runs", trigger="manual") == 1 and scrape("open_runs", trigger="scheduled") == 0
    assert {status: scrape("open_run_jobs", trigger="manual", status=status) for status in JobStatus} == {
        "pending": 2,
        "running": 1,
        "retrying": 1,
        "completed": 3,
        "failed": 1,
        "skipped": 1,
    }
    assert set(scrape.series("open_run_jobs").values()) - {0} and all(
        scrape("open_run_jobs", trigger="scheduled", status=s) == 0 for s in JobStatus
    )
    assert scrape.series("open_run_age_seconds") == {frozenset({"trigger": "manual"}.items()): 3600}
    assert scrape("open_run_age_seconds", trigger="manual") > scrape("run_deadline_seconds")

    assert {
        (dict(labels)["trigger"], dict(labels)["status"]): value
        for labels, value in scrape.series("runs_finished_total").items()
        if value
    } == {
        ("scheduled", "completed"): 1,
        ("scheduled", "partial"): 1,
        ("scheduled", "failed"): 1,
        ("manual", "completed"): 1,
    }
    # Jobs of every run and the one by hand: 3 + 3 + 3 + 1 completed, 1 + 1 failed.
    assert {dict(labels)["status"]: v for labels, v in scrape.series("jobs_finished_total").items()} == {
        "completed": 10,
        "failed": 2,
        "skipped": 1,
    }
    assert {dict(labels)["status"]: v for labels, v in scrape.series("jobs_unfinished").items()} == {
        "pending": 2,
        "running": 1,
        "retrying": 1,
    }


def test_a_scheduled_run_past_its_deadline_and_a_completed_night(database):
    with db.session_scope() as session:
        run = _run(session, TriggerType.SCHEDULED, RunStatus.RUNNING, TONIGHT, slot=TONIGHT)
        _jobs(session, run, JobStatus.RUNNING, 2, memories_merged=3)
    scrape = Scrape()  # 8 hours after the start, the deadline is 30 minutes
    assert scrape("latest_run_status", trigger="scheduled", status="running") == 1
    assert scrape("latest_run_duration_seconds", trigger="scheduled") == 8 * 3600
    assert scrape("latest_run_memories_merged", trigger="scheduled") == 6
    assert scrape("open_run_age_seconds", trigger="scheduled") == 8 * 3600 > scrape("run_deadline_seconds")
    assert scrape("open_run_jobs", trigger="scheduled", status="running") == 2
    assert math.isinf(scrape("scheduled_run_last_completed_age_seconds"))
    assert scrape("health_status") == 2
    assert not scrape.has("latest_run_status", trigger="manual", status="running")

    with db.session_scope() as session:
        row = session.get_one(ConsolidationRun, run.id)
        row.status, row.finished_at = RunStatus.COMPLETED, TONIGHT + timedelta(minutes=20)
        row.jobs_total = row.jobs_completed = 2
        row.summary = {"duration_s": 1200.0, "jobs_skipped": 0}
        session.execute(
            update(ConsolidationJob).where(ConsolidationJob.run_id == run.id).values(status=JobStatus.COMPLETED)
        )
    scrape = Scrape()
    assert scrape("latest_run_duration_seconds", trigger="scheduled") == 20 * 60
    assert scrape("scheduled_run_last_completed_age_seconds") == (NOW - TONIGHT).total_seconds() - 20 * 60
    assert scrape("health_status") == 0
    assert scrape("open_runs", trigger="scheduled") == 0 and not scrape.series("open_run_age_seconds")
    assert scrape("runs_finished_total", trigger="scheduled", status="completed") == 1
    assert scrape("jobs_finished_total", status="completed") == 2
    assert scrape("jobs_unfinished", status="running") == 0


def _set_statuses(session, job_ids, statuses) -> None:
    for job_id, status in zip(job_ids, statuses, strict=True):
        session.execute(update(ConsolidationJob).where(ConsolidationJob.id == job_id).values(status=status))


def test_job_and_run_counters_equal_the_rows_through_the_real_run_lifecycle(database):
    """Finished runs' jobs are counted from what finalizing wrote on the run row; the
    rest (open runs, a run closed without a summary, jobs by hand) from the job rows.
    Together they must equal a plain count of the tables."""
    with db.session_scope() as session:
        seed(session, 6, 40, seed=3, dim=8)  # 4 eligible, 1 disabled, 1 under its threshold
        night = nightly_runs.start_run(session, TriggerType.SCHEDULED, TONIGHT, 10, TONIGHT)
        assert night is not None and len(night.job_ids) == 4
        _set_statuses(session, night.job_ids, [JobStatus.COMPLETED, JobStatus.SKIPPED, JobStatus.FAILED, "running"])
        nightly_runs.finalize(session, night.run_id, TONIGHT + timedelta(minutes=10))  # fails the running one
    with db.session_scope() as session:  # closed as a last resort: no summary, jobs left as they were
        broken = nightly_runs.start_run(session, TriggerType.MANUAL, None, 10, NOW - timedelta(hours=3))
        assert broken is not None
        _set_statuses(session, broken.job_ids, [JobStatus.COMPLETED, JobStatus.PENDING, "running", JobStatus.FAILED])
        assert nightly_runs.mark_failed(session, broken.run_id, "summary failed", NOW - timedelta(hours=2))
    with db.session_scope() as session:
        open_run = nightly_runs.start_run(session, TriggerType.MANUAL, None, 10, NOW - timedelta(minutes=5))
        assert open_run is not None
        _set_statuses(session, open_run.job_ids, ["retrying", "running", JobStatus.COMPLETED, JobStatus.PENDING])
        project_id = session.scalars(select(Project.id).limit(1)).one()
    manual_job(project_id, JobStatus.COMPLETED)
    manual_job(project_id, JobStatus.RUNNING)

    with db.session_scope() as session:
        jobs = dict(
            session.execute(select(ConsolidationJob.status, func.count()).group_by(ConsolidationJob.status)).all()
        )
        runs = {
            (trigger, status): number
            for trigger, status, number in session.execute(
                select(ConsolidationRun.trigger_type, ConsolidationRun.status, func.count()).group_by(
                    ConsolidationRun.trigger_type, ConsolidationRun.status
                )
            )
        }
    assert jobs == {"completed": 4, "failed": 3, "skipped": 1, "pending": 2, "running": 3, "retrying": 1}
    scrape = Scrape()
    assert {dict(labels)["status"]: v for labels, v in scrape.series("jobs_finished_total").items()} == {
        status: jobs.get(status, 0) for status in ("completed", "failed", "skipped")
    }
    assert {dict(labels)["status"]: v for labels, v in scrape.series("jobs_unfinished").items()} == {
        status: jobs.get(status, 0) for status in ("pending", "running", "retrying")
    }
    assert {
        (dict(labels)["trigger"], dict(labels)["status"]): v
        for labels, v in scrape.series("runs_finished_total").items()
        if v
    } == {key: n for key, n in runs.items() if key[1] != "running"}
    assert scrape("open_runs", trigger="manual") == runs[("manual", "running")] == 1
    assert {s: scrape("open_run_jobs", trigger="manual", status=s) for s in ("pending", "running", "retrying")} == {
        "pending": 1,
        "running": 1,
        "retrying": 1,
    }
    # The latest manual run is the open one: its counts from its rows.
    assert [scrape(f"latest_run_jobs{s}", trigger="manual") for s in ("", "_completed", "_failed")] == [4, 1, 0]
    assert scrape("latest_run_status", trigger="scheduled", status="failed") == 0
    assert scrape("latest_run_jobs_failed", trigger="scheduled") == 2


def test_project_counts_use_thresholds_and_pending_deltas(database):
    with db.session_scope() as session:
        _project(session, "over-default", 6)  # default threshold 5
        _project(session, "at-default", 5)
        _project(session, "over-own", 3, threshold=2)
        _project(session, "under-own", 8, threshold=10)
        _project(session, "over-own-with-deltas", 8, threshold=10, pending=(2, 1))  # 11 > 10
        _project(session, "under-default-after-deltas", 7, pending=(-3,))  # 4
        _project(session, "disabled", 100, threshold=1, enabled=False)
    scrape = Scrape()
    assert (scrape("projects"), scrape("projects_enabled"), scrape("projects_eligible")) == (7, 6, 3)
    higher = load_settings({"ORCHESTRATION_DEFAULT_THRESHOLD": "6"})
    assert Scrape(settings=higher)("projects_eligible") == 2  # "over-default" is no longer over
    with db.session_scope() as session:  # a read: nothing was folded
        assert session.scalar(select(func.count()).select_from(ProjectMemoryCountDelta)) == 3


def test_each_scrape_uses_a_registry_of_its_own(database):
    first, second = Scrape(), Scrape()
    assert first.text == second.text
    assert not [name for name in prometheus_client.REGISTRY._names_to_collectors if name.startswith(P)]


def test_a_scrape_reads_through_a_connection_that_cannot_write(database):
    """As the dashboard reads: PostgreSQL transactions READ ONLY, SQLite query_only."""
    _history()
    with db.session_scope() as session:
        _project(session, "with-deltas", 4, pending=(3,))
    previous = db.set_read_only(True)
    try:
        scrape = Scrape()
    finally:
        db.set_read_only(previous)
    assert scrape("projects_eligible") == 1 and scrape("health_status") == 1
    with db.session_scope() as session:  # the deltas were not folded
        assert session.scalar(select(func.count()).select_from(ProjectMemoryCountDelta)) == 1


def _documented() -> tuple[list[str], set[str]]:
    """The PromQL expressions of the alert rules in docs/metrics.md, and the metric
    names of its table; every YAML block there must parse."""
    markdown = DOCS.read_text()
    blocks = [yaml.safe_load(block) for block in re.findall(r"```yaml\n(.*?)```", markdown, re.DOTALL)]
    rules = [
        rule
        for block in blocks
        if isinstance(block, dict) and "groups" in block
        for group in block["groups"]
        for rule in group["rules"]
    ]
    table = set(re.findall(r"^\| `(orchestration_\w+)`", markdown, re.MULTILINE))
    return [rule["expr"] for rule in rules], table


def test_the_docs_name_only_metrics_render_metrics_emits(database):
    emitted = Scrape().names()  # empty: the +Inf age
    _history()
    emitted |= Scrape().names()  # every series that only a run or an open run has
    expressions, table = _documented()
    assert len(expressions) >= 4
    used = {name for expr in expressions for name in re.findall(r"\b(orchestration_\w+)", expr)}
    assert used and used <= emitted, f"alert rules use metrics that /metrics does not have: {used - emitted}"
    assert table == emitted, f"docs table vs /metrics: missing {emitted - table}, stale {table - emitted}"

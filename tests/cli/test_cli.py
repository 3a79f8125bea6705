import json
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from click.testing import CliRunner
from freezegun import freeze_time
from sqlalchemy import select, update

from orchestration.cli import main
from orchestration.nightly import runs
from orchestration.store import db
from orchestration.store.models import ConsolidationJob, ConsolidationRun, Project


def cli(*args, code=0):
    """Run the CLI in this process; stdout on success, the error line(s) otherwise."""
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == code, result.output
    if code:
        assert "Traceback" not in result.output
        errors = [line for line in result.stderr.splitlines() if not line.startswith("{")]
        return "\n".join(errors) if errors else result.stdout
    return result.stdout


def _seed():
    return json.loads(cli("seed", "--projects", "4", "--memories", "40", "--seed", "5", "--dim", "16", "--json"))


def test_db_upgrade_migrates_the_configured_database(tmp_path, settings_env):
    settings_env(database_url=f"sqlite:///{tmp_path}/new.db")
    db.use_database(None)
    try:
        assert "latest schema" in cli("db", "upgrade")
    finally:
        db.dispose()
    assert (tmp_path / "new.db").exists()


def test_seed_is_deterministic(sqlite_database, another_database_url):
    first = _seed()
    db.use_database(another_database_url)
    assert _seed() == first
    assert [m["kind"] for m in first] == ["eligible", "eligible", "disabled", "under_threshold"]


def test_consolidate_dry_run_then_real_then_rollback(sqlite_database):
    project = _seed()[0]
    dry = json.loads(cli("consolidate", project["id"], "--dry-run", "--json"))
    assert dry["status"] == "dry_run" and dry["clusters_found"] == len(project["groups"])
    job = json.loads(cli("consolidate", project["id"], "--json"))
    assert job["status"] == "completed" and job["trigger_type"] == "manual" and job["run_id"] is None
    assert (job["clusters_found"], job["memories_merged"], job["memories_archived"]) == (
        dry["clusters_found"],
        dry["memories_merged"],
        dry["memories_archived"],
    )
    shown = json.loads(cli("jobs", "show", job["id"][:8], "--json"))
    assert shown["changes"]["merge"] > 0 and shown["changes"]["archive"] == len(project["stale"])
    assert "audit rows: archive" in cli("jobs", "show", job["id"])
    assert "rolled back job" in cli("jobs", "rollback", job["id"])
    out = cli("jobs", "rollback", job["id"], code=1)
    assert out.strip() == f"Error: rollback refused: job {job['id']} was already rolled back"


def test_consolidate_text_output(sqlite_database):
    project = _seed()[0]
    out = cli("consolidate", project["id"], "--dry-run")
    assert out.startswith("dry run: project project-000-eligible") and "would merge" in out
    assert "value guard kept 0 similar pairs apart" in out


def test_similarity_report(sqlite_database):
    project = _seed()[0]
    dry = json.loads(cli("consolidate", project["id"], "--dry-run", "--json"))
    report = json.loads(cli("similarity", project["id"][:8], "--json"))
    assert set(report) == {
        "project_id", "memories", "compared", "skipped_invalid", "threshold", "value_guard",
        "nearest", "histogram", "thresholds", "above", "below",
    }  # fmt: skip
    assert report["project_id"] == project["id"] and report["memories"] == dry["memories_before"]
    assert list(report["nearest"]) == ["p10", "p25", "p50", "p75", "p90", "p99", "max"]
    assert sum(b["memories"] for b in report["histogram"]) == report["compared"]
    (current,) = [row for row in report["thresholds"] if row["threshold"] == report["threshold"]]
    assert (current["memories_merged"], current["clusters"]) == (dry["memories_merged"], dry["clusters_found"])
    merged = [row["memories_merged"] for row in report["thresholds"]]
    assert merged == sorted(merged, reverse=True) and len(merged) == 10  # fewer merge as the threshold rises
    out = cli("similarity", project["id"])
    assert "nearest-neighbour similarity: p10" in out and "0.90 *" in out and "pairs just below 0.90:" in out
    assert cli("similarity", str(uuid.uuid4()), code=1).startswith("Error: no project")


@pytest.mark.parametrize("case", ["unknown", "disabled", "malformed", "not-an-id"])
def test_consolidate_refuses_bad_input_with_one_line(sqlite_database, case):
    manifests = _seed()
    target = {
        "unknown": str(uuid.uuid4()),
        "disabled": manifests[2]["id"],
        "malformed": manifests[0]["id"],
        "not-an-id": "xyz",
    }[case]
    if case == "malformed":
        with db.session_scope() as session:
            session.execute(update(Project).values(consolidation_options={"similarity_threshold": 7}))
    out = cli("consolidate", target, code=1)
    assert len(out.strip().splitlines()) == 1
    assert {
        "unknown": "no project with id",
        "disabled": "use --force",
        "malformed": "consolidation_options.similarity_threshold",
        "not-an-id": "at least 4 characters",
    }[case] in out
    with db.session_scope() as session:
        assert session.scalar(select(ConsolidationJob)) is None  # nothing recorded, nothing changed


def test_disabled_project_with_force(sqlite_database):
    disabled = _seed()[2]
    assert json.loads(cli("consolidate", disabled["id"], "--force", "--json"))["status"] == "completed"


def _finished_run(slot, statuses=("completed",), age=timedelta(hours=1)):
    now = datetime.now(UTC)
    with db.session_scope() as session:
        started = runs.start_run(session, "scheduled", slot, 10, now=now - age)
        jobs = session.scalars(select(ConsolidationJob).where(ConsolidationJob.run_id == started.run_id)).all()
        for job, status in zip(jobs, statuses, strict=True):
            job.status = status
            job.error_message = "boom" if status == "failed" else None
        session.flush()
        return runs.finalize(session, started.run_id, now - age + timedelta(minutes=5)).id


def test_runs_list_and_show(sqlite_database):
    _seed()
    slot = datetime(2026, 11, 26, 2, tzinfo=UTC)
    run_id = _finished_run(slot, statuses=("failed", "completed"))
    listed = json.loads(cli("runs", "list", "--json"))
    assert [r["id"] for r in listed] == [str(run_id)] and listed[0]["status"] == "partial"
    assert json.loads(cli("runs", "list", "--status", "completed", "--json")) == []
    text = cli("runs", "list")
    assert str(run_id)[:8] in text and "partial" in text and all(len(line) <= 80 for line in text.splitlines())
    shown = json.loads(cli("runs", "show", str(run_id)[:6], "--json"))
    assert shown["jobs"][0]["status"] == "failed" and len(shown["jobs"]) == 2
    text = cli("runs", "show", str(run_id))
    assert "status: PARTIAL" in text and "boom" in text
    assert cli("runs", "show", "ffffffff", code=1).strip() == "Error: no run with id 'ffffffff'"


def test_health_exit_codes(sqlite_database, settings_env):
    _seed()
    assert cli("health", code=2).startswith("CRITICAL: no scheduled run")
    with freeze_time("2026-11-27 09:00:00"):
        slot = datetime(2026, 11, 27, 2, tzinfo=UTC)
        with db.session_scope() as session:
            run_id = runs.start_run(session, "scheduled", slot, 10, now=datetime(2026, 11, 27, 2, 1, tzinfo=UTC)).run_id
            for job in session.scalars(select(ConsolidationJob)):
                job.status = "completed"
            session.flush()
            runs.finalize(session, run_id, datetime(2026, 11, 27, 2, 5, tzinfo=UTC))
        doc = json.loads(cli("health", "--json"))
        assert doc["code"] == 0 and doc["run_id"] == str(run_id)
        assert cli("health", "--max-age", "2", code=2).startswith("CRITICAL")
    with freeze_time("2026-11-28 03:00:00"):  # beat missed the 2026-11-28 02:00 slot
        assert "missed slot 2026-11-28T02:00:00+00:00" in cli("health", code=2)
    with freeze_time("2026-11-27 09:00:00"):
        with db.session_scope() as session:
            session.execute(update(ConsolidationRun).values(status="partial", error_message="1 of 2 jobs failed"))
        assert cli("health", code=1).startswith("DEGRADED")
        with db.session_scope() as session:
            session.execute(update(ConsolidationRun).values(status="running", finished_at=None))
        # Started 02:01; the default deadline is 6 hours.
        assert "still running past the deadline of 21600s" in cli("health", code=2)
    with freeze_time("2026-11-27 03:00:00"):
        assert cli("health").startswith("OK: run")
        settings_env(run_deadline="1800")
        assert "past the deadline of 1800s" in cli("health", code=2)


def test_unreachable_database_is_one_line_with_the_password_masked(settings_env):
    settings_env(database_url="postgresql://orch:s3cret@127.0.0.1:1/orch")
    db.use_database(None)
    try:
        out = cli("runs", "list", code=1)
        health = cli("health", code=2)
    finally:
        db.dispose()
    for text in (out, health):
        assert len(text.strip().splitlines()) == 1
        assert "s3cret" not in text and "orch:***@127.0.0.1:1" in text


def test_run_now_through_the_broker(celery_worker, sqlite_database):
    _seed()
    out = cli("run-now", "--wait", "--timeout", "60")
    assert "manual  status: COMPLETED" in out
    assert out.splitlines()[0].endswith(" elapsed") and "2/2 jobs done" in out.splitlines()[0]  # progress, then summary
    slot = "2026-11-20T02:00:00Z"
    assert "status: COMPLETED" in cli("run-now", "--slot", slot, "--wait", "--timeout", "60")
    result = CliRunner().invoke(main, ["run-now", "--slot", slot, "--wait", "--timeout", "60"])
    assert result.exit_code == 0 and "already has run" in result.stderr
    with db.session_scope() as session:
        kinds = sorted(r.trigger_type for r in session.scalars(select(ConsolidationRun)))
    assert kinds == ["manual", "scheduled"]
    assert cli("run-now", "--slot", "yesterday", code=1).strip().startswith("Error: --slot 'yesterday'")


@pytest.mark.parametrize(("flags", "code", "status"), [((), 0, "COMPLETED"), (("--with-failure",), 1, "PARTIAL")])
def test_demo(tmp_path, flags, code, status):
    done = subprocess.run(
        [sys.executable, "-m", "orchestration.cli", "demo", *flags],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == code, done.stderr[-2000:]
    assert f"status: {status}" in done.stdout
    assert (tmp_path / "var" / "demo.db").exists()
    events = [json.loads(line)["event"] for line in done.stderr.splitlines() if line.startswith("{")]
    assert "run.finished" in events


def test_consolidate_reports_a_busy_project_as_one_line(sqlite_database):
    from orchestration.store.models import ProjectLock

    project = _seed()[0]
    with db.session_scope() as session:
        session.add(ProjectLock(project_id=uuid.UUID(project["id"]), holder="nightly-job#1"))
    out = cli("consolidate", project["id"], code=1)
    assert "is busy: job nightly-job is consolidating it" in out and len(out.splitlines()) == 1
    with db.session_scope() as session:
        assert session.scalar(select(ConsolidationJob)).status == "failed"


def _run_in_state(state: str, run_id: uuid.UUID | None = None) -> uuid.UUID:
    """A run with two jobs, in one of the states an operator can meet."""
    now = datetime.now(UTC)
    with db.session_scope() as session:
        if session.scalar(select(Project)) is None:
            session.add_all(
                [Project(name="alpha", consolidation_threshold=0), Project(name="beta", consolidation_threshold=0)]
            )
            session.flush()
        started = runs.start_run(session, "manual", None, 0, now=now - timedelta(hours=7), run_id=run_id)
        projects = session.scalars(select(Project).order_by(Project.name)).all()
        for index, project in enumerate(projects):
            job = ConsolidationJob(
                run_id=started.run_id,
                project_id=project.id,
                trigger_type="manual",
                status="pending",
                attempts=1,
                started_at=now - timedelta(hours=7),
            )
            session.add(job)
            job.status = {
                "completed": "completed",
                "partial": ("failed", "completed")[index],
                "failed": "failed",
                "running": ("running", "completed")[index],
                "reaped": ("running", "completed")[index],
            }[state]
            job.progress = 0.5 if job.status == "running" else 1.0
            job.error_message = "OperationalError: connection refused\nsecond line" if job.status == "failed" else None
        session.flush()
        if state in ("completed", "partial", "failed"):
            runs.finalize(session, started.run_id, now)
        elif state == "reaped":
            runs.finalize(session, started.run_id, now, unfinished_error="run deadline of 21600s passed")
        return started.run_id


@pytest.mark.parametrize("state", ["completed", "partial", "failed", "running", "reaped"])
def test_runs_show_and_list_in_every_state(sqlite_database, state):
    run_id = _run_in_state(state)
    status = {"reaped": "partial"}.get(state, state)
    doc = json.loads(cli("runs", "show", str(run_id), "--json"))
    assert doc["status"] == status and len(doc["jobs"]) == 2
    assert [j["status"] for j in doc["jobs"]][0] == (
        "failed" if status in ("partial", "failed") else doc["jobs"][0]["status"]
    )
    text = cli("runs", "show", str(run_id))
    assert f"status: {status.upper()}" in text
    assert all(len(line) <= 80 for line in text.splitlines())
    if state == "running":
        assert "50%" in text  # per-job progress of a running run
    if state in ("partial", "failed"):
        assert "OperationalError: connection refused" in text and "second line" not in text
    if state == "reaped":
        assert "run deadline of 21600s passed" in text
    listed = json.loads(cli("runs", "list", "--status", status, "--json"))
    assert [r["id"] for r in listed] == [str(run_id)]


def test_an_ambiguous_prefix_is_one_line(sqlite_database):
    _run_in_state("completed", uuid.UUID("abcd1111-0000-0000-0000-000000000000"))
    _run_in_state("completed", uuid.UUID("abcd2222-0000-0000-0000-000000000000"))
    assert cli("runs", "show", "abcd", code=1).strip() == (
        "Error: run id prefix 'abcd' is ambiguous; give more characters"
    )
    assert "abcd1111" in cli("runs", "show", "abcd1")
    assert cli("jobs", "show", "0000", code=1).strip() == "Error: no job with id '0000'"

import json
import subprocess
import sys
import types
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from click.testing import CliRunner
from freezegun import freeze_time
from sqlalchemy import select, update

from orchestration.cli import main
from orchestration.nightly import runs
from orchestration.nightly.schedule import parse_slot
from orchestration.store import db
from orchestration.store.models import ConsolidationJob, ConsolidationRun, Project
from orchestration.store.statuses import TriggerType


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
    assert "rolled back job" in cli("jobs", "rollback", job["id"], "--yes")
    out = cli("jobs", "rollback", job["id"], "--yes", code=1)
    assert out.strip().startswith(f"Error: rollback refused: job {job['id']} was already rolled back at ")


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
        "not-an-id": "no project named 'xyz'",
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
        with db.session_scope() as session:  # running, with a job that beat recently: not stuck
            session.execute(update(ConsolidationJob).values(heartbeat_at=datetime(2026, 11, 27, 2, 55, tzinfo=UTC)))
        assert cli("health").startswith("OK: run")
        settings_env(run_deadline="1800")
        assert "past the deadline of 1800s" in cli("health", code=2)


def test_unreachable_database_is_one_line_with_the_password_masked(settings_env):
    settings_env(database_url="postgresql://orch:s3cret@127.0.0.1:1/orch")
    db.use_database(None)
    try:
        out = cli("runs", "list", code=2)
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
                [Project(name="alpha", consolidation_threshold=1), Project(name="beta", consolidation_threshold=1)]
            )
            session.flush()
        started = runs.start_run(session, TriggerType.MANUAL, None, 1, now=now - timedelta(hours=7), run_id=run_id)
        assert started is not None
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
    if state in ("partial", "failed"):  # error texts are printed whole
        assert "    OperationalError: connection refused\n    second line" in text
    if state == "reaped":
        assert "run deadline of 21600s passed" in text
    listed = json.loads(cli("runs", "list", "--status", status, "--json"))
    assert [r["id"] for r in listed] == [str(run_id)]


def test_an_ambiguous_prefix_is_one_line(sqlite_database):
    _run_in_state("completed", uuid.UUID("abcd1111-0000-0000-0000-000000000000"))
    _run_in_state("completed", uuid.UUID("abcd2222-0000-0000-0000-000000000000"))
    assert cli("runs", "show", "abcd", code=1).strip() == (
        "Error: run id prefix 'abcd' is ambiguous: abcd1111-0000-0000-0000-000000000000, "
        "abcd2222-0000-0000-0000-000000000000; give more characters"
    )
    assert "abcd1111" in cli("runs", "show", "abcd1")
    assert cli("jobs", "show", "0000", code=1).strip() == "Error: no job with id '0000'"


def test_consolidate_plain_text_form_after_applying_the_job(database):
    project = _seed()[0]
    out = cli("consolidate", project["id"])
    with db.session_scope() as session:
        job = session.scalar(select(ConsolidationJob))
    assert job.status == "completed" and job.trigger_type == "manual" and job.clusters_found > 0
    assert out.splitlines() == [
        f"job {job.id}: project {project['name']} ({project['id']})",
        f"  active memories {job.memories_before} -> {job.memories_after}",
        f"  did merge {job.memories_merged} memories into {job.clusters_found} consolidated",
        f"  did archive {job.memories_archived} stale memories",
        f"  pass: full (no earlier completed pass), {job.memories_before} memories compared",
    ]


def test_consolidate_again_makes_an_incremental_pass_unless_full_is_asked_for(database):
    """README: the second consolidation of a project compares only what is new since the
    first; --full compares everything again, and the dry run says which it would do."""
    project = _seed()[0]
    first = json.loads(cli("consolidate", project["id"], "--json"))
    dry = json.loads(cli("consolidate", project["id"], "--dry-run", "--json"))
    # New to it: the consolidated memories the first pass wrote, one per cluster.
    assert (dry["mode"], dry["memories_new"], dry["full_reason"]) == ("incremental", first["clusters_found"], None)
    second = cli("consolidate", project["id"]).splitlines()
    assert f"  pass: incremental, {first['clusters_found']} new memories compared with the others" in second
    assert "  pass: incremental, 0 new memories compared with the others" in cli("consolidate", project["id"])
    again = json.loads(cli("consolidate", project["id"], "--full", "--json"))
    assert (again["mode"], again["full_reason"]) == ("full", "requested (--full)")
    assert again["memories_new"] == again["memories_before"]
    with db.session_scope() as session:
        modes = [j.mode for j in session.scalars(select(ConsolidationJob).order_by(ConsolidationJob.created_at))]
    assert modes == ["full", "incremental", "incremental", "full"]


class _Sent:
    """Stands in for the ``run_scheduled`` task: records the messages run-now sends."""

    def __init__(self):
        self.messages = []

    def apply_async(self, *, kwargs):
        self.messages.append(kwargs)


@pytest.fixture
def sent(monkeypatch):
    """run-now's ``from orchestration.worker.tasks import run_scheduled`` gets a _Sent."""
    task = _Sent()
    monkeypatch.setitem(sys.modules, "orchestration.worker.tasks", types.SimpleNamespace(run_scheduled=task))
    return task.messages


@pytest.fixture
def clock(monkeypatch):
    """Set the commands' ``now`` (not freezegun: its frozen clock would reach the
    session's in-process Celery worker thread too, whose timers then never fire)."""
    from orchestration.cli import admin, running

    def set_now(value: str) -> None:
        for module in (admin, running):
            monkeypatch.setattr(module, "utcnow", lambda: datetime.fromisoformat(value))

    return set_now


@pytest.mark.parametrize("backfill", [(), ("--backfill",)])
def test_run_now_refuses_a_slot_in_the_future_before_sending_anything(sqlite_database, sent, clock, backfill):
    clock("2026-11-27T09:00:00+00:00")
    for slot in ("2026-11-28T02:00:00Z", "2026-11-27T09:01:00+00:00", "2026-11-27T10:30:00+01:00"):
        out = cli("run-now", "--slot", slot, *backfill, code=1)
        assert out.strip() == (
            f"Error: slot {parse_slot(slot).isoformat()} is in the future; "
            "the schedule's latest slot is 2026-11-27T02:00:00+00:00"
        )
    assert sent == []
    with db.session_scope() as session:
        assert session.scalar(select(ConsolidationRun)) is None


def test_run_now_refuses_a_slot_off_the_schedule_unless_backfill(sqlite_database, sent, clock):
    clock("2026-11-27T09:00:00+00:00")
    out = cli("run-now", "--slot", "2026-11-27T02:07:00Z", code=1)
    assert out.strip() == (
        "Error: slot 2026-11-27T02:07:00+00:00 is not on the schedule (in UTC); the nearest slots are "
        "2026-11-27T02:00:00+00:00 (before) and 2026-11-28T02:00:00+00:00 (after); use --backfill to run it anyway"
    )
    assert sent == []
    assert "sent scheduled run for slot 2026-11-27T02:07:00+00:00" in cli(
        "run-now", "--slot", "2026-11-27T02:07:00Z", "--backfill"
    )
    cli("run-now", "--slot", "2026-11-27T02:00:00Z")
    # The task gets the flag as a keyword, and only when it is given.
    assert sent == [
        {"slot": "2026-11-27T02:07:00+00:00", "backfill": True},
        {"slot": "2026-11-27T02:00:00+00:00"},
    ]


def test_run_now_backfill_needs_a_slot(sqlite_database, sent):
    out = cli("run-now", "--backfill", code=2)
    assert out.strip() == "Error: --backfill needs --slot: it lets a past slot off the schedule run"
    assert sent == []


def test_run_now_reads_slots_in_the_schedule_zone(sqlite_database, sent, settings_env, clock):
    settings_env(schedule="30 1 * * *", timezone="America/New_York")
    clock("2026-11-02T12:00:00+00:00")
    # 01:30 happened twice on 2026-11-01: the first (EDT) is the slot, the second is not.
    out = cli("run-now", "--slot", "2026-11-01T01:30:00-05:00", code=1)
    assert "not on the schedule (in America/New_York)" in out and "2026-11-01T01:30:00-04:00 (before)" in out
    cli("run-now", "--slot", "2026-11-01T01:30:00-04:00")
    assert "in the future" in cli("run-now", "--slot", "2026-11-03T01:30:00-05:00", code=1)
    assert sent == [{"slot": "2026-11-01T05:30:00+00:00"}]


EVIL_NAME = "\x1b[2J\x1b[31mpwned\x9b1m\u202e"
EVIL_ERROR = "\x1b[2JOperationalError: boom\rforged line\x07\nsecond line"
CONTROLS = ("\x1b", "\r", "\x07", "\x9b", "\u202e")


def _assert_no_controls(text):
    assert not [c for c in CONTROLS if c in text], repr(text)


def test_text_output_shows_control_characters_escaped(sqlite_database):
    run_id = _run_in_state("partial")  # alpha's job failed, beta's completed
    with db.session_scope() as session:
        session.execute(update(Project).where(Project.name == "alpha").values(name=EVIL_NAME))
        failed = session.scalar(select(ConsolidationJob).where(ConsolidationJob.status == "failed"))
        failed.error_message = EVIL_ERROR
        failed.triggered_by = "\x1b]0;title\x07mallory"
        job_id = failed.id
    text = cli("runs", "show", str(run_id))
    _assert_no_controls(text)
    assert "\\x1b[2J\\x1b[31mpwned" in text and "\\x1b[2JOperationalError: boom\\rforged line\\x07" in text
    assert "\n    second line" in text and all(len(line) <= 80 for line in text.splitlines())
    text = cli("jobs", "show", str(job_id))
    _assert_no_controls(text)
    assert "project \\x1b[2J\\x1b[31mpwned\\x9b1m\\u202e (" in text and "by \\x1b]0;title\\x07mallory" in text
    assert "error: \\x1b[2JOperationalError: boom\\rforged line\\x07" in text
    # --json escapes them itself: no raw control character, the stored text exactly.
    for args in (("runs", "show", str(run_id)), ("jobs", "show", str(job_id)), ("runs", "list")):
        raw = cli(*args, "--json")
        _assert_no_controls(raw)
    shown = json.loads(cli("jobs", "show", str(job_id), "--json"))
    assert (shown["project_name"], shown["error_message"]) == (EVIL_NAME, EVIL_ERROR)
    assert json.loads(cli("runs", "show", str(run_id), "--json"))["jobs"][0]["project_name"] == EVIL_NAME


def test_consolidate_and_errors_show_control_characters_escaped(sqlite_database):
    from orchestration.store.models import ProjectLock

    project = _seed()[0]
    with db.session_scope() as session:
        session.execute(update(Project).where(Project.id == uuid.UUID(project["id"])).values(name=EVIL_NAME))
    for args in (("--dry-run",), ()):
        out = cli("consolidate", project["id"], *args)
        _assert_no_controls(out)
        assert f"project \\x1b[2J\\x1b[31mpwned\\x9b1m\\u202e ({project['id']})" in out.splitlines()[0]
    with db.session_scope() as session:
        session.add(ProjectLock(project_id=uuid.UUID(project["id"]), holder="\x1b[2J\x1b[31mnightly\x07job#1"))
    result = CliRunner().invoke(main, ["consolidate", project["id"]])
    assert result.exit_code == 1
    _assert_no_controls(result.output)
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "job \\x1b[2J\\x1b[31mnightly\\x07job is consolidating it" in errors[0]


def test_health_text_shows_control_characters_escaped(sqlite_database, clock):
    _seed()
    clock("2026-11-27T09:00:00+00:00")
    with db.session_scope() as session:
        run_id = runs.start_run(
            session,
            "scheduled",
            datetime(2026, 11, 27, 2, tzinfo=UTC),
            10,
            now=datetime(2026, 11, 27, 2, 1, tzinfo=UTC),
        ).run_id
        runs.finalize(session, run_id, datetime(2026, 11, 27, 2, 5, tzinfo=UTC))
        session.execute(update(ConsolidationRun).values(status="partial", error_message=EVIL_ERROR))
    out = cli("health", code=1)
    raw = cli("health", "--json", code=1)
    _assert_no_controls(out)
    _assert_no_controls(raw)
    doc = json.loads(raw)
    assert out.startswith("DEGRADED: run") and len(out.strip().splitlines()) == 1
    assert out.strip().endswith("partial: \\x1b[2JOperationalError: boom\\rforged line\\x07\\nsecond line")
    assert doc["message"].endswith(EVIL_ERROR)


def test_run_now_checks_the_database_before_it_sends_anything(tmp_path, settings_env, sent, monkeypatch):
    """A missing database stops run-now with one line and nothing reaches the broker
    (a worker elsewhere would otherwise run what the operator was told failed)."""
    monkeypatch.chdir(tmp_path)
    settings_env(database_url=f"sqlite:///{tmp_path}/var/none.db")
    db.use_database(None)
    try:
        assert "no database at" in cli("run-now", code=2)
        assert "no database at" in cli("run-now", "--wait", "--timeout", "1", code=2)
    finally:
        db.dispose()
    assert sent == []


def test_run_now_for_a_claimed_slot_does_not_say_it_sent_one(sqlite_database, sent):
    _seed()
    slot = "2026-11-20T02:00:00+00:00"
    with db.session_scope() as session:
        runs.start_run(session, "scheduled", datetime.fromisoformat(slot), 10, datetime.fromisoformat(slot))
    result = CliRunner().invoke(main, ["run-now", "--slot", slot])
    assert result.exit_code == 0 and "already has run" in result.stderr and "sent" not in result.stdout
    assert sent == []


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["jobs", "list", "--project", ""], "no project given"),
        (["runs", "list", "--project", "  "], "no project given"),
        (["runs", "list", "--since", ""], "--since"),
    ],
)
def test_an_empty_filter_is_an_error_not_no_filter(sqlite_database, args, expected):
    _seed()
    assert expected in cli(*args, code=1)


def test_a_huge_limit_is_refused_as_input(sqlite_database):
    result = CliRunner().invoke(main, ["jobs", "list", "--limit", "99999999999999999999"])
    assert result.exit_code == 2 and "Traceback" not in result.output and "database error" not in result.output

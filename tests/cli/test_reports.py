"""Formatting for people and scripts: tables, durations, the run summary text."""

import json
import uuid
from datetime import UTC, datetime, timedelta

from orchestration.cli import reports
from orchestration.documents.runs import run_document
from orchestration.store.statuses import RunStatus

T0 = datetime(2026, 11, 27, 2, tzinfo=UTC)


def test_table_aligns_columns_and_shows_none_as_blank():
    out = reports.table(["a", "long header"], [("x", None), ("wider", 3)])
    assert out.splitlines() == ["a      long header", "-----  -----------", "x", "wider  3"]


def test_duration_reads_at_every_scale():
    assert reports.duration(T0, None) == "-"
    assert reports.duration(T0, T0 + timedelta(seconds=2.34)) == "2.3s"
    assert reports.duration(T0, T0 + timedelta(seconds=125)) == "2m05s"
    assert reports.duration(T0, T0 + timedelta(hours=3, minutes=7)) == "3h07m"


def test_dumps_turns_ids_times_and_enums_into_json():
    run_id = uuid.uuid4()
    document = json.loads(reports.dumps({"id": run_id, "at": T0, "status": RunStatus.PARTIAL, "jobs": [(1, T0)]}))
    assert document == {"id": str(run_id), "at": T0.isoformat(), "status": "partial", "jobs": [[1, T0.isoformat()]]}


def test_runs_table_fits_80_columns_and_shows_every_runs_start():
    run = {
        "id": str(uuid.uuid4()), "scheduled_for": None, "trigger_type": "scheduled", "status": "completed",
        "jobs_completed": 998, "jobs_failed": 2, "jobs_total": 1000, "memories_merged": 123456,
        "memories_archived": 65432, "started_at": T0.isoformat(),
    }  # fmt: skip
    lines = reports.runs_table([run, {**run, "trigger_type": "manual"}]).splitlines()
    assert all(len(line) <= 80 for line in lines)
    assert lines[2].split() == [
        run["id"][:8],
        "2026-11-27",
        "02:00",
        "scheduled",
        "completed",
        "998/2/1000",
        "123456",
        "65432",
    ]
    assert lines[3].split()[1:4] == ["2026-11-27", "02:00", "manual"]


def _run_document(**overrides):
    job = {
        "id": str(uuid.uuid4()), "project_name": "payments-service-with-a-long-name",
        "project_id": str(uuid.uuid4()), "status": "failed",
        "attempts": 4, "started_at": T0.isoformat(), "completed_at": (T0 + timedelta(seconds=3)).isoformat(),
        "memories_merged": 0, "memories_archived": 0, "progress": 0.4,
        "error_message": "OperationalError: server closed the connection unexpectedly " + "x" * 100,
    }  # fmt: skip
    document = {
        "id": str(uuid.uuid4()), "trigger_type": "scheduled", "status": "partial", "scheduled_for": T0.isoformat(),
        "started_at": T0.isoformat(), "finished_at": (T0 + timedelta(seconds=65)).isoformat(),
        "projects_checked": 10, "projects_eligible": 2, "projects_skipped": 1, "jobs_completed": 1,
        "jobs_failed": 1, "jobs_total": 2, "memories_before": 200, "memories_after": 150, "memories_merged": 60,
        "memories_archived": 10, "error_message": "1 of 2 jobs failed", "jobs": [job],
    }  # fmt: skip
    return {**document, **overrides}


def test_run_text_says_status_totals_and_each_failed_jobs_error_within_80_columns():
    document = _run_document()
    text = reports.run_text(document)
    lines = text.splitlines()
    assert lines[0].endswith("scheduled  status: PARTIAL") and "took 1m05s" in lines[1]
    assert "jobs: 1 completed, 1 failed, 2 total" in text and "memories: 200 -> 150 active, 60 merged" in text
    job = document["jobs"][0]
    assert "errors:" in lines and any(
        line.startswith("  job ") and "payments-service-with-a-long-name" in line for line in lines
    )
    whole = "failed after 4 attempts: OperationalError: server closed the connection unexpectedly " + "x" * 100
    assert "".join(whole.split()) in "".join(text.split())  # wrapped (a long word too), never cut
    assert all(len(line) <= 80 for line in lines)
    table = text.split("errors:")[0]  # a long name is shortened in the table, where its id tells it apart
    assert job["project_name"] not in table and f"…  {job['project_id'][:8]}  failed" in table


def test_run_text_without_jobs_has_no_table():
    text = reports.run_text(_run_document(jobs=[], error_message=None, status="completed"))
    assert "status: COMPLETED" in text and "errors:" not in text
    assert len(text.splitlines()) == 6  # the summary lines only: no job table


def test_clean_escapes_control_characters_visibly():
    from orchestration.cli.text import clean

    assert clean("plain name, ünïcode — fine") == "plain name, ünïcode — fine"
    assert clean("\x1b[2J\x1b[31mred\x07") == "\\x1b[2J\\x1b[31mred\\x07"
    assert clean("a\rb\nc\td\x00\x7f") == "a\\rb\\nc\\td\\x00\\x7f"
    assert (
        clean("csi\x9b2J nel\x85 rtl\u202eevil\u2066 ls\u2028") == "csi\\x9b2J nel\\x85 rtl\\u202eevil\\u2066 ls\\u2028"
    )
    # Multi-line text keeps its newlines and tabs; ESC and carriage returns never pass.
    assert clean("first\n\tsecond\r\x1b[1A", multiline=True) == "first\n\tsecond\\r\\x1b[1A"
    assert clean(None) == "None" and clean(42) == "42"


def test_run_and_job_text_escape_values_from_the_database():
    evil = "\x1b[2Jx\x9b"
    document = _run_document(trigger_type=evil, error_message=f"{evil}\rrest\nsecond line")
    document["jobs"][0].update(project_name=evil, error_message=f"{evil} boom")
    text = reports.run_text(document)
    assert "\x1b" not in text and "\x9b" not in text and "\r" not in text
    assert "error: \\x1b[2Jx\\x9b\\rrest" in text and "\n    \\x1b[2Jx\\x9b boom" in text
    assert "  \\x1b[2Jx\\x9b (" in text and "         second line" in text
    assert all(len(line) <= 80 for line in text.splitlines())
    table = reports.table(["name"], [(evil,)])
    assert table.splitlines()[2] == "\\x1b[2Jx\\x9b"


def test_the_run_text_shows_its_links_and_notes(sqlite_database):
    """A retry's link both ways, lost messages and a schedule mismatch, as the summary keeps them."""
    from orchestration.demo.seed import seed
    from orchestration.nightly import runs
    from orchestration.store import db

    with db.session_scope() as session:
        seed(session, 2, 40, seed=1, dim=8)
        notes = {
            "retry_of": "11111111-2222-3333-4444-555555555555",
            "retried_by": ["66666666-7777-8888-9999-000000000000"],
            "messages_lost_at": T0.isoformat(),
            "schedule_mismatch": {"beat": "30 3 * * * UTC", "worker": "0 2 * * * UTC"},
        }
        started = runs.start_run(session, "scheduled", T0, 10, T0, notes=notes)
        runs.finalize(session, started.run_id, T0 + timedelta(minutes=1))
    text = reports.run_text(run_document(started.run_id))
    assert "retry of run 11111111-2222-3333-4444-555555555555" in text
    assert "retried by run 66666666-7777-8888-9999-000000000000" in text
    assert "the broker lost messages of this run" in text
    assert "beat's schedule 30 3 * * * UTC differs from the worker's 0 2 * * * UTC" in text

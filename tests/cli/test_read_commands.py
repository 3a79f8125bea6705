"""The operator's read commands (issue 23): ``runs list``/``show``, ``jobs list``/``show``,
``projects list``/``show``, and PROJECT given as an id, id prefix or name everywhere."""

import json
import re
import shutil
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from click.testing import CliRunner
from sqlalchemy import select, update

from orchestration.cli import main
from orchestration.store import db
from orchestration.store.models import ConsolidationJob, ConsolidationRun, Project, TaskMemory

T0 = datetime(2026, 11, 20, 2, tzinfo=UTC)
LONG_ERROR = (
    "OperationalError: (psycopg.OperationalError) connection to server at 10.0.0.7, port 5432 failed: "
    + " ".join(f"word{i:03d}" for i in range(60))
    + "\nTraceback line two: the end of the story"
)


@pytest.fixture(autouse=True)
def columns(monkeypatch):
    """Text output as at an 80-column terminal, or piped (80 when there is none)."""
    monkeypatch.setenv("COLUMNS", "80")


def cli(*args, code=0):
    """Run the CLI in this process; stdout on success, stderr's error line otherwise."""
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == code, result.output
    if code:
        assert "Traceback" not in result.output
        return "\n".join(line for line in result.stderr.splitlines() if not line.startswith("{"))
    return result.stdout


def cli_json(*args):
    return json.loads(cli(*args, "--json"))


def _project(name, threshold=None, enabled=True, memories=0, options=None, project_id=None):
    with db.session_scope() as session:
        project = Project(
            id=project_id or uuid.uuid4(),
            name=name,
            consolidation_threshold=threshold,
            consolidation_enabled=enabled,
            consolidation_options=options,
        )
        session.add(project)
        session.flush()
        session.add_all(
            TaskMemory(project_id=project.id, memory_type="learning", content=f"{name} memory {i}")
            for i in range(memories)
        )
    return project


def _run(started=T0, status="completed", trigger="scheduled", run_id=None, **counters):
    with db.session_scope() as session:
        run = ConsolidationRun(
            id=run_id or uuid.uuid4(),
            trigger_type=trigger,
            scheduled_for=started if trigger == "scheduled" else None,
            status=status,
            started_at=started,
            finished_at=None if status == "running" else started + timedelta(minutes=5),
            **counters,
        )
        session.add(run)
    return run


def _job(project, run=None, status="completed", created=T0, **values):
    finished = status in ("completed", "failed", "skipped")
    fields = {
        "attempts": 1,
        "started_at": created + timedelta(seconds=1),
        "completed_at": created + timedelta(seconds=43) if finished else None,
        "progress": 1.0 if finished else 0.5,
        **values,
    }
    with db.session_scope() as session:
        job = ConsolidationJob(
            run_id=run.id if run else None,
            project_id=project.id,
            trigger_type=run.trigger_type if run else "manual",
            triggered_by="system" if run else "alice",
            status=status,
            created_at=created,
            **fields,
        )
        session.add(job)
    return job


def _lines_within(text, width=80):
    return all(len(line) <= width for line in text.splitlines())


# --- runs show -------------------------------------------------------------------


def test_runs_show_tells_jobs_of_same_named_projects_apart(database):
    first, second = _project("twin"), _project("twin")
    run = _run(jobs_total=2, jobs_completed=2)
    jobs = [_job(first, run), _job(second, run)]
    text = cli("runs", "show", str(run.id))
    table = text.splitlines()[text.splitlines().index("") + 1 :]
    assert table[0].split() == ["job", "project", "id", "status", "tries", "took", "merged", "archived"]
    rows = {line.split()[0]: line.split() for line in table[2:]}
    assert set(rows) == {str(j.id)[:8] for j in jobs}
    assert {row[2] for row in rows.values()} == {str(first.id)[:8], str(second.id)[:8]}
    assert all(row[1] == "twin" and row[3] == "completed" and row[5] == "42.0s" for row in rows.values())
    doc = cli_json("runs", "show", str(run.id))
    assert {(j["id"], j["project_id"], j["project_name"]) for j in doc["jobs"]} == {
        (str(j.id), str(p.id), "twin") for j, p in zip(jobs, (first, second), strict=True)
    }
    assert [j["duration_s"] for j in doc["jobs"]] == [42.0, 42.0]


@pytest.mark.parametrize("width", [80, 60, 132])
def test_runs_show_prints_every_error_whole_wrapped_to_the_terminal(sqlite_database, monkeypatch, width):
    monkeypatch.setenv("COLUMNS", str(width))
    name = "payments-service-with-a-rather-long-name"
    project, other = _project(name), _project("other")
    run = _run(status="partial", jobs_total=2, jobs_completed=1, jobs_failed=1, error_message=LONG_ERROR)
    failed = _job(project, run, status="failed", attempts=4, error_message=LONG_ERROR)
    _job(other, run)
    text = cli("runs", "show", str(run.id))
    lines = text.splitlines()
    assert _lines_within(text.split("errors:")[1], width)
    assert _lines_within(text, width) or width < 80  # the job table needs 80 columns
    # The whole text, in order, both times: under "error:" in the header and under its job.
    words = LONG_ERROR.split()
    assert " ".join(text.split()).count(" ".join(words)) == 2
    heading = lines.index("errors:") + 1
    flat = " ".join(text.split())
    assert (
        f"errors: job {str(failed.id)[:8]} {name} ({str(project.id)[:8]}) failed after 4 attempts: Operational" in flat
    )
    assert lines[heading].startswith(f"  job {str(failed.id)[:8]}  {name}")
    assert any(line.startswith("    OperationalError: (psycopg.OperationalError)") for line in lines[heading:])
    assert lines[-1].strip() == "Traceback line two: the end of the story"
    assert "…" not in "\n".join(lines[heading:])


def test_runs_show_wraps_but_never_cuts_when_piped(sqlite_database, monkeypatch):
    monkeypatch.delenv("COLUMNS")  # CliRunner's output is no terminal: 80 columns (pytest -s: this one's)
    project = _project("p")
    unbroken = "x" * 300
    run = _run(status="failed", jobs_total=1, jobs_failed=1)
    _job(project, run, status="failed", error_message=unbroken)
    text = cli("runs", "show", str(run.id))
    width = shutil.get_terminal_size((80, 24)).columns
    assert _lines_within(text, width) and "".join(text.split("errors:")[1].split()).endswith(unbroken)


def test_runs_show_of_an_open_run_counts_from_the_job_rows(database):
    alpha, beta, gamma, delta = (_project(n) for n in ("alpha", "beta", "gamma", "delta"))
    run = _run(status="running", trigger="manual", jobs_total=4)  # counters are written at the end
    _job(alpha, run, memories_before=100, memories_after=70, memories_merged=25, memories_archived=10, clusters_found=5)
    _job(beta, run, status="failed", memories_before=50, memories_after=50, error_message="boom")
    _job(gamma, run, status="running", memories_before=40, memories_merged=6, clusters_found=2, memories_archived=1)
    _job(delta, run, status="pending", attempts=0, started_at=None, progress=0.0)
    doc = cli_json("runs", "show", str(run.id))
    assert doc["counters_from"] == "jobs"
    assert {k: doc[k] for k in ("jobs_total", "jobs_completed", "jobs_failed")} == {
        "jobs_total": 4,
        "jobs_completed": 1,
        "jobs_failed": 1,
    }
    # gamma so far: 40 - 6 merged - 1 archived + 2 consolidated = 35; delta has not started.
    assert (doc["memories_before"], doc["memories_after"]) == (190, 70 + 50 + 35)
    assert (doc["memories_merged"], doc["memories_archived"]) == (31, 11)
    text = cli("runs", "show", str(run.id))
    assert "jobs: 1 completed, 1 failed, 4 total  (so far, from the job rows)" in text
    assert "memories: 190 -> 155 active, 31 merged, 11 archived" in text
    assert "status: RUNNING" in text and "running 50%" in text and "running for" in text
    finished = _run(started=T0 - timedelta(days=1), jobs_total=9, jobs_completed=9, memories_merged=3)
    _job(alpha, finished, memories_merged=99)
    doc = cli_json("runs", "show", str(finished.id))
    assert (doc["counters_from"], doc["jobs_total"], doc["memories_merged"]) == ("run", 9, 3)  # the row's own


def test_runs_show_marks_a_rolled_back_job(sqlite_database):
    project = _project("alpha")
    run = _run(jobs_total=1, jobs_completed=1)
    job = _job(project, run, rolled_back_at=T0 + timedelta(hours=5), rolled_back_by="\x1b[31mbob")
    text = cli("runs", "show", str(run.id))
    row = next(line for line in text.splitlines() if line.startswith(str(job.id)[:8]))
    assert "rolled back" in row
    section = text.split("rolled back:\n")[1]  # wrapped at 80 columns
    assert section.startswith(f"  job {str(job.id)[:8]}  alpha ({str(project.id)[:8]})  rolled back")
    assert " ".join(section.split()).endswith("rolled back 2026-11-20T07:00:00Z by \\x1b[31mbob")
    (shown,) = cli_json("runs", "show", str(run.id))["jobs"]
    assert (shown["status"], shown["rolled_back_by"]) == ("completed", "\x1b[31mbob")
    assert shown["rolled_back_at"] == (T0 + timedelta(hours=5)).isoformat()


# --- runs list -------------------------------------------------------------------


def test_runs_list_shows_start_times_and_filters(database):
    alpha, beta = _project("alpha"), _project("beta")
    old = _run(started=T0 - timedelta(days=2), jobs_total=1, jobs_completed=1)
    manual = _run(started=T0 - timedelta(days=1, hours=-9), trigger="manual", status="failed", jobs_total=1)
    new = _run(started=T0, status="partial", jobs_total=2, jobs_completed=1, jobs_failed=1)
    _job(alpha, old)
    _job(beta, manual, status="failed")
    _job(alpha, new)
    _job(beta, new, status="failed")
    text = cli("runs", "list")
    lines = text.splitlines()
    assert lines[0].split() == ["run", "started", "(UTC)", "trigger", "status", "ok/fail/all", "merged", "archived"]
    assert [line.split()[:5] for line in lines[2:]] == [
        [str(new.id)[:8], "2026-11-20", "02:00", "scheduled", "partial"],
        [str(manual.id)[:8], "2026-11-19", "11:00", "manual", "failed"],
        [str(old.id)[:8], "2026-11-18", "02:00", "scheduled", "completed"],
    ]
    assert _lines_within(text)

    def ids(*args):
        return [r["id"][:8] for r in cli_json("runs", "list", *args)]

    assert ids() == [str(r.id)[:8] for r in (new, manual, old)]
    assert ids("--trigger", "manual") == [str(manual.id)[:8]]
    assert ids("--trigger", "scheduled", "--limit", "1") == [str(new.id)[:8]]
    assert ids("--status", "completed") == [str(old.id)[:8]]
    assert ids("--since", "2026-11-19") == [str(new.id)[:8], str(manual.id)[:8]]
    assert ids("--since", "2026-11-19T11:00") == [str(new.id)[:8], str(manual.id)[:8]]  # naive is UTC
    assert ids("--since", "2026-11-19T12:00:01+01:00") == [str(new.id)[:8]]
    assert ids("--project", "alpha") == [str(new.id)[:8], str(old.id)[:8]]
    assert ids("--project", str(beta.id)[:6], "--status", "failed") == [str(manual.id)[:8]]
    assert cli("runs", "list", "--project", "alpha", "--trigger", "manual") == "no runs match\n"
    assert cli("runs", "list", "--since", "last tuesday", code=1) == (
        "Error: --since 'last tuesday' is not an ISO 8601 date or date-time, e.g. 2026-11-27"
    )
    assert cli("runs", "list", "--project", "alpah", code=1) == "Error: no project named 'alpah'; did you mean: alpha?"


def test_runs_list_counts_an_open_run_from_its_jobs(database):
    alpha, beta = _project("alpha"), _project("beta")
    run = _run(status="running", jobs_total=2)
    _job(alpha, run, memories_merged=12, memories_archived=3)
    _job(beta, run, status="running")
    (doc,) = cli_json("runs", "list")
    assert (doc["jobs_completed"], doc["jobs_failed"], doc["jobs_total"], doc["memories_merged"]) == (1, 0, 2, 12)
    assert doc["counters_from"] == "jobs"
    assert cli("runs", "list").splitlines()[2].split()[5:] == ["1/0/2", "12", "3"]


# --- jobs list and show ----------------------------------------------------------


def test_jobs_list_newest_first_with_filters(database):
    alpha, beta = _project("alpha"), _project("beta")
    run = _run()
    older = _job(alpha, run, created=T0)
    failed = _job(beta, run, status="failed", attempts=4, created=T0 + timedelta(seconds=1), error_message=LONG_ERROR)
    manual = _job(alpha, status="completed", created=T0 + timedelta(hours=3), memories_merged=7)
    text = cli("jobs", "list")
    lines = text.splitlines()
    assert lines[0].split() == [
        "job", "project", "run", "status", "tries", "started", "(UTC)", "took", "merged", "archived", "error",
    ]  # fmt: skip
    rows = [line.split() for line in lines[2:]]
    assert [row[:5] for row in rows] == [
        [str(manual.id)[:8], "alpha", "manual", "completed", "1"],
        [str(failed.id)[:8], "beta", str(run.id)[:8], "failed", "4"],
        [str(older.id)[:8], "alpha", str(run.id)[:8], "completed", "1"],
    ]
    assert rows[0][5:10] == ["2026-11-20", "05:00", "42.0s", "7", "0"]
    assert (
        lines[3].endswith("OperationalError: (psycopg.OperationalE…") and len(lines[3]) == lines[0].rindex("error") + 40
    )
    error_column = lines[0].rindex("error")
    assert "Traceback line two" not in text and _lines_within(text, max(80, error_column + 40))

    def ids(*args):
        return [j["id"] for j in cli_json("jobs", "list", *args)]

    assert ids() == [str(j.id) for j in (manual, failed, older)]
    assert ids("--run", str(run.id)[:6]) == [str(failed.id), str(older.id)]
    assert ids("--project", "ALPHA") == [str(manual.id), str(older.id)]
    assert ids("--status", "failed") == [str(failed.id)]
    assert ids("--limit", "1") == [str(manual.id)]
    assert ids("--project", "beta", "--status", "completed") == []
    (doc,) = cli_json("jobs", "list", "--status", "failed")
    assert doc["error_message"] == LONG_ERROR and doc["project_name"] == "beta" and doc["duration_s"] == 42.0
    assert {"skipped_invalid", "conflicts", "pairs_kept_apart", "rolled_back_at", "celery_task_id"} <= set(doc)
    assert cli("jobs", "list", "--run", "ffffffff", code=1) == "Error: no run with id 'ffffffff'"
    assert cli("jobs", "list", "--project", "gamma", code=1) == "Error: no project named 'gamma'"


def test_jobs_show_has_duration_attempts_left_alone_and_rollback_state(database):
    project = _project("alpha")
    job = _job(project, attempts=3, skipped_invalid=2, conflicts=1, pairs_kept_apart=5, error_message=LONG_ERROR)
    text = cli("jobs", "show", str(job.id)[:8])
    assert "attempts 3  progress 100%  took 42.0s" in text
    assert "left alone: 2 invalid memories skipped, 1 conflicts, 5 pairs kept apart" in text
    assert "  rollback: not rolled back" in text.splitlines()
    assert " ".join(LONG_ERROR.split()) in " ".join(text.split()) and _lines_within(text)
    doc = cli_json("jobs", "show", str(job.id))
    assert (doc["attempts"], doc["skipped_invalid"], doc["conflicts"], doc["pairs_kept_apart"]) == (3, 2, 1, 5)
    assert (doc["duration_s"], doc["rolled_back_at"], doc["rolled_back_by"]) == (42.0, None, None)
    with db.session_scope() as session:
        session.execute(update(ConsolidationJob).values(rolled_back_at=T0 + timedelta(days=1), rolled_back_by="carol"))
    assert "  rollback: rolled back 2026-11-21T02:00:00Z by carol" in cli("jobs", "show", str(job.id)).splitlines()
    doc = cli_json("jobs", "show", str(job.id))
    assert (doc["rolled_back_at"], doc["rolled_back_by"]) == ((T0 + timedelta(days=1)).isoformat(), "carol")


# --- projects --------------------------------------------------------------------


def test_projects_list_and_show(database, settings_env):
    settings_env(default_threshold="5")
    busy = _project("busy", memories=7, options={"similarity_threshold": 0.85})
    quiet = _project("quiet", threshold=50, memories=3)
    off = _project("off", enabled=False, memories=9)
    run = _run()
    _job(busy, run, created=T0)
    last = _job(busy, status="failed", created=T0 + timedelta(hours=1), error_message="boom")
    listed = cli_json("projects", "list")
    assert [p["name"] for p in listed] == ["busy", "off", "quiet"]
    by_name = {p["name"]: p for p in listed}
    assert (by_name["busy"]["active_memories"], by_name["busy"]["threshold"], by_name["busy"]["eligible"]) == (
        7,
        5,
        True,
    )
    assert by_name["busy"]["threshold_is_default"] and not by_name["quiet"]["threshold_is_default"]
    assert by_name["off"]["eligible"] is False and by_name["quiet"]["eligible"] is False
    assert by_name["busy"]["last_job"]["id"] == str(last.id) and by_name["busy"]["last_job"]["status"] == "failed"
    assert by_name["busy"]["last_job"]["project_name"] == "busy"
    assert by_name["quiet"]["last_job"] is None and by_name["off"]["consolidation_enabled"] is False
    text = cli("projects", "list")
    assert [line.split() for line in text.splitlines()] == [
        ["project", "id", "enabled", "threshold", "active", "last", "job", "status"],
        ["-------", "--------", "-------", "-----------", "------", "--------", "------"],
        ["busy", str(busy.id)[:8], "yes", "default", "(5)", "7", str(last.id)[:8], "failed"],
        ["off", str(off.id)[:8], "no", "default", "(5)", "9", "-", "-"],
        ["quiet", str(quiet.id)[:8], "yes", "50", "3", "-", "-"],
    ]
    shown = cli_json("projects", "show", "busy")
    assert shown["id"] == str(busy.id) and shown["active_memories"] == 7
    assert shown["options"]["similarity_threshold"] == 0.85 and shown["options"]["merge"] is True
    assert [j["id"] for j in shown["recent_jobs"]] == [str(last.id), str(_job_ids(busy)[1])]
    text = cli("projects", "show", str(busy.id)[:5])
    assert text.splitlines()[:4] == [
        f"project busy ({busy.id})",
        f"  consolidation enabled  created {shown['created_at'][:19]}Z",
        "  threshold default (5)  active memories 7  due tonight: yes",
        f"  last job {last.id}  failed  2026-11-20T03:00:01Z",
    ]
    assert "similarity_threshold *  0.85" in text and re.search(r"^merge +true$", text, re.MULTILINE)
    assert f"{str(last.id)[:8]}  manual    failed" in text and f"{str(run.id)[:8]}  completed" in text
    assert "no jobs yet" in cli("projects", "show", "quiet")


def _job_ids(project):
    with db.session_scope() as session:
        return session.scalars(
            select(ConsolidationJob.id)
            .where(ConsolidationJob.project_id == project.id)
            .order_by(ConsolidationJob.created_at.desc())
        ).all()


def test_projects_show_says_when_options_are_invalid(sqlite_database):
    _project("broken", options={"similarity_threshold": 7})
    text = cli("projects", "show", "broken")
    assert text.splitlines()[3].startswith("  options: invalid: consolidation_options.similarity_threshold:")
    assert "options: invalid: consolidation_options.similarity_threshold: must be in (0, 1], got 7" in " ".join(
        text.split()
    )
    assert cli_json("projects", "show", "broken")["options"] is None
    assert cli("projects", "list").count("broken") == 1
    assert cli("projects", "list", "--json").count('"broken"') == 1


def test_projects_with_no_rows(sqlite_database):
    assert cli("projects", "list") == "no projects yet\n" and cli_json("projects", "list") == []
    assert cli("jobs", "list") == "no jobs yet\n" and cli("runs", "list") == "no runs yet\n"


# --- PROJECT: id, id prefix or name -----------------------------------------------

ALPHA_ID = uuid.UUID("a1a1a1a1-0000-4000-8000-000000000001")


@pytest.fixture
def named(database):
    """alpha, Beta, two projects named twin, and cafe1234 whose name is another's id prefix."""
    alpha = _project("alpha", project_id=ALPHA_ID)
    beta = _project("Beta")
    twins = [_project("twin"), _project("twin")]
    cafe = _project("cafe1234", project_id=uuid.UUID("cafe1234-0000-4000-8000-000000000002"))
    shadow = _project("shadowed", project_id=uuid.UUID("a1a1b2b2-0000-4000-8000-000000000003"))
    return {"alpha": alpha, "beta": beta, "twins": twins, "cafe": cafe, "shadow": shadow}


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (str(ALPHA_ID), "alpha"),
        (str(ALPHA_ID).upper(), "alpha"),
        ("a1a1a1", "alpha"),
        ("alpha", "alpha"),
        ("ALPHA", "alpha"),  # case-insensitive fallback
        ("Beta", "beta"),
        ("beta", "beta"),
        ("cafe1234", "cafe"),  # its name, and its id prefix: the same project
        ("a1a1b2", "shadow"),
    ],
)
def test_project_is_found_by_id_prefix_or_name_everywhere(named, given, expected):
    project = named[expected]
    assert cli_json("projects", "show", given)["id"] == str(project.id)
    assert cli_json("similarity", given)["project_id"] == str(project.id)
    assert cli_json("consolidate", given, "--dry-run")["project_id"] == str(project.id)
    assert cli_json("jobs", "list", "--project", given) == []
    assert cli_json("runs", "list", "--project", given) == []


@pytest.mark.parametrize(
    "command",
    [
        ("projects", "show"),
        ("consolidate",),
        ("similarity",),
        ("jobs", "list", "--project"),
        ("runs", "list", "--project"),
    ],
)
def test_project_miss_and_ambiguity_are_one_line(named, command):
    def error(given):
        out = cli(*command, given, code=1)
        assert len(out.splitlines()) == 1
        return out

    assert error("alpah") == "Error: no project named 'alpah'; did you mean: alpha?"
    assert error("bet") == "Error: no project named 'bet'; did you mean: Beta?"
    assert error("zzzzzzzzzz") == "Error: no project named 'zzzzzzzzzz'"
    assert error("x\x1b[2Jy") == "Error: no project named 'x\\x1b[2Jy'"
    twins = sorted(str(p.id) for p in named["twins"])
    assert error("twin") == f"Error: 2 projects are named 'twin'; give one of their ids: {', '.join(twins)}"
    assert error("a1a1").startswith("Error: project id prefix 'a1a1' is ambiguous: a1a1")
    assert error(str(uuid.UUID(int=7))) == f"Error: no project with id '{uuid.UUID(int=7)}'"


def test_a_name_that_is_another_projects_id_prefix_is_ambiguous(sqlite_database):
    first = _project("other", project_id=uuid.UUID("beef0000-0000-4000-8000-000000000001"))
    second = _project("beef")
    assert cli("projects", "show", "beef", code=1) == (
        f"Error: 'beef' names a project and starts another's id; give the full id: {second.id}, {first.id}"
    )
    assert cli_json("projects", "show", "beef0")["id"] == str(first.id)

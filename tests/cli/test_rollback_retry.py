"""``jobs rollback`` (preview, confirmation, the job row's rollback state) and ``runs
retry`` (through the broker, to a real in-process worker), on SQLite and PostgreSQL."""

import json
import uuid

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select, update

from orchestration.cli import main
from orchestration.consolidation.passes import REQUESTED
from orchestration.demo.seed import seed
from orchestration.store import db
from orchestration.store.models import ConsolidationJob, ConsolidationRun, Project, TaskMemory
from orchestration.store.types import utcnow
from support import wait_for_run


def invoke(*args, code=0, input=None):
    result = CliRunner().invoke(main, list(args), input=input)
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    return result


def error_line(result) -> str:
    """The one error line (log lines, JSON, are left out)."""
    (line,) = [line for line in result.stderr.splitlines() if not line.startswith("{")]
    return line


def memories() -> dict:
    with db.session_scope() as session:
        return {m.id: (m.version, m.is_duplicate, m.is_archived) for m in session.scalars(select(TaskMemory))}


@pytest.fixture
def consolidated(database):
    """A manual job that merged and archived: (its project's manifest, the job's document)."""
    with db.session_scope() as session:
        (manifest,) = seed(session, 1, 60, seed=21, dim=16)
    job = json.loads(invoke("consolidate", manifest.id, "--json").stdout)
    assert job["status"] == "completed" and job["clusters_found"] == len(manifest.groups) > 0
    return manifest, job


@pytest.fixture
def at_a_terminal(monkeypatch):
    monkeypatch.setattr("orchestration.cli.rollback.interactive", lambda: True)
    monkeypatch.setattr("orchestration.cli.rollback.user", lambda: "alice")


# --- jobs rollback -------------------------------------------------------------------


def test_dry_run_shows_what_would_be_restored_and_changes_nothing(consolidated):
    manifest, job = consolidated
    state = memories()
    text = invoke("jobs", "rollback", job["id"][:8], "--dry-run").stdout
    merged = sum(len(g) for g in manifest.groups)
    assert f"would un-merge {merged} memories" in text
    assert f"would un-archive {len(manifest.stale)} memories" in text
    assert f"would remove {len(manifest.groups)} consolidated memories" in text
    assert "conflicts: none" in text and text.rstrip().endswith("the rollback would go through")
    document = json.loads(invoke("jobs", "rollback", job["id"], "--dry-run", "--json").stdout)
    assert document["dry_run"] is True and document["refused"] is None and document["conflicts"] == []
    assert (document["unmerged"], document["unarchived"], document["removed"], document["repointed"]) == (
        merged,
        len(manifest.stale),
        len(manifest.groups),
        0,
    )
    assert document["project_name"] == manifest.name and document["rolled_back_at"] is None
    assert memories() == state
    assert json.loads(invoke("jobs", "show", job["id"], "--json").stdout)["rolled_back_at"] is None


def test_dry_run_lists_the_conflicts_and_exits_1(consolidated):
    manifest, job = consolidated
    reused = uuid.UUID(manifest.groups[0][0])
    with db.session_scope() as session:
        session.get_one(TaskMemory, reused).reused_count += 1
    state = memories()
    result = invoke("jobs", "rollback", job["id"], "--dry-run", code=1)
    assert "conflicts: 1 memories changed since the job ran" in result.stdout
    assert f"  {reused}  left at version" in result.stdout and "would be refused: 1 memories changed" in result.stdout
    document = json.loads(invoke("jobs", "rollback", job["id"], "--dry-run", "--json", code=1).stdout)
    assert [c["memory_id"] for c in document["conflicts"]] == [str(reused)]
    assert document["refused"].startswith("1 memories changed since")
    line = error_line(invoke("jobs", "rollback", job["id"], "--yes", code=1))
    assert line.startswith("Error: rollback refused: 1 memories changed")
    assert line.endswith("--dry-run lists the conflicts")
    assert memories() == state


def test_without_yes_and_without_a_terminal_it_refuses_with_exit_2(consolidated):
    _, job = consolidated
    state = memories()
    result = invoke("jobs", "rollback", job["id"], code=2)
    assert error_line(result) == (
        f"Error: jobs rollback {job['id']} changes memories: add --yes to confirm (stdin is not a terminal)"
    )
    assert memories() == state


def test_at_a_terminal_it_shows_the_preview_and_asks(consolidated, at_a_terminal):
    manifest, job = consolidated
    state = memories()
    no = invoke("jobs", "rollback", job["id"], input="n\n", code=1)
    assert "would un-merge" in no.stdout and f"Roll back job {job['id']}? [y/N]: n" in no.stdout
    assert "rollback cancelled; nothing was changed" in no.stderr
    assert memories() == state
    yes = invoke("jobs", "rollback", job["id"], input="y\n")
    assert f"rolled back job {job['id']}: restored" in yes.stdout and "by alice" in yes.stdout
    assert len(memories()) == len(state) - len(manifest.groups)
    shown = json.loads(invoke("jobs", "show", job["id"], "--json").stdout)
    assert shown["rolled_back_by"] == "alice" and shown["rolled_back_at"] is not None
    # Already rolled back: refused at once, naming when and by whom, without asking.
    again = invoke("jobs", "rollback", job["id"], input="y\n", code=1)
    assert "Roll back job" not in again.stdout
    assert error_line(again) == (
        f"Error: rollback refused: job {job['id']} was already rolled back at {shown['rolled_back_at'][:19]}Z by alice"
    )


def test_yes_with_json_prints_the_result_and_records_the_rollback(consolidated, monkeypatch):
    manifest, job = consolidated
    monkeypatch.setattr("orchestration.cli.rollback.user", lambda: "ops-script")
    document = json.loads(invoke("jobs", "rollback", job["id"], "--yes", "--json").stdout)
    merged = sum(len(g) for g in manifest.groups)
    assert document["status"] == "rolled_back" and document["rolled_back_by"] == "ops-script"
    assert (document["restored"], document["removed"], document["unmerged"], document["unarchived"]) == (
        merged + len(manifest.stale),
        len(manifest.groups),
        merged,
        len(manifest.stale),
    )
    with db.session_scope() as session:
        row = session.get_one(ConsolidationJob, uuid.UUID(job["id"]))
    assert row.rolled_back_by == "ops-script" and row.rolled_back_at.isoformat() == document["rolled_back_at"]
    line = error_line(invoke("jobs", "rollback", job["id"], "--yes", "--json", code=1))
    assert line.startswith(f"Error: rollback refused: job {job['id']} was already rolled back at ")
    assert line.endswith(" by ops-script")


def test_a_dry_run_with_yes_still_changes_nothing(consolidated):
    _, job = consolidated
    state = memories()
    invoke("jobs", "rollback", job["id"], "--dry-run", "--yes")
    assert memories() == state


# --- runs retry ------------------------------------------------------------------


def _run(run_id) -> dict:
    return json.loads(invoke("runs", "show", str(run_id), "--json").stdout)


def _runs() -> int:
    with db.session_scope() as session:
        return session.scalar(select(func.count()).select_from(ConsolidationRun)) or 0


def test_retry_starts_a_run_of_the_failed_jobs_projects_linked_to_it(celery_worker, database):
    with db.session_scope() as session:
        manifests = seed(session, 3, 40, seed=9, dim=16, failing=True)  # eligible, disabled, below, failing
    failing = next(m for m in manifests if m.kind == "failing")
    invoke("run-now", "--wait", "--timeout", "60", code=1)  # partial: the failing project failed
    with db.session_scope() as session:
        (original,) = session.scalars(select(ConsolidationRun)).all()
    assert original.status == "partial"

    # Still failing: the retry fails too (exit 1), with exactly that project's job.
    out = invoke("runs", "retry", str(original.id), "--wait", "--timeout", "60", code=1).stdout
    assert "status: FAILED" in out
    first_id = _run(original.id)["summary"]["retried_by"][0]
    first = _run(first_id)
    assert (first["trigger_type"], first["summary"]["retry_of"]) == ("manual", str(original.id))
    assert [(j["project_id"], j["status"]) for j in first["jobs"]] == [(failing.id, "failed")]

    # Fixed: a second retry of the original (by prefix, without --wait) completes.
    with db.session_scope() as session:
        session.execute(update(Project).where(Project.id == uuid.UUID(failing.id)).values(consolidation_options=None))
    sent = invoke("runs", "retry", str(original.id)[:8]).stdout
    assert sent.startswith("sent manual run ") and f"(retry of run {original.id}: 1 project)" in sent
    second_id = uuid.UUID(sent.split()[3])
    second = wait_for_run(lambda s: s.get(ConsolidationRun, second_id))
    assert second.status == "completed" and second.summary["retry_of"] == str(original.id)
    assert _run(original.id)["summary"]["retried_by"] == [first_id, str(second_id)]
    assert [j["project_id"] for j in _run(second_id)["jobs"]] == [failing.id]

    # Refusals, one line each, nothing sent.
    before = _runs()
    line = error_line(invoke("runs", "retry", str(second_id), code=1))
    assert line == f"Error: run {second_id} (completed) had no failed jobs; there is nothing to retry"
    with db.session_scope() as session:
        running = ConsolidationRun(trigger_type="manual", status="running", started_at=utcnow())
        session.add(running)
    line = error_line(invoke("runs", "retry", str(running.id), code=1))
    assert line == f"Error: run {running.id} is still running; retry it when it has finished"
    assert _runs() == before + 1  # the running one this test added


def test_retry_with_wait_and_full_exits_0_when_the_retry_completes(celery_worker, database):
    with db.session_scope() as session:
        manifests = seed(session, 1, 40, seed=4, dim=16, failing=True)
    failing = next(m for m in manifests if m.kind == "failing")
    invoke("run-now", "--wait", "--timeout", "60", code=1)
    with db.session_scope() as session:
        (original,) = session.scalars(select(ConsolidationRun)).all()
        session.execute(update(Project).where(Project.id == uuid.UUID(failing.id)).values(consolidation_options=None))
    out = invoke("runs", "retry", str(original.id), "--wait", "--timeout", "60", "--full").stdout
    assert "manual  status: COMPLETED" in out
    with db.session_scope() as session:  # --full: asked for, not only because the project never completed one
        retried = session.scalars(select(ConsolidationJob).where(ConsolidationJob.run_id != original.id)).one()
        assert (retried.mode, retried.full_reason) == ("full", REQUESTED)


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"trigger": "manual", "projects": "not-a-list"}, "projects must be a non-empty list"),
        ({"trigger": "manual", "projects": []}, "projects must be a non-empty list"),
        ({"trigger": "manual", "projects": ["not-a-uuid"]}, "is not a UUID"),
        ({"trigger": "manual", "retry_of": "not-a-uuid"}, None),  # the task base's check of its id arguments
        ({"projects": [str(uuid.uuid4())]}, "manual run only"),
    ],
)
def test_the_task_rejects_bad_retry_arguments(celery_worker, sqlite_database, kwargs, reason):
    from orchestration.worker.tasks import run_scheduled

    result = run_scheduled.apply_async(kwargs=kwargs).get(timeout=30)
    if reason is None:
        assert result == {"retry_of": "not-a-uuid", "status": "rejected"}
    else:
        assert result["status"] == "rejected" and reason in result["error"]
    assert _runs() == 0


def test_a_retry_whose_claim_meets_an_outage_is_still_the_retry(celery_worker, sqlite_database, monkeypatch):
    """The task's re-sent message keeps ``projects`` and ``retry_of``."""
    import psycopg
    from sqlalchemy.exc import OperationalError

    from orchestration.nightly import runs
    from orchestration.worker import base
    from support import failing_first

    with db.session_scope() as session:
        manifests = seed(session, 2, 40, seed=6, dim=16, failing=True)
    invoke("run-now", "--wait", "--timeout", "60", code=1)
    with db.session_scope() as session:
        (original,) = session.scalars(select(ConsolidationRun)).all()
    refused = OperationalError("SELECT 1", {}, psycopg.OperationalError("connection failed: Connection refused"))
    monkeypatch.setattr(base, "outage_countdown", lambda retries: 0.05)
    claims: list[dict] = []
    flaky = failing_first(runs.claim, 2, lambda: refused)

    def claim(*args, **kwargs):
        claims.append(kwargs)
        return flaky(*args, **kwargs)

    monkeypatch.setattr(runs, "claim", claim)
    new_id = uuid.UUID(invoke("runs", "retry", str(original.id)).stdout.split()[3])
    retry = wait_for_run(lambda s: s.get(ConsolidationRun, new_id))
    failing = next(m for m in manifests if m.kind == "failing")
    assert retry.summary["retry_of"] == str(original.id)
    assert [j["project_id"] for j in _run(new_id)["jobs"]] == [failing.id]
    assert _run(original.id)["summary"]["retried_by"] == [str(new_id)]
    assert len(claims) == 3 and all(c["retry_of"] == original.id for c in claims)

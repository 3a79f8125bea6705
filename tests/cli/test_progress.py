"""Live progress of a run: the counts it shows, the plain lines off a terminal, the
updating line on one, and ``orchestration runs watch``."""

import io
import threading
import time

from click.testing import CliRunner
from sqlalchemy import update

from orchestration.cli import main
from orchestration.cli.progress import RunProgress, plain_line, read_progress, watch
from orchestration.demo.seed import seed
from orchestration.nightly import runs
from orchestration.store import db
from orchestration.store.models import ConsolidationJob, ConsolidationRun


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _run(projects: int = 6) -> runs.StartedRun:
    with db.session_scope() as session:
        seed(session, projects, 20, seed=3, dim=8)
        return runs.start_run(session, "manual", None, 10)


def _finish_jobs_one_by_one(started: runs.StartedRun, pause: float) -> threading.Thread:
    def work() -> None:
        for n, job_id in enumerate(started.job_ids):
            time.sleep(pause)
            with db.session_scope() as session:
                session.execute(
                    update(ConsolidationJob)
                    .where(ConsolidationJob.id == job_id)
                    .values(status="failed" if n == 0 else "completed", memories_merged=10, memories_archived=2)
                )
        with db.session_scope() as session:
            runs.finalize(session, started.run_id)

    thread = threading.Thread(target=work)
    thread.start()
    return thread


def test_progress_sums_the_jobs_of_the_run(database):
    started = _run()
    with db.session_scope() as session:
        session.execute(
            update(ConsolidationJob)
            .where(ConsolidationJob.id == started.job_ids[0])
            .values(status="completed", memories_merged=7, memories_archived=3)
        )
        session.execute(
            update(ConsolidationJob).where(ConsolidationJob.id == started.job_ids[1]).values(status="failed")
        )
        progress = read_progress(session, session.get(ConsolidationRun, started.run_id))
    total = len(started.job_ids)
    assert (progress.total, progress.done, progress.completed, progress.failed) == (total, 2, 1, 1)
    assert (progress.merged, progress.archived, progress.status) == (7, 3, "running")


def test_a_plain_line_says_where_the_run_stands_and_what_is_left():
    progress = RunProgress(
        run_id=__import__("uuid").UUID(int=7),
        status="running",
        total=40,
        completed=9,
        failed=1,
        merged=300,
        archived=120,
    )
    assert plain_line(progress, 125.0) == (
        "run 00000000: 10/40 jobs done, 300 merged, 120 archived, 1 failed, 02:05 elapsed, about 06:15 left"
    )


def test_off_a_terminal_plain_lines_every_few_seconds(sqlite_database):
    started = _run()
    worker = _finish_jobs_one_by_one(started, pause=0.3)
    out = io.StringIO()
    run = watch(lambda s: s.get(ConsolidationRun, started.run_id), 30, out, interval=0.05, plain_every=0.25)
    worker.join()
    lines = out.getvalue().splitlines()
    total = len(started.job_ids)
    assert run.status == "partial" and "\r" not in out.getvalue()
    assert 2 <= len(lines) <= 4 * total  # a line every 0.25 s, not one per poll
    assert lines[-1].startswith(
        f"run {str(started.run_id)[:8]}: {total}/{total} jobs done, {10 * total} merged, {2 * total} archived, 1 failed"
    )


def test_on_a_terminal_one_updating_line(sqlite_database):
    started = _run()
    worker = _finish_jobs_one_by_one(started, pause=0.2)
    out = _Terminal()
    run = watch(lambda s: s.get(ConsolidationRun, started.run_id), 30, out, interval=0.05)
    worker.join()
    text = out.getvalue()
    total = len(started.job_ids)
    assert run.status == "partial"
    assert text.count("\n") == 1 and "\r" in text  # redrawn in place, one line break at the end
    assert f"{total}/{total}" in text and f"{10 * total} merged, {2 * total} archived, 1 failed" in text


def test_runs_watch_follows_a_run_started_elsewhere(sqlite_database):
    started = _run()
    worker = _finish_jobs_one_by_one(started, pause=0.1)
    result = CliRunner().invoke(main, ["runs", "watch", str(started.run_id)[:8], "--timeout", "30"])
    worker.join()
    assert result.exit_code == 1, result.output  # one job failed: partial
    assert "jobs done" in result.stdout and "status: PARTIAL" in result.stdout
    result = CliRunner().invoke(main, ["runs", "watch", str(started.run_id)])
    assert result.exit_code == 1 and "status: PARTIAL" in result.stdout  # already finished: at once


def test_runs_watch_gives_up_after_its_timeout(sqlite_database):
    started = _run()
    result = CliRunner().invoke(main, ["runs", "watch", str(started.run_id), "--timeout", "1"])
    assert result.exit_code == 2 and "did not finish within the timeout" in result.stderr

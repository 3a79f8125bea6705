"""Live progress of a run: the counts it shows, the plain lines off a terminal, the
updating line on one, and ``orchestration runs watch``."""

import io
import re
import threading
import time
import uuid

import pytest
from click.testing import CliRunner
from sqlalchemy import update

from orchestration.cli import main, progress
from orchestration.cli.progress import Estimate, RunProgress, plain_line, read_progress, terminal_line, watch
from orchestration.demo.seed import seed
from orchestration.nightly import runs
from orchestration.store import db
from orchestration.store.models import ConsolidationJob, ConsolidationRun
from orchestration.store.statuses import TriggerType


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _run(projects: int = 6) -> runs.StartedRun:
    with db.session_scope() as session:
        seed(session, projects, 20, seed=3, dim=8)
        started = runs.start_run(session, TriggerType.MANUAL, None, 10)
        assert started is not None
        return started


def _finish_jobs_one_by_one(
    started: runs.StartedRun, pause: float, pauses: dict[int, float] | None = None, finalize_after: float = 0.0
) -> threading.Thread:
    """Finish the run's jobs in a thread, ``pause`` seconds apart (``pauses[n]`` before
    the n-th), then finalize the run ``finalize_after`` seconds later."""

    def work() -> None:
        for n, job_id in enumerate(started.job_ids):
            time.sleep((pauses or {}).get(n, pause))
            with db.session_scope() as session:
                session.execute(
                    update(ConsolidationJob)
                    .where(ConsolidationJob.id == job_id)
                    .values(status="failed" if n == 0 else "completed", memories_merged=10, memories_archived=2)
                )
        time.sleep(finalize_after)
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
    assert plain_line(progress, 125.0, 375.0) == (
        "run 00000000: 10/40 jobs done, 300 merged, 120 archived, 1 failed, 2m05s elapsed, eta ~6m15s"
    )
    assert plain_line(progress, 3725.0).endswith(", 1 failed, 1h02m elapsed")  # no estimate: none shown


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


def _frames(text: str) -> list[str]:
    """What a terminal showed, frame by frame: each redraw starts with a carriage
    return and ends by clearing the rest of the line."""
    return [frame.removesuffix("\x1b[K").rstrip("\n") for frame in text.split("\r") if frame]


def test_on_a_terminal_it_draws_at_once_and_ticks_while_no_job_ends(sqlite_database):
    started = _run()
    total = len(started.job_ids)
    # The first job ends after 0.3 s; then none for 2.7 s.
    worker = _finish_jobs_one_by_one(started, pause=0.05, pauses={0: 0.3, 1: 2.7})
    out = _Terminal()
    watch(lambda s: s.get(ConsolidationRun, started.run_id), 30, out, interval=0.1)
    worker.join()
    frames = _frames(out.getvalue())
    assert frames[0] == "waiting for the run to start, 0s"  # drawn before the first query
    assert re.search(rf"\b0/{total} jobs done", frames[1])  # and the run at once, before any job ended
    waiting = [f for f in frames if f" 1/{total} jobs done" in f]
    elapsed = {re.search(r"(\d+s) elapsed", f)[1] for f in waiting}
    estimates = {re.search(r"eta ~(\w+)", f)[1] for f in waiting}
    assert len(elapsed) >= 3 and len(estimates) >= 3, waiting  # both move every second while no job ends
    assert f"{total}/{total} jobs done" in frames[-1] and "eta" not in frames[-1]  # no estimate when done
    assert out.getvalue().endswith("\x1b[K\n") and out.getvalue().count("\n") == 1


def test_off_a_terminal_the_final_line_comes_once(sqlite_database):
    started = _run()
    total = len(started.job_ids)
    # Every job ends at once; the run is finalized a second later.
    worker = _finish_jobs_one_by_one(started, pause=0.0, finalize_after=1.0)
    out = io.StringIO()
    run = watch(lambda s: s.get(ConsolidationRun, started.run_id), 30, out, interval=0.05, plain_every=0.1)
    worker.join()
    lines = out.getvalue().splitlines()
    assert run.status == "partial"
    assert [line for line in lines if f"{total}/{total} jobs done" in line] == [lines[-1]], lines
    assert lines[-1].endswith(" elapsed")  # the final line: no estimate
    # A finished run: its one line at once.
    out = io.StringIO()
    watch(lambda s: s.get(ConsolidationRun, started.run_id), 30, out)
    assert out.getvalue() == lines[-1].rsplit(", ", 1)[0] + f", {out.getvalue().rsplit(', ', 1)[1]}"
    assert out.getvalue().count("\n") == 1


def test_the_estimate_counts_down_between_job_ends_and_grows_once_overdue():
    estimate = Estimate()
    one_of_four = RunProgress(uuid.UUID(int=1), "running", total=4, completed=1)
    assert estimate.left(RunProgress(uuid.UUID(int=1), "running", total=4), 5.0) is None  # nothing to go by
    assert estimate.left(one_of_four, 10.0) == 30.0  # 10 s a job: 3 more
    assert estimate.left(one_of_four, 20.0) == 20.0  # counting down to 40 s
    assert estimate.left(one_of_four, 40.0) == 120.0  # overdue: 40 s for one job so far, 3 to go
    halfway = RunProgress(uuid.UUID(int=1), "running", total=4, completed=1, running=1.0)  # two jobs at 50%
    assert estimate.left(halfway, 50.0) == 50.0  # unfinished jobs' progress counts
    assert estimate.left(RunProgress(uuid.UUID(int=1), "running", total=4, completed=4), 60.0) is None


def test_the_terminal_line_fits_the_terminal():
    state = RunProgress(uuid.UUID(int=7), "running", total=40, completed=10, merged=300, archived=120)
    assert terminal_line(state, 125.0, 375.0, width=120) == (
        "run 00000000 [#####---------------] 10/40 jobs done, 2m05s elapsed, eta ~6m15s, 300 merged, 120 archived"
    )
    assert terminal_line(state, 125.0, 375.0, width=80) == (  # no room for a bar; the counters cut first
        "run 00000000: 10/40 jobs done, 2m05s elapsed, eta ~6m15s, 300 merged, ..."
    )
    shorter = terminal_line(state, 125.0, 375.0, width=95)
    assert re.match(r"run 00000000 \[##-{6,}\] 10/40 jobs done, .*, 120 archived$", shorter) and len(shorter) <= 95
    assert terminal_line(None, 3.0) == "waiting for the run to start, 3s"


def test_what_the_check_raises_ends_the_watch_on_a_fresh_line(sqlite_database, monkeypatch):
    started = _run()
    monkeypatch.setattr(progress, "CHECK_EVERY_S", 0.0)
    calls = []

    def check() -> None:
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("the broker went away")

    out = _Terminal()
    with pytest.raises(RuntimeError, match="went away"):
        watch(lambda s: s.get(ConsolidationRun, started.run_id), 30, out, interval=0.01, check=check)
    assert out.getvalue().endswith("\n") and out.getvalue().count("\n") == 1


def test_a_console_log_line_never_lands_on_the_progress_line(sqlite_database):
    """At a terminal, console log lines (stderr) and the progress line (stdout) share the
    screen: the progress line is wiped before a log line and drawn again at the next tick."""
    import logging

    from orchestration.logs import configure_logging, get_logger
    from orchestration.settings import load_settings

    screen = _Terminal()  # stdout and stderr on one terminal
    configure_logging(load_settings({"ORCHESTRATION_LOG_FORMAT": "console"}), stream=screen)
    try:
        started = _run()
        worker = _finish_jobs_one_by_one(started, pause=0.3)

        def log_meanwhile() -> None:
            time.sleep(0.5)
            get_logger("orchestration.test").warning("job.failed", error="boom")

        logger_thread = threading.Thread(target=log_meanwhile)
        logger_thread.start()
        watch(lambda s: s.get(ConsolidationRun, started.run_id), 30, screen, interval=0.1)
        worker.join()
        logger_thread.join()
    finally:
        from orchestration.settings import get_settings

        configure_logging(get_settings())
        logging.getLogger("orchestration.test").handlers.clear()
    text = screen.getvalue()
    before, _, _ = text.partition("job.failed")
    line_start = before.rsplit("\n", 1)[-1].rsplit("\r", 1)[-1]
    assert "jobs done" not in line_start and "waiting for" not in line_start  # wiped first
    assert "jobs done" in text.rpartition("job.failed")[2]  # and drawn again afterwards

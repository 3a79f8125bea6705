"""Live progress of a run for a person waiting on it (``run-now --wait``, ``runs
watch``, the demo).

At a terminal: one line, drawn at once and redrawn in place (``\\r`` and clear to the
end of the line) every second: jobs done of the total, the time elapsed since the run
started and an estimate of the rest (``eta ~2m10s``, counting down between job ends
and growing once a job is overdue), memories merged and archived so far, failures.
Elsewhere (a pipe, a CI log): a plain line when jobs have ended (at most one every
few seconds), one after a minute without any, and one final line when the run
finishes, never twice.
"""

from __future__ import annotations

import math
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import IO, cast

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from orchestration.logs import hold_line
from orchestration.store.db import session_scope
from orchestration.store.models import ConsolidationJob, ConsolidationRun
from orchestration.store.statuses import FINISHED_JOB_STATUSES, JobStatus, RunStatus
from orchestration.store.types import utcnow

Finder = Callable[[Session], ConsolidationRun | None]
# Off a terminal: a line at most this often while jobs end, and one after this long without.
PLAIN_EVERY_S = 5.0
QUIET_EVERY_S = 60.0
# How often ``watch`` calls its ``check`` (is the broker still there?).
CHECK_EVERY_S = 5.0
_CLEAR_TO_END = "\x1b[K"
_BAR_WIDTH = 20
_BAR_MIN_WIDTH = 8


@dataclass(frozen=True)
class RunProgress:
    """A run's jobs so far, summed from their rows; ``running`` is the summed progress
    (0 to 1 each) of the jobs not finished yet."""

    run_id: uuid.UUID
    status: str
    total: int
    completed: int = 0
    failed: int = 0
    skipped: int = 0
    merged: int = 0
    archived: int = 0
    running: float = 0.0

    @property
    def done(self) -> int:
        return self.completed + self.failed + self.skipped

    @property
    def fraction_done(self) -> float:
        """Jobs done, counting unfinished ones by their progress: what the estimate uses."""
        return min(float(self.total), self.done + self.running)

    def counters(self) -> str:
        failed = f", {self.failed} failed" if self.failed else ""
        return f"{self.merged} merged, {self.archived} archived{failed}"


def read_progress(session: Session, run: ConsolidationRun) -> RunProgress:
    unfinished_progress = case(
        (ConsolidationJob.status.in_(FINISHED_JOB_STATUSES), 0.0), else_=ConsolidationJob.progress
    )
    statement = (
        select(
            ConsolidationJob.status,
            func.count(),
            func.coalesce(func.sum(ConsolidationJob.memories_merged), 0),
            func.coalesce(func.sum(ConsolidationJob.memories_archived), 0),
            func.coalesce(func.sum(unfinished_progress), 0.0),
        )
        .where(ConsolidationJob.run_id == run.id)
        .group_by(ConsolidationJob.status)
    )
    rows = cast(list[tuple[str, int, int, int, float]], session.execute(statement).all())
    by_status = {status: count for status, count, _, _, _ in rows}
    return RunProgress(
        run.id,
        run.status,
        total=sum(by_status.values()),
        completed=by_status.get(JobStatus.COMPLETED, 0),
        failed=by_status.get(JobStatus.FAILED, 0),
        skipped=by_status.get(JobStatus.SKIPPED, 0),
        merged=sum(merged for _, _, merged, _, _ in rows),
        archived=sum(archived for _, _, _, archived, _ in rows),
        running=max(0.0, float(sum(running for *_, running in rows))),
    )


def duration(seconds: float) -> str:
    """``45s``, ``2m05s``, ``1h02m``."""
    seconds = max(0, int(seconds))
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h{minutes:02}m"
    return f"{minutes}m{seconds:02}s" if minutes else f"{seconds}s"


class Estimate:
    """The time left, from the pace so far: when the share of work done last moved,
    the run was projected to finish at ``moved_at * total / done``; the estimate counts
    down to that, and once it is overdue it is the pace up to now applied to the rest."""

    def __init__(self) -> None:
        self._done = -1.0
        self._moved_at = 0.0

    def left(self, progress: RunProgress, elapsed: float) -> float | None:
        done, total = progress.fraction_done, progress.total
        if done != self._done:
            self._done, self._moved_at = done, elapsed
        if done <= 0 or progress.done >= total:
            return None
        left = self._moved_at * total / done - elapsed
        if left < 1:  # overdue: the pace so far, up to now
            left = elapsed * (total - done) / done
        return left


def _eta(left: float | None) -> str:
    return "" if left is None else f", eta ~{duration(math.ceil(left))}"


def plain_line(progress: RunProgress, elapsed: float, left: float | None = None) -> str:
    return (
        f"run {str(progress.run_id)[:8]}: {progress.done}/{progress.total} jobs done, {progress.counters()}, "
        f"{duration(elapsed)} elapsed{_eta(left)}"
    )


def terminal_line(progress: RunProgress | None, elapsed: float, left: float | None = None, width: int = 80) -> str:
    """The line at a terminal ``width`` columns wide: jobs done, the time elapsed and
    the estimate first, then the counters; a bar after the run's id where there is
    room for one; cut at the end if it is still too long."""
    if progress is None:
        text = f"waiting for the run to start, {duration(elapsed)}"
    elif not progress.total and progress.status == RunStatus.RUNNING:
        text = f"run {str(progress.run_id)[:8]}: choosing projects, {duration(elapsed)} elapsed"
    else:
        head = f"run {str(progress.run_id)[:8]}"
        rest = (
            f"{progress.done}/{progress.total} jobs done, {duration(elapsed)} elapsed{_eta(left)}, "
            f"{progress.counters()}"
        )
        text = f"{head}: {rest}"
        room = min(_BAR_WIDTH, width - len(text) - 3)  # " [" and "]" in place of ":"
        if room >= _BAR_MIN_WIDTH:
            filled = round(room * progress.done / progress.total) if progress.total else room
            text = f"{head} [{'#' * filled}{'-' * (room - filled)}] {rest}"
    return _fit(text, width)


def _fit(text: str, width: int) -> str:
    """``text``, or as many of its comma-separated parts as fit in ``width``, then ``...``."""
    if len(text) <= width:
        return text
    cut = text[: max(0, width - 5)].rfind(", ")
    return text[:cut] + ", ..." if cut > 0 else text[: max(1, width - 3)] + "..."


def _run_elapsed(run: ConsolidationRun) -> float:
    """Seconds since the run started (to its end if it finished)."""
    started: datetime = run.started_at
    end = run.finished_at if run.status != RunStatus.RUNNING and run.finished_at else utcnow()
    return max(0.0, (end - started).total_seconds())


class _Terminal:
    """One line redrawn in place, cut to the terminal's width (a wrapped line could not
    be redrawn)."""

    def __init__(self, out: IO[str]):
        self.out = out
        self.shown: str | None = None
        hold_line(self.clear)  # a console log line wipes it first; the next tick redraws it

    def draw(self, progress: RunProgress | None, elapsed: float, left: float | None = None) -> None:
        text = terminal_line(progress, elapsed, left, shutil.get_terminal_size().columns - 1)
        if text != self.shown:
            self.out.write(f"\r{text}{_CLEAR_TO_END}")
            self.out.flush()
            self.shown = text

    def clear(self) -> None:
        if self.shown is not None:
            self.out.write(f"\r{_CLEAR_TO_END}")
            self.out.flush()
            self.shown = None

    def end(self) -> None:
        hold_line(None)
        if self.shown is not None:
            self.out.write("\n")
            self.out.flush()
            self.shown = None


def watch(
    find: Finder,
    timeout: float,
    out: IO[str],
    interval: float = 1.0,
    plain_every: float = PLAIN_EVERY_S,
    check: Callable[[], None] | None = None,
) -> ConsolidationRun | None:
    """Show the run's progress on ``out`` until it finishes; the finished run, or
    ``None`` when ``timeout`` passes first. ``check`` is called every
    :data:`CHECK_EVERY_S` seconds; what it raises ends the watch (the line ended first)."""
    started = time.monotonic()
    deadline = started + timeout
    terminal = _Terminal(out) if hasattr(out, "isatty") and out.isatty() else None
    estimate = Estimate()
    last_line, last_done, last_check = started, 0, started
    base: float | None = None  # the run's elapsed seconds when first seen, minus our clock then
    try:
        if terminal is not None:
            terminal.draw(None, 0)
        while True:
            with session_scope() as session:
                run = find(session)
                progress = read_progress(session, run) if run is not None else None
            now = time.monotonic()
            finished = run is not None and run.status != RunStatus.RUNNING
            if run is not None and (base is None or finished):
                base = _run_elapsed(run) - (now - started)
            elapsed = now - started + (base or 0.0)
            left = estimate.left(progress, elapsed) if progress is not None and not finished else None
            if terminal is not None:
                terminal.draw(progress, elapsed, left)
                if finished:
                    terminal.end()
            elif finished:
                assert progress is not None
                print(plain_line(progress, elapsed), file=out, flush=True)
            elif progress is None or progress.done < progress.total:
                ended = progress is not None and progress.done != last_done
                if (ended and now - last_line >= plain_every) or now - last_line >= QUIET_EVERY_S:
                    if progress is None:
                        print(f"waiting for the run to start, {duration(elapsed)}", file=out, flush=True)
                    else:
                        print(plain_line(progress, elapsed, left), file=out, flush=True)
                    last_line, last_done = now, progress.done if progress else 0
            if finished:
                return run
            if now >= deadline:
                return None
            if check is not None and now - last_check >= CHECK_EVERY_S:
                check()
                last_check = time.monotonic()
            time.sleep(max(0.0, min(interval, deadline - time.monotonic())))
    finally:
        if terminal is not None:
            terminal.end()

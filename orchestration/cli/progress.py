"""Live progress of a run for a person waiting on it (``run-now --wait``, ``runs
watch``, the demo): on a terminal one updating line (click's progress bar) with jobs
done / total, failures, memories merged and archived so far, elapsed time and an
estimate of the rest; elsewhere (a pipe, a CI log) one plain line every few seconds.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any, TextIO, cast

import click
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from orchestration.store.db import session_scope
from orchestration.store.models import ConsolidationJob, ConsolidationRun
from orchestration.store.statuses import JobStatus, RunStatus

Finder = Callable[[Session], ConsolidationRun | None]
PLAIN_EVERY_S = 5.0


@dataclass(frozen=True)
class RunProgress:
    """A run's jobs so far, summed from their rows."""

    run_id: uuid.UUID
    status: str
    total: int
    completed: int = 0
    failed: int = 0
    skipped: int = 0
    merged: int = 0
    archived: int = 0

    @property
    def done(self) -> int:
        return self.completed + self.failed + self.skipped

    def counters(self) -> str:
        failed = f", {self.failed} failed" if self.failed else ""
        return f"{self.merged} merged, {self.archived} archived{failed}"


def read_progress(session: Session, run: ConsolidationRun) -> RunProgress:
    rows = session.execute(
        select(
            ConsolidationJob.status,
            func.count(),
            func.coalesce(func.sum(ConsolidationJob.memories_merged), 0),
            func.coalesce(func.sum(ConsolidationJob.memories_archived), 0),
        )
        .where(ConsolidationJob.run_id == run.id)
        .group_by(ConsolidationJob.status)
    ).all()
    by_status = {status: count for status, count, _, _ in rows}
    return RunProgress(
        run.id,
        run.status,
        total=sum(by_status.values()),
        completed=by_status.get(JobStatus.COMPLETED, 0),
        failed=by_status.get(JobStatus.FAILED, 0),
        skipped=by_status.get(JobStatus.SKIPPED, 0),
        merged=sum(merged for _, _, merged, _ in rows),
        archived=sum(archived for _, _, _, archived in rows),
    )


def _clock(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02}:{seconds:02}" if hours else f"{minutes:02}:{seconds:02}"


def plain_line(progress: RunProgress, elapsed: float) -> str:
    left = ""
    if 0 < progress.done < progress.total:
        left = f", about {_clock(elapsed / progress.done * (progress.total - progress.done))} left"
    return (
        f"run {str(progress.run_id)[:8]}: {progress.done}/{progress.total} jobs done, {progress.counters()}, "
        f"{_clock(elapsed)} elapsed{left}"
    )


def _shown(text: str | None) -> str | None:
    return text


def watch(
    find: Finder, timeout: float, out: IO[str], interval: float = 1.0, plain_every: float = PLAIN_EVERY_S
) -> ConsolidationRun | None:
    """Show the run's progress on ``out`` until it finishes; the finished run, or
    ``None`` when ``timeout`` passes first."""
    started = time.monotonic()
    deadline = started + timeout
    terminal = hasattr(out, "isatty") and out.isatty()
    bar: Any = None  # click's ProgressBar, once the run's size is known
    last_plain = float("-inf")
    try:
        while time.monotonic() < deadline:
            with session_scope() as session:
                run = find(session)
                progress = read_progress(session, run) if run is not None else None
            elapsed = time.monotonic() - started
            if run is not None and progress is not None:
                if terminal and bar is None and progress.total:
                    bar = click.progressbar(
                        length=progress.total,
                        label=f"run {str(progress.run_id)[:8]}",
                        show_eta=True,
                        show_pos=True,
                        file=cast(TextIO, out),
                        item_show_func=_shown,
                    )
                if bar is not None:
                    bar.update(progress.done - bar.pos, f"{progress.counters()}, {_clock(elapsed)} elapsed")
                elif not terminal and (run.status != RunStatus.RUNNING or time.monotonic() - last_plain >= plain_every):
                    click.echo(plain_line(progress, elapsed), file=out)
                    last_plain = time.monotonic()
            if run is not None and run.status != RunStatus.RUNNING:
                return run
            time.sleep(interval)
        return None
    finally:
        if bar is not None:
            bar.render_finish()

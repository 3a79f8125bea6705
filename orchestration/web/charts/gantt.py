"""A run page's Gantt chart: its jobs on a time axis from the run's start, one lane per
worker process (jobs without a worker and jobs never started in lanes of their own),
a bar per job after a lighter strip for its wait in the queue, a line at now while
jobs are unfinished; above :data:`MAX_SINGLE_JOBS` jobs, neighbouring sub-pixel bars
are grouped so that a big run stays a small page.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from markupsafe import Markup

from orchestration.store.statuses import UNFINISHED_JOB_STATUSES
from orchestration.web.charts.svg import (
    JOB_STATUSES,
    _aware,
    _baseline,
    _empty,
    _first_line,
    _frange,
    _href,
    _legend,
    _n,
    _parse,
    _plural,
    _status,
    _svg,
    _text,
    _time_label,
    _time_step,
    format_duration,
)

__all__ = ["MAX_SINGLE_JOBS", "NOT_STARTED", "NO_WORKER", "timeline"]

# Up to this many jobs the timeline draws every job as its own bar; above it, sub-pixel
# bars are grouped so that a 20,000-job run stays a small page that renders quickly.
MAX_SINGLE_JOBS = 2000
NOT_STARTED = "not started"
NO_WORKER = "no worker recorded"

# Seconds from the run's start to an x coordinate of the timeline.
_Scale = Callable[[float], float]

_TL_W = 960.0
_TL_LEFT, _TL_RIGHT, _TL_TOP = 160.0, 24.0, 26.0
_LANE_H = 24.0
# Inside a lane: attempts marks above the bar, the queue wait a thin strip behind it.
_BAR_DY, _BAR_H = 8.0, 12.0
_WAIT_DY, _WAIT_H = 12.0, 4.0
_MIN_BAR_W = 1.0
# A drawn bar is at least this wide, so that a job that ended at once (often the failed
# one) is still something a pointer can hit.
_MIN_TARGET_W = 3.0
# The width of one character of an attempts mark (8 px text).
_MARK_CHAR_W = 5.0
# Consecutive sub-pixel bars further apart than this stay separate groups, so that a
# group never spans a worker's idle time.
_GROUP_GAP = 2.0


@dataclass(slots=True)
class _Job:
    doc: Mapping[str, Any]
    status: str
    queued: float  # seconds from the run's start, as are the two below
    start: float | None
    end: float


def timeline(jobs: Sequence[Mapping[str, Any]], run_started_at: str | datetime, now: datetime) -> Markup:
    """A run's jobs on a time axis from ``run_started_at``: one lane per worker process
    (jobs never started in a lane of their own), a bar per job from its start to its
    end (``now`` while unfinished) after a lighter strip for its wait in the queue.
    Above :data:`MAX_SINGLE_JOBS` jobs, neighbouring sub-pixel bars of one status are
    drawn as one group and a note says so."""
    if not jobs:
        return _empty("This run has no jobs.")
    origin = _parse(run_started_at)
    if origin is None:
        raise ValueError("timeline needs the run's start time")
    now = _aware(now)
    lanes = _lanes(jobs, origin, now)
    starts = [job.queued for lane in lanes.values() for job in lane]
    ends = [job.end for lane in lanes.values() for job in lane]
    lo = min(0.0, min(starts))
    hi = max(max(ends), lo + 1.0)
    plot_w = _TL_W - _TL_LEFT - _TL_RIGHT
    scale = plot_w / (hi - lo)

    def at(seconds: float) -> float:
        return _TL_LEFT + (seconds - lo) * scale

    bottom = _TL_TOP + len(lanes) * _LANE_H
    group = len(jobs) > MAX_SINGLE_JOBS
    parts = [_timeline_legend(lanes)]
    parts.append(_time_axis(lo, hi, at, bottom))
    grouped_jobs = groups = 0
    for row, (name, lane) in enumerate(lanes.items()):
        y = _TL_TOP + row * _LANE_H
        parts.append(_lane_head(name, row, y))
        parts.append(_waits(lane, y, at, merged=group))
        drawn = _lane_bars(lane, y, at, scale, group=group)
        parts.append(drawn.svg)
        grouped_jobs += drawn.grouped_jobs
        groups += drawn.groups
    if any(job.status in UNFINISHED_JOB_STATUSES for lane in lanes.values() for job in lane):
        x = at((now - origin).total_seconds())
        parts.append(f'<line class="now-line" x1="{_n(x)}" y1="{_n(_TL_TOP - 4)}" x2="{_n(x)}" y2="{_n(bottom)}"/>')
    height = bottom + 30
    if group:
        merged = f"{_plural(grouped_jobs, 'job')} under a pixel wide are drawn as {_plural(groups, 'grouped bar')}"
        note = (f"{merged} (hover for counts); " if groups else "") + "queue waits are merged per lane."
        parts.append(f'<text class="chart-note" x="{_n(_TL_LEFT)}" y="{_n(height + 4)}">{_text(note)}</text>')
        height += 14
    label = f"Timeline of {_plural(len(jobs), 'job')} on {_plural(len(lanes), 'lane')}"
    return _svg("timeline", _TL_W, height, label, parts)


def _lanes(jobs: Sequence[Mapping[str, Any]], origin: datetime, now: datetime) -> dict[str, list[_Job]]:
    """The jobs by lane (worker names in natural order, then the jobs without a worker,
    then those never started), each lane in start order."""
    lanes: dict[str, list[_Job]] = {}
    now_s = (now - origin).total_seconds()
    for doc in jobs:
        status = _status(doc.get("status"), JOB_STATUSES)
        created = _parse(doc.get("created_at"))
        started = _parse(doc.get("started_at"))
        completed = _parse(doc.get("completed_at"))
        queued = max(0.0, (created - origin).total_seconds()) if created is not None else 0.0
        start = None if started is None else (started - origin).total_seconds()
        if completed is not None and status not in UNFINISHED_JOB_STATUSES:
            end = (completed - origin).total_seconds()
        else:
            end = now_s
        if start is not None:
            queued = min(queued, start)
            end = max(end, start)
            name = doc.get("worker") or NO_WORKER
        else:
            end = max(end, queued)
            name = NOT_STARTED
        lanes.setdefault(str(name), []).append(_Job(doc, status, queued, start, end))
    for lane in lanes.values():
        lane.sort(key=_lane_order)
    return {name: lanes[name] for name in sorted(lanes, key=_lane_key)}


def _lane_order(job: _Job) -> float:
    return job.start if job.start is not None else job.end


def _lane_key(name: str) -> tuple[int, list[Any]]:
    rank = 2 if name == NOT_STARTED else 1 if name == NO_WORKER else 0
    # Natural order, so that "host:999" comes before "host:1000".
    return rank, [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _lane_head(name: str, row: int, y: float) -> str:
    stripe = "lane lane-alt" if row % 2 else "lane"
    shown = name if len(name) <= 24 else name[:10] + "…" + name[-13:]  # keep the pid visible
    full = f"<title>{_text(name)}</title>" if shown != name else ""
    return (
        f'<rect class="{stripe}" x="0" y="{_n(y)}" width="{_n(_TL_W)}" height="{_n(_LANE_H)}"/>'
        f'<text class="lane-label" x="{_n(_TL_LEFT - 8)}" y="{_n(y + _BAR_DY + _BAR_H / 2)}" dy="0.35em">'
        f"{full}{_text(shown)}</text>"
    )


def _waits(lane: Sequence[_Job], y: float, at: _Scale, merged: bool) -> str:
    """The queue waits of a lane, under its bars: one strip per job, or for a big run
    the union of the lane's waits (they overlap: every job waits from the run's start)."""
    top = _n(y + _WAIT_DY)
    spans = [(job.queued, job.start if job.start is not None else job.end) for job in lane]
    if not merged:
        return "".join(
            f'<rect class="queue-wait" data-job-id="{_text(job.doc.get("id"))}" x="{_n(at(a))}" y="{top}" '
            f'width="{_n(at(b) - at(a))}" height="{_n(_WAIT_H)}"/>'
            for job, (a, b) in zip(lane, spans, strict=True)
            if b > a
        )
    union: list[list[float]] = []
    for a, b in sorted(span for span in spans if span[1] > span[0]):
        if union and at(a) <= at(union[-1][1]) + _MIN_BAR_W:
            union[-1][1] = max(union[-1][1], b)
        else:
            union.append([a, b])
    return "".join(
        f'<rect class="queue-wait" x="{_n(at(a))}" y="{top}" width="{_n(at(b) - at(a))}" height="{_n(_WAIT_H)}"/>'
        for a, b in union
    )


@dataclass(slots=True)
class _Drawn:
    svg: str
    grouped_jobs: int = 0
    groups: int = 0


def _lane_bars(lane: Sequence[_Job], y: float, at: _Scale, scale: float, group: bool) -> _Drawn:
    """The bars of a lane; with ``group``, runs of neighbouring sub-pixel bars of one
    status become one ``job-bar-group`` rect."""
    if not group:
        return _Drawn("".join(_job_bar(job, y, at) for job in lane))
    parts: list[str] = []
    drawn = _Drawn("")
    pending: list[_Job] = []

    def flush() -> None:
        if len(pending) == 1:
            parts.append(_job_bar(pending[0], y, at))
        elif pending:
            parts.append(_group_bar(pending, y, at))
            drawn.grouped_jobs += len(pending)
            drawn.groups += 1
        pending.clear()

    for job in lane:
        begin = job.start if job.start is not None else job.end
        if (job.end - begin) * scale >= _MIN_BAR_W:
            flush()
            parts.append(_job_bar(job, y, at))
            continue
        if pending and (pending[-1].status != job.status or (begin - pending[-1].end) * scale > _GROUP_GAP):
            flush()
        pending.append(job)
    flush()
    drawn.svg = "".join(parts)
    return drawn


def _bar_box(begin: float, end: float, at: _Scale) -> tuple[float, float]:
    """x and width of a bar, at least :data:`_MIN_TARGET_W` wide and inside the plot."""
    x, width = at(begin), max(at(end) - at(begin), _MIN_TARGET_W)
    return min(x, _TL_W - _TL_RIGHT - width), width


def _job_bar(job: _Job, y: float, at: _Scale) -> str:
    doc = job.doc
    job_id = doc.get("id")
    # A job never started is drawn as a sliver at the end of its wait.
    begin = job.start if job.start is not None else job.end
    x, width = _bar_box(begin, job.end, at)
    attempts = doc.get("attempts") or 0
    mark = ""
    label = f"×{attempts}"
    # Marked above the bar where the bar is as wide as the mark: narrower ones' marks
    # would run into their neighbours' (the tooltip says the attempts either way).
    if isinstance(attempts, int) and attempts > 1 and width >= _MARK_CHAR_W * len(label):
        mark = f'<text class="attempts-mark" x="{_n(x)}" y="{_n(y + _BAR_DY - 1)}">{label}</text>'
    return (
        f'<a href="{_href("jobs", job_id)}"><title>{_text(_job_tip(job))}</title>'
        f'<rect class="job-bar status-{job.status}" data-job-id="{_text(job_id)}" x="{_n(x)}" '
        f'y="{_n(y + _BAR_DY)}" width="{_n(width)}" height="{_n(_BAR_H)}"/>{mark}</a>'
    )


def _job_tip(job: _Job) -> str:
    doc = job.doc
    attempts = doc.get("attempts") or 0
    retried = f" (retried {attempts - 1}×)" if isinstance(attempts, int) and attempts > 1 else ""
    so_far = " so far" if job.status in UNFINISHED_JOB_STATUSES else ""
    waited = (job.start if job.start is not None else job.end) - job.queued
    ran = "not started" if job.start is None else f"ran for {format_duration(job.end - job.start)}{so_far}"
    lines = [
        _project_name(doc),
        f"status: {doc.get('status')}, attempts: {attempts}{retried}",
        f"queued for {format_duration(waited)}{so_far if job.start is None else ''}, {ran}",
        f"worker: {doc.get('worker') or '—'}",
    ]
    error = _first_line(doc.get("error_message"))
    if error:
        lines.append(f"error: {error}")
    return "\n".join(lines)


def _project_name(doc: Mapping[str, Any]) -> str:
    name = doc.get("project_name")
    return "(deleted project)" if name is None else str(name)


def _group_bar(group: Sequence[_Job], y: float, at: _Scale) -> str:
    first, last = group[0], group[-1]
    begin = first.start if first.start is not None else first.end
    x, width = _bar_box(begin, max(job.end for job in group), at)
    names = sorted({_project_name(job.doc) for job in group})
    projects = ", ".join(names[:3]) + (f" and {len(names) - 3:,} more" if len(names) > 3 else "")
    retried = sum(1 for job in group if isinstance(job.doc.get("attempts"), int) and job.doc["attempts"] > 1)
    lines = [
        f"{len(group):,} jobs {first.status}",
        f"from +{format_duration(begin)} to +{format_duration(last.end)}",
        f"projects: {projects}",
    ]
    if retried:
        lines.append(f"{_plural(retried, 'job')} retried")
    return (
        f'<rect class="job-bar-group status-{first.status}" x="{_n(x)}" y="{_n(y + _BAR_DY)}" '
        f'width="{_n(width)}" height="{_n(_BAR_H)}"><title>{_text(chr(10).join(lines))}</title></rect>'
    )


def _time_axis(lo: float, hi: float, at: _Scale, bottom: float) -> str:
    step = _time_step(hi - lo, 8)
    first = math.ceil(lo / step) * step
    parts = ['<g class="axis time-axis">']
    for t in _frange(first, hi, step):
        x = _n(at(t))
        parts.append(f'<line class="grid" x1="{x}" y1="{_n(_TL_TOP)}" x2="{x}" y2="{_n(bottom)}"/>')
        label = "+" + _time_label(t) if t >= 0 else _time_label(t)
        parts.append(f'<text class="axis-label x-label" x="{x}" y="{_n(bottom + 16)}">{label}</text>')
    parts.append(_baseline(_TL_LEFT, _TL_W - _TL_RIGHT, bottom))
    parts.append("</g>")
    return "".join(parts)


def _timeline_legend(lanes: Mapping[str, Sequence[_Job]]) -> str:
    present = {job.status for lane in lanes.values() for job in lane}
    order = ("completed", "running", "retrying", "pending", "failed", "skipped", "unknown")
    items = [(f"status-{s}", "", s) for s in order if s in present]
    items.append(("queue-wait", "", "waiting in the queue"))
    if any(isinstance(a := job.doc.get("attempts"), int) and a > 1 for lane in lanes.values() for job in lane):
        items.append(("", "", "×N: attempts"))
    return _legend(items, _TL_LEFT, 14)

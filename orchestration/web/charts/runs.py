"""The runs page's chart: a bar per run of the last :data:`MAX_BARS` nights, its height
the run's duration (until now while it runs), its colour the run's status, a mark over
failed and partial runs, a tooltip with the run's jobs and memories and a link to the
run's page.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from markupsafe import Markup

from orchestration.web.charts.svg import (
    RUN_STATUSES,
    _aware,
    _baseline,
    _count,
    _day,
    _empty,
    _frange,
    _href,
    _label_every,
    _legend,
    _mark,
    _n,
    _newest,
    _parse,
    _seconds,
    _status,
    _svg,
    _text,
    _time_label,
    _time_step,
    _when,
    _x_labels,
    _y_axis,
    format_duration,
)

__all__ = ["runs_chart"]

_RUNS_W, _RUNS_H = 760.0, 250.0
_RUNS_LEFT, _RUNS_RIGHT, _RUNS_TOP, _RUNS_BOTTOM = 64.0, 12.0, 38.0, 28.0


def runs_chart(runs: Sequence[Mapping[str, Any]], now: datetime) -> Markup:
    """Bars of the last :data:`MAX_BARS` runs (``runs``: documents newest first), oldest
    on the left: height the run's duration (until ``now`` while running), colour its
    status, a mark over failed and partial runs; each links to ``/runs/<id>``."""
    if not runs:
        return _empty("No runs yet.")
    now = _aware(now)
    shown = _newest(runs, "started_at", "scheduled_for")
    durations = [_run_duration(doc, start, now) for start, doc in shown]
    # The scale is set by the finished runs: a run left open for days (beat and the
    # reaper down) is drawn to the top, not allowed to flatten every other bar.
    finished = [
        d for (_, doc), d in zip(shown, durations, strict=True) if d is not None and doc.get("status") != "running"
    ]
    longest = max(finished or [d for d in durations if d is not None] or [0.0])
    step = _time_step(longest, 4)
    top = max(step, step * math.ceil(longest / step))

    left, right = _RUNS_LEFT, _RUNS_W - _RUNS_RIGHT
    base, plot_h = _RUNS_H - _RUNS_BOTTOM, _RUNS_H - _RUNS_BOTTOM - _RUNS_TOP
    slot = (right - left) / max(len(shown), 10)
    bar_w = slot * 0.64
    every = _label_every(slot, 6)

    ticks = [(base - plot_h * t / top, _time_label(t)) for t in _frange(0, top, step)]
    parts = [_run_legend(shown), _y_axis(ticks, left, right), '<g class="bars">']
    labels = []
    for i, ((start, doc), seconds) in enumerate(zip(shown, durations, strict=True)):
        x = left + i * slot + (slot - bar_w) / 2
        height = min(max(plot_h * (seconds or 0.0) / top, 1.5), plot_h)
        parts.append(_run_bar(doc, start, seconds, x, base - height, bar_w, height))
        if (len(shown) - 1 - i) % every == 0:  # the newest run always gets its date
            labels.append((x + bar_w / 2, _day(start)))
    parts.append("</g>")
    parts.append(_baseline(left, right, base))
    parts.append(_x_labels(labels, base + 17))
    return _svg(
        "runs-chart", _RUNS_W, _RUNS_H, f"Durations of the last {len(shown)} run{'s' if len(shown) != 1 else ''}", parts
    )


def _run_duration(doc: Mapping[str, Any], start: datetime | None, now: datetime) -> float | None:
    end = now if doc.get("status") == "running" else _parse(doc.get("finished_at"))
    seconds = _seconds(start, end)
    return None if seconds is None else max(seconds, 0.0)


def _run_bar(
    doc: Mapping[str, Any], start: datetime | None, seconds: float | None, x: float, y: float, w: float, h: float
) -> str:
    status = _status(doc.get("status"), RUN_STATUSES)
    took = ("running for " if status == "running" else "took ") + format_duration(seconds)
    tip = "\n".join(
        [
            f"{_when(start)} · {doc.get('trigger_type') or '?'}",
            f"status: {doc.get('status')}, {took}",
            f"jobs: {_count(doc.get('jobs_completed'))} ok, {_count(doc.get('jobs_failed'))} failed, "
            f"{_count(doc.get('jobs_total'))} total",
            f"memories: {_count(doc.get('memories_merged'))} merged, {_count(doc.get('memories_archived'))} archived",
        ]
    )
    run_id = doc.get("id")
    return (
        f'<a href="{_href("runs", run_id)}"><title>{_text(tip)}</title>'
        f'<rect class="run-bar status-{status}" data-run-id="{_text(run_id)}" '
        f'x="{_n(x)}" y="{_n(y)}" width="{_n(w)}" height="{_n(h)}"/>'
        f"{_mark(status, x + w / 2, y - 8)}</a>"
    )


def _run_legend(shown: Sequence[tuple[datetime | None, Mapping[str, Any]]]) -> str:
    present = {_status(doc.get("status"), RUN_STATUSES) for _, doc in shown}
    order = ("completed", "partial", "failed", "running", "unknown")
    items = [(f"status-{s}", s if s in ("failed", "partial") else "", s) for s in order if s in present]
    return _legend(items, _RUNS_LEFT, 14)

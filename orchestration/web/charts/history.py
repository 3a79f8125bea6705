"""A project page's chart: a pair of bars for each of its last :data:`MAX_BARS` jobs,
the active memories before and after the job (only before while it runs), a cross
over failed jobs, a tooltip with the change and the job's merges and archives, and a
link to the job's page.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from markupsafe import Markup

from orchestration.store.statuses import UNFINISHED_JOB_STATUSES
from orchestration.web.charts.svg import (
    JOB_STATUSES,
    _baseline,
    _count,
    _count_step,
    _day,
    _empty,
    _first_line,
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
    _when,
    _x_labels,
    _y_axis,
    format_duration,
)

__all__ = ["history_chart"]

_HIST_W, _HIST_H = 760.0, 250.0
_HIST_LEFT, _HIST_RIGHT, _HIST_TOP, _HIST_BOTTOM = 64.0, 12.0, 38.0, 28.0


def history_chart(jobs: Sequence[Mapping[str, Any]]) -> Markup:
    """A project's last :data:`MAX_BARS` jobs (``jobs``: documents newest first), oldest
    on the left: a pair of bars per job, the active memories before and after it, a
    cross over failed jobs; each pair links to ``/jobs/<id>``."""
    if not jobs:
        return _empty("no jobs yet")
    shown = _newest(jobs, "started_at", "created_at")
    highest = max(max(_int(doc.get("memories_before")), _int(doc.get("memories_after"))) for _, doc in shown)
    step = _count_step(max(highest, 1), 5)
    top = step * max(1, math.ceil(highest / step))

    left, right = _HIST_LEFT, _HIST_W - _HIST_RIGHT
    base, plot_h = _HIST_H - _HIST_BOTTOM, _HIST_H - _HIST_BOTTOM - _HIST_TOP
    slot = (right - left) / max(len(shown), 10)
    bar_w = slot * 0.34
    every = _label_every(slot, 6)

    ticks = [(base - plot_h * v / top, f"{round(v):,}") for v in _frange(0, top, step)]
    keys = [("history-before", "", "active before"), ("status-completed", "", "after")]
    if any(doc.get("status") == "failed" for _, doc in shown):
        keys.append(("", "failed", "failed"))
    legend = _legend(keys, left, 14)
    parts = [legend, _y_axis(ticks, left, right), '<g class="bars">']
    labels = []
    for i, (moment, doc) in enumerate(shown):
        x = left + i * slot + slot * 0.16
        parts.append(_history_pair(doc, moment, x, bar_w, base, plot_h / top))
        if (len(shown) - 1 - i) % every == 0:
            labels.append((x + bar_w, _day(moment)))
    parts.append("</g>")
    parts.append(_baseline(left, right, base))
    parts.append(_x_labels(labels, base + 17))
    return _svg(
        "history-chart", _HIST_W, _HIST_H, f"Active memories before and after the last {len(shown)} jobs", parts
    )


def _int(value: object) -> int:
    return value if isinstance(value, int) else 0


def _history_pair(doc: Mapping[str, Any], moment: datetime | None, x: float, w: float, base: float, per: float) -> str:
    status = _status(doc.get("status"), JOB_STATUSES)
    before, after = _int(doc.get("memories_before")), _int(doc.get("memories_after"))
    finished = status not in UNFINISHED_JOB_STATUSES
    h_before = max(before * per, 1.0)
    rects = [
        f'<rect class="history-bar history-before" data-job-id="{_text(doc.get("id"))}" x="{_n(x)}" '
        f'y="{_n(base - h_before)}" width="{_n(w)}" height="{_n(h_before)}"/>'
    ]
    tallest = h_before
    if finished:  # an unfinished job has no count after it yet
        h_after = max(after * per, 1.0)
        tallest = max(tallest, h_after)
        rects.append(
            f'<rect class="history-bar history-after status-{status}" data-job-id="{_text(doc.get("id"))}" '
            f'x="{_n(x + w)}" y="{_n(base - h_after)}" width="{_n(w)}" height="{_n(h_after)}"/>'
        )
    mark = _mark("failed", x + w, base - tallest - 8) if status == "failed" else ""
    tip = _text(_history_tip(doc, moment, finished))
    return f'<a href="{_href("jobs", doc.get("id"))}"><title>{tip}</title>{"".join(rects)}{mark}</a>'


def _history_tip(doc: Mapping[str, Any], moment: datetime | None, finished: bool) -> str:
    before, after = _int(doc.get("memories_before")), _int(doc.get("memories_after"))
    took = _seconds(_parse(doc.get("started_at")), _parse(doc.get("completed_at")))
    change = (
        f"{before:,} → {after:,} active ({after - before:+,})"
        if finished
        else f"{before:,} active before, still running"
    )
    lines = [
        f"{_when(moment)} · {doc.get('trigger_type') or '?'}",
        f"status: {doc.get('status')}, attempts: {doc.get('attempts') or 0}",
        change,
        f"{_count(doc.get('memories_merged'))} merged, {_count(doc.get('memories_archived'))} archived",
        f"took {format_duration(took)}",
    ]
    error = _first_line(doc.get("error_message"))
    if error:
        lines.append(f"error: {error}")
    return "\n".join(lines)

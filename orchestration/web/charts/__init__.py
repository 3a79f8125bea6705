"""Server-rendered SVG charts for the read-only dashboard.

- :func:`runs_chart` (``runs``): the runs page's bars of the last 30 nights (duration by status).
- :func:`timeline` (``gantt``): a run page's Gantt chart of its jobs, one lane per worker process.
- :func:`history_chart` (``history``): a project page's active memories before and after each job.
- :func:`format_duration` (``svg``): the durations in tooltips, also used by the templates.

Inputs are the JSON documents ``--json`` prints (times as ISO 8601 strings with a
timezone, ids as strings). The pages are served with a CSP that allows no scripts and
no inline styles, so the SVG carries only geometry; colours and fonts come from the
classes styled in ``static/charts.css``. Every text from the data is escaped and the
output is well-formed XML; the functions return :class:`markupsafe.Markup`. What the
three charts share (escaping, axes, legends, marks, scales, time and number formats)
is ``svg``.
"""

from orchestration.web.charts.gantt import MAX_SINGLE_JOBS as MAX_SINGLE_JOBS
from orchestration.web.charts.gantt import NO_WORKER as NO_WORKER
from orchestration.web.charts.gantt import NOT_STARTED as NOT_STARTED
from orchestration.web.charts.gantt import timeline
from orchestration.web.charts.history import history_chart
from orchestration.web.charts.runs import runs_chart
from orchestration.web.charts.svg import JOB_STATUSES as JOB_STATUSES
from orchestration.web.charts.svg import MAX_BARS as MAX_BARS
from orchestration.web.charts.svg import RUN_STATUSES as RUN_STATUSES
from orchestration.web.charts.svg import format_duration

__all__ = ["format_duration", "history_chart", "runs_chart", "timeline"]

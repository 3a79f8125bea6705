"""Turning documents (``orchestration.documents``) and results into what people read:
aligned text tables and summaries, and the JSON that ``--json`` prints. Every value the text
forms print from the database goes through ``text.clean`` (no control characters reach
a terminal); JSON escapes them itself. Error texts are printed whole, wrapped to the
terminal width (80 columns when there is no terminal); only names in table cells are
shortened to fit, next to an id that tells them apart.
"""

from __future__ import annotations

import json
import shutil
import textwrap
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from orchestration.cli.text import clean
from orchestration.documents.jobs import pass_text as job_pass_text
from orchestration.documents.times import parse
from orchestration.store.documents import jsonable
from orchestration.store.statuses import UNFINISHED_JOB_STATUSES, JobStatus, RunStatus
from orchestration.store.types import utcnow

if TYPE_CHECKING:
    from orchestration.consolidation.calibration import Calibration


def dumps(document: Any) -> str:
    return json.dumps(jsonable(document), indent=2, sort_keys=False)


def terminal_width() -> int:
    """Columns of the terminal (``COLUMNS`` if set); 80 when there is none (piped)."""
    return max(40, shutil.get_terminal_size((80, 24)).columns)


def table(
    headers: Sequence[str], rows: Iterable[Sequence[Any]], squeeze: int | None = None, width: int | None = None
) -> str:
    """Aligned columns under a rule. With ``squeeze``, that column's cells (a name) are
    shortened, ending in "…", as far as needed for the lines to fit ``width``."""
    cells = [[clean(h) for h in headers]] + [["" if v is None else clean(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    if squeeze is not None:
        excess = sum(widths) + 2 * (len(widths) - 1) - (width or terminal_width())
        if excess > 0:
            widths[squeeze] = max(len(cells[0][squeeze]), 12, widths[squeeze] - excess)
            for row in cells[1:]:
                row[squeeze] = fit(row[squeeze], widths[squeeze])
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def fit(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters, ending in "…" when cut."""
    return text if len(text) <= width else text[: width - 1] + "…"


def wrapped(label: str, text: str, width: int | None = None, hang: int = 2) -> list[str]:
    """``label`` followed by all of ``text``, each of its lines escaped and wrapped to
    ``width``; a wrapped line continues ``hang`` columns further in. Nothing is cut."""
    width = width or terminal_width()
    indent = " " * len(label)
    lines: list[str] = []
    for line in text.strip("\n").split("\n"):
        first = label if not lines else indent
        lines += textwrap.wrap(
            clean(line.rstrip("\r")),
            width=max(width, len(indent) + 20),
            initial_indent=first,
            subsequent_indent=indent + " " * hang,
            break_on_hyphens=False,
        ) or [first.rstrip()]
    return lines


def duration(start: datetime | None, end: datetime | None) -> str:
    if start is None or end is None:
        return "-"
    seconds = (end - start).total_seconds()
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def took(job: dict[str, Any]) -> str:
    """How long a job (a document) took: from its start to its end, "-" if unfinished."""
    return duration(parse(job["started_at"]), parse(job["completed_at"]))


def short(value: Any) -> str:
    return str(value)[:8] if value else "-"


def when(value: str | datetime | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


def stamp(value: str | datetime | None) -> str:
    """A time to the minute, for tables: ``2026-11-27 02:00`` (UTC)."""
    parsed = parse(value)
    return "-" if parsed is None else parsed.strftime("%Y-%m-%d %H:%M")


# --- runs -------------------------------------------------------------------------


def runs_table(runs: Sequence[dict[str, Any]]) -> str:
    """One line per run (documents of :func:`run_row`) with its start time, within 80
    columns."""
    return table(
        ["run", "started (UTC)", "trigger", "status", "ok/fail/all", "merged", "archived"],
        [
            (
                short(r["id"]),
                stamp(r["started_at"]),
                r["trigger_type"],
                r["status"],
                f"{r['jobs_completed']}/{r['jobs_failed']}/{r['jobs_total']}",
                r["memories_merged"],
                r["memories_archived"],
            )
            for r in runs
        ],
    )


def run_text(doc: dict[str, Any]) -> str:
    """A run summary, its jobs (failed first) and the full text of every error."""
    started, finished = parse(doc["started_at"]), parse(doc["finished_at"])
    is_open = doc["status"] == RunStatus.RUNNING
    elapsed = f"running for {duration(started, utcnow())}" if is_open else f"took {duration(started, finished)}"
    so_far = "  (so far, from the job rows)" if doc.get("counters_from") == "jobs" else ""
    lines = [
        f"run {doc['id']}  {clean(doc['trigger_type'])}  status: {clean(doc['status'].upper())}",
        f"  slot {when(doc['scheduled_for'])}  {elapsed}",
        f"  started {when(started)}  finished {when(finished)}",
        f"  projects: {doc['projects_checked']} checked, {doc['projects_eligible']} eligible, "
        f"{doc['projects_skipped']} disabled",
        f"  jobs: {doc['jobs_completed']} completed, {doc['jobs_failed']} failed, {doc['jobs_total']} total{so_far}",
        f"  memories: {doc['memories_before']} -> {doc['memories_after']} active, "
        f"{doc['memories_merged']} merged, {doc['memories_archived']} archived",
    ]
    if doc.get("error_message") and doc["error_message"].strip():
        lines += wrapped("  error: ", doc["error_message"])
    summary = doc.get("summary")
    lines += _links(summary if isinstance(summary, dict) else {})  # a summary is an object, unless hand-edited
    jobs = doc.get("jobs") or []
    if jobs:
        lines += ["", jobs_in_run_table(jobs)]
        problems = [j for j in jobs if j["error_message"] and j["status"] in (JobStatus.FAILED, JobStatus.SKIPPED)]
        if problems:
            lines += ["", "errors:"]
            for j in problems:
                heading = f"job {short(j['id'])}  {_project(j)}  {j['status']} after {_tries(j)}:"
                lines += wrapped("  ", heading, hang=4)  # continues below the error's own lines
                lines += wrapped("    ", j["error_message"])
        undone = [j for j in jobs if j.get("rolled_back_at")]
        if undone:
            lines += ["", "rolled back:"]
            for j in undone:
                lines += wrapped("  ", f"job {short(j['id'])}  {_project(j)}  {rollback_state(j)}", hang=4)
    return "\n".join(lines)


def _links(summary: dict[str, Any]) -> list[str]:
    """The run's links to retries (``runs retry``) and what the summary notes about it."""
    lines = []
    if summary.get("retry_of"):
        lines.append(f"  retry of run {clean(str(summary['retry_of']))}")
    if summary.get("retried_by"):
        lines.append(f"  retried by run {', '.join(clean(str(run)) for run in summary['retried_by'])}")
    if summary.get("messages_lost_at"):
        lines.append(
            f"  the broker lost messages of this run; its jobs were sent again {when(summary['messages_lost_at'])}"
        )
    if summary.get("schedule_mismatch"):
        beat, worker = (clean(str(summary["schedule_mismatch"].get(side))) for side in ("beat", "worker"))
        lines.append(f"  beat's schedule {beat} differs from the worker's {worker}")
    return lines


def jobs_in_run_table(jobs: Sequence[dict[str, Any]]) -> str:
    """One line per job of a run: short job id, project name and id, status (with the
    progress of an unfinished job), attempts, time taken, merged and archived."""
    return table(
        ["job", "project", "id", "status", "tries", "took", "merged", "archived"],
        [
            (
                short(j["id"]),
                j.get("project_name") or "(deleted)",
                short(j["project_id"]),
                job_status(j),
                j["attempts"],
                took(j),
                j["memories_merged"],
                j["memories_archived"],
            )
            for j in jobs
        ],
        squeeze=1,
    )


def job_status(job: dict[str, Any]) -> str:
    """A job's status for a table: "rolled back" once undone, an unfinished job's
    progress after its status ("running 40%")."""
    if job.get("rolled_back_at"):
        return "rolled back"
    if job["status"] in UNFINISHED_JOB_STATUSES and job["status"] != JobStatus.PENDING:
        return f"{job['status']} {job['progress']:.0%}"
    return str(job["status"])


def rollback_state(job: dict[str, Any]) -> str:
    if not job.get("rolled_back_at"):
        return "not rolled back"
    return f"rolled back {when(job['rolled_back_at'])} by {clean(job.get('rolled_back_by') or '-')}"


def _project(job: dict[str, Any]) -> str:
    name = job.get("project_name")
    return f"{clean(name)} ({short(job['project_id'])})" if name else f"project {short(job.get('project_id'))}"


def _tries(job: dict[str, Any]) -> str:
    return f"{job['attempts']} attempt{'' if job['attempts'] == 1 else 's'}"


def _first_line(text: str | None) -> str:
    """The first line of an error text, control characters escaped. Lines end at a
    newline only: a lone carriage return is shown (as ``\\r``)."""
    if not text or not text.strip():
        return ""
    return clean(text.strip().split("\n")[0].rstrip("\r"))


# --- jobs -------------------------------------------------------------------------


def jobs_table(jobs: Sequence[dict[str, Any]]) -> str:
    """``jobs list``: one line per job; the first line of its error, shortened to fit
    the terminal (``jobs show`` prints all of it)."""
    text = table(
        ["job", "project", "run", "status", "tries", "started (UTC)", "took", "merged", "archived", "error"],
        [
            (
                short(j["id"]),
                fit(clean(j.get("project_name") or "(deleted)"), 24),
                short(j["run_id"]) if j["run_id"] else "manual",
                job_status(j),
                j["attempts"],
                stamp(j["started_at"]),
                took(j),
                j["memories_merged"],
                j["memories_archived"],
                _first_line(j["error_message"]),
            )
            for j in jobs
        ],
    )
    lines = text.split("\n")
    limit = max(terminal_width(), lines[0].rindex("error") + 40)  # the error is the last column
    return "\n".join([lines[0], lines[1][:limit], *(fit(line, limit) for line in lines[2:])])


def job_text(doc: dict[str, Any]) -> str:
    """``jobs show``: one job, its counters, what it left alone, its audit rows, its
    rollback state and the full text of its error."""
    changes = ", ".join(f"{clean(k)} {v}" for k, v in sorted(doc.get("changes", {}).items())) or "none"
    started, completed = parse(doc["started_at"]), parse(doc["completed_at"])
    lines = [
        f"job {doc['id']}  {clean(doc['trigger_type'])} by {clean(doc['triggered_by'])}  "
        f"status: {clean(doc['status'].upper())}",
        f"  project {clean(doc.get('project_name') or '-')} ({doc['project_id']})  run {doc['run_id'] or '- (manual)'}",
        f"  attempts {doc['attempts']}  progress {doc['progress']:.0%}  took {took(doc)}",
        f"  started {when(started)}  completed {when(completed)}",
        f"  memories: {doc['memories_before']} -> {doc['memories_after']} active, {doc['clusters_found']} clusters, "
        f"{doc['memories_merged']} merged, {doc['memories_archived']} archived",
        f"  left alone: {doc['skipped_invalid']} invalid memories skipped, {doc['conflicts']} conflicts, "
        f"{doc['pairs_kept_apart']} pairs kept apart",
        f"  {pass_text(doc)}",
        f"  audit rows: {changes}",
        f"  rollback: {rollback_state(doc)}",
    ]
    if doc.get("error_message") and doc["error_message"].strip():
        lines += wrapped("  error: ", doc["error_message"])
    return "\n".join(lines)


def pass_text(doc: dict[str, Any]) -> str:
    """How a job or a dry run compared (``documents.jobs.pass_text``), safe at a terminal."""
    return clean(job_pass_text(doc))


def calibration_text(report: Calibration, name: str) -> str:
    """``orchestration similarity`` for people: distribution, thresholds, sample pairs."""
    guard = "on" if report.value_guard else "off"
    lines = [
        f"project {clean(name)} ({report.project_id}): {report.memories} active memories, {report.compared} compared, "
        f"threshold {report.threshold:.2f}, value guard {guard}"
        + (f", {report.skipped_invalid} with invalid data skipped" if report.skipped_invalid else ""),
        "",
        "nearest-neighbour similarity: "
        + "  ".join(f"{k} {'-' if v is None else f'{v:.3f}'}" for k, v in report.nearest.items()),
    ]
    most = max((bin_["memories"] for bin_ in report.histogram), default=0) or 1
    for bin_ in report.histogram:
        bar = "#" * round(40 * bin_["memories"] / most)
        lines.append(f"  {bin_['from']:>5.2f} - {bin_['to']:<4.2f} {bin_['memories']:>7}  {bar}")
    lines += ["", "what would merge at each threshold (* the project's):"]
    rows = [
        (
            f"{row.threshold:.2f}" + (" *" if row.threshold == report.threshold else ""),
            row.memories_with_neighbour,
            row.memories_merged,
            row.clusters,
            row.pairs_kept_apart,
        )
        for row in report.thresholds
    ]
    lines.append(table(["threshold", "with a neighbour", "merged", "clusters", "kept apart"], rows))
    for title, pairs in (("just at or above", report.above), ("just below", report.below)):
        lines += ["", f"pairs {title} {report.threshold:.2f}:"]
        lines += [
            f"  {p['similarity']:.3f}  {_clip(p['a']['content'])}\n         {_clip(p['b']['content'])}" for p in pairs
        ] or ["  (none)"]
    return "\n".join(lines)


def _clip(text: str, width: int = 100) -> str:
    text = clean(" ".join(text.split()))
    return text if len(text) <= width else text[: width - 1] + "…"

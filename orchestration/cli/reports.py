"""Turning rows and results into what people and scripts read: JSON documents whose
keys are the column names, and short aligned text tables. Every value the text forms
print from the database goes through ``text.clean`` (no control characters reach a
terminal); JSON escapes them itself."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import case, select

from orchestration.cli.text import clean
from orchestration.store.db import session_scope
from orchestration.store.documents import jsonable, row_dict
from orchestration.store.models import ConsolidationJob, ConsolidationRun, Project
from orchestration.store.statuses import JobStatus

if TYPE_CHECKING:
    from orchestration.consolidation.calibration import Calibration


def dumps(document: Any) -> str:
    return json.dumps(jsonable(document), indent=2, sort_keys=False)


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    cells = [[clean(h) for h in headers]] + [["" if v is None else clean(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


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


def short(value: Any) -> str:
    return str(value)[:8] if value else "-"


def when(value: str | datetime | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


def runs_table(runs: Sequence[Any]) -> str:
    """One line per run, within 80 columns; a manual run shows "manual" for its slot."""
    return table(
        ["run", "slot", "status", "ok/fail/all", "merged", "archived", "took"],
        [
            (
                short(r.id),
                when(r.scheduled_for) if r.scheduled_for else r.trigger_type,
                r.status,
                f"{r.jobs_completed}/{r.jobs_failed}/{r.jobs_total}",
                r.memories_merged,
                r.memories_archived,
                duration(r.started_at, r.finished_at),
            )
            for r in runs
        ],
    )


def run_document(run_id: uuid.UUID) -> dict[str, Any]:
    """A run's columns plus its jobs (failed first), as ``runs show --json`` prints it."""
    with session_scope() as session:
        run = session.get_one(ConsolidationRun, run_id)
        rows = session.execute(
            select(ConsolidationJob, Project.name)
            .outerjoin(Project, Project.id == ConsolidationJob.project_id)
            .where(ConsolidationJob.run_id == run_id)
            .order_by(
                case((ConsolidationJob.status == JobStatus.FAILED, 0), else_=1), Project.name, ConsolidationJob.id
            )
        ).all()
        return {**row_dict(run), "jobs": [{**row_dict(job), "project_name": name} for job, name in rows]}


def _first_line(text: str | None, width: int = 60) -> str:
    """The first line of an error text, control characters escaped, cut to ``width``.
    Lines end at a newline only: a lone carriage return is shown (as ``\\r``), not
    taken as the end of a line."""
    if not text or not text.strip():
        return ""
    line = clean(text.strip().split("\n")[0].rstrip("\r"))
    return line if len(line) <= width else line[: width - 1] + "…"


def _parse(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def run_text(doc: dict[str, Any]) -> str:
    """A run summary and its jobs (failed first), within 80 columns."""
    started, finished = _parse(doc["started_at"]), _parse(doc["finished_at"])
    lines = [
        f"run {doc['id']}  {clean(doc['trigger_type'])}  status: {clean(doc['status'].upper())}",
        f"  slot {when(doc['scheduled_for'])}  took {duration(started, finished)}",
        f"  started {when(started)}  finished {when(finished)}",
        f"  projects: {doc['projects_checked']} checked, {doc['projects_eligible']} eligible, "
        f"{doc['projects_skipped']} disabled",
        f"  jobs: {doc['jobs_completed']} completed, {doc['jobs_failed']} failed, {doc['jobs_total']} total",
        f"  memories: {doc['memories_before']} -> {doc['memories_after']} active, "
        f"{doc['memories_merged']} merged, {doc['memories_archived']} archived",
    ]
    if doc.get("error_message"):
        lines.append(f"  error: {_first_line(doc['error_message'], 71)}")
    jobs = doc.get("jobs") or []
    if jobs:
        lines += [
            "",
            table(
                ["project", "status", "tries", "took", "merged", "archived", "progress"],
                [
                    (
                        _project(j),
                        j["status"],
                        j["attempts"],
                        duration(_parse(j["started_at"]), _parse(j["completed_at"])),
                        j["memories_merged"],
                        j["memories_archived"],
                        f"{j['progress']:.0%}",
                    )
                    for j in jobs
                ],
            ),
        ]
        problems = [j for j in jobs if j["error_message"] and j["status"] in (JobStatus.FAILED, JobStatus.SKIPPED)]
        if problems:
            lines += ["", "errors:"]
            lines += [f"  {_project(j)}: {_first_line(j['error_message'], 76 - len(_project(j)))}" for j in problems]
    return "\n".join(lines)


def _project(job: dict[str, Any]) -> str:
    return clean(job.get("project_name") or short(job.get("project_id")))[:20]


def job_text(doc: dict[str, Any]) -> str:
    changes = ", ".join(f"{clean(k)} {v}" for k, v in sorted(doc.get("changes", {}).items())) or "none"
    lines = [
        f"job {doc['id']}  {clean(doc['trigger_type'])} by {clean(doc['triggered_by'])}  "
        f"status: {clean(doc['status'].upper())}",
        f"  project {clean(doc.get('project_name') or '-')} ({doc['project_id']})  run {doc['run_id'] or '-'}",
        f"  attempts {doc['attempts']}  progress {doc['progress']:.0%}  started {when(doc['started_at'])}"
        f"  completed {when(doc['completed_at'])}",
        f"  memories: {doc['memories_before']} -> {doc['memories_after']} active, {doc['clusters_found']} clusters, "
        f"{doc['memories_merged']} merged, {doc['memories_archived']} archived",
        f"  audit rows: {changes}",
    ]
    if doc.get("error_message"):
        lines.append(f"  error: {_first_line(doc['error_message'], 200)}")
    return "\n".join(lines)


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

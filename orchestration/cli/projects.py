"""``projects list`` and ``projects show``: each project's name, id, switch, threshold,
active memories and last job; ``show`` adds its effective options and recent jobs
(the documents of ``orchestration.documents.projects``)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import click

from orchestration.cli import reports
from orchestration.cli.app import Group, echo_json, echo_list, echo_text, main
from orchestration.cli.lookup import find_project
from orchestration.cli.text import clean
from orchestration.documents.projects import project_detail, project_documents
from orchestration.store import db

# ``projects show`` prints this many of the recent jobs its document lists.
SHOWN_JOBS = 10


@main.group("projects", cls=Group)
def projects_group() -> None:
    """Inspect projects: thresholds, active memories, last jobs."""


def _threshold(doc: dict[str, Any]) -> str:
    return f"default ({doc['threshold']})" if doc["threshold_is_default"] else str(doc["threshold"])


def _last(doc: dict[str, Any]) -> tuple[str, str]:
    job = doc["last_job"]
    return ("-", "-") if job is None else (reports.short(job["id"]), reports.job_status(job))


def projects_table(documents: Sequence[dict[str, Any]]) -> str:
    """One line per project; names are printed whole (the table widens for long ones)."""
    return reports.table(
        ["project", "id", "enabled", "threshold", "active", "last job", "status"],
        [
            (
                d["name"],
                reports.short(d["id"]),
                "yes" if d["consolidation_enabled"] else "no",
                _threshold(d),
                d["active_memories"],
                *_last(d),
            )
            for d in documents
        ],
    )


@projects_group.command("list")
@click.option("--json", "as_json", is_flag=True)
def projects_list(as_json: bool) -> None:
    """Every project: name, id, enabled, threshold, active memories, last job."""
    with db.session_scope() as session:
        documents = project_documents(session)
    echo_list(documents, as_json, projects_table, "projects", filtered=False)


@projects_group.command("show")
@click.argument("project", metavar="PROJECT")
@click.option("--json", "as_json", is_flag=True)
def projects_show(project: str, as_json: bool) -> None:
    """One project (id, id prefix or name): its state, effective options, recent jobs."""
    document = project_detail(find_project(project).id)
    if as_json:
        echo_json(document)
        return
    echo_text(project_text(document))


def project_text(doc: dict[str, Any]) -> str:
    """``projects show`` for people."""
    enabled = "enabled" if doc["consolidation_enabled"] else "disabled"
    due = "yes" if doc["eligible"] else "no"
    lines = [
        f"project {clean(doc['name'])} ({doc['id']})",
        f"  consolidation {enabled}  created {reports.when(doc['created_at'])}",
        f"  threshold {_threshold(doc)}  active memories {doc['active_memories']}  due tonight: {due}",
    ]
    job = doc["last_job"]
    if job is not None:
        lines.append(f"  last job {job['id']}  {reports.job_status(job)}  {reports.when(job['started_at'])}")
    if doc["options"] is None:
        lines += reports.wrapped("  options: invalid: ", doc["options_error"] or "")
    else:
        own = doc["consolidation_options"] or {}
        lines += ["", "options (* set for this project):"]
        lines.append(
            reports.table(
                ["option", "value"],
                [(f"{k}{' *' if k in own else ''}", json.dumps(v)) for k, v in doc["options"].items()],
            )
        )
    jobs = doc["recent_jobs"][:SHOWN_JOBS]
    lines += ["", "recent jobs:" if jobs else "no jobs yet"]
    if jobs:
        lines.append(
            reports.table(
                ["job", "run", "status", "tries", "started (UTC)", "took", "merged", "archived"],
                [
                    (
                        reports.short(j["id"]),
                        reports.short(j["run_id"]) if j["run_id"] else "manual",
                        reports.job_status(j),
                        j["attempts"],
                        reports.stamp(j["started_at"]),
                        reports.took(j),
                        j["memories_merged"],
                        j["memories_archived"],
                    )
                    for j in jobs
                ],
            )
        )
    return "\n".join(lines)

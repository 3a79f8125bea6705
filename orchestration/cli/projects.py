"""``projects list`` and ``projects show``: each project's name, id, switch, threshold,
active memories and last job; ``show`` adds its effective options and recent jobs.

Active memories are the trigger-kept counts plus their unfolded deltas, as the nightly
eligibility check reads them (``orchestration.store.counts``); nothing is folded here,
these commands only read.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from typing import Any

import click
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from orchestration.cli import reports
from orchestration.cli.app import Group, echo_json, echo_list, echo_text, main
from orchestration.cli.lookup import find_project
from orchestration.cli.text import clean
from orchestration.settings import get_settings
from orchestration.store import counts, db
from orchestration.store.documents import row_dict
from orchestration.store.models import ConsolidationJob, Project, ProjectMemoryCount

RECENT_JOBS = 10


@main.group("projects", cls=Group)
def projects_group() -> None:
    """Inspect projects: thresholds, active memories, last jobs."""


def project_documents(session: Session, project_id: uuid.UUID | None = None) -> list[dict[str, Any]]:
    """Projects (all, or one) by name: their columns, ``active_memories``, the
    ``threshold`` in force (``threshold_is_default``), whether the next nightly check
    would pick them (``eligible``) and their ``last_job`` (a job document, or null)."""
    default = get_settings().default_threshold
    pending = counts.pending_deltas()
    active = func.coalesce(ProjectMemoryCount.active_count, 0) + func.coalesce(pending.c.delta, 0)
    query = (
        select(Project, active.label("active"))
        .outerjoin(ProjectMemoryCount, ProjectMemoryCount.project_id == Project.id)
        .outerjoin(pending, pending.c.project_id == Project.id)
        .order_by(Project.name, Project.id)
    )
    if project_id is not None:
        query = query.where(Project.id == project_id)
    rows = session.execute(query).all()
    last = _last_jobs(session, project_id)
    documents = []
    for project, count in rows:
        threshold = default if project.consolidation_threshold is None else project.consolidation_threshold
        documents.append(
            {
                **row_dict(project),
                "active_memories": int(count),
                "threshold": threshold,
                "threshold_is_default": project.consolidation_threshold is None,
                "eligible": bool(project.consolidation_enabled and count > threshold),
                "last_job": {**last[project.id], "project_name": project.name} if project.id in last else None,
            }
        )
    return documents


def _last_jobs(session: Session, project_id: uuid.UUID | None) -> dict[uuid.UUID, dict[str, Any]]:
    """Each project's newest job, as a job document."""
    job = ConsolidationJob
    rank = func.row_number().over(partition_by=job.project_id, order_by=(job.created_at.desc(), job.id.desc()))
    ranked = select(job.id, rank.label("rank")).where(job.project_id.is_not(None))
    if project_id is not None:
        ranked = ranked.where(job.project_id == project_id)
    newest = ranked.subquery()
    rows = session.scalars(select(job).join(newest, newest.c.id == job.id).where(newest.c.rank == 1)).all()
    return {row.project_id: reports.job_document(row, None) for row in rows if row.project_id is not None}


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
    from orchestration.consolidation.options import InvalidOptions, resolve_options

    found = find_project(project)
    with db.session_scope() as session:
        (document,) = project_documents(session, found.id)
        recent = session.scalars(
            select(ConsolidationJob)
            .where(ConsolidationJob.project_id == found.id)
            .order_by(ConsolidationJob.created_at.desc(), ConsolidationJob.id.desc())
            .limit(RECENT_JOBS)
        ).all()
        document["recent_jobs"] = [reports.job_document(job, found.name) for job in recent]
    try:
        document["options"], document["options_error"] = resolve_options(found.consolidation_options).as_dict(), None
    except InvalidOptions as exc:
        document["options"], document["options_error"] = None, str(exc)
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
    jobs = doc["recent_jobs"]
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

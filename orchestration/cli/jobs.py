"""Commands about jobs: ``consolidate`` (a manual job in this process), ``similarity``
(what would merge at which threshold), ``jobs list`` and ``jobs show`` (``jobs
rollback`` is in ``rollback``). PROJECT is an id, a unique id prefix or a unique name
(``lookup.find_project``)."""

from __future__ import annotations

import uuid
from dataclasses import asdict
from typing import Any

import click

from orchestration.cli import reports
from orchestration.cli.app import MAX_LIMIT, CliError, Group, echo_json, echo_list, echo_text, main, user
from orchestration.cli.lookup import find, find_project
from orchestration.cli.text import clean
from orchestration.documents.jobs import JobFilter, job_detail, list_jobs
from orchestration.settings import get_settings
from orchestration.store import db
from orchestration.store.documents import row_dict
from orchestration.store.models import ConsolidationJob, ConsolidationRun
from orchestration.store.statuses import JobStatus, TriggerType


@main.command()
@click.argument("project_id", metavar="PROJECT")
@click.option("--dry-run", is_flag=True, help="Change nothing; report what would change.")
@click.option("--force", is_flag=True, help="Consolidate even if the project has consolidation disabled.")
@click.option("--full", is_flag=True, help="Compare every memory (a full pass) instead of only the new ones.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def consolidate(project_id: str, dry_run: bool, force: bool, full: bool, as_json: bool) -> None:
    """Consolidate one project in this process as a manual job."""
    from orchestration.consolidation.options import InvalidOptions, resolve_options
    from orchestration.consolidation.preview import preview
    from orchestration.consolidation.projects import ProjectDisabled, ProjectGone, load_project
    from orchestration.jobs import lifecycle

    project = find_project(project_id)
    try:
        with db.session_scope() as session:
            load_project(session, project.id, force=force)
        options = resolve_options(project.consolidation_options)
    except ProjectDisabled as exc:
        raise CliError(f"{exc}; use --force to consolidate it anyway") from None
    except (ProjectGone, InvalidOptions) as exc:
        raise CliError(str(exc)) from None
    if dry_run:
        result = preview(project.id, options, force=force, full=full)
        document: dict[str, Any] = {"job_id": None, "status": "dry_run", **vars(result)}
    else:
        who = user()
        with db.session_scope() as session:
            job = lifecycle.create_job(
                session,
                project.id,
                run_id=None,
                trigger_type=TriggerType.MANUAL,
                triggered_by=who,
                options=project.consolidation_options,
                full=full,
            )
        try:
            outcome = _run_manual(job.id, force, who)
        except lifecycle.Superseded as exc:  # another process took the job over
            raise CliError(str(exc)) from None
        job = find(ConsolidationJob, str(job.id), "job")
        document = row_dict(job)
        if outcome.status != JobStatus.COMPLETED:
            raise CliError(f"job {job.id} {outcome.status}: {outcome.error}")
    if as_json:
        echo_json(document)
        return
    label = "would" if dry_run else "did"
    echo_text(
        f"{'dry run' if dry_run else 'job ' + str(document['id'])}: project {clean(project.name)} ({project.id})\n"
        f"  active memories {document['memories_before']} -> {document['memories_after']}\n"
        f"  {label} merge {document['memories_merged']} memories into {document['clusters_found']} consolidated\n"
        f"  {label} archive {document['memories_archived']} stale memories\n"
        f"  {reports.pass_text(document)}"
        + (f"\n  value guard kept {document['pairs_kept_apart']} similar pairs apart" if dry_run else "")
    )


def _run_manual(job_id: uuid.UUID, force: bool, who: str) -> Any:
    from orchestration.jobs import lifecycle

    try:
        return lifecycle.run(job_id, get_settings(), force=force, changed_by=who)
    except lifecycle.AttemptFailed as exc:  # recorded on the job, reported as one line
        return lifecycle.fail(job_id, exc.attempt, exc.error)


@main.command()
@click.argument("project_id", metavar="PROJECT")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def similarity(project_id: str, as_json: bool) -> None:
    """How similar a project's memories are: to pick its similarity_threshold."""
    from orchestration.consolidation.calibration import calibrate
    from orchestration.consolidation.options import InvalidOptions, resolve_options

    project = find_project(project_id)
    try:
        options = resolve_options(project.consolidation_options)
    except InvalidOptions as exc:
        raise CliError(str(exc)) from None
    with db.session_scope() as session:
        report = calibrate(session, project.id, options)
    if as_json:
        echo_json(asdict(report))
        return
    echo_text(reports.calibration_text(report, project.name))


# --- jobs -----------------------------------------------------------------------


@main.group("jobs", cls=Group)
def jobs_group() -> None:
    """Inspect and roll back jobs."""


@jobs_group.command("list")
@click.option("--run", "run_id", metavar="RUN", help="Jobs of this run (id or id prefix).")
@click.option("--project", metavar="PROJECT", help="Jobs of this project (id, id prefix or name).")
@click.option("--status", type=click.Choice([s.value for s in JobStatus]))
@click.option("--limit", type=click.IntRange(min=1, max=MAX_LIMIT), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def jobs_list(run_id: str | None, project: str | None, status: str | None, limit: int, as_json: bool) -> None:
    """Jobs, newest first."""
    where = JobFilter(
        run_id=None if run_id is None else find(ConsolidationRun, run_id, "run").id,
        project_id=None if project is None else find_project(project).id,
        status=status,
    )
    with db.session_scope() as session:
        documents = list_jobs(session, limit, where)
    echo_list(documents, as_json, reports.jobs_table, "jobs", filtered=bool(where))


@jobs_group.command("show")
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True)
def jobs_show(job_id: str, as_json: bool) -> None:
    """One job: its counters, attempts, duration and rollback state."""
    document = job_detail(find(ConsolidationJob, job_id, "job").id)
    if as_json:
        echo_json(document)
        return
    echo_text(reports.job_text(document))

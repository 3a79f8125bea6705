"""``runs list`` and ``runs show``: what ran, newest first, and one run with its jobs.

While a run is open its row's counters are those of its start; both commands take them
from its job rows instead (``reports.live_counters``)."""

from __future__ import annotations

from datetime import UTC, datetime

import click
from sqlalchemy import exists, select

from orchestration.cli import reports
from orchestration.cli.app import MAX_LIMIT, CliError, Group, echo_json, echo_list, echo_text, main
from orchestration.cli.lookup import find, find_project
from orchestration.store import db
from orchestration.store.models import ConsolidationJob, ConsolidationRun
from orchestration.store.statuses import RunStatus, TriggerType

# --- runs -----------------------------------------------------------------------


@main.group("runs", cls=Group)
def runs_group() -> None:
    """Inspect run summaries."""


def parse_since(text: str) -> datetime:
    """An ISO 8601 date or date-time as aware UTC; a naive one is UTC."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise CliError(f"--since {text!r} is not an ISO 8601 date or date-time, e.g. 2026-11-27") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


@runs_group.command("list")
@click.option("--limit", type=click.IntRange(min=1, max=MAX_LIMIT), default=20, show_default=True)
@click.option("--status", type=click.Choice([s.value for s in RunStatus]))
@click.option("--trigger", type=click.Choice([t.value for t in TriggerType]))
@click.option("--since", metavar="DATE", help="Runs started at or after this ISO date or date-time (naive is UTC).")
@click.option("--project", metavar="PROJECT", help="Runs with a job for this project (id, id prefix or name).")
@click.option("--json", "as_json", is_flag=True)
def runs_list(
    limit: int, status: str | None, trigger: str | None, since: str | None, project: str | None, as_json: bool
) -> None:
    """Runs, newest first."""
    query = select(ConsolidationRun).order_by(ConsolidationRun.started_at.desc(), ConsolidationRun.id.desc())
    if status:
        query = query.where(ConsolidationRun.status == status)
    if trigger:
        query = query.where(ConsolidationRun.trigger_type == trigger)
    if since is not None:
        query = query.where(ConsolidationRun.started_at >= parse_since(since))
    if project is not None:
        project_id = find_project(project).id
        query = query.where(
            exists().where(ConsolidationJob.run_id == ConsolidationRun.id, ConsolidationJob.project_id == project_id)
        )
    with db.session_scope() as session:
        rows = session.scalars(query.limit(limit)).all()
        live = reports.live_counters(session, [r.id for r in rows if r.status == RunStatus.RUNNING])
        documents = [reports.run_row(r, live) for r in rows]
    echo_list(documents, as_json, reports.runs_table, "runs", filtered=bool(status or trigger or since or project))


@runs_group.command("show")
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True)
def runs_show(run_id: str, as_json: bool) -> None:
    """The run summary and one line per job."""
    run = find(ConsolidationRun, run_id, "run")
    document = reports.run_document(run.id)
    if as_json:
        echo_json(document)
        return
    echo_text(reports.run_text(document))

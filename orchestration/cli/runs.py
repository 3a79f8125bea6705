"""``runs list`` and ``runs show``: what ran, newest first, and one run with its jobs
(the documents of ``orchestration.documents.runs``)."""

from __future__ import annotations

from datetime import datetime

import click

from orchestration.cli import reports
from orchestration.cli.app import MAX_LIMIT, CliError, Group, echo_json, echo_list, echo_text, main
from orchestration.cli.lookup import find, find_project
from orchestration.documents import times
from orchestration.documents.runs import RunFilter, list_runs, run_document
from orchestration.store import db
from orchestration.store.models import ConsolidationRun
from orchestration.store.statuses import RunStatus, TriggerType

# --- runs -----------------------------------------------------------------------


@main.group("runs", cls=Group)
def runs_group() -> None:
    """Inspect run summaries."""


def parse_since(text: str) -> datetime:
    """``--since``: an ISO 8601 date or date-time as aware UTC; a naive one is UTC."""
    try:
        return times.parse_since(text)
    except ValueError as exc:
        raise CliError(f"--since {exc}") from None


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
    where = RunFilter(
        status=status,
        trigger=trigger,
        since=None if since is None else parse_since(since),
        project_id=None if project is None else find_project(project).id,
    )
    with db.session_scope() as session:
        documents = list_runs(session, limit, where)
    echo_list(documents, as_json, reports.runs_table, "runs", filtered=bool(where))


@runs_group.command("show")
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True)
def runs_show(run_id: str, as_json: bool) -> None:
    """The run summary and one line per job."""
    run = find(ConsolidationRun, run_id, "run")
    document = run_document(run.id)
    if as_json:
        echo_json(document)
        return
    echo_text(reports.run_text(document))

"""``runs list`` and ``runs show``: what ran, newest first, and one run with its jobs."""

from __future__ import annotations

import click
from sqlalchemy import select

from orchestration.cli import reports
from orchestration.cli.app import Group, echo_json, echo_text, main
from orchestration.cli.lookup import find
from orchestration.store import db
from orchestration.store.documents import row_dict
from orchestration.store.models import ConsolidationRun
from orchestration.store.statuses import RunStatus

# --- runs -----------------------------------------------------------------------


@main.group("runs", cls=Group)
def runs_group() -> None:
    """Inspect run summaries."""


@runs_group.command("list")
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--status", type=click.Choice([s.value for s in RunStatus]))
@click.option("--json", "as_json", is_flag=True)
def runs_list(limit: int, status: str | None, as_json: bool) -> None:
    """Runs, newest first."""
    query = select(ConsolidationRun).order_by(ConsolidationRun.started_at.desc()).limit(limit)
    if status:
        query = query.where(ConsolidationRun.status == status)
    with db.session_scope() as session:
        rows = session.scalars(query).all()
    if as_json:
        echo_json([row_dict(r) for r in rows])
        return
    if not rows:
        click.echo("no runs yet")
        return
    echo_text(reports.runs_table(rows))


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

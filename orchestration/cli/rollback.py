"""``jobs rollback``: undo a job's changes, refusing (changing nothing) if later
changes conflict.

``--dry-run`` shows what would be restored and what would refuse it, changing nothing
(exit 0 if the rollback would go through, 1 if it would be refused). Without
``--yes`` the command asks, after showing that preview, when stdin is a terminal; when
it is not (a script, a pipe, cron) it refuses with exit 2: scripts must say ``--yes``.
"""

from __future__ import annotations

import sys
from dataclasses import asdict
from typing import TYPE_CHECKING

import click

from orchestration.cli.app import CliError, echo_json, echo_text, user
from orchestration.cli.jobs import jobs_group
from orchestration.cli.lookup import find
from orchestration.cli.reports import when
from orchestration.cli.text import clean
from orchestration.settings import get_settings
from orchestration.store import db
from orchestration.store.models import ConsolidationJob, Project

if TYPE_CHECKING:
    from orchestration.consolidation.audit import RollbackPlan

# Conflicts listed by name in the text preview; --json lists them all.
SHOWN_CONFLICTS = 10


def interactive() -> bool:
    """Whether someone can answer a question: stdin is a terminal."""
    return sys.stdin.isatty()


@jobs_group.command("rollback")
@click.argument("job_id")
@click.option("--dry-run", is_flag=True, help="Show what would be restored and any conflicts; change nothing.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation (needed when stdin is not a terminal).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def jobs_rollback(job_id: str, dry_run: bool, yes: bool, as_json: bool) -> None:
    """Undo a job's changes; refuses, changing nothing, if later changes conflict.

    Asks for confirmation at a terminal unless --yes; refuses without --yes when stdin
    is not a terminal. With --dry-run, exit 0 if the rollback would go through, 1 if
    it would be refused."""
    from orchestration.consolidation.audit import RollbackRefused, preview_rollback
    from orchestration.jobs.rollback import roll_back

    job = find(ConsolidationJob, job_id, "job")
    retention_days = get_settings().audit_retention_days
    with db.session_scope() as session:
        plan = preview_rollback(session, job.id, retention_days)
        project = session.get(Project, job.project_id) if job.project_id else None
        project_name = project.name if project else None
    if dry_run:
        if as_json:
            echo_json({**asdict(plan), "project_name": project_name, "dry_run": True})
        else:
            echo_text(_preview_text(plan, project_name))
        if plan.refused is not None:
            click.get_current_context().exit(1)
        return
    if plan.refused is not None:
        hint = "; --dry-run lists the conflicts" if plan.conflicts else ""
        raise CliError(f"rollback refused: {plan.refused}{hint}")
    if not yes:
        if not interactive():
            raise CliError(
                f"jobs rollback {job.id} changes memories: add --yes to confirm (stdin is not a terminal)", 2
            )
        click.echo(clean(_preview_text(plan, project_name), multiline=True), err=as_json)
        if not click.confirm(f"Roll back job {job.id}?", default=False, err=as_json):
            click.echo("rollback cancelled; nothing was changed", err=True)
            click.get_current_context().exit(1)
    try:
        with db.session_scope() as session:
            result = roll_back(session, job.id, retention_days, changed_by=user())
    except RollbackRefused as exc:  # something changed since the preview
        raise CliError(f"rollback refused: {exc}") from None
    if as_json:
        echo_json({**asdict(result), "status": "rolled_back"})
        return
    echo_text(
        f"rolled back job {result.job_id}: restored {result.restored} memory changes, "
        f"removed {result.removed} consolidated memories\n"
        f"  un-merged {result.unmerged}, re-pointed {result.repointed}, un-archived {result.unarchived}; "
        f"recorded as rolled back at {when(result.rolled_back_at)} by {clean(result.rolled_back_by)}"
    )


def _preview_text(plan: RollbackPlan, project_name: str | None) -> str:
    """The dry run for people: what would be restored, then the conflicts or the reason
    that would refuse it."""
    project = f"project {clean(project_name or '-')} ({plan.project_id or '-'})"
    lines = [f"rollback of job {plan.job_id}: {project}, {clean(plan.status or '-')} {when(plan.finished_at)}"]
    if plan.changes:
        lines += [
            f"  would un-merge {plan.unmerged} memories (active again)",
            f"  would re-point {plan.repointed} duplicates back to their earlier consolidated memory",
            f"  would un-archive {plan.unarchived} memories",
            f"  would remove {plan.removed} consolidated memories the job created",
            f"  ({plan.changes} audit rows to undo)",
        ]
    if plan.conflicts:
        lines.append(f"conflicts: {len(plan.conflicts)} memories changed since the job ran")
        for conflict in plan.conflicts[:SHOWN_CONFLICTS]:
            now = "deleted" if conflict.current_version is None else f"now version {conflict.current_version}"
            lines.append(f"  {conflict.memory_id}  left at version {conflict.expected_version}, {now}")
        if len(plan.conflicts) > SHOWN_CONFLICTS:
            lines.append(f"  ... and {len(plan.conflicts) - SHOWN_CONFLICTS} more (--json lists them all)")
    elif plan.changes:
        lines.append("conflicts: none")
    lines.append(f"would be refused: {clean(plan.refused)}" if plan.refused else "the rollback would go through")
    return "\n".join(lines)

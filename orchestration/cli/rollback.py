"""``jobs rollback``: undo a job's changes, refusing (changing nothing) if later
changes conflict."""

from __future__ import annotations

import click

from orchestration.cli.app import CliError, user
from orchestration.cli.jobs import jobs_group
from orchestration.cli.lookup import find
from orchestration.settings import get_settings
from orchestration.store import db
from orchestration.store.models import ConsolidationJob


@jobs_group.command("rollback")
@click.argument("job_id")
def jobs_rollback(job_id: str) -> None:
    """Undo a job's changes; refuses, changing nothing, if later changes conflict."""
    from orchestration.consolidation.audit import RollbackRefused, rollback_job

    job = find(ConsolidationJob, job_id, "job")
    try:
        with db.session_scope() as session:
            result = rollback_job(session, job.id, get_settings().audit_retention_days, changed_by=user())
    except RollbackRefused as exc:
        raise CliError(f"rollback refused: {exc}") from None
    click.echo(
        f"rolled back job {result.job_id}: restored {result.restored} memory changes, "
        f"removed {result.removed} consolidated memories"
    )

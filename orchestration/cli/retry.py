"""``runs retry``: a new manual run, through the broker, of a finished run's failed
jobs' projects, linked to it (``retry_of`` in the new run's summary, ``retried_by`` in
the original's)."""

from __future__ import annotations

import uuid

import click

from orchestration.cli.app import CliError, send
from orchestration.cli.lookup import find
from orchestration.cli.running import _watch_and_report
from orchestration.cli.runs import runs_group
from orchestration.settings import get_settings
from orchestration.store import db
from orchestration.store.models import ConsolidationRun
from orchestration.store.statuses import TriggerType


@runs_group.command("retry")
@click.argument("run_id")
@click.option("--wait", is_flag=True, help="Wait for the new run to finish and print its summary.")
@click.option(
    "--timeout", type=click.IntRange(min=1), default=None, help="Seconds to wait at most (default: the run deadline)."
)
@click.option("--full", is_flag=True, help="Every job makes a full pass instead of an incremental one.")
def runs_retry(run_id: str, wait: bool, timeout: int | None, full: bool) -> None:
    """A new manual run of the run's failed jobs' projects, linked to it.

    Only failed jobs are retried (not skipped or completed ones); each of their
    projects runs if it is still enabled, even if it is now below its threshold."""
    from orchestration.nightly.retries import RetryRefused, retry_projects
    from orchestration.worker.tasks import run_scheduled

    settings = get_settings()
    original = find(ConsolidationRun, run_id, "run")
    try:  # before anything reaches the broker; the task starts only what it is sent
        with db.session_scope() as session:
            projects = retry_projects(session, original.id)
    except RetryRefused as exc:
        raise CliError(str(exc)) from None
    new_id = uuid.uuid4()
    send(
        run_scheduled,
        {
            "trigger": TriggerType.MANUAL.value,
            "run_id": str(new_id),
            "projects": [str(p) for p in projects],
            "retry_of": str(original.id),
            # full only when set, so that a worker without the parameter still takes the message.
            **({"full": True} if full else {}),
        },
    )
    count = f"{len(projects)} project" + ("" if len(projects) == 1 else "s")
    label = f"manual run {new_id} (retry of run {original.id}: {count})"
    if not wait:
        click.echo(f"sent {label} to the broker at {db.mask_url(settings.broker_url)}")
        return
    _watch_and_report(lambda s: s.get(ConsolidationRun, new_id), timeout or settings.run_deadline, label)

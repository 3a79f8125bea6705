"""Starting and following runs: ``run-now`` (through the broker) and ``runs watch``,
with live progress at a terminal and the summary at the end.

``run-now`` sends within seconds or says in one line that the broker or the result
backend cannot be reached (exit 2). While it waits (``--wait``) it asks them again
every few seconds: if they stay unreachable for :data:`UNREACHABLE_FOR_S` it stops
the same way, naming how to follow the run once they are back.
"""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

import click
from sqlalchemy import select

from orchestration.cli import reports
from orchestration.cli.app import CliError, Unreachable, check_services, echo_text, main, send
from orchestration.cli.lookup import find
from orchestration.cli.runs import runs_group
from orchestration.cli.text import clean
from orchestration.documents.runs import run_document
from orchestration.settings import get_settings
from orchestration.store import db
from orchestration.store.models import ConsolidationRun
from orchestration.store.statuses import RunStatus, TriggerType
from orchestration.store.types import utcnow

# run-now --wait gives up when the broker or the result backend stayed unreachable this long.
UNREACHABLE_FOR_S = 10.0


@runs_group.command("watch")
@click.argument("run_id")
@click.option(
    "--timeout", type=click.IntRange(min=1), default=None, help="Seconds to wait at most (default: the run deadline)."
)
def runs_watch(run_id: str, timeout: int | None) -> None:
    """Live progress of a run until it finishes, then its summary."""
    run = find(ConsolidationRun, run_id, "run")
    _watch_and_report(
        lambda s: s.get(ConsolidationRun, run.id), timeout or get_settings().run_deadline, f"run {run.id}"
    )


@main.command("run-now")
@click.option("--wait", is_flag=True, help="Wait for the run to finish and print its summary.")
@click.option(
    "--slot", help="Start the scheduled run of this past slot (ISO 8601; naive is UTC) instead of a manual run."
)
@click.option("--backfill", is_flag=True, help="With --slot: allow a past time the schedule does not produce.")
@click.option(
    "--timeout", type=click.IntRange(min=1), default=None, help="Seconds to wait at most (default: the run deadline)."
)
@click.option("--full", is_flag=True, help="Every job makes a full pass instead of an incremental one.")
def run_now(wait: bool, slot: str | None, backfill: bool, timeout: int | None, full: bool) -> None:
    """Start a run through the broker."""
    from orchestration.nightly.schedule import SlotRefused, check_slot, parse_slot
    from orchestration.worker.tasks import run_scheduled

    settings = get_settings()
    if backfill and slot is None:
        raise CliError("--backfill needs --slot: it lets a past slot off the schedule run", 2)
    with db.session_scope() as session:  # a missing, unmigrated or unreachable database stops it before it is sent
        session.execute(select(ConsolidationRun.id).limit(1))
    sent = True
    if slot is not None:
        try:
            slot_at = parse_slot(slot)
        except ValueError:
            raise CliError(f"--slot {slot!r} is not an ISO 8601 date and time") from None
        try:  # before anything reaches the broker; the task checks again
            check_slot(slot_at, settings.crontab, settings.tz, utcnow(), backfill=backfill)
        except SlotRefused as exc:
            raise CliError(str(exc)) from None
        with db.session_scope() as session:
            existing = session.scalar(select(ConsolidationRun).where(ConsolidationRun.scheduled_for == slot_at))
        if existing is not None:
            sent = False
            click.echo(
                f"slot {slot_at.isoformat()} already has run {existing.id} ({clean(existing.status)}); nothing started",
                err=True,
            )
        else:
            # backfill only when set, so that a worker without the parameter still
            # takes the ordinary --slot message.
            message: dict[str, Any] = {"slot": slot_at.isoformat()}
            if backfill:
                message["backfill"] = True
            if full:
                message["full"] = True
            send(run_scheduled, message)
        finder = lambda s: s.scalar(select(ConsolidationRun).where(ConsolidationRun.scheduled_for == slot_at))  # noqa: E731
        label = f"scheduled run for slot {slot_at.isoformat()}"
        follow = "orchestration runs list"
    else:
        run_id = uuid.uuid4()
        # full only when set, so that a worker without the parameter still takes the message.
        send(
            run_scheduled,
            {"trigger": TriggerType.MANUAL.value, "run_id": str(run_id), **({"full": True} if full else {})},
        )
        finder = lambda s: s.get(ConsolidationRun, run_id)  # noqa: E731
        label = f"manual run {run_id}"
        follow = f"orchestration runs watch {run_id}"
    if not wait:
        if sent:
            click.echo(f"sent {label} to the broker at {db.mask_url(settings.broker_url)}")
        return
    _watch_and_report(
        finder, timeout or settings.run_deadline, label, check=services_check(f"the run may still finish: {follow}")
    )


def services_check(then: str, unreachable_for: float = UNREACHABLE_FOR_S) -> Callable[[], None]:
    """A check for :func:`orchestration.cli.progress.watch`: raises :class:`Unreachable`
    (with ``then`` added) once the broker or the result backend has not answered for
    ``unreachable_for`` seconds; a single failed ask passes."""
    failing_since: float | None = None

    def check() -> None:
        nonlocal failing_since
        try:
            check_services(then)
        except Unreachable:
            now = time.monotonic()
            if failing_since is None:
                failing_since = now
            if now - failing_since >= unreachable_for:
                raise
        else:
            failing_since = None

    return check


def _watch_and_report(finder: Any, timeout: float, label: str, check: Callable[[], None] | None = None) -> None:
    """Live progress until the run finishes, then its summary; exit 0 completed, 1
    partial or failed, 2 not finished in time. ``check`` as :func:`progress.watch`'s."""
    from orchestration.cli.progress import watch

    run = watch(finder, timeout, sys.stdout, check=check)
    if run is None:
        with db.session_scope() as session:
            started = finder(session) is not None
        state = "did not finish" if started else "was not started by any worker (still queued)"
        raise CliError(f"{label} {state} within the timeout", 2)
    document = run_document(run.id)
    echo_text(reports.run_text(document))
    sys.exit(0 if document["status"] == RunStatus.COMPLETED else 1)

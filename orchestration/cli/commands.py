"""The commands of the ``orchestration`` command line (SPEC §6).

Errors are one line on stderr with a non-zero exit, never a traceback. Text output
shows values from the database with their control characters escaped (``text.clean``);
``--json`` leaves that to JSON's own escaping. Commands
import what they need (NumPy, the Celery app) when they run, so that quick commands
such as ``runs list`` and ``health`` start quickly.
"""

from __future__ import annotations

import getpass
import sys
import uuid
from collections.abc import Sequence
from dataclasses import asdict
from datetime import timedelta
from typing import Any

import click
from sqlalchemy import String, cast, func, select
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from orchestration.cli import reports
from orchestration.cli.text import clean
from orchestration.logs import configure_logging
from orchestration.settings import SettingsError, get_settings
from orchestration.store import db, migrate
from orchestration.store.documents import row_dict
from orchestration.store.models import ConsolidationJob, ConsolidationRun, Project
from orchestration.store.statuses import JobStatus, RunStatus, TriggerType
from orchestration.store.types import utcnow


class CliError(click.ClickException):
    """A one-line error with its own exit code; control characters (newlines included)
    in the message, which may quote names and error texts, are escaped."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(clean(message))
        self.exit_code = exit_code  # type: ignore[misc]  # click reads it per instance


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SettingsError as exc:
            raise CliError(str(exc), 2) from None
        except OperationalError as exc:
            reason = str(exc.orig or exc).strip().splitlines()[0]
            raise CliError(f"database unreachable at {db.describe()}: {reason}") from None
        except SQLAlchemyError as exc:
            raise CliError(f"database error at {db.describe()}: {str(exc).splitlines()[0]}") from None


@click.group(cls=_Group)
def main() -> None:
    """Nightly memory-consolidation scheduler."""
    try:
        configure_logging(get_settings())
    except SettingsError as exc:
        raise CliError(str(exc), 2) from None


def _echo_json(document: Any) -> None:
    click.echo(reports.dumps(document))


def _echo_text(text: str) -> None:
    """Print a text report. Its parts are escaped where they are put together; this
    keeps any control character that slipped through off the terminal all the same."""
    click.echo(clean(text, multiline=True))


def _find(model: type[ConsolidationRun] | type[ConsolidationJob] | type[Project], prefix: str, what: str) -> Any:
    """A row by full id or unique id prefix."""
    prefix = prefix.strip().lower()
    with db.session_scope() as session:
        try:
            row = session.get(model, uuid.UUID(prefix))
        except ValueError:
            row = None
        if row is not None:
            return row
        if len(prefix) < 4:
            raise CliError(f"{what} {prefix!r}: give at least 4 characters of the id")
        matches: Sequence[Any] = session.scalars(
            select(model).where(func.lower(cast(model.id, String)).like(f"{prefix}%")).limit(2)
        ).all()
    if not matches:
        raise CliError(f"no {what} with id {prefix!r}")
    if len(matches) > 1:
        raise CliError(f"{what} id prefix {prefix!r} is ambiguous; give more characters")
    return matches[0]


# --- db -------------------------------------------------------------------------


@main.group("db", cls=_Group)
def db_group() -> None:
    """Database schema."""


@db_group.command("upgrade")
def db_upgrade() -> None:
    """Migrate the configured database to head."""
    migrate.upgrade()
    click.echo(f"database at {db.describe()} is at the latest schema")


# --- seed and consolidate -------------------------------------------------------


@main.command()
@click.option("--projects", type=click.IntRange(min=1), required=True, help="Projects to create.")
@click.option("--memories", type=click.IntRange(min=4), required=True, help="Memories per project.")
@click.option("--seed", "seed_value", type=int, default=0, show_default=True, help="Random seed.")
@click.option("--dim", type=click.IntRange(min=8), default=384, show_default=True, help="Embedding dimensions.")
@click.option("--json", "as_json", is_flag=True, help="Print what was planted as JSON.")
def seed(projects: int, memories: int, seed_value: int, dim: int, as_json: bool) -> None:
    """Insert synthetic projects and memories with known duplicate groups and stale entries."""
    from orchestration.demo.seed import seed as plant

    with db.session_scope() as session:
        manifests = plant(session, projects, memories, seed_value, dim=dim)
    if as_json:
        _echo_json([m.as_dict() for m in manifests])
        return
    _echo_text(
        reports.table(
            ["project", "name", "kind", "memories", "dup groups", "stale"],
            [(m.id, m.name, m.kind, m.memories, len(m.groups), len(m.stale)) for m in manifests],
        )
    )


@main.command()
@click.argument("project_id")
@click.option("--dry-run", is_flag=True, help="Change nothing; report what would change.")
@click.option("--force", is_flag=True, help="Consolidate even if the project has consolidation disabled.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def consolidate(project_id: str, dry_run: bool, force: bool, as_json: bool) -> None:
    """Consolidate one project in this process as a manual job."""
    from orchestration.consolidation.options import InvalidOptions, resolve_options
    from orchestration.consolidation.preview import preview
    from orchestration.consolidation.projects import ProjectDisabled, ProjectGone, load_project
    from orchestration.jobs import lifecycle

    project = _find(Project, project_id, "project")
    try:
        with db.session_scope() as session:
            load_project(session, project.id, force=force)
        options = resolve_options(project.consolidation_options)
    except ProjectDisabled as exc:
        raise CliError(f"{exc}; use --force to consolidate it anyway") from None
    except (ProjectGone, InvalidOptions) as exc:
        raise CliError(str(exc)) from None
    if dry_run:
        result = preview(project.id, options, force=force)
        document: dict[str, Any] = {"job_id": None, "status": "dry_run", **vars(result)}
    else:
        user = _user()
        with db.session_scope() as session:
            job = lifecycle.create_job(
                session,
                project.id,
                run_id=None,
                trigger_type=TriggerType.MANUAL,
                triggered_by=user,
                options=project.consolidation_options,
            )
        try:
            outcome = lifecycle.run(job.id, get_settings(), force=force, changed_by=user)
        except lifecycle.AttemptFailed as exc:  # recorded on the job, reported as one line
            outcome = lifecycle.fail(job.id, exc.attempt, exc.error)
        job = _find(ConsolidationJob, str(job.id), "job")
        document = row_dict(job)
        if outcome.status != JobStatus.COMPLETED:
            raise CliError(f"job {job.id} {outcome.status}: {outcome.error}")
    if as_json:
        _echo_json(document)
        return
    label = "would" if dry_run else "did"
    _echo_text(
        f"{'dry run' if dry_run else 'job ' + str(document['id'])}: project {clean(project.name)} ({project.id})\n"
        f"  active memories {document['memories_before']} -> {document['memories_after']}\n"
        f"  {label} merge {document['memories_merged']} memories into {document['clusters_found']} consolidated\n"
        f"  {label} archive {document['memories_archived']} stale memories"
        + (f"\n  value guard kept {document['pairs_kept_apart']} similar pairs apart" if dry_run else "")
    )


@main.command()
@click.argument("project_id")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def similarity(project_id: str, as_json: bool) -> None:
    """How similar a project's memories are: to pick its similarity_threshold."""
    from orchestration.consolidation.calibration import calibrate
    from orchestration.consolidation.options import InvalidOptions, resolve_options

    project = _find(Project, project_id, "project")
    try:
        options = resolve_options(project.consolidation_options)
    except InvalidOptions as exc:
        raise CliError(str(exc)) from None
    with db.session_scope() as session:
        report = calibrate(session, project.id, options)
    if as_json:
        _echo_json(asdict(report))
        return
    _echo_text(reports.calibration_text(report, project.name))


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "cli"


# --- jobs -----------------------------------------------------------------------


@main.group("jobs", cls=_Group)
def jobs_group() -> None:
    """Inspect and roll back jobs."""


@jobs_group.command("show")
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True)
def jobs_show(job_id: str, as_json: bool) -> None:
    """One job and its counters."""
    from orchestration.consolidation.audit import change_counts

    job = _find(ConsolidationJob, job_id, "job")
    with db.session_scope() as session:
        changes = change_counts(session, job.id)
        project = session.get(Project, job.project_id) if job.project_id else None
    document = {**row_dict(job), "project_name": project.name if project else None, "changes": changes}
    if as_json:
        _echo_json(document)
        return
    _echo_text(reports.job_text(document))


@jobs_group.command("rollback")
@click.argument("job_id")
def jobs_rollback(job_id: str) -> None:
    """Undo a job's changes; refuses, changing nothing, if later changes conflict."""
    from orchestration.consolidation.audit import RollbackRefused, rollback_job

    job = _find(ConsolidationJob, job_id, "job")
    try:
        with db.session_scope() as session:
            result = rollback_job(session, job.id, get_settings().audit_retention_days, changed_by=_user())
    except RollbackRefused as exc:
        raise CliError(f"rollback refused: {exc}") from None
    click.echo(
        f"rolled back job {result.job_id}: restored {result.restored} memory changes, "
        f"removed {result.removed} consolidated memories"
    )


# --- runs -----------------------------------------------------------------------


@main.group("runs", cls=_Group)
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
        _echo_json([row_dict(r) for r in rows])
        return
    if not rows:
        click.echo("no runs yet")
        return
    _echo_text(reports.runs_table(rows))


@runs_group.command("show")
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True)
def runs_show(run_id: str, as_json: bool) -> None:
    """The run summary and one line per job."""
    run = _find(ConsolidationRun, run_id, "run")
    document = reports.run_document(run.id)
    if as_json:
        _echo_json(document)
        return
    _echo_text(reports.run_text(document))


@runs_group.command("watch")
@click.argument("run_id")
@click.option(
    "--timeout", type=click.IntRange(min=1), default=None, help="Seconds to wait at most (default: the run deadline)."
)
def runs_watch(run_id: str, timeout: int | None) -> None:
    """Live progress of a run until it finishes, then its summary."""
    run = _find(ConsolidationRun, run_id, "run")
    _watch_and_report(
        lambda s: s.get(ConsolidationRun, run.id), timeout or get_settings().run_deadline, f"run {run.id}"
    )


# --- running --------------------------------------------------------------------


@main.command("run-now")
@click.option("--wait", is_flag=True, help="Wait for the run to finish and print its summary.")
@click.option(
    "--slot", help="Start the scheduled run of this past slot (ISO 8601; naive is UTC) instead of a manual run."
)
@click.option("--backfill", is_flag=True, help="With --slot: allow a past time the schedule does not produce.")
@click.option(
    "--timeout", type=click.IntRange(min=1), default=None, help="Seconds to wait at most (default: the run deadline)."
)
def run_now(wait: bool, slot: str | None, backfill: bool, timeout: int | None) -> None:
    """Start a run through the broker."""
    from orchestration.nightly.schedule import SlotRefused, check_slot, parse_slot
    from orchestration.worker.tasks import run_scheduled

    settings = get_settings()
    if backfill and slot is None:
        raise CliError("--backfill needs --slot: it lets a past slot off the schedule run", 2)
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
            run_scheduled.apply_async(kwargs=message)
        finder = lambda s: s.scalar(select(ConsolidationRun).where(ConsolidationRun.scheduled_for == slot_at))  # noqa: E731
        label = f"scheduled run for slot {slot_at.isoformat()}"
    else:
        run_id = uuid.uuid4()
        run_scheduled.apply_async(kwargs={"trigger": TriggerType.MANUAL.value, "run_id": str(run_id)})
        finder = lambda s: s.get(ConsolidationRun, run_id)  # noqa: E731
        label = f"manual run {run_id}"
    if not wait:
        click.echo(f"sent {label} to the broker at {db.mask_url(settings.broker_url)}")
        return
    _watch_and_report(finder, timeout or settings.run_deadline, label)


def _watch_and_report(finder: Any, timeout: float, label: str) -> None:
    """Live progress until the run finishes, then its summary; exit 0 completed, 1
    partial or failed, 2 not finished in time."""
    from orchestration.cli.progress import watch

    run = watch(finder, timeout, sys.stdout)
    if run is None:
        raise CliError(f"{label} did not finish within the timeout", 2)
    document = reports.run_document(run.id)
    _echo_text(reports.run_text(document))
    sys.exit(0 if document["status"] == RunStatus.COMPLETED else 1)


@main.command()
@click.option("--with-failure", is_flag=True, help="Add a project whose job fails, to show a partial run.")
@click.option("--projects", type=click.IntRange(min=1), default=6, show_default=True)
@click.option("--memories", type=click.IntRange(min=4), default=300, show_default=True)
def demo(with_failure: bool, projects: int, memories: int) -> None:
    """Embedded default: fresh SQLite, in-process worker, tonight's run now; prints the summary."""
    from orchestration.demo.embedded import run_demo

    document = run_demo(projects=projects, memories=memories, with_failure=with_failure, out=sys.stdout)
    _echo_text(reports.run_text(document))
    sys.exit(0 if document["status"] == RunStatus.COMPLETED else 1)


@main.command()
@click.option(
    "--max-age",
    type=click.FloatRange(min=0, min_open=True),
    default=26.0,
    show_default=True,
    help="Hours the latest scheduled run may be old.",
)
@click.option("--json", "as_json", is_flag=True)
def health(max_age: float, as_json: bool) -> None:
    """Exit 0 if the latest scheduled run completed in time, 1 if partial or failed, 2 otherwise."""
    from orchestration.nightly.health import check_health

    try:
        with db.session_scope() as session:
            result = check_health(session, get_settings(), utcnow(), timedelta(hours=max_age))
            document = result.as_dict()
    except SQLAlchemyError as exc:
        raise CliError(f"database unreachable at {db.describe()}: {str(exc).splitlines()[0]}", 2) from None
    if as_json:
        _echo_json(document)
    else:
        _echo_text(f"{document['status'].upper()}: {clean(document['message'])}")
    sys.exit(result.code)

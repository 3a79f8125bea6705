"""Commands that set up and check a deployment: ``db upgrade``, ``seed``, ``demo`` and
``health``."""

from __future__ import annotations

import sys
from datetime import timedelta
from typing import IO, Any

import click
from sqlalchemy.exc import SQLAlchemyError

from orchestration.cli import progress, reports
from orchestration.cli.app import CliError, Group, database_error, echo_json, echo_text, main
from orchestration.cli.text import clean
from orchestration.settings import get_settings
from orchestration.store import db, migrate
from orchestration.store.statuses import RunStatus
from orchestration.store.types import utcnow

# --- db -------------------------------------------------------------------------


@main.group("db", cls=Group)
def db_group() -> None:
    """Database schema."""


@db_group.command("upgrade")
def db_upgrade() -> None:
    """Migrate the configured database to head."""
    from alembic.util import CommandError

    try:
        migrate.upgrade()
    except CommandError as exc:  # a revision these migrations do not know: a newer orchestration's
        with db.statement_scope() as connection:
            problem = migrate.schema_problem(connection)
        raise CliError(f"database at {db.describe()} {problem}" if problem else f"db upgrade: {exc}", 2) from None
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
        echo_json([m.as_dict() for m in manifests])
        return
    echo_text(
        reports.table(
            ["id", "name", "kind", "memories", "dup groups", "stale"],
            [(m.id, m.name, m.kind, m.memories, len(m.groups), len(m.stale)) for m in manifests],
        )
    )


@main.command()
@click.option("--with-failure", is_flag=True, help="Add a project whose job fails, to show a partial run.")
@click.option("--projects", type=click.IntRange(min=1), default=6, show_default=True)
@click.option("--memories", type=click.IntRange(min=4), default=300, show_default=True)
@click.option("--web", "serve_web", is_flag=True, help="Then serve the dashboard on its database.")
@click.option("--port", type=click.IntRange(1, 65535), default=8800, show_default=True, help="The dashboard's port.")
def demo(with_failure: bool, projects: int, memories: int, serve_web: bool, port: int) -> None:
    """Embedded default: fresh SQLite, in-process worker, tonight's run now; prints the summary."""
    from orchestration.cli.web import serve
    from orchestration.demo.embedded import inspect_command, run_demo, web_command

    def watch(find: Any, timeout: float, out: IO[str]) -> Any:
        return progress.watch(find, timeout, out, interval=0.1)

    document = run_demo(projects, memories, with_failure, out=sys.stdout, watch=watch)
    echo_text(reports.run_text(document))
    click.echo(f"\ninspect it: {inspect_command(document['id'])}")
    if serve_web:
        click.echo(f"serving its dashboard at http://127.0.0.1:{port}/ (Ctrl-C stops it)")
        serve(port=port)
    else:
        click.echo(f"see it in the browser: {web_command(port=port)}")
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
    except SQLAlchemyError as exc:  # any database error is unhealthy: exit 2, not 1 (a partial run)
        error = database_error(exc)
        error.exit_code = 2  # type: ignore[misc]  # click reads it per instance
        raise error from None
    if as_json:
        echo_json(document)
    else:
        echo_text(f"{document['status'].upper()}: {clean(document['message'])}")
    sys.exit(result.code)

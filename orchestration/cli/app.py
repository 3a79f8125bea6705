"""The ``orchestration`` group and what every command shares: one-line errors with
their exit codes, JSON and text output, and finding a row by id, id prefix or name.

Errors are one line on stderr with a non-zero exit, never a traceback. Text output
shows values from the database with their control characters escaped (``text.clean``);
``--json`` leaves that to JSON's own escaping. Commands import what they need (NumPy,
the Celery app) when they run, so that quick commands such as ``runs list`` and
``health`` start quickly.
"""

from __future__ import annotations

import getpass
import uuid
from collections.abc import Sequence
from typing import Any

import click
from sqlalchemy import String, cast, func, select
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from orchestration.cli import reports
from orchestration.cli.text import clean
from orchestration.logs import configure_logging
from orchestration.settings import SettingsError, get_settings
from orchestration.store import db
from orchestration.store.models import ConsolidationJob, ConsolidationRun, Project


class CliError(click.ClickException):
    """A one-line error with its own exit code; control characters (newlines included)
    in the message, which may quote names and error texts, are escaped."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(clean(message))
        self.exit_code = exit_code  # type: ignore[misc]  # click reads it per instance


class Group(click.Group):
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


@click.group(cls=Group)
def main() -> None:
    """Nightly memory-consolidation scheduler."""
    try:
        configure_logging(get_settings())
    except SettingsError as exc:
        raise CliError(str(exc), 2) from None


def echo_json(document: Any) -> None:
    click.echo(reports.dumps(document))


def echo_text(text: str) -> None:
    """Print a text report. Its parts are escaped where they are put together; this
    keeps any control character that slipped through off the terminal all the same."""
    click.echo(clean(text, multiline=True))


def find(model: type[ConsolidationRun] | type[ConsolidationJob] | type[Project], prefix: str, what: str) -> Any:
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


def user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "cli"

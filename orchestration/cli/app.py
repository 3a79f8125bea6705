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
from typing import Any

import click
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from orchestration.cli import reports
from orchestration.cli.text import clean
from orchestration.logs import configure_logging
from orchestration.settings import SettingsError, get_settings
from orchestration.store import db


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


def user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "cli"

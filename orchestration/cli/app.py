"""The ``orchestration`` group and what every command shares: one-line errors with
their exit codes, JSON and text output, and sending a task through the broker.

Errors are one line on stderr with a non-zero exit, never a traceback. A bad
environment exits 2 (SPEC §6): an invalid setting; a database, broker or result
backend that cannot be reached or refuses the login (named with its URL, password
masked, and the variable that sets it); a database without the latest schema (naming
``orchestration db upgrade``); a missing SQLite file (only ``db upgrade`` and ``demo``
create one). :meth:`Group.invoke` turns all of these into that line, wherever they are
raised; :func:`send` publishes a task within a few seconds or raises
:class:`Unreachable`.

Text output shows values from the database with their control characters escaped
(``text.clean``); ``--json`` leaves that to JSON's own escaping. Commands import what
they need (NumPy, the Celery app) when they run, so that quick commands such as
``runs list`` and ``health`` start quickly.
"""

from __future__ import annotations

import getpass
from collections.abc import Callable
from typing import Any

import click
from sqlalchemy.exc import SQLAlchemyError

from orchestration.cli import reports
from orchestration.cli.text import clean
from orchestration.logs import configure_logging, quiet
from orchestration.settings import SettingsError, get_settings
from orchestration.store import db
from orchestration.store.diagnosis import Unreachable, chain, database_problem

# What the command line allows the broker and the result backend: a connection within
# CONNECT_TIMEOUT_S, a publish retried once. Refused connections end at once; a host
# that drops packets after about 2 x CONNECT_TIMEOUT_S plus the pause.
CONNECT_TIMEOUT_S = 3.0
SOCKET_TIMEOUT_S = 3.0
PUBLISH_RETRY_POLICY = {"max_retries": 1, "interval_start": 0.5, "interval_step": 0.5, "interval_max": 1.0}

BROKER = ("broker", "ORCHESTRATION_BROKER_URL")
RESULT_BACKEND = ("result backend", "ORCHESTRATION_RESULT_BACKEND")


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
        except (db.NoDatabase, Unreachable) as exc:
            raise CliError(str(exc), 2) from None
        except SQLAlchemyError as exc:
            raise database_error(exc) from None
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as exc:  # the broker's or the result backend's, if messaging_service says so
            service = messaging_service(exc)
            if service is None:
                raise
            settings = get_settings()
            url = settings.broker_url if service == BROKER else settings.result_backend
            raise CliError(str(Unreachable(service, url, exc)), 2) from None


@click.group(cls=Group)
@click.version_option(package_name="orchestration", prog_name="orchestration")
@click.pass_context
def main(ctx: click.Context) -> None:
    """Nightly memory-consolidation scheduler."""
    try:
        configure_logging(get_settings())
    except SettingsError as exc:
        raise CliError(str(exc), 2) from None
    # A missing SQLite file is an error here, not created (db upgrade and demo migrate,
    # which creates it); PostgreSQL connections time out.
    previous = db.set_interactive(True)
    ctx.call_on_close(lambda: db.set_interactive(previous))


# The most rows a list command prints (--limit).
MAX_LIMIT = 10_000


def echo_json(document: Any) -> None:
    click.echo(reports.dumps(document))


def echo_text(text: str) -> None:
    """Print a text report. Its parts are escaped where they are put together; this
    keeps any control character that slipped through off the terminal all the same."""
    click.echo(clean(text, multiline=True))


def echo_list(
    documents: list[dict[str, Any]],
    as_json: bool,
    as_table: Callable[[list[dict[str, Any]]], str],
    what: str,
    filtered: bool,
) -> None:
    """A list command's output: the documents as JSON, or a table of them, or one line
    saying there are none (yet, or matching the filters)."""
    if as_json:
        echo_json(documents)
    elif not documents:
        click.echo(f"no {what} match" if filtered else f"no {what} yet")
    else:
        echo_text(as_table(documents))


def user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "cli"


# --- what went wrong, in one line ----------------------------------------------


def messaging_service(error: BaseException) -> tuple[str, str] | None:
    """:data:`BROKER` or :data:`RESULT_BACKEND` if ``error`` says one could not be
    reached or refused the login (kombu's and py-amqp's errors are the broker's,
    redis-py's the result backend's: kombu wraps the broker's), else ``None``."""
    import amqp.exceptions  # type: ignore[import-untyped]  # no type information shipped
    import kombu.exceptions
    import redis.exceptions

    for cause in chain(error):
        if isinstance(
            cause, kombu.exceptions.OperationalError | amqp.exceptions.ConnectionError | amqp.exceptions.AccessRefused
        ):
            return BROKER
        if isinstance(cause, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError):
            return RESULT_BACKEND
    if isinstance(error, RuntimeError) and "result store" in str(error):  # celery's E_RETRY_LIMIT_EXCEEDED
        return RESULT_BACKEND
    return None


def database_error(error: SQLAlchemyError) -> CliError:
    """The one line for a database error: not migrated, unreachable or refusing the
    login (exit 2), or any other error (exit 1)."""
    message, environment = database_problem(error)
    return CliError(message, 2 if environment else 1)


# --- the broker ----------------------------------------------------------------


def bound_for_cli(app: Any) -> None:
    """Configure ``app`` (before it connects) so that an unreachable broker or result
    backend fails within seconds: connection and socket timeouts, one publish retry,
    one reconnection of the result backend."""
    conf = app.conf
    timeouts = {"socket_connect_timeout": CONNECT_TIMEOUT_S, "socket_timeout": SOCKET_TIMEOUT_S}
    conf.update(
        broker_connection_timeout=CONNECT_TIMEOUT_S,
        task_publish_retry_policy=PUBLISH_RETRY_POLICY,
        broker_transport_options={**conf.broker_transport_options, **timeouts},
        redis_socket_connect_timeout=CONNECT_TIMEOUT_S,
        redis_socket_timeout=SOCKET_TIMEOUT_S,
        result_backend_transport_options={
            **conf.result_backend_transport_options,
            "retry_policy": {"max_retries": 1, "interval_start": 0, "interval_step": 0.5, "interval_max": 0.5},
        },
    )


def check_services(then: str = "") -> None:
    """Raise :class:`Unreachable` unless the broker and the result backend answer
    (within about :data:`CONNECT_TIMEOUT_S` each); ``then`` is added to the message."""
    from orchestration.celery_app import app

    bound_for_cli(app)
    settings = get_settings()
    with quiet("celery", "kombu", "amqp"):
        try:
            with app.connection_for_write() as connection:
                connection.ensure_connection(max_retries=1, interval_start=0, interval_step=0.5, interval_max=0.5)
        except Exception as exc:
            if messaging_service(exc) is None and not isinstance(exc, OSError):
                raise
            raise Unreachable(BROKER, settings.broker_url, exc, then) from exc
        client = getattr(app.backend, "client", None)  # Redis result backends; others have no server to ask
        if client is not None and callable(getattr(client, "ping", None)):
            try:
                client.ping()
            except Exception as exc:
                if messaging_service(exc) is None and not isinstance(exc, OSError):
                    raise
                raise Unreachable(RESULT_BACKEND, settings.result_backend, exc, then) from exc


def send(task: Any, kwargs: dict[str, Any]) -> None:
    """Publish ``task`` with ``kwargs`` through the broker, or raise
    :class:`Unreachable` within seconds if the broker or the result backend (which
    the run's chord needs) cannot be reached."""
    check_services()
    settings = get_settings()
    with quiet("celery", "kombu", "amqp"):
        try:
            task.apply_async(kwargs=kwargs)
        except Exception as exc:
            service = messaging_service(exc) or (BROKER if isinstance(exc, OSError) else None)
            if service is None:
                raise
            url = settings.broker_url if service == BROKER else settings.result_backend
            raise Unreachable(service, url, exc) from exc

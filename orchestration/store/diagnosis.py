"""What went wrong with a server, in the one line an operator reads: a database,
broker or result backend that cannot be reached or refuses the login (named with its
URL, password masked, and the variable that sets it), and a database without the
latest schema (naming ``orchestration db upgrade``). The command line prints these
lines; the dashboard answers them with a 503."""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator

from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from orchestration.logs import quiet
from orchestration.settings import mask_url
from orchestration.store import db

DATABASE = ("database", "ORCHESTRATION_DATABASE_URL")


class Unreachable(Exception):
    """A server could not be reached or refused the login. Its message is the one line
    the operator sees: what, where (password masked), why, and which variable points
    there."""

    def __init__(self, service: tuple[str, str], url: str, error: BaseException, then: str = ""):
        what, variable = service
        reason, login = reason_of(error)
        if login:
            message = f"{what} refused the login at {mask_url(url)}: {reason} (check {variable})"
        else:
            hint = f"is it running? {variable}" if down(error) else variable
            message = f"{what} unreachable at {mask_url(url)}: {reason} ({hint})"
        super().__init__(message + (f"; {then}" if then else ""))
        self.service = service


def chain(error: BaseException | None) -> Iterator[BaseException]:
    """``error`` and the exceptions it was raised from or while handling."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or getattr(error, "orig", None) or error.__context__


_LOGIN_REFUSED = re.compile(
    r"ACCESS_REFUSED|WRONGPASS|NOAUTH|invalid username-password|authentication (failed|required)", re.I
)


def reason_of(error: BaseException) -> tuple[str, bool]:
    """Why ``error`` happened, briefly (``Connection refused``, ``timed out``), and
    whether the server refused the login."""
    causes = list(chain(error))
    for cause in causes:
        if type(cause).__name__ in ("AccessRefused", "AuthenticationError") or _LOGIN_REFUSED.search(str(cause)):
            return "wrong user name or password", True
        sqlstate = getattr(cause, "sqlstate", None)
        if isinstance(sqlstate, str) and sqlstate.startswith("28"):
            return first_line(cause), True
    for cause in causes:
        if isinstance(cause, ConnectionRefusedError):
            return "Connection refused", False
        if isinstance(cause, socket.gaierror):
            return f"cannot resolve the host name ({cause.strerror})", False
        if isinstance(cause, TimeoutError | socket.timeout):
            return "timed out", False
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror, False
    return first_line(error), False


def first_line(error: BaseException) -> str:
    """The first line of ``error``'s text without the driver's wrapping
    (psycopg's ``connection failed: connection to server at ... failed: ``)."""
    text = (str(error).strip().splitlines() or [type(error).__name__])[0].strip()
    text = re.sub(r"^\([\w.]+\) ", "", text)  # SQLAlchemy's "(sqlite3.OperationalError) "
    text = re.sub(r"^connection failed: ", "", text)
    text = re.sub(r"^connection to server (at|on) .*? failed: ", "", text)
    text = re.sub(r"^FATAL:\s+", "", text)
    return text.rstrip(".") or type(error).__name__


def down(error: BaseException) -> bool:
    """Whether ``error`` says nothing answered (worth asking whether it runs)."""
    for cause in chain(error):
        if isinstance(cause, ConnectionRefusedError | TimeoutError | socket.timeout | socket.gaierror):
            return True
        if re.search(r"connection refused|timed? ?out|could not connect|resolve", str(cause), re.I):
            return True
    return False


# SQLSTATE classes and driver messages of a schema that is not there yet.
_MISSING_SCHEMA_STATES = ("42P01", "42703")  # undefined_table, undefined_column
_MISSING_SCHEMA = re.compile(r"no such (table|column)|has no column named")
# SQLSTATEs of a connection refused by the server: a login refused (class 28), a
# database that does not exist (3D000).
_REFUSED_STATES = ("28", "3D000")


def database_problem(error: SQLAlchemyError) -> tuple[str, bool]:
    """The one line for a database error, and whether it is the environment's (not
    migrated, unreachable, refusing the login: exit 2 at the command line) rather
    than the statement's."""
    original = getattr(error, "orig", None)
    if getattr(original, "sqlstate", None) in _MISSING_SCHEMA_STATES or _MISSING_SCHEMA.search(str(original or "")):
        problem = _schema_problem()
        if problem:
            return f"database at {db.describe()} {problem}", True
    if isinstance(error, DBAPIError) and _not_connected(error):
        return str(Unreachable(DATABASE, db.current_url(), error)), True
    return f"database error at {db.describe()}: {first_line(original or error)}", False


def _not_connected(error: DBAPIError) -> bool:
    """Whether ``error`` means there is no connection to the database: a server that
    cannot be reached (:func:`db.unreachable`) or refused the connection, a SQLite
    file that cannot be opened."""
    state = getattr(error.orig, "sqlstate", None)
    if isinstance(state, str) and state.startswith(_REFUSED_STATES):
        return True
    return db.unreachable(error) or "unable to open database file" in str(error.orig)


def _schema_problem() -> str | None:
    from orchestration.store import migrate

    try:
        with quiet("alembic"), db.get_engine().connect() as connection:
            return migrate.schema_problem(connection)
    except Exception:  # noqa: BLE001 - the original error is reported instead
        return None

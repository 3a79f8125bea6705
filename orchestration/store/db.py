"""Database engine and the one session scope every unit of work uses.

The engine comes from ``ORCHESTRATION_DATABASE_URL`` (or :func:`use_database` in
tests and the demo). SQLite is set up for several worker threads at once: WAL
journal, a busy timeout, foreign keys on, and ``BEGIN IMMEDIATE`` so that two
writers queue on the lock instead of failing with "database is locked".
PostgreSQL sessions run in UTC, and a statement can ask for its rows in binary format
(:data:`BINARY_ROWS`).

Workers and beat create a missing SQLite file (and its folder) as they always did. The
command line does not (:func:`set_interactive`): only ``db upgrade`` and ``demo``,
which migrate through :func:`build_engine` with ``create=True``, make one; any other
command run from the wrong folder stops with :class:`NoDatabase` instead of leaving an
empty ``var/`` there. It also gives up connecting to PostgreSQL after
:data:`CONNECT_TIMEOUT_S` instead of the operating system's minutes.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeAlias, TypeVar

from sqlalchemy import create_engine, event
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool
from sqlalchemy.sql.expression import Select

from orchestration.settings import get_settings, mask_url

SQLITE_BUSY_TIMEOUT_MS = 30_000
# The command line's bound on connecting to PostgreSQL (an unreachable host would
# otherwise hold it for the operating system's TCP timeout, about two minutes).
CONNECT_TIMEOUT_S = 10
# Execution option: on PostgreSQL, this statement's rows come back in binary format.
# A project's embeddings in bytea's text format (hex) cost the server and us far more
# CPU than the same rows in binary (docs/benchmarks.md).
BINARY_ROWS = "orchestration_binary_rows"
# Ids per "IN (...)" list: well below SQLite's bound-parameter limit.
IN_CHUNK = 900
T = TypeVar("T")
# What runs Core statements: a session, or a connection of statement_scope.
Executor: TypeAlias = Session | Connection

_lock = threading.Lock()
_url_override: str | None = None
_engine: Engine | None = None
# PostgreSQL: connections that are in autocommit mode from the start, for statement_scope.
_autocommit_engine: Engine | None = None
_sessionmaker: sessionmaker[Session] | None = None
# Whether this process is the command line (see set_interactive).
_interactive = False
# Whether this process may only read (see set_read_only).
_read_only = False


class NoDatabase(Exception):
    """The configured SQLite file does not exist, and this process may not create it."""

    def __init__(self, path: Path):
        super().__init__(
            f"no database at {path}: run 'orchestration db upgrade' first, or set ORCHESTRATION_DATABASE_URL"
        )
        self.path = path


def set_interactive(interactive: bool) -> bool:
    """Make :func:`get_engine` build engines for the command line (``True``): a missing
    SQLite file raises :class:`NoDatabase` instead of being created, and connecting to
    PostgreSQL times out after :data:`CONNECT_TIMEOUT_S`. Returns the previous value."""
    global _interactive
    with _lock:
        previous, _interactive = _interactive, interactive
    if previous != interactive:
        dispose()  # engines are built for one or the other
    return previous


def set_read_only(read_only: bool) -> bool:
    """Make :func:`get_engine` build engines that cannot write (``True``; the dashboard):
    PostgreSQL transactions are ``READ ONLY``, SQLite connections ``query_only`` and
    their transactions deferred, so a reader never holds SQLite's write lock. Returns
    the previous value."""
    global _read_only
    with _lock:
        previous, _read_only = _read_only, read_only
    if previous != read_only:
        dispose()
    return previous


def normalize_url(url: str) -> str:
    """``postgresql://`` means psycopg 3 here (SQLAlchemy would pick psycopg2)."""
    parsed = make_url(url)
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def _sqlite_setup(engine: Engine, read_only: bool = False) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:
        # Let SQLAlchemy, not pysqlite, decide when transactions begin.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        if read_only:
            # A reader changes nothing in the file, its journal mode included (the
            # writers, the worker and migrations, set WAL).
            cursor.execute("PRAGMA query_only=ON")
        else:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection) -> None:
        connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


def _postgresql_engine(
    url: URL, connect_timeout: float | None = None, read_only: bool = False, **kwargs: Any
) -> Engine:
    """An engine whose sessions start in UTC (``-c TimeZone=UTC`` added to any
    ``options`` the URL has, so timestamps arrive in UTC and need no conversion), and
    that returns rows in binary format to statements that ask (:data:`BINARY_ROWS`).
    ``connect_timeout`` applies unless the URL sets its own."""
    from psycopg.pq import Format

    given = url.query.get("options", "")
    given = " ".join(given) if isinstance(given, tuple) else given
    options = f"{given} -c TimeZone=UTC" + (" -c default_transaction_read_only=on" if read_only else "")
    connect_args: dict[str, Any] = {"options": options.strip()}
    if connect_timeout is not None and "connect_timeout" not in url.query:
        connect_args["connect_timeout"] = max(1, round(connect_timeout))
    engine = create_engine(url, connect_args=connect_args, **kwargs)

    @event.listens_for(engine, "before_cursor_execute")
    def _rows_format(_conn, cursor, _statement, _parameters, context, _executemany) -> None:
        if context is not None and context.execution_options.get(BINARY_ROWS):
            cursor.format = Format.BINARY

    return engine


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite URL, absolute; ``None`` for other databases and in-memory SQLite."""
    parsed = make_url(normalize_url(url))
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    if parsed.database.startswith("file:"):  # a URI filename: let SQLite read it
        return None
    return Path(parsed.database).absolute()


def build_engine(
    url: str, create: bool = True, connect_timeout: float | None = None, read_only: bool = False
) -> Engine:
    """Create an engine for ``url`` with the per-dialect setup described above. A
    missing SQLite file and its folder are created unless ``create`` is false, where
    that raises :class:`NoDatabase`; ``connect_timeout`` bounds connecting to
    PostgreSQL (seconds); ``read_only`` as :func:`set_read_only` describes."""
    url = normalize_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        path = sqlite_path(url)
        if path is not None and not path.exists():
            if not create:
                raise NoDatabase(path)
            path.parent.mkdir(parents=True, exist_ok=True)
        if read_only and path is not None:
            # Opened read-only by SQLite itself: a missing file is an error, not created.
            url = f"sqlite:///file:{path}?mode=ro&uri=true"
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
            # A reader opens the file afresh for each session: one replaced or deleted
            # meanwhile (a new demo) is read as it is now, not as a pooled handle saw it.
            **({"poolclass": NullPool} if read_only else {}),
        )
        _sqlite_setup(engine, read_only)
        return engine
    # No pre-ping: it would cost a round trip per transaction. A connection that died
    # with the server raises OperationalError, SQLAlchemy drops the pool, and the job
    # retries like after any other transient error.
    return _postgresql_engine(parsed, connect_timeout, read_only, pool_size=5, max_overflow=5)


def current_url() -> str:
    return _url_override or get_settings().database_url


def use_database(url: str | None) -> None:
    """Point this process at another database (tests, the demo); ``None`` returns to the settings."""
    global _url_override
    with _lock:
        _url_override = url
    dispose()


def get_engine() -> Engine:
    global _engine, _autocommit_engine, _sessionmaker
    with _lock:
        if _engine is None:
            _engine = (
                build_engine(current_url(), create=False, connect_timeout=CONNECT_TIMEOUT_S, read_only=_read_only)
                if _interactive
                else build_engine(current_url(), read_only=_read_only)
            )
            _sessionmaker = sessionmaker(_engine, expire_on_commit=False)
            if _engine.dialect.name == "postgresql":
                _autocommit_engine = _build_autocommit_engine(_engine)
        return _engine


def engines() -> list[Engine]:
    """Every engine in use: the main one and, on PostgreSQL, :func:`statement_scope`'s."""
    get_engine()
    return [e for e in (_engine, _autocommit_engine) if e is not None]


def _build_autocommit_engine(engine: Engine) -> Engine:
    """Connections for :func:`statement_scope`: in autocommit mode from the start (a
    pool of its own: switching a pooled connection to autocommit and back on every
    checkout costs more than the statement it runs), whose commits do not wait for the
    WAL flush. That is safe for what runs here (a job's start, its plan's read, its
    end): a crash of PostgreSQL can lose at most the last fraction of a second of
    them, never a later commit (WAL is written in order, and every batch and run
    summary commits durably), and a job whose start or end was lost is found by its
    silent heartbeat and run again, which applies nothing twice
    (docs/reliability.md, "Durability of a job's start and end")."""
    autocommit = _postgresql_engine(
        engine.url,
        CONNECT_TIMEOUT_S if _interactive else None,
        _read_only,
        isolation_level="AUTOCOMMIT",
        pool_size=2,
        max_overflow=8,
    )

    @event.listens_for(autocommit, "connect")
    def _on_connect(dbapi_connection, _record) -> None:
        with dbapi_connection.cursor() as cursor:
            cursor.execute("SET synchronous_commit = off")

    return autocommit


def dispose(close: bool = True) -> None:
    """Drop the engines when switching databases; ``close=False`` after a fork, so the
    child never closes connections that belong to its parent."""
    global _engine, _autocommit_engine, _sessionmaker
    with _lock:
        for engine in (_engine, _autocommit_engine):
            if engine is not None:
                engine.dispose(close=close)
        _engine = _autocommit_engine = None
        _sessionmaker = None


def describe() -> str:
    """The current database URL with its password masked, for messages and logs."""
    return mask_url(current_url())


@contextmanager
def session_scope() -> Iterator[Session]:
    """A session that commits when the block succeeds and rolls back on any exception."""
    get_engine()
    assert _sessionmaker is not None
    session = _sessionmaker()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


@contextmanager
def statement_scope() -> Iterator[Connection]:
    """A connection on which every statement commits on its own, for reads and for
    single statements that need no transaction around them (a job's start, its plan's
    read and its end: no session, no BEGIN and COMMIT round trips). On PostgreSQL an
    autocommit connection whose commits do not wait for the WAL flush (see
    :func:`_build_autocommit_engine`); on SQLite one transaction committed at the end."""
    engine = get_engine()
    if _autocommit_engine is None:
        with engine.begin() as connection:
            yield connection
        return
    with _autocommit_engine.connect() as connection:
        yield connection


def stream(source: Executor, statement: Select[Any], parameters: dict[str, Any], size: int) -> Iterator[list[Any]]:
    """The statement's rows (tuples of the selected columns, in order) in lists of at
    most ``size``, never the whole result in memory at once.

    SQLite steps its cursor as rows are taken. PostgreSQL sends the rows in chunks
    (libpq's chunked mode, through psycopg: no server-side cursor, so it works in
    autocommit mode too) in binary format, and they are not passed through
    SQLAlchemy's result processing: psycopg's own values (UUIDs, timezone-aware UTC
    timestamps, decoded JSON) are what the column types would give, and processing
    a project's million rows cost more than reading them (docs/benchmarks.md).
    Parameters go to psycopg as given: UUIDs, aware datetimes, numbers."""
    connection = source.connection() if isinstance(source, Session) else source
    if connection.dialect.name != "postgresql":
        yield from (list(rows) for rows in connection.execute(statement, parameters).partitions(size))
        return
    import psycopg

    compiled = statement.compile(dialect=connection.dialect)
    driver = connection.connection.driver_connection
    assert driver is not None
    with driver.cursor(binary=True) as cursor:
        chunk: list[Any] = []
        # Chunked mode needs libpq 17; with an older one, rows come one at a time.
        fetch = size if psycopg.capabilities.has_stream_chunked() else 1
        for row in cursor.stream(str(compiled), compiled.construct_params(parameters), size=fetch):
            chunk.append(row)
            if len(chunk) == size:
                yield chunk
                chunk = []
        if chunk:
            yield chunk


def is_postgresql() -> bool:
    return get_engine().dialect.name == "postgresql"


def chunks(items: Sequence[T], size: int = IN_CHUNK) -> Iterable[Sequence[T]]:
    """Consecutive slices of ``items`` of at most ``size`` (for IN lists and batches)."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


# SQLSTATEs of a server that is going away or not accepting connections yet.
_UNAVAILABLE_STATES = ("57P01", "57P02", "57P03")


def unreachable(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or an exception it was raised from) says the database server
    could not be reached: a refused or dropped connection, a server shutting down or
    starting up. Such an error says nothing about the work that met it, so it is
    waited out rather than counted as a failure. SQLite is never unreachable."""
    import psycopg

    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, DBAPIError) and exc.connection_invalidated:
            return True
        if isinstance(exc, psycopg.OperationalError):
            state = exc.sqlstate
            return state is None or state.startswith("08") or state in _UNAVAILABLE_STATES
        exc = exc.__cause__ or getattr(exc, "orig", None) or exc.__context__
    return False

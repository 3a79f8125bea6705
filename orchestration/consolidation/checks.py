"""Checking the memories' data before consolidating them: bad data is skipped, never
guessed at.

Agents write memories without going through this package, so a memory's columns can
hold what this package would never write:

- ``tags`` and ``file_links`` must be lists of strings, ``consolidated_from`` a list
  of memory ids (or NULL); JSON ``null`` counts as an empty list. A string is never
  taken for a list: ``"deploy"`` iterated as tags gave a consolidated memory the tags
  ``d, e, p, l, o, y``;
- ``learned_at`` and ``last_reused_at`` must be dates Python can hold (years 1 to
  9999): PostgreSQL also stores ``infinity`` and years up to 294276, SQLite any
  text, and reading one such value failed the whole read;
- ``reused_count`` must not be negative (-5 would count as rarely reused: archived).

A memory with bad data is *skipped*, like one with an invalid embedding: neither
merged nor archived, counted in ``skipped_invalid``, and the rest of the project is
consolidated. Each skipped memory is described by a :class:`DataError` naming the
memory, the field and the value (the plan's ``invalid``, the dry run's ``invalid``).

How: the planning read checks the lists in SQL (:func:`problem`), one value per
memory, so the lists themselves are not sent; a bad value is never decoded
(:func:`readable`); only the few flagged memories are read again to say what is
wrong (:func:`explain`). Timestamps are checked in SQL on PostgreSQL (a range), and
on SQLite by Python's own parser as they are read (:class:`Unreadable`): SQLite's
date functions accept text that ``datetime.fromisoformat`` does not. Memory ids are
checked in Python: only consolidated memories have them.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    ColumnElement,
    DateTime,
    String,
    Text,
    TypeDecorator,
    case,
    cast,
    literal_column,
    select,
    type_coerce,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import CompileError
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import QueryableAttribute
from sqlalchemy.sql.functions import FunctionElement

from orchestration.consolidation.errors import DataError, kind, quote
from orchestration.store.db import Executor, chunks
from orchestration.store.models import TaskMemory

Column = QueryableAttribute[Any]  # a model's column: TaskMemory.tags

TAGS, FILE_LINKS, CONSOLIDATED_FROM = "tags", "file_links", "consolidated_from"
LEARNED_AT, LAST_REUSED_AT, REUSED_COUNT = "learned_at", "last_reused_at", "reused_count"
TIMESTAMPS = (LEARNED_AT, LAST_REUSED_AT)
_A_DATE = "a timestamp from year 1 to 9999"
EXPECTED = {
    TAGS: "a list of strings",
    FILE_LINKS: "a list of strings",
    CONSOLIDATED_FROM: "a list of memory ids",
    LEARNED_AT: _A_DATE,
    LAST_REUSED_AT: _A_DATE,
    REUSED_COUNT: "a count of at least 0",
}


class Unreadable(str):
    """A stored timestamp Python cannot read (SQLite), as the text it is."""


class CheckedTimestamp(TypeDecorator[Any]):
    """Reads a timestamp as timezone-aware UTC like ``UTCDateTime``, but returns
    :class:`Unreadable` instead of raising where SQLite holds something else."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> Any:
        # SQLite: the raw text, parsed below (SQLAlchemy's own parsing would raise).
        return dialect.type_descriptor(String() if dialect.name == "sqlite" else DateTime(timezone=True))

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        if value is None or isinstance(value, datetime) and value.tzinfo is UTC:
            return value  # PostgreSQL: checked in SQL, UTC already
        try:
            moment = value if isinstance(value, datetime) else datetime.fromisoformat(value)
            return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
        except (TypeError, ValueError, OverflowError):  # TypeError: a number SQLite stored
            return Unreadable(str(value))


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def microseconds(moment: datetime) -> int:
    """``moment`` as microseconds since 1970 (exact for every year Python holds)."""
    return (moment - EPOCH) // _MICROSECOND


class Microseconds(TypeDecorator[Any]):
    """A timestamp read as microseconds since 1970 (:func:`in_microseconds`): an int,
    ``None``, or :class:`Unreadable` where SQLite holds something else."""

    impl = BigInteger()
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> Any:
        return dialect.type_descriptor(String() if dialect.name == "sqlite" else BigInteger())

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        # PostgreSQL sends the microseconds (an int). On SQLite an int is what an agent
        # stored (a DATETIME column keeps '2026' as the number 2026): not a timestamp.
        if value is None or isinstance(value, int) and dialect.name != "sqlite":
            return value
        moment = CheckedTimestamp().process_result_value(value, dialect)
        return moment if isinstance(moment, Unreadable) else microseconds(moment)


class list_of_strings(FunctionElement[bool]):  # noqa: N801 - used like a SQL function
    """SQL: the JSON column is SQL ``NULL``, JSON ``null`` or a list of strings (on
    SQLite, also: valid JSON at all)."""

    type = Boolean()
    inherit_cache = True
    name = "list_of_strings"


class representable(FunctionElement[bool]):  # noqa: N801
    """SQL: the timestamp column is ``NULL`` or a date Python can hold (PostgreSQL;
    always true on SQLite, where :class:`CheckedTimestamp` checks as it reads)."""

    type = Boolean()
    inherit_cache = True
    name = "representable"


class decodable(FunctionElement[Any]):  # noqa: N801
    """SQL: the JSON column where it can be decoded, else ``NULL``. Only SQLite can hold
    text that is not JSON (reading it would raise in the middle of the rows)."""

    inherit_cache = True
    name = "decodable"

    def __init__(self, column: Column):
        super().__init__(column)
        self.type = column.type


def _only_argument(element: FunctionElement[Any], compiler: Any, **kw: Any) -> str:
    (column,) = element.clauses
    return str(compiler.process(column, **kw))


class epoch_microseconds(FunctionElement[Any]):  # noqa: N801
    """SQL: a timestamp as microseconds since 1970, ``NULL`` where it is not
    representable (PostgreSQL, exact: ``EXTRACT`` gives a numeric); on SQLite the stored
    text, which :class:`Microseconds` converts as it reads."""

    type = Microseconds()
    inherit_cache = True
    name = "epoch_microseconds"


@compiles(list_of_strings, "postgresql")
def _list_of_strings_postgresql(element: list_of_strings, compiler: Any, **kw: Any) -> str:
    c = _only_argument(element, compiler, **kw)
    return (
        f"(CASE WHEN {c} IS NULL THEN true WHEN jsonb_typeof({c}) = 'array' "
        f"""THEN NOT jsonb_path_exists({c}, 'strict $[*] ? (@.type() != "string")') """
        f"ELSE jsonb_typeof({c}) = 'null' END)"
    )


@compiles(list_of_strings, "sqlite")
def _list_of_strings_sqlite(element: list_of_strings, compiler: Any, **kw: Any) -> str:
    c = _only_argument(element, compiler, **kw)
    return (
        f"(CASE WHEN {c} IS NULL THEN 1 WHEN NOT json_valid({c}) THEN 0 WHEN json_type({c}) = 'array' "
        f"THEN NOT EXISTS (SELECT 1 FROM json_each({c}) WHERE json_each.type <> 'text') "
        f"ELSE json_type({c}) = 'null' END)"
    )


@compiles(representable, "postgresql")
def _representable_postgresql(element: representable, compiler: Any, **kw: Any) -> str:
    return _in_range(_only_argument(element, compiler, **kw))


def _in_range(c: str) -> str:
    return f"({c} IS NULL OR ({c} >= '0001-01-01 00:00:00+00' AND {c} < '10000-01-01 00:00:00+00'))"


@compiles(representable, "sqlite")
def _representable_sqlite(element: representable, compiler: Any, **kw: Any) -> str:
    return "1"


@compiles(decodable, "postgresql")
def _decodable_postgresql(element: decodable, compiler: Any, **kw: Any) -> str:
    return _only_argument(element, compiler, **kw)  # jsonb is always valid JSON


@compiles(decodable, "sqlite")
def _decodable_sqlite(element: decodable, compiler: Any, **kw: Any) -> str:
    c = _only_argument(element, compiler, **kw)
    return f"(CASE WHEN json_valid({c}) THEN {c} END)"


@compiles(epoch_microseconds, "postgresql")
def _epoch_microseconds_postgresql(element: epoch_microseconds, compiler: Any, **kw: Any) -> str:
    c = _only_argument(element, compiler, **kw)
    return f"(CASE WHEN {_in_range(c)} THEN CAST(EXTRACT(EPOCH FROM {c}) * 1000000 AS BIGINT) END)"


@compiles(epoch_microseconds, "sqlite")
def _epoch_microseconds_sqlite(element: epoch_microseconds, compiler: Any, **kw: Any) -> str:
    return _only_argument(element, compiler, **kw)


@compiles(list_of_strings)
@compiles(epoch_microseconds)
@compiles(representable)
@compiles(decodable)
def _unsupported(element: FunctionElement[Any], compiler: Any, **kw: Any) -> str:
    raise CompileError(f"{element.name} is written for PostgreSQL and SQLite only")


def valid(column: Column) -> ColumnElement[bool]:
    """SQL: ``column`` (one of :data:`EXPECTED`) holds what it should."""
    return representable(column) if column.key in TIMESTAMPS else list_of_strings(column)


def problem(*columns: Column) -> ColumnElement[str | None]:
    """SQL: the name of the first of ``columns`` that is not :func:`valid`, or ``NULL``."""
    return case(*((~valid(c), literal_column(f"'{c.key}'", Text)) for c in columns), else_=None)


def readable(column: Column) -> ColumnElement[Any]:
    """SQL: ``column`` (one of :data:`EXPECTED`) read so that reading cannot fail, under
    its own name: ``NULL`` where :func:`problem` names it (PostgreSQL), or
    :class:`Unreadable` (SQLite timestamps). Such a row is skipped, its value never used."""
    if column.key in TIMESTAMPS:
        checked = case((representable(column), column), else_=None)
        return type_coerce(checked, CheckedTimestamp()).label(column.key)
    return decodable(column).label(column.key)


def in_microseconds(column: Column) -> ColumnElement[Any]:
    """SQL: a timestamp column (one of :data:`TIMESTAMPS`) read as microseconds since
    1970 under its own name, so that reading cannot fail (:class:`Microseconds`)."""
    return epoch_microseconds(column).label(column.key)


def unreadable(row: Any) -> str | None:
    """The first timestamp of ``row`` that Python could not read (SQLite), if any."""
    for name in TIMESTAMPS:
        if isinstance(getattr(row, name, None), Unreadable):
            return name
    return None


def first_source(value: Any) -> uuid.UUID | None:
    """The first id of a ``consolidated_from`` value, or ``None`` if it has none or it
    is malformed (a broken chain is followed no further)."""
    if not isinstance(value, list) or not value or not isinstance(value[0], str):
        return None
    try:
        return uuid.UUID(value[0])
    except ValueError:
        return None


def _described(value: Any) -> str:
    return "null" if value is None else f"{kind(value)} {quote(value)}"


def what_is_wrong(field: str, value: Any) -> str | None:
    """Why ``value`` (decoded JSON) is not a valid list ``field``, or ``None`` if it is."""
    expected = EXPECTED[field]
    if value is None:
        return None
    if not isinstance(value, list):
        return f"expected {expected}, got {_described(value)}"
    for index, item in enumerate(value):
        if not isinstance(item, str):
            return f"expected {expected}, got {_described(item)} at index {index}"
        if field == CONSOLIDATED_FROM:
            try:
                uuid.UUID(item)
            except ValueError:
                return f"expected {expected}, got {_described(item)} at index {index}"
    return None


def check_columns(columns: Mapping[str, Sequence[Any]]) -> tuple[dict[int, DataError], dict[int, str]]:
    """Why memories are skipped, for a chunk of the planning read as columns (its
    ``id``, its ``problem`` column, the :func:`readable` and :func:`in_microseconds`
    columns): (row index -> the error, row index -> the field that ``problem`` names,
    for :func:`explain`). A memory with several problems is described by the first
    found in this order: the ``problem`` column, an unreadable timestamp, a negative
    ``reused_count``, ``consolidated_from``. It reads nothing: a chunk is checked while
    the rest of the read is still arriving on the connection."""
    ids = columns["id"]
    flagged = {i: field for i, field in enumerate(columns["problem"]) if field is not None}
    found: dict[int, DataError] = {}

    def add(index: int, field: str, what: str) -> None:
        if index not in flagged and index not in found:
            found[index] = DataError.of_memory(ids[index], field, what)

    for name in TIMESTAMPS:
        for index, value in enumerate(columns[name]):
            if isinstance(value, Unreadable):
                add(index, name, f"expected {EXPECTED[name]}, got {quote(value)}")
    for index, count in enumerate(columns[REUSED_COUNT]):
        if count < 0:
            add(index, REUSED_COUNT, f"expected {EXPECTED[REUSED_COUNT]}, got {count}")
    for index, value in enumerate(columns[CONSOLIDATED_FROM]):
        if value is not None and (wrong := what_is_wrong(CONSOLIDATED_FROM, value)) is not None:
            add(index, CONSOLIDATED_FROM, wrong)
    return found, flagged


# The stored text of the columns :func:`problem` checks.
_RAW = {name: cast(getattr(TaskMemory, name), Text).label(name) for name in EXPECTED if name != REUSED_COUNT}


def explain(source: Executor, fields: dict[uuid.UUID, str]) -> dict[uuid.UUID, DataError]:
    """Read the stored text of each memory's bad ``field`` and say what is wrong with it."""
    explained: dict[uuid.UUID, DataError] = {}
    for chunk in chunks(list(fields)):
        for row in source.execute(select(TaskMemory.id, *_RAW.values()).where(TaskMemory.id.in_(chunk))):
            field = fields[row.id]
            explained[row.id] = DataError.of_memory(row.id, field, _text_problem(field, getattr(row, field)))
    for memory_id, field in fields.items():  # deleted since it was read
        explained.setdefault(memory_id, DataError.of_memory(memory_id, field, f"expected {EXPECTED[field]}"))
    return explained


def _text_problem(field: str, text: str | None) -> str:
    if field in TIMESTAMPS:
        return f"expected {EXPECTED[field]}, got {quote(text)}"
    try:
        value = None if text is None else json.loads(text)
    except (TypeError, ValueError):
        return f"expected {EXPECTED[field]}, got text that is not JSON: {quote(text)}"
    return what_is_wrong(field, value) or f"expected {EXPECTED[field]}"

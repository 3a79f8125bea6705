"""PostgreSQL: a project's memories in bulk, through ``COPY ... (FORMAT BINARY)``.

Most of a project's memories are regular: an embedding of the project's usual length,
no bad data to explain, a ``consolidated_from`` (if any) of ids in uuid's canonical
form (either case), a known type. Sent as
COPY's binary rows, in fields of a fixed size, their records all have the same
length, so numpy reads them as one array of records, with no Python object per
memory; rows through the driver cost a few microseconds each, which made most of an
incremental pass (docs/benchmarks.md). The other memories come in the same records,
marked, with only their ids: :mod:`memories` reads them again row by row, as on SQLite.

COPY's binary format: a header (signature, flags, extension), then per row a 16-bit
field count and per field a 32-bit length and the value in its binary send format
(big-endian integers; a timestamp as an integer of microseconds since 2000; a uuid's
16 bytes; a CHAR's text, blank-padded; a bytea's own bytes), then a trailer.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from queue import Full, Queue
from typing import Any, TypeVar

import numpy as np
from sqlalchemy import (
    CHAR,
    BigInteger,
    ColumnElement,
    Select,
    and_,
    bindparam,
    case,
    cast,
    func,
    literal,
    or_,
    select,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONPATH, TIMESTAMP
from sqlalchemy.dialects.postgresql import UUID as PG_UUID
from sqlalchemy.engine import Connection

from orchestration.consolidation.checks import microseconds, problem
from orchestration.store.models import TaskMemory
from orchestration.store.statuses import MemoryType

SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
TRAILER = b"\xff\xff"
# A memory type's name, at most (a CHECK constraint keeps the column to MemoryType's),
# sent as a CHAR of this many characters: ASCII names fill exactly as many bytes.
TYPE_BYTES = 32
assert all(t.isascii() and len(t) <= TYPE_BYTES for t in MemoryType)
NO_TYPE = b" " * TYPE_BYTES  # a blank name: no type sent
# Records taken apart at a time: about 4 MB of 384-dimension embeddings (a batch is
# put in place while the next arrives; larger ones measured no faster).
BATCH_BYTES = 4 << 20


# A memory id in uuid's canonical form, either case (other spellings are read row by row).
_CANONICAL = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
_NOT_ALL_IDS = f'strict $[*] ? (!(@ like_regex "{_CANONICAL}" flag "i"))'
_NO_ID = "00000000-0000-0000-0000-000000000000"


def regular(checked: tuple[Any, ...], unmarked: tuple[Any, ...]) -> ColumnElement[bool]:
    """SQL: the memory can be read in bulk, never NULL. ``checked``: the columns whose
    bad data skips a memory; ``unmarked``: those of them that change without marking it.

    Parameters: ``dim``, the usual embedding length; ``checked_since`` and ``recheck``,
    the last pass's watermark and the memories it found irregular: a memory marked
    before the watermark and not among those was regular then and its marked columns
    have not changed since, so only its ``unmarked`` ones are checked again (a NULL
    ``checked_since``, the default: every memory is checked in full)."""
    sources = TaskMemory.consolidated_from
    in_full = and_(
        problem(*checked).is_(None),
        case(
            (
                func.jsonb_typeof(sources) == "array",
                ~func.jsonb_path_exists(sources, cast(literal(_NOT_ALL_IDS), JSONPATH)),
            ),
            else_=or_(sources.is_(None), func.jsonb_typeof(sources) == "null"),
        ),
    )
    again = or_(
        func.coalesce(TaskMemory.change_mark >= bindparam("checked_since", None, type_=BigInteger), True),
        TaskMemory.id == func.any(bindparam("recheck", [], type_=ARRAY(PG_UUID(as_uuid=True)))),
    )
    return func.coalesce(
        and_(
            TaskMemory.embedding.is_not(None),
            func.octet_length(TaskMemory.embedding) == bindparam("dim"),
            TaskMemory.reused_count >= 0,
            case((again, in_full), else_=problem(*unmarked).is_(None)),
        ),
        False,
    )


# PostgreSQL's own epoch: a timestamp's binary format counts microseconds from it.
PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_PG_EPOCH = literal(PG_EPOCH, TIMESTAMP(timezone=True))


def unix_microseconds(sent: np.ndarray) -> np.ndarray:
    """Timestamps as sent (microseconds since 2000) as microseconds since 1970."""
    return sent.astype(np.int64) + microseconds(PG_EPOCH)


def _zeros(count: Any) -> ColumnElement[bytes]:
    """SQL: ``count`` zero bytes."""
    return func.decode(func.repeat("00", count), "hex")


def bulk_select(is_regular: ColumnElement[bool], where: ColumnElement[bool]) -> Select[Any]:
    """Every memory ``where`` says, in fields of a fixed size (:func:`record`): a
    memory that is not ``is_regular`` comes with ``regular`` false and placeholders
    (zeros, blanks) for the rest, to be read row by row."""
    # OFFSET 0 keeps the subquery whole, so that ``regular`` is evaluated once a row.
    memory = (
        select(
            TaskMemory.id,
            TaskMemory.version,
            TaskMemory.reused_count,
            TaskMemory.learned_at,
            TaskMemory.last_reused_at,
            TaskMemory.change_mark,
            TaskMemory.memory_type,
            TaskMemory.embedding,
            TaskMemory.consolidated_from,
            is_regular.label("regular"),
        )
        .where(where)
        .offset(0)
        .subquery()
    )
    m = memory.c

    def only_regular(value: Any, otherwise: Any) -> ColumnElement[Any]:
        return case((m.regular, value), else_=otherwise)

    # Cast only if it is an id: an unmarked memory's list is not checked again
    # (:func:`regular`), and a cast that fails would fail the whole read.
    first = m.consolidated_from.op("->>")(0)
    origin = case((first.op("~*")(_CANONICAL), cast(first, PG_UUID)), else_=None)
    source = TaskMemory.__table__.alias("origin")
    origin_type = select(source.c.memory_type).where(source.c.id == origin).scalar_subquery()
    no_name = cast(literal(""), CHAR(TYPE_BYTES))
    statement: Select[Any] = select(
        m.id,
        m.regular,
        cast(m.version, BigInteger),
        only_regular(cast(m.reused_count, BigInteger), 0),
        # Timestamps as sent: microseconds since 2000 (a regular one is in Python's range).
        only_regular(m.learned_at, _PG_EPOCH),
        only_regular(func.coalesce(m.last_reused_at, m.learned_at), _PG_EPOCH),
        func.coalesce(m.change_mark >= bindparam("since"), False),
        # Types' names, blank-padded to a fixed size.
        only_regular(cast(m.memory_type, CHAR(TYPE_BYTES)), no_name),
        # A consolidated memory groups by the type of the first memory it was made of
        # (spaces.effective_types): that memory's id, and its type if it is found.
        only_regular(func.coalesce(origin, cast(_NO_ID, PG_UUID)), cast(_NO_ID, PG_UUID)),
        case(
            (
                and_(m.regular, m.memory_type == MemoryType.CONSOLIDATED),
                func.coalesce(cast(origin_type, CHAR(TYPE_BYTES)), no_name),
            ),
            else_=no_name,
        ),
        # A constant (folded once per query) stands in for what is not read here.
        only_regular(m.embedding, _zeros(bindparam("dim"))),
    )
    return statement


# The columns before the embedding, as numpy reads their binary format.
FIELDS: tuple[tuple[str, str], ...] = (
    ("id", "V16"),
    ("regular", "?"),
    ("version", ">i8"),
    ("reused", ">i8"),
    ("learned", ">i8"),
    ("last_used", ">i8"),
    ("new", "?"),
    ("type", f"S{TYPE_BYTES}"),
    ("origin", "V16"),
    ("origin_type", f"S{TYPE_BYTES}"),
)


def record(dim_bytes: int) -> np.dtype:
    """A row of :func:`bulk_select` in COPY's binary format: the field count, then
    each field's length and value."""
    layout: list[tuple[str, Any, tuple[int, ...]] | tuple[str, Any]] = [("fields", ">i2")]
    for name, kind in (*FIELDS, ("embedding", "<f4")):
        layout.append((f"{name}_length", ">i4"))
        layout.append((name, kind, (dim_bytes // 4,)) if name == "embedding" else (name, kind))
    return np.dtype(layout)


def _check(records: np.ndarray, dim_bytes: int) -> None:
    sizes = {name: np.dtype(kind).itemsize for name, kind in FIELDS} | {"embedding": dim_bytes}
    if not (records["fields"] == len(sizes)).all() or any(
        not (records[f"{name}_length"] == size).all() for name, size in sizes.items()
    ):
        raise RuntimeError("COPY sent rows of another layout than the bulk read asked for")


T = TypeVar("T")


@dataclass
class _Failed:
    error: BaseException


_DONE = object()


def ahead(items: Iterator[T], depth: int = 2) -> Iterator[T]:
    """``items``, taken from ``items`` in a thread of their own, at most ``depth`` ahead
    of the one that uses them: the rows of a COPY arrive while the batch before them is
    put in place (PostgreSQL, the receiving and numpy each keep a core busy part of the
    time). An error in the thread is raised here. When the user stops early, the thread
    still takes every item (a connection is free again only at the end of its COPY),
    keeping none."""
    queue: Queue[Any] = Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: Any) -> None:
        while not stop.is_set():
            with contextlib.suppress(Full):
                queue.put(item, timeout=0.05)
                return

    def produce() -> None:
        try:
            for item in items:
                put(item)
        except BaseException as exc:  # noqa: BLE001 - raised again in the thread that uses them
            put(_Failed(exc))
        else:
            put(_DONE)

    thread = threading.Thread(target=produce, name="orchestration-bulk-read", daemon=True)
    thread.start()
    try:
        while (item := queue.get()) is not _DONE:
            if isinstance(item, _Failed):
                raise item.error
            yield item
    finally:
        stop.set()
        thread.join()


def read_regular(
    connection: Connection, statement: Select[Any], parameters: dict[str, Any], dim_bytes: int
) -> Iterator[np.ndarray]:
    """The rows of ``statement`` (:func:`bulk_select`), as arrays of :func:`record`s."""
    compiled = statement.compile(dialect=connection.dialect)
    driver = connection.connection.driver_connection
    assert driver is not None
    with (
        driver.cursor() as cursor,
        cursor.copy(f"COPY ({compiled}) TO STDOUT (FORMAT BINARY)", compiled.construct_params(parameters)) as copy,
    ):
        yield from parse(copy, dim_bytes)


def parse(stream: Iterable[Any], dim_bytes: int) -> Iterator[np.ndarray]:
    """COPY's binary format, received in pieces of any size, as arrays of
    :func:`record`s, each in the buffer its bytes were received into."""
    layout = record(dim_bytes)
    batch = max(1, BATCH_BYTES // layout.itemsize) * layout.itemsize
    buffer = _Buffer(batch)
    started = False
    for data in stream:
        buffer.add(data)
        if not started:
            header = buffer.header()
            if header is None:
                continue
            buffer.drop(header)
            started = True
        if buffer.filled >= batch:
            yield _take(buffer, layout, dim_bytes)
    if not started or buffer.end(len(TRAILER)) != TRAILER:
        raise RuntimeError("COPY ended before its trailer")
    buffer.drop_end(len(TRAILER))
    if buffer.filled >= layout.itemsize:
        yield _take(buffer, layout, dim_bytes)
    if buffer.filled:
        raise RuntimeError("COPY sent a partial row")


class _Buffer:
    """Bytes received, in a buffer whose records are handed out without a copy."""

    def __init__(self, size: int):
        self.size = size
        self.data = bytearray(size)
        self.view = memoryview(self.data)
        self.filled = 0

    def add(self, data: Any) -> None:
        end = self.filled + len(data)
        if end > len(self.data):  # a row past the batch's size: room for it
            self._move(0, max(end, 2 * len(self.data)))
        self.view[self.filled : end] = data
        self.filled = end

    def header(self) -> int | None:
        """The length of COPY's header at the start, once it is all in (None until then)."""
        start = len(SIGNATURE) + 8
        if self.filled < start:
            return None
        if self.data[: len(SIGNATURE)] != SIGNATURE:
            raise RuntimeError("COPY did not send its binary format")
        extension = int.from_bytes(self.data[len(SIGNATURE) + 4 : start], "big")
        return start + extension if self.filled >= start + extension else None

    def end(self, count: int) -> bytes:
        """The last ``count`` bytes received."""
        return bytes(self.data[max(0, self.filled - count) : self.filled])

    def drop_end(self, count: int) -> None:
        """Drop the last ``count`` bytes."""
        self.filled -= count

    def drop(self, count: int) -> None:
        """Drop the first ``count`` bytes."""
        self.view[: self.filled - count] = self.data[count : self.filled]
        self.filled -= count

    def split(self, count: int) -> bytearray:
        """The buffer whose first ``count`` bytes are taken (what follows them is not
        theirs); the rest move to a new buffer."""
        taken = self.data
        self._move(count, self.size)
        return taken

    def _move(self, start: int, size: int) -> None:
        """Into a new buffer of ``size`` bytes (at least): the bytes from ``start`` on."""
        rest = self.view[start : self.filled]
        self.data = bytearray(max(size, len(rest)))
        self.data[: len(rest)] = rest
        rest.release()
        self.view.release()
        self.view = memoryview(self.data)
        self.filled -= start


def _take(buffer: _Buffer, layout: np.dtype, dim_bytes: int) -> np.ndarray:
    """The whole records at the start of ``buffer``, taken out of it."""
    count = buffer.filled // layout.itemsize
    records = np.frombuffer(buffer.split(count * layout.itemsize), layout, count)
    _check(records, dim_bytes)
    return records

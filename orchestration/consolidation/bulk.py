"""PostgreSQL: a project's *regular* memories in bulk, through ``COPY ... (FORMAT BINARY)``.

Most of a project's memories are regular: an embedding of the project's usual length,
no bad data to explain, no ``consolidated_from`` to follow, a known type. Sent as
COPY's binary rows their records all have the same length, so numpy reads them as
one array of records, with no Python object per memory; rows through the driver cost
a few microseconds each, which made reading most of an incremental pass
(docs/benchmarks.md). :mod:`memories` reads the other memories row by row, as on
SQLite, and decides what regular means here (:func:`regular`).

COPY's binary format: a header (signature, flags, extension), then per row a 16-bit
field count and per field a 32-bit length and the value in its binary send format
(big-endian integers, a uuid's 16 bytes, a bytea's own bytes), then a trailer.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
from sqlalchemy import BigInteger, ColumnElement, Select, SmallInteger, String, and_, bindparam, cast, func, select
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Connection

from orchestration.consolidation.checks import epoch_microseconds, problem
from orchestration.store.models import TaskMemory

SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
TRAILER = b"\xff\xff"
# Records taken apart at a time: about 16 MB of 384-dimension embeddings.
BATCH_BYTES = 16 << 20


def regular(checked: tuple[Any, ...]) -> ColumnElement[bool]:
    """SQL: the memory can be read in bulk, never NULL (parameters ``dim``: the usual
    embedding length, ``types``: the memory types it may have). ``checked``: the
    columns whose bad data skips a memory."""
    return func.coalesce(
        and_(
            TaskMemory.embedding.is_not(None),
            func.octet_length(TaskMemory.embedding) == bindparam("dim"),
            problem(*checked).is_(None),
            TaskMemory.reused_count >= 0,
            TaskMemory.consolidated_from.is_(None),
            TaskMemory.memory_type == func.any(bindparam("types", type_=ARRAY(String()))),
        ),
        False,
    )


def bulk_select(where: ColumnElement[bool]) -> Select[Any]:
    """The columns of a regular memory, each of a fixed size (:func:`record`)."""
    learned = epoch_microseconds(TaskMemory.learned_at)
    return select(
        TaskMemory.id,
        cast(TaskMemory.version, BigInteger),
        cast(TaskMemory.reused_count, BigInteger),
        learned,
        func.coalesce(epoch_microseconds(TaskMemory.last_reused_at), learned),
        func.coalesce(TaskMemory.change_mark >= bindparam("since"), False),
        cast(func.array_position(bindparam("types", type_=ARRAY(String())), TaskMemory.memory_type), SmallInteger),
        TaskMemory.embedding,
    ).where(where)


# The columns before the embedding, as numpy reads their binary format.
FIELDS: tuple[tuple[str, str], ...] = (
    ("id", "V16"),
    ("version", ">i8"),
    ("reused", ">i8"),
    ("learned", ">i8"),
    ("last_used", ">i8"),
    ("new", "?"),
    ("type", ">i2"),
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


def read_regular(
    connection: Connection, statement: Select[Any], parameters: dict[str, Any], dim_bytes: int
) -> Iterator[np.ndarray]:
    """The rows of ``statement`` (:func:`bulk_select`), as arrays of :func:`record`s."""
    compiled = statement.compile(dialect=connection.dialect)
    layout = record(dim_bytes)
    driver = connection.connection.driver_connection
    assert driver is not None
    pending = bytearray()
    started = False
    with (
        driver.cursor() as cursor,
        cursor.copy(f"COPY ({compiled}) TO STDOUT (FORMAT BINARY)", compiled.construct_params(parameters)) as copy,
    ):
        for data in copy:
            pending += data
            if not started:
                if len(pending) < len(SIGNATURE) + 8:
                    continue
                if pending[: len(SIGNATURE)] != SIGNATURE:
                    raise RuntimeError("COPY did not send its binary format")
                extension = int.from_bytes(pending[len(SIGNATURE) + 4 : len(SIGNATURE) + 8], "big")
                del pending[: len(SIGNATURE) + 8 + extension]
                started = True
            if len(pending) >= BATCH_BYTES:
                yield _take(pending, layout, dim_bytes)
    if not started or pending[-len(TRAILER) :] != TRAILER:
        raise RuntimeError("COPY ended before its trailer")
    del pending[-len(TRAILER) :]
    if pending:
        yield _take(pending, layout, dim_bytes)
        if pending:
            raise RuntimeError("COPY sent a partial row")


def _take(pending: bytearray, layout: np.dtype, dim_bytes: int) -> np.ndarray:
    """The whole records at the start of ``pending``, taken out of it."""
    count = len(pending) // layout.itemsize
    records = np.frombuffer(bytes(pending[: count * layout.itemsize]), dtype=layout)
    del pending[: count * layout.itemsize]
    _check(records, dim_bytes)
    return records
